/* model.h: a loaded Matryoshka re-ranker and its forward pass with exits, width compression
 * and in-pass pruning.
 *
 * mr_model owns the mapped checkpoint (weights are used in place, never copied whole into f32),
 * the tokenizer and the LoRA adapters. Adapters are merged into (a copy-on-write view of) the
 * weights at load, or kept unmerged and applied at run time per request (adapter_mask), so one
 * copy of the base serves several sub-architectures. The model is read-only after load and may
 * be shared by threads; each thread scores through its own mr_ctx, whose buffers are sized once
 * at init: mr_model_score allocates nothing.
 *
 * Semantics: ../shared/reference/matryoshka-method.md, sections 3-5. Exit heads are picked by
 * layer number (k = (l - start_layer) / layer_sep) unless head_by_position reproduces the released
 * code's quirk (k = position of the exit in the sorted list of requested exits). */
#ifndef MR_MODEL_H
#define MR_MODEL_H

#include <stdint.h>

#include "config.h"
#include "gemm.h"
#include "lora.h"
#include "mr_err.h"
#include "safetensors.h"
#include "tokenizer.h"

#define MR_MAX_EXITS 128
#define MR_MAX_COMPRESS 64
#define MR_MAX_PRUNE 16
#define MR_MAX_ADAPTERS 16
#define MR_FF_CHUNK 2048       /* tokens per MLP chunk */

typedef enum mr_pooling { MR_POOL_MEAN = 0, MR_POOL_ATTENTION = 1 } mr_pooling;

/* One linear map: W (out, in) in the checkpoint's dtype (and, on the int8 GEMM path, its s8
 * copy, quantized after merged adapters are applied), optional bias (out), and the
 * unmerged low-rank updates of the loaded adapters (A (rank, in), B (out, rank), f32, with the
 * adapter's scale already folded into A). */
typedef struct mr_linear {
    const mr_tensor *w;              /* (out, in), any dtype, in the mapping */
    mr_gemm_q8 q8;                   /* the int8 GEMM path's quantized W, owned; else zeroed */
    float *b;                        /* (out) f32 or NULL, owned */
    int in, out;
    int n_lora;
    struct mr_lora_f32 {
        int adapter;       /* index into mr_model.adapters */
        int rank;
        float scale;       /* the adapter's scale, already multiplied into A */
        float *A, *B;      /* owned by the model */
    } lora[MR_MAX_ADAPTERS];
} mr_linear;

typedef struct mr_layer {
    /* norm weights converted to f32 at load, owned */
    float *attn_norm;                /* (d) input_layernorm */
    float *post_attn_norm;           /* (d) gemma2 post_attention_layernorm, else NULL */
    float *ffn_norm;                 /* (d) llama post_attention_layernorm / gemma2 pre_ff */
    float *post_ffn_norm;            /* (d) gemma2 post_feedforward_layernorm, else NULL */
    mr_linear q, k, v, o;            /* (nh*hd, d) (nkv*hd, d) (nkv*hd, d) (d, nh*hd) */
    mr_linear gate, up, down;        /* (dff, d) (dff, d) (d, dff) */
} mr_layer;

typedef struct mr_model_opts {
    const char *const *adapters;     /* adapter folders, applied in order */
    int n_adapters;
    int merge;                       /* 1: merge into the weights at load; 0: run-time */
    const char *gemm;                /* GEMM mode (gemm.h): auto, f32, bf16, int8, openblas; NULL:
                                        the environment's MR_GEMM, else auto */
} mr_model_opts;

typedef struct mr_model {
    mr_config cfg;
    char dir[512];
    mr_st_set st;
    mr_tokenizer *tok;               /* NULL when the folder has no tokenizer.json */
    const mr_tensor *embed;          /* (vocab, d) */
    float *final_norm;               /* (d) f32, owned */
    float norm_offset;               /* 1 for gemma2's (1 + w) norms, else 0 */
    mr_layer *layers;                /* (n_layers) */
    int n_heads_exit;                /* number of exit heads */
    float *heads;                    /* (n_heads_exit, d) f32, merged adapters included */
    float *head_delta[MR_MAX_ADAPTERS]; /* (n_heads_exit, d) per unmerged adapter or NULL */
    float embed_scale;               /* gemma2: sqrt(d) rounded to the storage dtype; else 1 */
    mr_adapter adapters[MR_MAX_ADAPTERS];
    int n_adapters;
    int merged;
    int untrained;                   /* DIR/SEEDED exists: seeded weights (seeded.h) */
    mr_gemm_path gemm;               /* the linear layers' GEMM path, chosen at load */
} mr_model;

