/* backend_cuda.cu: the CUDA scorer backends ("cuda" and "cuda-fp8", see backend.h): the pass
 * of common/forward.c on one GPU, with the same options and results. Built as its own module,
 * libmrank_cuda.so, which exports one record (module.h) and is loaded by common/cuda_module.c
 * the first time a process asks for a CUDA table; the engine functions it calls come from the
 * executable that loads it (exports.list).
 *
 * Weights are uploaded once per model from the mapped checkpoint (shared by every context of
 * that model on the device, reference-counted): linear weights as bf16 (k|v and gate|up fused
 * along their output dimension), biases, norms and exit heads as f32 masters, unmerged LoRA
 * pairs as bf16 (A pre-scaled). Merged adapters need nothing: model.c merged them into the
 * mapped weights at load, which is what gets uploaded. Matrix products are cuBLASLt bf16 x bf16
 * -> f32 with f32 accumulation; everything else is in cuda/kernels.cuh. "cuda-fp8" converts
 * the linear weights to e4m3 (one scale per tensor) after upload and scales each GEMM input to
 * e4m3 on the device; unmerged LoRA products stay bf16.
 *
 * The layout is forward.c's (prefix.h): one copy of each distinct query prefix, then the
 * current own tokens of the surviving rows packed back to back in an f32 residual stream;
 * every row attends to its prefix's keys and values, computed once per pass (query-prefix
 * sharing; mr_run_opts.no_prefix_share gives every row its own copy). The host keeps the row
 * layout (off/len/segments and the prefix groups, a few ints per row) and, whenever it
 * changes (start, width compression, pruning, the deepest layer), stages the per-token
 * positions, attention tiles (mr_prefix_tiles) and gather maps through one pinned buffer;
 * compression and pruning then run on the device as gathers into a second residual buffer. Exit scores stay
 * on the device until the end of the pass, except at pruning exits, where they come back to
 * the host (one synchronisation) to pick the survivors with forward.c's tie rule.
 *
 * Not implemented: per-channel FP8 scales, CUDA graphs. Measured on an H100 against the CPU
 * engine and transformers, and on an H200 with query-prefix sharing: docs/cuda.md. */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "arena.h"
#include "backend.h"
#include "kernels.h"
#include "module.h"
#include "prefix.h"
}
#include "cuda/kernels.cuh"

/* ---- errors ---- */

#define CK(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess)                                                                \
            return mr_err_set(err, MR_EIO, "cuda: %s (%s:%d)", cudaGetErrorString(e_),        \
                              __FILE__, __LINE__);                                            \
    } while (0)
#define CKB(call)                                                                             \
    do {                                                                                      \
        cublasStatus_t s_ = (call);                                                           \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                      \
            return mr_err_set(err, MR_EIO, "cublas: status %d (%s:%d)", (int)s_, __FILE__,    \
                              __LINE__);                                                      \
    } while (0)
#define RC(call)                                                                              \
    do {                                                                                      \
        int r_ = (call);                                                                      \
        if (r_) return r_;                                                                    \
    } while (0)

/* ---- device weights ---- */

/* One linear map on the device, possibly several of the model's fused along out. */
typedef struct dlora {
    int adapter, rank;
    int col, out;                    /* columns [col, col + out) of the fused output */
    bf16 *A;                         /* (rank, in), pre-scaled */
    bf16 *B;                         /* (out, rank) */
} dlora;

typedef struct dlin {
    int in, out;
    bf16 *w;                         /* (out, in) row-major; NULL when w8 replaces it */
    float *b;                        /* (out) or NULL */
    uint8_t *w8;                     /* cuda-fp8: (out, in) e4m3, w = w8 * *w8_scale */
    float *w8_scale;                 /* (1) on the device */
    int n_lora;
    dlora lora[2 * MR_MAX_ADAPTERS];
} dlin;

typedef struct dlayer {
    float *attn_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm; /* (d) f32 or NULL */
    dlin q, kv, o, gu, down;         /* kv = [k | v], gu = [gate | up] */
} dlayer;

typedef struct dweights {
    const mr_model *m;
    int dev, refs, fp8;
    void *embed;                     /* (vocab, d) bf16 (bf16 checkpoints) or f32 */
    int embed_f32;
    float *final_norm;               /* (d) */
    float *heads;                    /* (n_heads_exit, d) */
    float *head_delta[MR_MAX_ADAPTERS];
    dlayer *L;
    int max_rank;
    size_t bytes;
} dweights;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
#define MR_CUDA_MAX_MODELS 16
static dweights *g_models[MR_CUDA_MAX_MODELS];

static int dalloc(void **p, size_t bytes, size_t *total, mr_err *err) {
    *p = NULL;
    if (!bytes) return 0;
    CK(cudaMalloc(p, bytes));
    *total += bytes;
    return 0;
}

/* f32 host array (n) to the device. */
static int up_f32(float **dst, const float *src, size_t n, size_t *total, mr_err *err) {
    *dst = NULL;
    if (!src) return 0;
    RC(dalloc((void **)dst, n * 4, total, err));
    CK(cudaMemcpy(*dst, src, n * 4, cudaMemcpyHostToDevice));
    return 0;
}

/* n values of t (any dtype, possibly unaligned) as bf16 at dst + off (device). */
static int up_bf16_tensor(bf16 *dst, const mr_tensor *t, uint16_t *hbuf, float *fbuf,
                          size_t chunk, mr_err *err) {
    size_t n = (size_t)t->numel, es = mr_dtype_size(t->dtype);
    for (size_t a = 0; a < n; a += chunk) {
        size_t len = n - a < chunk ? n - a : chunk;
        const char *src = (const char *)t->data + a * es;
        if (t->dtype == MR_DT_BF16) {
            memcpy(hbuf, src, len * 2);
        } else {
            mr_to_f32(fbuf, src, t->dtype, len);
            mr_from_f32(hbuf, fbuf, MR_DT_BF16, len);
        }
        CK(cudaMemcpy(dst + a, hbuf, len * 2, cudaMemcpyHostToDevice));
    }
    return 0;
}

static int up_bf16_f32(bf16 **dst, const float *src, size_t n, uint16_t *hbuf, size_t chunk,
                       size_t *total, mr_err *err) {
    RC(dalloc((void **)dst, n * 2, total, err));
    for (size_t a = 0; a < n; a += chunk) {
        size_t len = n - a < chunk ? n - a : chunk;
        mr_from_f32(hbuf, src + a, MR_DT_BF16, len);
        CK(cudaMemcpy(*dst + a, hbuf, len * 2, cudaMemcpyHostToDevice));
    }
    return 0;
}

