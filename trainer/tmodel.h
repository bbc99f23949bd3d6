/* tmodel.h: the re-ranker's parameters in training mode: f32 tensors (full or LoRA) loaded from
 * an engine checkpoint, their gradients, and writing the trainable ones back out.
 *
 * Parameters live in one allocation (base tensors first, then LoRA pairs), gradients in one
 * allocation covering only the trainable tensors (all of them in full mode, the LoRA pairs in
 * LoRA mode); mr_tweights are named views into either. LoRA A is initialised as PEFT does
 * (kaiming-uniform, B = 0) from the seed in mr_tmodel_opts.
 *
 * Not here: the training forward and backward (tpass.h) and their activation cache
 * (tcache.h), the width of a pass (twidth.h), the re-ranking loss (loss.h), the LM objective
 * (lm.h), AdamW (adamw.h), LoRA dropout masks (dropout.h), full HF checkpoints and the resume
 * state (checkpoint.h). Callers: those files, cli/cmd_train.c, tests/test_train_*.c. */
#ifndef MR_TMODEL_H
#define MR_TMODEL_H

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

/* Loads DIR (any dtype the engine reads) into f32 parameters; m is caller-owned and zeroed
 * first. On error m holds nothing (mr_tmodel_close is still safe). */
int mr_tmodel_load(mr_tmodel *m, const char *dir, const mr_tmodel_opts *o, mr_err *err);
/* Frees what mr_tmodel_load allocated; accepts NULL, idempotent. */
void mr_tmodel_close(mr_tmodel *m);
void mr_tmodel_zero_grad(mr_tmodel *m);
/* Writes the trainable tensors (params or grads) to a safetensors file under their names. */
int mr_tmodel_save_trainable(const mr_tmodel *m, const char *path, int grads, mr_err *err);
/* LoRA mode: writes DIR as a PEFT adapter folder (mr_adapter_save). */
int mr_tmodel_save_adapter(const mr_tmodel *m, const char *dir, mr_err *err);

/* Layer of the deepest exit head (D): the last layer any pass runs. */
static inline int mr_tmodel_deepest(const mr_tmodel *m) { return m->exit_layer[m->n_exits - 1]; }

/* trainer-internal: input and output width of linear j (MR_LQ..MR_LDOWN) under c. */
void mr__lin_dims(const mr_config *c, int j, int *in, int *out);

#endif
