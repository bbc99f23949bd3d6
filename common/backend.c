/* backend.c: the backend registry, the mr_backend_* wrappers and the CPU backend (a thin
 * wrapper over mr_ctx_init / mr_model_score in forward.c). Not a device layer: the GPU backend
 * lives in common/cuda/ (a module that cuda_module.c loads on first use), and this is the only
 * engine file that knows whether it was built (MR_HAVE_CUDA is defined for this file alone by
 * CMakeLists.txt). */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

/* ---- cpu ---- */

static int cpu_ctx_new(const mr_model *m, int max_tokens, int max_rows, int max_len, void **ctx,
                       mr_err *err) {
    mr_ctx *c = malloc(sizeof *c);
    *ctx = NULL;
    if (!c) return mr_err_set(err, MR_ENOMEM, "out of memory for a cpu context");
    int rc = mr_ctx_init(c, m, max_tokens, max_rows, max_len, err);
    if (rc) {
        free(c);
        return rc;
    }
    *ctx = c;
    return 0;
}

static void cpu_ctx_free(void *ctx) {
    if (!ctx) return;
    mr_ctx_close(ctx);
    free(ctx);
}

static int cpu_score(void *ctx, const mr_row *rows, int n_rows, const mr_run_opts *o,
                     float *scores, int *depth, mr_err *err) {
    return mr_model_score(ctx, rows, n_rows, o, scores, depth, err);
}

static long long cpu_token_layers(void *ctx) { return ((const mr_ctx *)ctx)->token_layers; }

const mr_backend mr_backend_cpu = {
    .name = "cpu",
    .available = NULL,          /* always */
    .ctx_new = cpu_ctx_new,
    .ctx_free = cpu_ctx_free,
    .score = cpu_score,
    .describe = NULL,           /* "cpu" */
    .token_layers = cpu_token_layers,
};

/* ---- registry ---- */

static const mr_backend *const g_backends[] = {
    &mr_backend_cpu,
#ifdef MR_HAVE_CUDA
    &mr_backend_cuda,
    &mr_backend_cuda_fp8,
#endif
};

const mr_backend *mr_backend_get(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof g_backends / sizeof *g_backends; i++)
        if (!strcmp(g_backends[i]->name, name)) return g_backends[i];
    return NULL;
}

const char *mr_backend_names(void) {
#ifdef MR_HAVE_CUDA
    return "cpu,cuda,cuda-fp8";
#else
    return "cpu";
#endif
}

int mr_backend_available(const mr_backend *b, mr_err *err) {
    if (!b) return mr_err_set(err, MR_EINVAL, "no backend");
    return b->available ? b->available(err) : 0;
}

int mr_backend_ctx_new(const mr_backend *b, const mr_model *m, int max_tokens, int max_rows,
                       int max_len, void **ctx, mr_err *err) {
    *ctx = NULL;
    if (!b) return mr_err_set(err, MR_EINVAL, "no backend");
    return b->ctx_new(m, max_tokens, max_rows, max_len, ctx, err);
}

void mr_backend_ctx_free(const mr_backend *b, void *ctx) {
    if (b && ctx) b->ctx_free(ctx);
}

int mr_backend_score(const mr_backend *b, void *ctx, const mr_row *rows, int n_rows,
                     const mr_run_opts *o, float *scores, int *depth, mr_err *err) {
    if (!b || !ctx) return mr_err_set(err, MR_ESTATE, "backend context not initialised");
    return b->score(ctx, rows, n_rows, o, scores, depth, err);
}

const char *mr_backend_describe(const mr_backend *b, void *ctx) {
    if (!b) return "none";
    return b->describe && ctx ? b->describe(ctx) : b->name;
}

long long mr_backend_token_layers(const mr_backend *b, void *ctx) {
    return b && ctx && b->token_layers ? b->token_layers(ctx) : -1;
}