/* Loads DIR (config.json, the safetensors weights, tokenizer.json when present) and applies
 * opts' adapters (opts may be NULL). On error m is left zeroed. */
int mr_model_load(mr_model *m, const char *dir, const mr_model_opts *opts, mr_err *err);
/* Frees what m owns and zeroes it; idempotent, accepts a zeroed m. */
void mr_model_close(mr_model *m);
/* Exit layer of head k, and the head of exit layer l. The latter is a lookup, not an error
 * signal: -1 when l has no exit head (mr_run_opts_check turns that into MR_EINVAL). */
int mr_model_exit_layer(const mr_model *m, int k);
int mr_model_head_of(const mr_model *m, int layer);

/* One (query, passage) pair as token segments (see input.h): the query segment and the
 * suffix are never compressed; the passage segment is. */
typedef struct mr_row {
    const int32_t *q; int nq;        /* [BOS] tok("A: " query) tok("\n") */
    const int32_t *p; int np;        /* tok("B: " passage), possibly truncated */
    const int32_t *s; int ns;        /* tok("\n") tok(prompt) */
} mr_row;

typedef struct mr_prune {
    int layer;                       /* an exit layer of the run */
    int top_k;                       /* > 0: keep the best top_k rows of each prune group
                                        (ties: lower index) */
    float min_score;                 /* used when top_k == 0: keep raw score >= min_score */
} mr_prune;

typedef struct mr_run_opts {
    int n_exits;
    int exits[MR_MAX_EXITS];         /* exit layers, strictly increasing */
    int ratio;                       /* 1, 2, 4 or 8 */
    int n_compress;
    int compress_layers[MR_MAX_COMPRESS]; /* strictly increasing, each in [0, n_layers) */
    mr_pooling pooling;
    int sigmoid;
    int head_by_position;
    uint32_t adapter_mask;           /* unmerged adapters to apply (bit i = adapter i) */
    int n_prune;
    mr_prune prune[MR_MAX_PRUNE];    /* by increasing layer */
    /* Optional stop check (NULL: none). Not part of the sub-architecture: never on the wire,
     * never compared between requests. Before each layer l >= 1 the pass calls
     * stop(stop_user, l) on the calling thread; a nonzero answer ends the pass there and the
     * call returns 0 with the exits not reached left NAN (depth: the deepest exit reached, 0
     * for none). A caller whose work was cancelled stops wasting compute this way; the check
     * must be cheap (it runs once per layer) and must not touch the context. */
    int (*stop)(void *stop_user, int layer);
    void *stop_user;
    /* Optional prune groups (NULL: all rows are one group). Not part of the sub-architecture
     * either: prune_group[r] is row r's group (e.g. the request it came from, when a worker
     * batches several requests with the same prune schedule), and a top_k step keeps the best
     * top_k rows of each group, as if each group were scored alone. min_score steps are per
     * row anyway. The caller's array (n_rows entries) must outlive the call. */
    const int32_t *prune_group;
    /* 1: every row computes its own query prefix (the unshared path, for tests and benches);
     * 0 (default): rows with identical query segments share one copy per pass (forward.c).
     * Not part of the sub-architecture either: scores are the same within fp tolerance. */
    int no_prefix_share;
} mr_run_opts;

/* Fills o with defaults: deepest exit only (n_layers), ratio 1, mean pooling, all unmerged
 * adapters active. */
void mr_run_opts_init(mr_run_opts *o, const mr_model *m);
/* Checks o against the model (exits with heads, layers in range, pruning on exits). */
int mr_run_opts_check(const mr_run_opts *o, const mr_model *m, mr_err *err);

/* Per-thread scratch, sized for up to max_tokens packed tokens, max_rows rows and rows of at
 * most max_len tokens. */