/* Fuses parts (same in) along out into d. */
static int up_lin(dlin *d, const mr_linear *const *parts, int n, uint16_t *hbuf, float *fbuf,
                  size_t chunk, size_t *total, mr_err *err) {
    memset(d, 0, sizeof *d);
    d->in = parts[0]->in;
    int any_b = 0;
    for (int i = 0; i < n; i++) {
        d->out += parts[i]->out;
        any_b |= parts[i]->b != NULL;
    }
    RC(dalloc((void **)&d->w, (size_t)d->out * d->in * 2, total, err));
    if (any_b) RC(dalloc((void **)&d->b, (size_t)d->out * 4, total, err));
    int col = 0;
    for (int i = 0; i < n; i++) {
        const mr_linear *p = parts[i];
        RC(up_bf16_tensor(d->w + (size_t)col * d->in, p->w, hbuf, fbuf, chunk, err));
        if (any_b) {
            if (p->b)
                CK(cudaMemcpy(d->b + col, p->b, (size_t)p->out * 4, cudaMemcpyHostToDevice));
            else
                CK(cudaMemset(d->b + col, 0, (size_t)p->out * 4));
        }
        for (int a = 0; a < p->n_lora; a++) {
            const struct mr_linear::mr_lora_f32 *lo = &p->lora[a];
            dlora *dl = &d->lora[d->n_lora++];
            dl->adapter = lo->adapter;
            dl->rank = lo->rank;
            dl->col = col;
            dl->out = p->out;
            RC(up_bf16_f32(&dl->A, lo->A, (size_t)lo->rank * p->in, hbuf, chunk, total, err));
            RC(up_bf16_f32(&dl->B, lo->B, (size_t)p->out * lo->rank, hbuf, chunk, total, err));
        }
        col += p->out;
    }
    return 0;
}

static void free_lin(dlin *d) {
    cudaFree(d->w);
    cudaFree(d->w8);
    cudaFree(d->w8_scale);
    cudaFree(d->b);
    for (int a = 0; a < d->n_lora; a++) {
        cudaFree(d->lora[a].A);
        cudaFree(d->lora[a].B);
    }
    memset(d, 0, sizeof *d);
}

static unsigned blocks(size_t n, unsigned t) { return (unsigned)((n + t - 1) / t); }

/* y8 (n) = e4m3(x / s), s = max |x| / 448 into *scale (device), in stream order on st; amax is
 * one unsigned of device scratch. Weights at upload and GEMM inputs per call both use it. */
static int to_e4m3(uint8_t *y8, const bf16 *x, size_t n, unsigned *amax, float *scale,
                   cudaStream_t st, mr_err *err) {
    unsigned nb = blocks(n / 8, 256);
    if (nb > 2048) nb = 2048; /* grid-stride beyond */
    CK(cudaMemsetAsync(amax, 0, 4, st));
    k_amax<<<nb, 256, 0, st>>>(x, n, amax);
    k_quant_e4m3<<<nb, 256, 0, st>>>(y8, x, n, amax, scale);
    CK(cudaGetLastError());
    return 0;
}

/* cuda-fp8: d's bf16 weight becomes e4m3 with one per-tensor scale (amax / 448); the bf16
 * copy is freed. Shapes the FP8 GEMMs cannot take (in or out not a multiple of 16) stay bf16.
 * amax is one unsigned of device scratch. */
static int lin_to_fp8(dlin *d, unsigned *amax, size_t *total, mr_err *err) {
    if (d->in % 16 || d->out % 16) return 0;
    size_t n = (size_t)d->out * d->in;
    RC(dalloc((void **)&d->w8, n, total, err));
    RC(dalloc((void **)&d->w8_scale, 4, total, err));
    RC(to_e4m3(d->w8, d->w, n, amax, d->w8_scale, 0, err));
    CK(cudaDeviceSynchronize());
    cudaFree(d->w);
    d->w = NULL;
    *total -= n * 2;
    return 0;
}

static void weights_free(dweights *w) {
    if (!w) return;
    cudaSetDevice(w->dev);
    if (w->L) {
        for (int i = 0; i < w->m->cfg.n_layers; i++) {
            dlayer *L = &w->L[i];
            cudaFree(L->attn_norm);
            cudaFree(L->post_attn_norm);
            cudaFree(L->ffn_norm);
            cudaFree(L->post_ffn_norm);
            free_lin(&L->q);
            free_lin(&L->kv);
            free_lin(&L->o);
            free_lin(&L->gu);
            free_lin(&L->down);
        }
        free(w->L);
    }
    cudaFree(w->embed);
    cudaFree(w->final_norm);
    cudaFree(w->heads);
    for (int a = 0; a < MR_MAX_ADAPTERS; a++) cudaFree(w->head_delta[a]);
    free(w);
}

static int weights_upload(dweights *w, const mr_model *m, mr_err *err) {
    const mr_config *k = &m->cfg;
    size_t d = (size_t)k->d_model, chunk = (size_t)1 << 20;
    uint16_t *hbuf = NULL;
    float *fbuf = NULL;
    unsigned *amax = NULL;
    int rc = 0;
    if (!(hbuf = (uint16_t *)malloc(chunk * 2)) || !(fbuf = (float *)malloc(chunk * 4))) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory staging weights");
        goto done;
    }
    if (!(w->L = (dlayer *)calloc((size_t)k->n_layers, sizeof *w->L))) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory for %d layers", k->n_layers);
        goto done;
    }
    /* embedding: bf16 checkpoints stay bf16 (exact), others become f32 (exact) */
    {
        const mr_tensor *e = m->embed;
        size_t n = (size_t)e->numel;
        w->embed_f32 = e->dtype != MR_DT_BF16;
        if ((rc = dalloc(&w->embed, n * (w->embed_f32 ? 4 : 2), &w->bytes, err))) goto done;
        if (!w->embed_f32) {
            rc = up_bf16_tensor((bf16 *)w->embed, e, hbuf, fbuf, chunk, err);
        } else {
            for (size_t a = 0; a < n && !rc; a += chunk) {
                size_t len = n - a < chunk ? n - a : chunk;
                mr_to_f32(fbuf, (const char *)e->data + a * mr_dtype_size(e->dtype), e->dtype,
                          len);
                cudaError_t ce = cudaMemcpy((float *)w->embed + a, fbuf, len * 4,
                                            cudaMemcpyHostToDevice);
                if (ce != cudaSuccess)
                    rc = mr_err_set(err, MR_EIO, "cuda: %s uploading the embedding",
                                    cudaGetErrorString(ce));
            }
        }
        if (rc) goto done;
    }
    if ((rc = up_f32(&w->final_norm, m->final_norm, d, &w->bytes, err)) ||
        (rc = up_f32(&w->heads, m->heads, (size_t)m->n_heads_exit * d, &w->bytes, err)))
        goto done;
    for (int a = 0; a < MR_MAX_ADAPTERS; a++)
        if ((rc = up_f32(&w->head_delta[a], m->head_delta[a], (size_t)m->n_heads_exit * d,
                         &w->bytes, err)))
            goto done;
    if (w->fp8 && (rc = dalloc((void **)&amax, 4, &w->bytes, err))) goto done;
    for (int i = 0; i < k->n_layers && !rc; i++) {
        const mr_layer *S = &m->layers[i];
        dlayer *L = &w->L[i];
        const mr_linear *q[1] = {&S->q}, *kv[2] = {&S->k, &S->v}, *o[1] = {&S->o},
                        *gu[2] = {&S->gate, &S->up}, *dn[1] = {&S->down};
        rc = up_f32(&L->attn_norm, S->attn_norm, d, &w->bytes, err) ||
             up_f32(&L->post_attn_norm, S->post_attn_norm, d, &w->bytes, err) ||
             up_f32(&L->ffn_norm, S->ffn_norm, d, &w->bytes, err) ||
             up_f32(&L->post_ffn_norm, S->post_ffn_norm, d, &w->bytes, err) ||
             up_lin(&L->q, q, 1, hbuf, fbuf, chunk, &w->bytes, err) ||
             up_lin(&L->kv, kv, 2, hbuf, fbuf, chunk, &w->bytes, err) ||
             up_lin(&L->o, o, 1, hbuf, fbuf, chunk, &w->bytes, err) ||
             up_lin(&L->gu, gu, 2, hbuf, fbuf, chunk, &w->bytes, err) ||
             up_lin(&L->down, dn, 1, hbuf, fbuf, chunk, &w->bytes, err);
        if (rc) rc = err && err->code ? err->code : MR_EIO;
        dlin *ls[5] = {&L->q, &L->kv, &L->o, &L->gu, &L->down};
        for (int j = 0; j < 5; j++) {
            for (int a = 0; a < ls[j]->n_lora; a++)
                if (ls[j]->lora[a].rank > w->max_rank) w->max_rank = ls[j]->lora[a].rank;
            if (!rc && w->fp8) rc = lin_to_fp8(ls[j], amax, &w->bytes, err);
        }
    }
