/* backend.h: scorer backends as a const ops table (the ggml idea: one static table per backend,
 * one commented slot per line, NULL where an optional slot is unsupported).
 *
 * A backend scores packed (query, passage) rows with exactly the semantics of mr_model_score
 * (model.h): the same options, the same score layout (n_rows, n_exits) with NAN for rows pruned
 * before an exit, the same depth output and the same validation errors. "cpu" wraps
 * mr_ctx_init / mr_model_score; "cuda" and "cuda-fp8" (the GPU backend in common/cuda/) run the
 * pass on one GPU and exist only in builds configured with CUDA (MR_HAVE_CUDA, known to
 * backend.c alone), where the backend is a module loaded on first use (common/cuda_module.c).
 * This header is the whole interface: nothing else of the engine knows a device.
 *
 * Contexts are per thread, like mr_ctx: sized once by ctx_new for max_tokens packed tokens,
 * max_rows rows and rows of at most max_len tokens; score allocates nothing. The model must
 * outlive every context made from it. Callers never branch on the device: they pick a table by
 * name and call through the mr_backend_* wrappers, which treat NULL optional slots as no-ops. */
#ifndef MR_BACKEND_H
#define MR_BACKEND_H

#include "model.h"
#include "mr_err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mr_backend {
    const char *name;                                   /* "cpu", "cuda", "cuda-fp8" */
    /* optional: 0 when the backend can run here (e.g. a CUDA device is present), else a
     * negative MR_E* with a message; NULL = always available */
    int (*available)(mr_err *err);
    /* required: a scoring context for m (see model.h for the sizes) */
    int (*ctx_new)(const mr_model *m, int max_tokens, int max_rows, int max_len, void **ctx,
                   mr_err *err);
    /* required: frees a context; accepts NULL */
    void (*ctx_free)(void *ctx);
    /* required: mr_model_score semantics; scores (n_rows, n_exits), depth (n_rows) optional */
    int (*score)(void *ctx, const mr_row *rows, int n_rows, const mr_run_opts *o, float *scores,
                 int *depth, mr_err *err);
    /* optional: one line describing the device of ctx (e.g. "NVIDIA H100 80GB HBM3, sm_90");
     * NULL = the backend name */
    const char *(*describe)(void *ctx);
    /* optional: tokens through each layer's K/V projections, summed over layers, in the last
     * score call on ctx (mr_ctx.token_layers: what prefix sharing and pruning cut); NULL =
     * not counted */
    long long (*token_layers)(void *ctx);
} mr_backend;

/* The table named name ("cpu", "cuda", "cuda-fp8"): a lookup, NULL when unknown or not built
 * in (callers report it, listing mr_backend_names()). */
const mr_backend *mr_backend_get(const char *name);
/* Comma-separated names of the backends built in ("cpu" or "cpu,cuda,cuda-fp8"). */
const char *mr_backend_names(void);

/* Wrappers: dispatch through b, NULL optional slots are no-ops. ctx_new/ctx_free are the
 * heap pair of a context (*ctx is NULL on error; ctx_free accepts NULL); a NULL b is MR_EINVAL,
 * a NULL ctx given to score MR_ESTATE. */
int mr_backend_available(const mr_backend *b, mr_err *err);
int mr_backend_ctx_new(const mr_backend *b, const mr_model *m, int max_tokens, int max_rows,
                       int max_len, void **ctx, mr_err *err);
void mr_backend_ctx_free(const mr_backend *b, void *ctx);
int mr_backend_score(const mr_backend *b, void *ctx, const mr_row *rows, int n_rows,
                     const mr_run_opts *o, float *scores, int *depth, mr_err *err);
const char *mr_backend_describe(const mr_backend *b, void *ctx);
/* The last score call's token-layers on ctx, or -1 when the backend does not count them. */
long long mr_backend_token_layers(const mr_backend *b, void *ctx);

/* The tables themselves. mr_backend_cuda and mr_backend_cuda_fp8 (common/cuda_module.c) load
 * the GPU module, libmrank_cuda.so, on first use; mr_backend_get returns them in CUDA builds
 * only. */
extern const mr_backend mr_backend_cpu;
extern const mr_backend mr_backend_cuda, mr_backend_cuda_fp8;

#ifdef __cplusplus
}
#endif

#endif
