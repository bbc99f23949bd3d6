/* train_model.h: the re-ranker in training mode: f32 parameters (full or LoRA), a forward pass
 * over packed rows that caches every activation the backward needs, all exits scored in one
 * pass, random width, the loss of cascaded self-distillation (matryoshka-method.md section 6)
 * and its backward, and AdamW with warmup and linear decay.
 *
 * The forward calls the engine's kernels (common/kernels.h) on the same packed layout as
 * common/forward.c; the backward calls trainer/backward.h. Parameters live in one allocation
 * (base tensors first, then LoRA pairs), gradients in one allocation covering only the
 * trainable tensors (all of them in full mode, the LoRA pairs in LoRA mode).
 *
 * LoRA dropout (PEFT semantics): with p = lora_dropout > 0 every LoRA pair, the exit heads'
 * included, sees an inverted-dropout copy of its input, y = W x + scale B A (x * mask / (1-p)),
 * while the base path sees x; the backward multiplies the gradient into x through the LoRA
 * path by the same mask. Masks are not stored: each element's keep bit is a counter-based
 * hash of (seed, drop_step, pass, layer, linear, element), regenerated in the backward, so a
 * run is reproducible (and a resumed one byte-identical) from the caller's drop_step alone.
 * Only this training forward drops; the engine (common/) never does.
 *
 * Width compression pools with mean or attention weights (mr_twidth.pooling, the engine's
 * mr_pool either way). Attention pooling: at a compress layer idx every passage token is
 * weighted by the attention it receives from its row's last token in layer idx-1, summed over
 * heads and normalised per group: the last_probs of the engine's mr_attention, taken from the
 * training forward's own attention call of layer idx-1 and cached with layer idx, so the
 * forward is the engine's (common/forward.c). Gradient choice: the weights are constants
 * (stop-gradient through the attention that produced them); the backward scatters weight *
 * upstream to the pooled tokens (mr_pool_backward) and sends nothing into layer idx-1's
 * queries and keys through the weights. Compress layer 0 needs mean pooling (no previous
 * layer), as in the engine.
 *
 * Not here: the data pipeline (jsonl -> token rows), the `mrank train` command, checkpoint
 * writing of full models and resume (trainer/run.h), the derivative through the attention
 * pooling weights (stop-gradient, above), and the LM pre-training objective (trainer/lm.h). */
#ifndef MR_TRAIN_MODEL_H
#define MR_TRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "model.h"
#include "mr_err.h"

enum { MR_LQ, MR_LK, MR_LV, MR_LO, MR_LGATE, MR_LUP, MR_LDOWN, MR_N_LIN };

typedef enum mr_train_mode { MR_TRAIN_FULL = 0, MR_TRAIN_LORA = 1 } mr_train_mode;

/* Pointers into one arena (parameters or gradients); NULL where absent (or frozen in the
 * gradient view). */
typedef struct mr_tlayer_w {
    float *attn_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm; /* (d); post_* gemma2 only */
    float *w[MR_N_LIN];   /* q (nh*hd, d) k,v (nkv*hd, d) o (d, nh*hd) gate,up (dff, d) down */
    float *b[3];          /* q, k, v biases (qwen2) */
    float *A[MR_N_LIN];   /* LoRA (rank, in) */
    float *B[MR_N_LIN];   /* LoRA (out, rank) */
} mr_tlayer_w;

typedef struct mr_tweights {
    float *embed;         /* (vocab, d) */
    mr_tlayer_w *layers;  /* (n_layers) */
    float *final_norm;    /* (d) */
    float *heads;         /* (n_exits, d) exit heads lm_head.{k}.linear_head */
    float *head_A;        /* (n_exits, rank, d) LoRA on the heads */
    float *head_B;        /* (n_exits, 1, rank) */
} mr_tweights;

typedef struct mr_tparam {
    char name[160];       /* HF / PEFT tensor name */
    int ndim;
    int64_t shape[2];
    size_t off;           /* floats from the start of the parameter arena */
    int trainable;
} mr_tparam;