done:
    if (amax) {
        cudaFree(amax);
        w->bytes -= 4;
    }
    free(hbuf);
    free(fbuf);
    return rc;
}

/* The device weights of m on dev (bf16, or e4m3 with fp8), uploaded on first use; released by
 * weights_put. */
static int weights_get(const mr_model *m, int dev, int fp8, dweights **out, mr_err *err) {
    int rc = 0, slot = -1;
    *out = NULL;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MR_CUDA_MAX_MODELS; i++) {
        if (g_models[i] && g_models[i]->m == m && g_models[i]->dev == dev &&
            g_models[i]->fp8 == fp8) {
            g_models[i]->refs++;
            *out = g_models[i];
            goto done;
        }
        if (!g_models[i] && slot < 0) slot = i;
    }
    if (slot < 0) {
        rc = mr_err_set(err, MR_ERANGE, "cuda: more than %d models on the device",
                        MR_CUDA_MAX_MODELS);
        goto done;
    }
    {
        dweights *w = (dweights *)calloc(1, sizeof *w);
        if (!w) {
            rc = mr_err_set(err, MR_ENOMEM, "out of memory");
            goto done;
        }
        w->m = m;
        w->dev = dev;
        w->fp8 = fp8;
        w->refs = 1;
        if ((rc = weights_upload(w, m, err))) {
            weights_free(w);
            goto done;
        }
        g_models[slot] = w;
        *out = w;
    }
done:
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static void weights_put(dweights *w) {
    if (!w) return;
    pthread_mutex_lock(&g_mu);
    if (--w->refs == 0) {
        for (int i = 0; i < MR_CUDA_MAX_MODELS; i++)
            if (g_models[i] == w) g_models[i] = NULL;
        weights_free(w);
    }
    pthread_mutex_unlock(&g_mu);
}

/* ---- context ---- */

typedef struct gemm_plan {
    int key[10];
    int used, ok;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatrixLayout_t cl;       /* C's layout: c, or a bf16 one where fp8 needs it */
    cublasLtMatmulAlgo_t algo;
} gemm_plan;
#define N_PLANS 128

typedef struct cctx {
    const mr_model *m;
    dweights *w;
    int dev;
    int T, R, L;                     /* max tokens, rows, row length */
    int ff_chunk;
    cudaStream_t st;
    cublasLtHandle_t lt;
    cublasHandle_t cb;
    void *ws;
    size_t ws_size;
    gemm_plan plans[N_PLANS];
    int next_plan;
    /* device activations */
    float *x, *x2;                   /* (T, d) residual ping-pong */
    bf16 *xn;                        /* (T, d) normed input of the next GEMMs */
    bf16 *xn_last;                   /* (R, d) deepest layer: the rows' last normed tokens */
    float *q;                        /* (T, nh*hd) */
    float *kv;                       /* (T, 2*nkv*hd) [k | v] */
    bf16 *att;                       /* (T, nh*hd) */
    float *y;                        /* (T, d) o / down output */
    float *ff;                       /* (ff_chunk, 2*dff) [gate | up] */
    bf16 *act;                       /* (ff_chunk, dff) */
    float *lo_f;                     /* (T, max_rank) */
    bf16 *lo_b;                      /* (T, max_rank) */
    uint8_t *x8;                     /* cuda-fp8: (T, widest GEMM input) e4m3 activations */
    unsigned *amax;                  /* cuda-fp8: (1) max |x| of the GEMM input being scaled */
    float *x8_scale;                 /* cuda-fp8: (1) its scale */
    float *probs, *probs_tmp;        /* (T) last-query attention, scratch */
    float *rope;                     /* (L, hd/2, 2) */
    float *d_score;                  /* (MR_MAX_EXITS, R) raw exit scores */
    int32_t *d_arena;                /* device mirror of h_arena */
    /* pinned staging, regions of h_arena (ints): */
    int32_t *h_arena;
    mr_cuda_arena ar;
    int n_tiles;
    float *h_score;                  /* pinned (MR_MAX_EXITS, R) */
    cudaEvent_t staged;              /* recorded after the last copy out of h_arena */
    /* host row layout (like mr_ctx; prefix.h) */
    int32_t *off, *len, *nq, *np, *ns, *row_id, *order;
    int32_t *g_off, *g_len, *pre_off, *pre_len, *grp; /* (R) prefix groups; grp: scratch */
    int n_groups, pre_tok;
    long long token_layers;          /* tokens through each layer's K/V in the last pass */
    char *keep;
    int32_t *ex_rows;                /* (MR_MAX_EXITS, R) row ids at each exit */
    int ex_n[MR_MAX_EXITS];
    char desc[192];
} cctx;

static int ctx_sync_stage(cctx *c, mr_err *err) {
    CK(cudaEventSynchronize(c->staged));
    return 0;
}

/* Copies h_arena[from, from + n) to the device (stream order). */
static int stage_copy(cctx *c, size_t from, size_t n, mr_err *err) {
    if (!n) return 0;
    CK(cudaMemcpyAsync(c->d_arena + from, c->h_arena + from, n * 4, cudaMemcpyHostToDevice,
                       c->st));
    return 0;
}

static int cuda_available(mr_err *err) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess)
        return mr_err_set(err, MR_EUNSUPPORTED, "no CUDA device: %s", cudaGetErrorString(e));
    if (n < 1) return mr_err_set(err, MR_EUNSUPPORTED, "no CUDA device");
    return 0;
}

static void cuda_ctx_free(void *p) {
    cctx *c = (cctx *)p;
    if (!c) return;
    cudaSetDevice(c->dev);
    if (c->st) cudaStreamSynchronize(c->st);
    for (int i = 0; i < N_PLANS; i++) {
        gemm_plan *g = &c->plans[i];
        if (!g->used) continue;
        cublasLtMatrixLayoutDestroy(g->a);
        cublasLtMatrixLayoutDestroy(g->b);
        cublasLtMatrixLayoutDestroy(g->c);
        if (g->cl != g->c) cublasLtMatrixLayoutDestroy(g->cl);
        cublasLtMatmulDescDestroy(g->op);
    }
    void *dev[] = {c->ws, c->x, c->x2, c->xn, c->xn_last, c->q, c->kv, c->att, c->y, c->ff,
                   c->act, c->lo_f, c->lo_b, c->x8, c->amax, c->x8_scale, c->probs,
                   c->probs_tmp, c->rope, c->d_score, c->d_arena};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) cudaFree(dev[i]);
    cudaFreeHost(c->h_arena);
    cudaFreeHost(c->h_score);
    if (c->staged) cudaEventDestroy(c->staged);
    if (c->lt) cublasLtDestroy(c->lt);
    if (c->cb) cublasDestroy(c->cb);
    if (c->st) cudaStreamDestroy(c->st);
    weights_put(c->w);
    void *host[] = {c->off,   c->len,     c->nq,   c->np,  c->ns,     c->row_id,
                    c->order, c->g_off,   c->g_len, c->pre_off, c->pre_len, c->grp,
                    c->keep,  c->ex_rows};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
    free(c);
}