typedef struct mr_ctx {
    const mr_model *m;
    int max_tokens, max_rows, max_len;
    float *x, *xn;                   /* (max_tokens, d) residual, normed */
    float *q, *k, *v, *att;          /* (max_tokens, nh*hd) (.., nkv*hd) x2 (.., nh*hd) */
    float *ff_a, *ff_b;              /* (ff_chunk, dff): the MLP runs in token chunks */
    int ff_chunk;                    /* min(max_tokens, MR_FF_CHUNK) */
    float *lora_tmp;                 /* (max_tokens, max adapter rank) */
    float *wbuf[3];                  /* (largest matrix, 4 bytes an element) each: copies in the
                                        GEMM path's weight dtype of matrices not usable in place
                                        (another dtype, or unaligned): [0] attention projections
                                        and gate, [1] up, [2] down. NULL when every matrix is
                                        usable in place */
    mr_gemm_ctx *gemm;               /* the GEMM path's primitives and buffers */
    int gemm_rc;                     /* first GEMM failure of the pass (0: none) */
    int bad_row, bad_exit;           /* first row and exit whose score was not finite (-1) */
    float *rope;                     /* (max_len, hd/2, 2) */
    float *attn_scratch;             /* (n_threads, max_len) */
    float *last_probs;               /* (max_tokens) */
    float *tmp_d;                    /* (d) */
    float *head_tmp;                 /* (d) */
    int32_t *pos;                    /* (max_tokens) */
    int32_t *off, *len, *nq, *np, *ns, *row_id, *q_off, *q_from; /* (max_rows) */
    /* Query prefixes: the stream starts with n_groups distinct query segments (group g: tokens
     * [g_off[g], g_off[g] + g_len[g])), computed once per pass; row r's own tokens (passage |
     * suffix; nq[r] = 0) follow at off[r] and attend to its prefix at pre_off[r], pre_len[r] */
    int32_t *g_off, *g_len, *pre_off, *pre_len; /* (max_rows) */
    int n_groups, pre_tok;           /* prefix groups, tokens they take at the stream's start */
    long long token_layers;          /* tokens through each layer's K/V, summed over layers, in
                                        the last pass (the cost prefix sharing cuts) */
    float *row_score;                /* (max_rows) */
    int32_t *order;                  /* (max_rows) */
} mr_ctx;

/* Sizes every buffer once (MR_EINVAL on bad sizes, MR_ENOMEM); on error c is left zeroed. m
 * must outlive c. */
int mr_ctx_init(mr_ctx *c, const mr_model *m, int max_tokens, int max_rows, int max_len,
                mr_err *err);
/* Frees c's buffers and zeroes it; idempotent, accepts a zeroed c. */
void mr_ctx_close(mr_ctx *c);

/* Scores n_rows rows: scores (n_rows, n_exits) raw (or sigmoid) scores in exit order; rows
 * pruned before an exit get NAN there. depth (n_rows, optional) receives the deepest exit
 * layer each row reached. Rows are validated (lengths, ids < vocab) before any compute. A
 * computed score that is not finite fails the pass (MR_ENUMERIC naming the row and exit; a
 * server answers INTERNAL: the model is at fault, not the request): a NaN would rank silently
 * wrong. */
int mr_model_score(mr_ctx *c, const mr_row *rows, int n_rows, const mr_run_opts *o,
                   float *scores, int *depth, mr_err *err);

/* Checks rows against a context's limits (max_rows rows, max_len tokens per row, max_tokens in
 * all) and the vocabulary: MR_EINVAL / MR_ERANGE with a message naming the row. Every backend
 * runs it before any compute. */
int mr_rows_check(const mr_model *m, const mr_row *rows, int n_rows, int max_rows, int max_len,
                  int max_tokens, mr_err *err);

/* Prune step p over n surviving rows with raw scores score (n) and request indices row_id (n):
 * keep[r] = 1 for the top_k best of each group (ties: lower row_id first; NaN ranks lowest;
 * group: NULL, or the run's prune_group, indexed by row_id), or for score >= min_score when
 * top_k is 0. order (n) is scratch. Shared by every backend. */
void mr_prune_select(const float *score, const int32_t *row_id, const int32_t *group, int n,
                     const mr_prune *p, char *keep, int32_t *order);

/* Linear FLOPs of one row of nq + np + ns tokens under o (2 * MACs of the linear layers,
 * attention excluded): the cost figure `mrank eval` (cli/cmd_eval.c) and the benches
 * (bench/bench_engine.c, bench/bench_cuda.c) report. */
double mr_model_row_flops(const mr_model *m, const mr_run_opts *o, int nq, int np, int ns);

#endif