typedef struct mr_tmodel_opts {
    mr_train_mode mode;
    int lora_rank;        /* default 32 */
    float lora_alpha;     /* default 64 */
    float lora_dropout;   /* p in [0, 1), default 0: LoRA input dropout in training */
    uint64_t seed;        /* LoRA A init: U(-1/sqrt(in), 1/sqrt(in)), B = 0 (PEFT); the
                             dropout masks */
    float lora_b_std;     /* tests: B ~ U(-b, b) instead of 0, so every gradient is non-zero */
    int max_len;          /* longest row (RoPE table) */
} mr_tmodel_opts;

typedef struct mr_tmodel {
    mr_config cfg;
    mr_train_mode mode;
    int rank;
    float lora_scale;     /* alpha / rank */
    float lora_dropout;   /* p (LoRA mode); set 0 for an eval-mode (no dropout) pass */
    uint64_t drop_seed;   /* from opts seed */
    uint64_t drop_step;   /* dropout stream, set by the caller before each micro-batch
                             (mrank train: step * accum + micro); same value, same masks */
    float norm_offset;    /* 1 for gemma2 */
    float embed_scale;
    int n_exits;
    int exit_layer[MR_MAX_EXITS]; /* layer of head k, increasing */
    int n_tensors;
    mr_tparam *tensors;
    size_t n_params;      /* floats in params */
    size_t train_off;     /* first trainable float; trainable = [train_off, n_params) */
    size_t n_train;
    float *params;        /* (n_params) */
    float *grads;         /* (n_train) */
    mr_tweights w, g;     /* views of params and grads */
    int max_len;
    float *rope;          /* (max_len, hd/2, 2) */
} mr_tmodel;

/* Loads DIR (any dtype the engine reads) into f32 parameters. */
int mr_tmodel_load(mr_tmodel *m, const char *dir, const mr_tmodel_opts *o, mr_err *err);
void mr_tmodel_close(mr_tmodel *m);
void mr_tmodel_zero_grad(mr_tmodel *m);
/* Writes the trainable tensors (params or grads) to a safetensors file under their names. */
int mr_tmodel_save_trainable(const mr_tmodel *m, const char *path, int grads, mr_err *err);
/* LoRA mode: writes DIR as a PEFT adapter folder (mr_adapter_save). */
int mr_tmodel_save_adapter(const mr_tmodel *m, const char *dir, mr_err *err);

/* Width of one pass: ratio in {1,2,4,8} at the listed layers (increasing, in [0, n_layers)),
 * pooled by pooling (MR_POOL_MEAN = 0, so zero-initialised widths pool by means; with
 * MR_POOL_ATTENTION and ratio > 1 no compress layer may be 0). */
typedef struct mr_twidth {
    int ratio;
    int n_compress;
    int compress_layers[MR_MAX_COMPRESS];
    mr_pooling pooling;
} mr_twidth;

/* Random width of section 6, generalised: r uniform in {1,2,4,8}; each layer that is a
 * multiple of step in [step, D - step] (D = deepest exit; step 0 -> max(1, D/8), i.e. 4..28
 * for 32 layers) is included with probability 1/2. *rng is a splitmix64 state. Sets pooling
 * to MR_POOL_MEAN: the caller chooses the pooling after sampling. */
void mr_twidth_sample(mr_twidth *w, const mr_tmodel *m, int step, uint64_t *rng);

/* A micro-batch: n_groups queries of G candidates each, rows [g*G, (g+1)*G), positive first. */
typedef struct mr_tbatch {
    const mr_row *rows;     /* (n_groups * G) */
    int n_groups, G;
    const float *teacher;   /* (n_groups * G) external teacher scores, or NULL */
} mr_tbatch;

typedef struct mr_loss_opts {
    int cascade;            /* 1: cascade term from a full-width teacher pass */
    int cascade_step;       /* anchor spacing k: a(l) = min(D, k ceil((l+1)/k)), rounded up to
                               an exit layer; 0 -> max(1, D/4) (8 for 32 layers, as the paper) */
    int deepest_only;       /* 1: listwise and teacher terms at the deepest exit only (the
                               full-depth baseline of the ablation; other heads get no gradient) */
    float cascade_weight;   /* weight of the cascade term in the total (the spec: 1); 0 -> 1 */
} mr_loss_opts;