static int ctx_alloc(cctx *c, mr_err *err) {
    const mr_config *k = &c->m->cfg;
    size_t T = (size_t)c->T, R = (size_t)c->R, d = (size_t)k->d_model;
    size_t qd = (size_t)k->n_heads * k->head_dim, kvd = (size_t)k->n_kv_heads * k->head_dim;
    size_t dff = (size_t)k->d_ff, rank = (size_t)(c->w->max_rank ? c->w->max_rank : 1);
    size_t wide = d > qd ? d : qd; /* widest GEMM input: d, heads * hd or dff */
    if (dff > wide) wide = dff;
    size_t f8 = c->w->fp8 ? 1 : 0;
    c->ff_chunk = c->T < 4096 ? c->T : 4096;
    c->ws_size = (size_t)32 << 20;
    struct { void **p; size_t bytes; } bufs[] = {
        {&c->ws, c->ws_size}, {(void **)&c->x, T * d * 4}, {(void **)&c->x2, T * d * 4},
        {(void **)&c->xn, T * d * 2}, {(void **)&c->xn_last, R * d * 2},
        {(void **)&c->q, T * qd * 4}, {(void **)&c->kv, T * 2 * kvd * 4},
        {(void **)&c->att, T * qd * 2}, {(void **)&c->y, T * d * 4},
        {(void **)&c->ff, (size_t)c->ff_chunk * 2 * dff * 4},
        {(void **)&c->act, (size_t)c->ff_chunk * dff * 2}, {(void **)&c->lo_f, T * rank * 4},
        {(void **)&c->lo_b, T * rank * 2}, {(void **)&c->x8, f8 * T * wide},
        {(void **)&c->amax, f8 * 4}, {(void **)&c->x8_scale, f8 * 4}, {(void **)&c->probs, T * 4},
        {(void **)&c->probs_tmp, T * 4},
        {(void **)&c->rope, (size_t)c->L * k->head_dim * 4},
        {(void **)&c->d_score, (size_t)MR_MAX_EXITS * R * 4}};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        if (!bufs[i].bytes) continue; /* the fp8 buffers of a bf16 context */
        cudaError_t e = cudaMalloc(bufs[i].p, bufs[i].bytes);
        if (e != cudaSuccess)
            return mr_err_set(err, MR_ENOMEM,
                              "cuda: %s allocating %zu bytes for a context of %d tokens",
                              cudaGetErrorString(e), bufs[i].bytes, c->T);
    }
    /* staging arena (arena.h) */
    mr_cuda_arena_layout(T, R, ATT_BQ, &c->ar);
    CK(cudaMalloc((void **)&c->d_arena, c->ar.n * 4));
    CK(cudaMallocHost((void **)&c->h_arena, c->ar.n * 4));
    CK(cudaMallocHost((void **)&c->h_score, (size_t)MR_MAX_EXITS * R * 4));
    int32_t **ints[] = {&c->off,    &c->len,   &c->nq,      &c->np,      &c->ns,  &c->row_id,
                        &c->order,  &c->g_off, &c->g_len,   &c->pre_off, &c->pre_len,
                        &c->grp};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
        if (!(*ints[i] = (int32_t *)malloc(R * 4)))
            return mr_err_set(err, MR_ENOMEM, "out of memory for a cuda context");
    if (!(c->keep = (char *)malloc(R)) ||
        !(c->ex_rows = (int32_t *)malloc((size_t)MR_MAX_EXITS * R * 4)))
        return mr_err_set(err, MR_ENOMEM, "out of memory for a cuda context");
    /* RoPE table: the CPU's own (same cos/sin values) */
    float *tab = (float *)malloc((size_t)c->L * k->head_dim * 4);
    if (!tab) return mr_err_set(err, MR_ENOMEM, "out of memory for the rope table");
    mr_rope_table(tab, c->L, k->head_dim, k->rope_theta);
    cudaError_t e = cudaMemcpy(c->rope, tab, (size_t)c->L * k->head_dim * 4,
                               cudaMemcpyHostToDevice);
    free(tab);
    CK(e);
    return 0;
}

/* The attention instantiations, by head dim: the smallest with hd >= the model's runs; BK keys
 * per block (fewer at 256 to fit shared memory). */
enum { ATT_MAX_HD = 256 };
struct att_kernel {
    int hd, bk;
    void (*fn)(att_args);
};
static const att_kernel ATT_KERNELS[] = {{32, 64, k_attention<32, 64>},
                                         {64, 64, k_attention<64, 64>},
                                         {128, 64, k_attention<128, 64>},
                                         {ATT_MAX_HD, 32, k_attention<ATT_MAX_HD, 32>}};

static int ctx_new(const mr_model *m, int max_tokens, int max_rows, int max_len, int fp8,
                   void **out, mr_err *err) {
    *out = NULL;
    const mr_config *k = &m->cfg;
    RC(cuda_available(err));
    if (max_tokens < 1 || max_rows < 1 || max_len < 2 || max_rows > max_tokens)
        return mr_err_set(err, MR_EINVAL, "context: bad sizes (tokens %d, rows %d, len %d)",
                          max_tokens, max_rows, max_len);
    if (k->head_dim > ATT_MAX_HD || k->head_dim % 4)
        return mr_err_set(err, MR_EUNSUPPORTED,
                          "cuda: head_dim %d (the attention kernel takes multiples of 4 up to %d)",
                          k->head_dim, ATT_MAX_HD);
    if (m->n_adapters > 16)
        return mr_err_set(err, MR_EUNSUPPORTED, "cuda: at most 16 adapters");
    cctx *c = (cctx *)calloc(1, sizeof *c);
    if (!c) return mr_err_set(err, MR_ENOMEM, "out of memory for a cuda context");
    c->m = m;
    c->T = max_tokens;
    c->R = max_rows;
    c->L = max_len;
    int rc;
    cudaDeviceProp prop;
    cudaError_t e = cudaGetDevice(&c->dev);
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, c->dev);
    if (e != cudaSuccess) {
        rc = mr_err_set(err, MR_EIO, "cuda: %s", cudaGetErrorString(e));
        goto fail;
    }
    if ((rc = weights_get(m, c->dev, fp8, &c->w, err))) goto fail;
    if ((e = cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&c->staged, cudaEventDisableTiming)) != cudaSuccess) {
        rc = mr_err_set(err, MR_EIO, "cuda: %s", cudaGetErrorString(e));
        goto fail;
    }
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS ||
        cublasCreate(&c->cb) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(c->cb, c->st) != CUBLAS_STATUS_SUCCESS) {
        rc = mr_err_set(err, MR_EIO, "cublas: cannot create handles");
        goto fail;
    }
    if ((rc = ctx_alloc(c, err))) goto fail;
    /* attention's shared memory is over 48 KiB from head dim 128 on: opt in */
    for (const att_kernel &ak : ATT_KERNELS)
        cudaFuncSetAttribute(ak.fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             att_smem_bytes(ak.hd, ak.bk));
    snprintf(c->desc, sizeof c->desc, "%s: %.100s (sm_%d%d), %.1f GiB, weights %.2f GiB%s",
             fp8 ? "cuda-fp8" : "cuda", prop.name, prop.major, prop.minor,
             prop.totalGlobalMem / 1073741824.0, c->w->bytes / 1073741824.0,
             fp8 ? " (linear layers e4m3, per-tensor scales)" : "");
    *out = c;
    return 0;
fail:
    cuda_ctx_free(c);
    return rc;
}

static int cuda_ctx_new(const mr_model *m, int max_tokens, int max_rows, int max_len,
                        void **out, mr_err *err) {
    return ctx_new(m, max_tokens, max_rows, max_len, 0, out, err);
}

static int cuda_fp8_ctx_new(const mr_model *m, int max_tokens, int max_rows, int max_len,
                            void **out, mr_err *err) {
    return ctx_new(m, max_tokens, max_rows, max_len, 1, out, err);
}

static const char *cuda_describe(void *ctx) { return ((cctx *)ctx)->desc; }
static long long cuda_token_layers(void *ctx) { return ((cctx *)ctx)->token_layers; }

/* ---- GEMM: y (n, ldy) = beta * y + x (n, ldx) . W^T, W (out, in), y f32 ----
 * bf16 x and W, or (f8 given) e4m3 x and W with per-tensor scales on the device:
 * y = x_scale * w_scale * (x8 . W8^T), beta 0. FP8 needs Hopper's "TN" layout, which is ours. */
typedef struct f8_scales {
    const float *w, *x;
} f8_scales;

static int set_f8_scales(cublasLtMatmulDesc_t op, const f8_scales *f8, mr_err *err) {
    CKB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &f8->w,
                                       sizeof f8->w));
    CKB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &f8->x,
                                       sizeof f8->x));
    return 0;
}

static int align_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 1 && (a & (uintptr_t)(al - 1))) al >>= 1;
    return al;
}