/* Anchor exit layer a(l) of exit layer l (l < D) under o; D for l = D. */
int mr_cascade_anchor(const mr_tmodel *m, const mr_loss_opts *o, int l);

typedef struct mr_tloss {
    double total;           /* all terms (the cascade one weighted), averaged over queries */
    double ce, ext, cascade;/* the three parts (sums over exits, averaged over queries) */
} mr_tloss;

/* Activation cache and backward scratch, grown on demand (one arena). */
typedef struct mr_tcache mr_tcache;
int mr_tcache_new(mr_tcache **c, mr_err *err);
void mr_tcache_free(mr_tcache *c);
/* Tests: on = 1 makes later forwards keep the attention pooling weights that the previous
 * pass left in c instead of recomputing them, so a finite-difference check sees the weights as
 * the constants the backward takes them for. Valid only while every pass in c has the same
 * rows and width (e.g. mr_train_micro without the cascade's teacher pass). */
void mr_tcache_freeze_pool_weights(mr_tcache *c, int on);

/* Training-mode forward: scores (n_exits, n_rows) raw exit scores (after the final softcap),
 * activations cached in c for mr_tmodel_backward. Rows are checked like mr_model_score. In
 * LoRA mode with lora_dropout > 0 the LoRA inputs are dropped with the masks of
 * (drop_seed, drop_step, pass 0); the backward reuses the masks of the cached pass. */
int mr_tmodel_forward(mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                      const mr_twidth *w, float *scores, mr_err *err);
/* Backward of the last forward given dscores (n_exits, n_rows); accumulates into m->grads. */
void mr_tmodel_backward(mr_tmodel *m, mr_tcache *c, const float *dscores);
/* Same, plus dfinal (n, d): a gradient on the residual after the deepest exit layer (the
 * layout of mr_tcache_final), e.g. from the LM objective (trainer/lm.h). dscores or dfinal
 * may be NULL. */
void mr_tmodel_backward_ex(mr_tmodel *m, mr_tcache *c, const float *dscores,
                           const float *dfinal);
/* The residual after the deepest exit layer of the cached pass (all tokens; every layer when
 * the deepest exit is n_layers): (n, d), row r at tokens [off[r], off[r] + len[r]). */
const float *mr_tcache_final(const mr_tcache *c, int *n, const int32_t **off,
                             const int32_t **len);

/* One micro-batch: teacher pass at full width (when o->cascade and w is not full width; at
 * full width the student's own scores, detached, are the teacher), student pass at width w,
 * loss, backward with the loss multiplied by grad_scale (1 / accumulation steps). With LoRA
 * dropout the teacher pass draws its own masks (pass 1), as a train-mode forward would. */
int mr_train_micro(mr_tmodel *m, mr_tcache *c, const mr_tbatch *b, const mr_twidth *w,
                   const mr_loss_opts *o, float grad_scale, mr_tloss *loss, mr_err *err);

/* AdamW (decoupled weight decay) over the trainable floats; lr warms up linearly over
 * warmup steps, then decays linearly to 0 at total_steps. Optional global-norm clipping. */
typedef struct mr_adamw {
    float lr, beta1, beta2, eps, weight_decay, clip; /* clip <= 0: off */
    int warmup_steps, total_steps, step;
    size_t n;
    float *m, *v;           /* (n) one allocation */
} mr_adamw;
int mr_adamw_init(mr_adamw *a, size_t n, float lr, int warmup_steps, int total_steps,
                  float weight_decay, mr_err *err);
void mr_adamw_close(mr_adamw *a);
float mr_adamw_lr(const mr_adamw *a, int step); /* step counts from 1 */
/* Applies one update to params (n) from grads (n); returns the gradient norm (pre-clip). */
double mr_adamw_step(mr_adamw *a, float *params, const float *grads);

#endif