static int gemm(cctx *c, int n, int in, int out, const void *x, int ldx, const void *w,
                float *y, int ldy, float beta, const f8_scales *f8, mr_err *err) {
    if (n <= 0 || out <= 0) return 0;
    int key[10] = {out, n, in, ldx, ldy, beta != 0.0f, align_of(w), align_of(x), align_of(y),
                   f8 ? 2 : 1};
    const cudaDataType_t ab = f8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    gemm_plan *g = NULL;
    for (int i = 0; i < N_PLANS && !g; i++)
        if (c->plans[i].used && !memcmp(c->plans[i].key, key, sizeof key)) g = &c->plans[i];
    if (!g) {
        g = &c->plans[c->next_plan];
        c->next_plan = (c->next_plan + 1) % N_PLANS;
        if (g->used) {
            cublasLtMatrixLayoutDestroy(g->a);
            cublasLtMatrixLayoutDestroy(g->b);
            cublasLtMatrixLayoutDestroy(g->c);
            if (g->cl != g->c) cublasLtMatrixLayoutDestroy(g->cl);
            cublasLtMatmulDescDestroy(g->op);
            g->used = 0;
        }
        memcpy(g->key, key, sizeof key);
        cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        CKB(cublasLtMatmulDescCreate(&g->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        CKB(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        CKB(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        /* column-major view: D (out, n) = W^T-view (out, in) x X^T-view (in, n) */
        CKB(cublasLtMatrixLayoutCreate(&g->a, ab, in, out, in));
        CKB(cublasLtMatrixLayoutCreate(&g->b, ab, in, n, ldx));
        CKB(cublasLtMatrixLayoutCreate(&g->c, CUDA_R_32F, out, n, ldy));
        g->cl = g->c;
        if (f8) RC(set_f8_scales(g->op, f8, err)); /* set per call too; valid for the heuristic */
        g->used = 1;
        g->ok = 0;
        cublasLtMatmulPreference_t pref;
        CKB(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t wsb = c->ws_size;
        uint32_t al_a = (uint32_t)key[6], al_b = (uint32_t)key[7], al_c = (uint32_t)key[8];
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &wsb, sizeof wsb);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                             &al_a, sizeof al_a);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                             &al_b, sizeof al_b);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                             &al_c, sizeof al_c);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                             &al_c, sizeof al_c);
        cublasLtMatmulHeuristicResult_t res;
        int nres = 0;
        if (cublasLtMatmulAlgoGetHeuristic(c->lt, g->op, g->a, g->b, g->cl, g->c, pref, 1, &res,
                                           &nres) == CUBLAS_STATUS_SUCCESS &&
            nres > 0) {
            g->algo = res.algo;
            g->ok = 1;
        } else if (f8 && cublasLtMatrixLayoutCreate(&g->cl, CUDA_R_16BF, out, n, ldy) ==
                             CUBLAS_STATUS_SUCCESS) {
            /* some cuBLASLt versions pair f32 D with a bf16 C only (beta is 0: C unread) */
            if (cublasLtMatmulAlgoGetHeuristic(c->lt, g->op, g->a, g->b, g->cl, g->c, pref, 1,
                                               &res, &nres) == CUBLAS_STATUS_SUCCESS &&
                nres > 0) {
                g->algo = res.algo;
                g->ok = 1;
            }
        } else {
            g->cl = g->c; /* a failed create leaves cl undefined */
        }
        cublasLtMatmulPreferenceDestroy(pref);
    }
    float one = 1.0f;
    if (f8) {
        if (!g->ok)
            return mr_err_set(err, MR_EUNSUPPORTED,
                              "cuda-fp8: cuBLASLt has no e4m3 kernel for %d x %d x %d", n, in,
                              out);
        RC(set_f8_scales(g->op, f8, err));
    }
    if (g->ok) {
        CKB(cublasLtMatmul(c->lt, g->op, &one, w, g->a, x, g->b, &beta, y, g->cl, y, g->c,
                           &g->algo, c->ws, c->ws_size, c->st));
    } else { /* shapes cuBLASLt has no kernel for (e.g. rank-2 LoRA products) */
        CKB(cublasGemmEx(c->cb, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, w, CUDA_R_16BF, in,
                         x, CUDA_R_16BF, ldx, &beta, y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}

/* y (n, ldy) = x W^T + b + sum over active unmerged adapters of x A^T B^T (into their columns) */
static int linear(cctx *c, const dlin *l, const bf16 *x, int n, float *y, int ldy,
                  uint32_t mask, mr_err *err) {
    if (n <= 0) return 0;
    if (l->w8) { /* activations to e4m3 with their own per-tensor scale */
        RC(to_e4m3(c->x8, x, (size_t)n * l->in, c->amax, c->x8_scale, c->st, err));
        f8_scales sc = {l->w8_scale, c->x8_scale};
        RC(gemm(c, n, l->in, l->out, c->x8, l->in, l->w8, y, ldy, 0.0f, &sc, err));
    } else {
        RC(gemm(c, n, l->in, l->out, x, l->in, l->w, y, ldy, 0.0f, NULL, err));
    }
    if (l->b) {
        k_add_bias<<<blocks((size_t)n * l->out, 256), 256, 0, c->st>>>(y, ldy, l->b, n, l->out);
    }
    for (int a = 0; a < l->n_lora; a++) {
        const dlora *lo = &l->lora[a];
        if (!(mask >> lo->adapter & 1)) continue;
        RC(gemm(c, n, l->in, lo->rank, x, l->in, lo->A, c->lo_f, lo->rank, 0.0f, NULL, err));
        size_t cnt = (size_t)n * lo->rank;
        k_to_bf16<<<blocks(cnt, 256), 256, 0, c->st>>>(c->lo_b, c->lo_f, cnt);
        RC(gemm(c, n, lo->rank, lo->out, c->lo_b, lo->rank, lo->B, y + lo->col, ldy, 1.0f,
                NULL, err));
    }
    return 0;
}

/* ---- layout staging ---- */

/* Own tokens of the rows packed after the prefixes (nq is 0: the query is the prefix). */
static void set_layout_host(cctx *c, int n_rows, int *n_tok) {
    int t = c->pre_tok;
    for (int r = 0; r < n_rows; r++) {
        c->len[r] = c->nq[r] + c->np[r] + c->ns[r];
        c->off[r] = t;
        t += c->len[r];
    }
    *n_tok = t;
}

/* Stages positions, attention tiles, rows and the last-token arrays of the current layout
 * (prefixes, then rows packed). The caller waited for the arena (ctx_sync_stage). */
static int upload_layout(cctx *c, int n_rows, int n_tok, mr_err *err) {
    int32_t *A = c->h_arena;
    int32_t *off = A + c->ar.off, *len = A + c->ar.len, *poff = A + c->ar.poff,
            *plen = A + c->ar.plen, *lsrc = A + c->ar.lsrc, *qpos = A + c->ar.qpos,
            *lt = A + c->ar.ltiles, *ltp = A + c->ar.ltpre;
    mr_prefix_positions(c->g_off, c->g_len, c->n_groups, c->off, c->len, c->pre_len, n_rows,
                        A + c->ar.pos);
    int nt = mr_prefix_tiles(c->g_off, c->g_len, c->n_groups, c->off, c->len, c->pre_off,
                             c->pre_len, n_rows, ATT_BQ, A + c->ar.tiles, A + c->ar.tpre);
    for (int r = 0; r < n_rows; r++) {
        int o = c->off[r], L = c->len[r], pl = c->pre_len[r];
        off[r] = o;
        len[r] = L;
        poff[r] = c->pre_off[r];
        plen[r] = pl;
        lsrc[r] = o + L - 1;
        qpos[r] = pl + L - 1;
        lt[4 * r] = o;
        lt[4 * r + 1] = pl + L - 1;
        lt[4 * r + 2] = 1;
        lt[4 * r + 3] = r;
        ltp[2 * r] = c->pre_off[r];
        ltp[2 * r + 1] = pl;
    }
    c->n_tiles = nt;
    RC(stage_copy(c, c->ar.pos, (size_t)n_tok, err));
    RC(stage_copy(c, c->ar.tiles, 4 * (size_t)nt, err));
    RC(stage_copy(c, c->ar.tpre, 2 * (size_t)nt, err));
    RC(stage_copy(c, c->ar.off, (size_t)n_rows, err));
    RC(stage_copy(c, c->ar.len, (size_t)n_rows, err));
    RC(stage_copy(c, c->ar.poff, (size_t)n_rows, err));
    RC(stage_copy(c, c->ar.plen, (size_t)n_rows, err));
    RC(stage_copy(c, c->ar.lsrc, (size_t)n_rows, err));
    RC(stage_copy(c, c->ar.qpos, (size_t)n_rows, err));
    RC(stage_copy(c, c->ar.ltiles, 4 * (size_t)n_rows, err));
    RC(stage_copy(c, c->ar.ltpre, 2 * (size_t)n_rows, err));
    CK(cudaEventRecord(c->staged, c->st));
    return 0;
}

/* Gathers x into x2 by the staged map (n_out tokens) and swaps the buffers. */
static int run_map(cctx *c, int n_out, const float *weights, mr_err *err) {
    int d = c->m->cfg.d_model;
    RC(stage_copy(c, c->ar.src, (size_t)n_out, err));
    RC(stage_copy(c, c->ar.cnt, (size_t)n_out, err));
    if (n_out > 0)
        k_pool<<<n_out, 256, 0, c->st>>>(c->x2, c->x, d, c->d_arena + c->ar.src,
                                         c->d_arena + c->ar.cnt, weights);
    float *t = c->x;
    c->x = c->x2;
    c->x2 = t;
    return 0;
}

/* Width compression (mr_pool on the device); the prefixes are copied as they are. */
static int compress(cctx *c, int n_rows, int *n_tok, int ratio, int attention, mr_err *err) {
    RC(ctx_sync_stage(c, err));
    int32_t *src = c->h_arena + c->ar.src, *cnt = c->h_arena + c->ar.cnt;
    int out = 0;
    for (; out < c->pre_tok; out++) src[out] = out, cnt[out] = 1;
    for (int r = 0; r < n_rows; r++) {
        int s = c->off[r], q = c->nq[r], p = c->np[r], groups = (p + ratio - 1) / ratio;
        for (int i = 0; i < q; i++, out++) src[out] = s + i, cnt[out] = 1;
        for (int g = 0; g < groups; g++, out++) {
            int t0 = s + q + g * ratio, t1 = t0 + ratio < s + q + p ? t0 + ratio : s + q + p;
            src[out] = t0;
            cnt[out] = t1 - t0;
        }
        for (int i = 0; i < c->ns[r]; i++, out++) src[out] = s + q + p + i, cnt[out] = 1;
        c->np[r] = groups;
    }
    RC(run_map(c, out, attention ? c->probs : NULL, err));
    set_layout_host(c, n_rows, n_tok);
    return upload_layout(c, n_rows, *n_tok, err);
}


/* Keeps the rows passing p (scores of exit e are on the host in h_score) and the prefixes
 * they use (forward.c's prune_rows); packs them. */
static int prune(cctx *c, int e, int n_rows, int *n_tok, const mr_prune *p,
                 const int32_t *group, mr_err *err) {
    const float *sc = c->h_score + (size_t)e * c->R;
    mr_prune_select(sc, c->row_id, group, n_rows, p, c->keep, c->order);
    RC(ctx_sync_stage(c, err));
    int32_t *src = c->h_arena + c->ar.src, *cnt = c->h_arena + c->ar.cnt, *old = c->grp;
    c->n_groups = mr_prefix_prune(c->g_off, c->g_len, c->n_groups, c->pre_off, n_rows, c->keep,
                                  old, &c->pre_tok);
    int nr = 0, out = 0;
    for (int g = 0; g < c->n_groups; g++)
        for (int i = 0; i < c->g_len[g]; i++, out++) src[out] = old[g] + i, cnt[out] = 1;
    for (int r = 0; r < n_rows; r++) {
        if (!c->keep[r]) continue;
        for (int i = 0; i < c->len[r]; i++, out++) src[out] = c->off[r] + i, cnt[out] = 1;
        c->nq[nr] = c->nq[r];
        c->np[nr] = c->np[r];
        c->ns[nr] = c->ns[r];
        c->row_id[nr] = c->row_id[r];
        c->pre_off[nr] = c->pre_off[r];
        c->pre_len[nr] = c->pre_len[r];
        nr++;
    }
    RC(run_map(c, out, NULL, err));
    /* pooling weights of a compression right after this exit move with their tokens (as in
     * forward.c's prune_rows) */
    if (out > 0)
        k_pool<<<out, 32, 0, c->st>>>(c->probs_tmp, c->probs, 1, c->d_arena + c->ar.src,
                                      c->d_arena + c->ar.cnt, NULL);
    float *pt = c->probs;
    c->probs = c->probs_tmp;
    c->probs_tmp = pt;
    set_layout_host(c, nr, n_tok);
    RC(upload_layout(c, nr, *n_tok, err));
    return nr;
}

/* ---- the pass ---- */

static int launch_attention(cctx *c, const float *q, const int32_t *tiles,
                            const int32_t *pre, int n_tiles, int window, mr_err *err) {
    const mr_config *k = &c->m->cfg;
    int hd = k->head_dim, kvd = k->n_kv_heads * hd;
    att_args a;
    a.q = q;
    a.q_ld = k->n_heads * hd;
    a.k = c->kv;
    a.v = c->kv + kvd;
    a.kv_ld = 2 * kvd;
    a.out = c->att;
    a.out_ld = k->n_heads * hd;
    a.tiles = (const int4 *)tiles;
    a.pre = (const int2 *)pre;
    a.n_heads = k->n_heads;
    a.n_kv = k->n_kv_heads;
    a.hd = hd;
    a.scale = 1.0f / sqrtf(k->query_pre_attn_scalar > 0 ? k->query_pre_attn_scalar
                                                        : (float)k->head_dim);
    a.softcap = k->attn_softcap;
    a.window = window;
    if (n_tiles <= 0) return 0;
    dim3 grid((unsigned)n_tiles, (unsigned)k->n_heads);
    int th = ATT_NW * 32;
    const att_kernel *ak = ATT_KERNELS;
    while (ak->hd < hd) ak++; /* the last covers every head dim the loader accepts */
    ak->fn<<<grid, th, att_smem_bytes(ak->hd, ak->bk), c->st>>>(a);
    CK(cudaGetLastError());
    return 0;
}

/* Decoder layer l over n_tok tokens (see forward.c's layer_forward). */
static int layer(cctx *c, int l, int n_tok, int n_rows, int last, int want_probs,
                 uint32_t mask, mr_err *err) {
    const mr_model *m = c->m;
    const mr_config *k = &m->cfg;
    const dlayer *L = &c->w->L[l];
    int d = k->d_model, hd = k->head_dim, n = last ? n_rows : n_tok;
    int qd = k->n_heads * hd, kvd = k->n_kv_heads * hd, dff = k->d_ff;
    int window = k->sliding_window > 0 && (k->arch != MR_ARCH_GEMMA2 || l % 2 == 0)
                     ? k->sliding_window : 0;
    float eps = k->rms_eps, wo = m->norm_offset;
    const int32_t *D = c->d_arena;

    k_resid_norm<<<n_tok, 256, 0, c->st>>>(c->x, NULL, NULL, L->attn_norm, c->xn, d, eps, wo);
    RC(linear(c, &L->kv, c->xn, n_tok, c->kv, 2 * kvd, mask, err));
    k_rope<<<blocks((size_t)n_tok * k->n_kv_heads * (hd / 2), 256), 256, 0, c->st>>>(
        c->kv, 2 * kvd, D + c->ar.pos, n_tok, k->n_kv_heads, hd, c->rope);
    const bf16 *qin = c->xn;
    if (last) { /* the rows' last tokens move to rows 0..n_rows-1 */
        k_gather_bf16<<<n_rows, 256, 0, c->st>>>(c->xn_last, c->xn, d, D + c->ar.lsrc);
        k_pool<<<n_rows, 256, 0, c->st>>>(c->x2, c->x, d, D + c->ar.lsrc, NULL, NULL);
        qin = c->xn_last; /* x and x2 swap after the attention */
    }
    RC(linear(c, &L->q, qin, n, c->q, qd, mask, err));
    k_rope<<<blocks((size_t)n * k->n_heads * (hd / 2), 256), 256, 0, c->st>>>(
        c->q, qd, last ? D + c->ar.qpos : D + c->ar.pos, n, k->n_heads, hd, c->rope);
    RC(launch_attention(c, c->q, last ? D + c->ar.ltiles : D + c->ar.tiles,
                        last ? D + c->ar.ltpre : D + c->ar.tpre, last ? n_rows : c->n_tiles,
                        window, err));
    if (want_probs) {
        float scale = 1.0f / sqrtf(k->query_pre_attn_scalar > 0 ? k->query_pre_attn_scalar
                                                                : (float)k->head_dim);
        k_last_probs<<<n_rows, 256, 0, c->st>>>(c->q, qd, c->kv, 2 * kvd, D + c->ar.off,
                                                D + c->ar.len, D + c->ar.poff, D + c->ar.plen,
                                                k->n_heads, k->n_kv_heads, hd, scale,
                                                k->attn_softcap, window, c->probs_tmp,
                                                c->probs);
    }
    if (last) {
        float *t = c->x;
        c->x = c->x2;
        c->x2 = t;
    }
    RC(linear(c, &L->o, c->att, n, c->y, d, mask, err));
    k_resid_norm<<<n, 256, 0, c->st>>>(c->x, c->y, L->post_attn_norm, L->ffn_norm, c->xn, d,
                                       eps, wo);
    for (int t0 = 0; t0 < n; t0 += c->ff_chunk) {
        int cn = n - t0 < c->ff_chunk ? n - t0 : c->ff_chunk;
        RC(linear(c, &L->gu, c->xn + (size_t)t0 * d, cn, c->ff, 2 * dff, mask, err));
        k_glu<<<blocks((size_t)cn * dff, 256), 256, 0, c->st>>>(
            c->act, c->ff, cn, dff, k->act == MR_ACT_GELU_TANH);
        RC(linear(c, &L->down, c->act, cn, c->y + (size_t)t0 * d, d, mask, err));
    }
    k_resid_norm<<<n, 256, 0, c->st>>>(c->x, c->y, L->post_ffn_norm, NULL, NULL, d, eps, wo);
    CK(cudaGetLastError());
    return 0;
}

/* Scores exit e for the n_rows rows into d_score[e] (device) and remembers their ids. */
static int score_exit(cctx *c, int e, int n_rows, int last_mode, const mr_run_opts *o,
                      mr_err *err) {
    const mr_model *m = c->m;
    const mr_config *k = &m->cfg;
    int d = k->d_model, h = o->head_by_position ? e : mr_model_head_of(m, o->exits[e]);
    exit_heads eh;
    memset(&eh, 0, sizeof eh);
    eh.head = c->w->heads + (size_t)h * d;
    for (int a = 0; a < m->n_adapters; a++)
        if (o->adapter_mask >> a & 1 && c->w->head_delta[a])
            eh.delta[eh.n_delta++] = c->w->head_delta[a] + (size_t)h * d;
    k_exit<<<n_rows, 256, 0, c->st>>>(c->x, d, c->d_arena + c->ar.off, c->d_arena + c->ar.len,
                                      last_mode, c->w->final_norm, k->rms_eps, m->norm_offset,
                                      eh, k->final_softcap, c->d_score + (size_t)e * c->R);
    CK(cudaGetLastError());
    CK(cudaMemcpyAsync(c->h_score + (size_t)e * c->R, c->d_score + (size_t)e * c->R,
                       (size_t)n_rows * 4, cudaMemcpyDeviceToHost, c->st));
    memcpy(c->ex_rows + (size_t)e * c->R, c->row_id, (size_t)n_rows * 4);
    c->ex_n[e] = n_rows;
    return 0;
}


static int pass(cctx *c, const mr_row *rows, int n_rows, const mr_run_opts *o, mr_err *err) {
    const mr_model *m = c->m;
    int d = m->cfg.d_model, n_tok = 0;
    RC(ctx_sync_stage(c, err));
    int32_t *ids = c->h_arena + c->ar.ids;
    /* the stream (prefix.h): each distinct query segment once, then the rows' own tokens;
     * row_id holds the groups' first rows until it is set below */
    c->n_groups = mr_prefix_group(rows, n_rows, !o->no_prefix_share, c->grp, c->row_id);
    for (int g = 0; g < c->n_groups; g++) {
        const mr_row *w = &rows[c->row_id[g]];
        c->g_off[g] = n_tok;
        c->g_len[g] = w->nq;
        memcpy(ids + n_tok, w->q, (size_t)w->nq * 4);
        n_tok += w->nq;
    }
    c->pre_tok = n_tok;
    for (int r = 0; r < n_rows; r++) {
        const mr_row *w = &rows[r];
        c->nq[r] = 0;
        c->np[r] = w->np;
        c->ns[r] = w->ns;
        c->pre_off[r] = c->g_off[c->grp[r]];
        c->pre_len[r] = c->g_len[c->grp[r]];
        memcpy(ids + n_tok, w->p, (size_t)w->np * 4);
        memcpy(ids + n_tok + w->np, w->s, (size_t)w->ns * 4);
        n_tok += w->np + w->ns;
    }
    for (int r = 0; r < n_rows; r++) c->row_id[r] = r;
    set_layout_host(c, n_rows, &n_tok);
    RC(stage_copy(c, c->ar.ids, (size_t)n_tok, err));
    if (c->w->embed_f32)
        k_embed<float><<<n_tok, 256, 0, c->st>>>(c->x, (const float *)c->w->embed,
                                                 c->d_arena + c->ar.ids, d, m->embed_scale);
    else
        k_embed<bf16><<<n_tok, 256, 0, c->st>>>(c->x, (const bf16 *)c->w->embed,
                                                c->d_arena + c->ar.ids, d, m->embed_scale);
    RC(upload_layout(c, n_rows, n_tok, err));
    int deepest = o->exits[o->n_exits - 1], ci = 0, e = 0, pi = 0, last_mode = 0;
    c->token_layers = 0;
    for (int l = 0; l < deepest && n_rows > 0; l++) {
        if (l > 0 && o->stop && o->stop(o->stop_user, l)) break; /* as in forward.c */
        if (ci < o->n_compress && o->compress_layers[ci] == l) {
            if (o->ratio > 1)
                RC(compress(c, n_rows, &n_tok, o->ratio, o->pooling == MR_POOL_ATTENTION, err));
            ci++;
        }
        int want_probs = o->pooling == MR_POOL_ATTENTION && o->ratio > 1 &&
                         ci < o->n_compress && o->compress_layers[ci] == l + 1 &&
                         l + 1 < deepest;
        int last = l == deepest - 1;
        RC(layer(c, l, n_tok, n_rows, last, want_probs, o->adapter_mask, err));
        c->token_layers += n_tok;
        if (last) {
            n_tok = n_rows;
            last_mode = 1;
        }
        if (e < o->n_exits && o->exits[e] == l + 1) {
            RC(score_exit(c, e, n_rows, last_mode, o, err));
            /* a pruning step at the deepest exit changes nothing observable: skipped */
            if (pi < o->n_prune && o->prune[pi].layer == l + 1 && !last) {
                CK(cudaStreamSynchronize(c->st));
                int nr = prune(c, e, n_rows, &n_tok, &o->prune[pi++], o->prune_group, err);
                if (nr < 0) return nr;
                n_rows = nr;
            }
            e++;
        }
    }
    CK(cudaStreamSynchronize(c->st));
    return e; /* exits scored */
}

static int cuda_score(void *ctx, const mr_row *rows, int n_rows, const mr_run_opts *o,
                      float *scores, int *depth, mr_err *err) {
    cctx *c = (cctx *)ctx;
    int rc;
    if ((rc = mr_run_opts_check(o, c->m, err)) || (rc = mr_rows_check(c->m, rows, n_rows, c->R, c->L, c->T, err)))
        return rc;
    for (size_t i = 0; i < (size_t)n_rows * o->n_exits; i++) scores[i] = NAN;
    for (int r = 0; depth && r < n_rows; r++) depth[r] = 0;
    if (n_rows == 0) return 0;
    CK(cudaSetDevice(c->dev));
    int n_exit = pass(c, rows, n_rows, o, err);
    if (n_exit < 0) {
        cudaStreamSynchronize(c->st);
        return n_exit;
    }
    for (int e = 0; e < n_exit; e++) {
        const float *sc = c->h_score + (size_t)e * c->R;
        const int32_t *ids = c->ex_rows + (size_t)e * c->R;
        for (int r = 0; r < c->ex_n[e]; r++) {
            float s = sc[r];
            scores[(size_t)ids[r] * o->n_exits + e] = o->sigmoid ? 1.0f / (1.0f + expf(-s)) : s;
            if (depth) depth[ids[r]] = o->exits[e];
        }
    }
    return 0;
}

static const mr_backend cuda_bf16 = {
    "cuda",            /* name */
    cuda_available,    /* available: a device is present */
    cuda_ctx_new,      /* ctx_new */
    cuda_ctx_free,     /* ctx_free */
    cuda_score,        /* score */
    cuda_describe,     /* describe */
    cuda_token_layers, /* token_layers */
};

/* The same engine with e4m3 linear layers: weights and GEMM inputs scaled per tensor (the
 * inputs' scale measured on the device per call), f32 accumulation and output. */
static const mr_backend cuda_fp8 = {
    "cuda-fp8",        /* name */
    cuda_available,    /* available: a device is present */
    cuda_fp8_ctx_new,  /* ctx_new */
    cuda_ctx_free,     /* ctx_free */
    cuda_score,        /* score */
    cuda_describe,     /* describe */
    cuda_token_layers, /* token_layers */
};

/* The module's one export (module.h), found by common/cuda_module.c with dlsym. */
extern "C" __attribute__((visibility("default"))) const mr_cuda_module mr_cuda_module_record = {
    MR_CUDA_MODULE_ABI,   /* abi */
    MR_CUDA_MODULE_SIZES, /* sizes */
    &cuda_bf16,           /* bf16 */
    &cuda_fp8,            /* fp8 */
};
