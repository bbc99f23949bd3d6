/* cuda_module.c: the "cuda" and "cuda-fp8" tables of a CUDA build, standing in for the GPU
 * backend until a process first asks for it.
 *
 * The backend itself (common/cuda/) is a separate module, libmrank_cuda.so, linked to cuBLAS,
 * cuBLASLt and the CUDA runtime. Loading those costs a process about 0.4 s of CPU (cuBLASLt's
 * start-up), which every mrank process paid, GPU or not, while they were linked in. Here the
 * first call of a table's available or ctx_new slot loads the module, once per process
 * (pthread_once; it is never unloaded), checks its record (cuda/module.h) and from then on
 * forwards every slot to the module's own tables. A module that cannot be loaded makes
 * available and ctx_new fail with MR_EUNSUPPORTED and the path and dlerror() text, every time.
 *
 * Where the module is looked for: $MR_CUDA_MODULE when set (a path); else beside the executable
 * (/proc/self/exe's folder), where the build and an install put it; else the dynamic linker's
 * search path (LD_LIBRARY_PATH, ld.so.cache). The module calls engine functions that the
 * executable exports to it (cuda/exports.list); g_exports below names each one, so that linking
 * this file links their objects in. Compiled into every build; backend.c lists these tables only
 * when the build has the module (MR_HAVE_CUDA). */
#include "backend.h"
#include "cuda/module.h"
#include "kernels.h"
#include "prefix.h"
#include "safetensors.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODULE_FILE "libmrank_cuda.so"

/* cuda/exports.list, as addresses: keeps their objects in the link (see the top) */
const void *const mr_cuda_module_exports[] = {
    (const void *)mr_dtype_size,       (const void *)mr_err_set,
    (const void *)mr_from_f32,         (const void *)mr_model_head_of,
    (const void *)mr_prefix_group,     (const void *)mr_prefix_positions,
    (const void *)mr_prefix_prune,     (const void *)mr_prefix_tiles,
    (const void *)mr_prune_select,     (const void *)mr_rope_table,
    (const void *)mr_rows_check,       (const void *)mr_run_opts_check,
    (const void *)mr_to_f32,
};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const mr_backend *g_real[2]; /* the module's "cuda" and "cuda-fp8"; NULL until loaded */
static mr_err g_why;                /* why loading failed (read only after g_once) */

/* dlopen's the module into *where (the path tried, for messages); NULL with g_why set. */
static void *open_module(char *where, size_t n) {
    const char *env = getenv("MR_CUDA_MODULE");
    if (env && *env) {
        snprintf(where, n, "%s (MR_CUDA_MODULE)", env);
        return dlopen(env, RTLD_NOW | RTLD_LOCAL);
    }
    char exe[PATH_MAX];
    const char *dir = "(executable unknown)";
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = '\0';
        char *slash = strrchr(exe, '/'); /* also drops " (deleted)" after an in-place upgrade */
        if (slash) {
            *slash = '\0';
            dir = exe;
            snprintf(where, n, "%s/%s", exe, MODULE_FILE);
            if (access(where, F_OK) == 0) return dlopen(where, RTLD_NOW | RTLD_LOCAL);
        }
    }
    snprintf(where, n, "%s (not in %s; library search path)", MODULE_FILE, dir);
    return dlopen(MODULE_FILE, RTLD_NOW | RTLD_LOCAL);
}

static void load(void) {
    char where[PATH_MAX + 64];
    void *h = open_module(where, sizeof where);
    if (!h) {
        const char *e = dlerror();
        mr_err_set(&g_why, MR_EUNSUPPORTED, "cuda backend: cannot load %s: %s", where,
                   e ? e : "unknown error");
        return;
    }
    const mr_cuda_module *rec = dlsym(h, MR_CUDA_MODULE_SYMBOL);
    static const unsigned want[] = MR_CUDA_MODULE_SIZES;
    _Static_assert(sizeof want == sizeof rec->sizes, "MR_CUDA_MODULE_N_SIZES is out of date");
    if (!rec) {
        mr_err_set(&g_why, MR_EUNSUPPORTED, "cuda backend: %s has no %s: not an mrank module",
                   where, MR_CUDA_MODULE_SYMBOL);
    } else if (rec->abi != MR_CUDA_MODULE_ABI || memcmp(rec->sizes, want, sizeof want)) {
        mr_err_set(&g_why, MR_EUNSUPPORTED,
                   "cuda backend: %s was built for another mrank (module abi %d, this %d, or "
                   "structure sizes differ): install the module of this build",
                   where, rec->abi, MR_CUDA_MODULE_ABI);
    } else if (!rec->bf16 || !rec->fp8) {
        mr_err_set(&g_why, MR_EUNSUPPORTED, "cuda backend: %s: its record has no backend tables",
                   where);
    } else {
        g_real[0] = rec->bf16;
        g_real[1] = rec->fp8;
        return;
    }
    /* A refused module stays mapped: the refusal is final for the process, and unloading a
     * module that brought the CUDA runtime in is not safe. */
}

/* The module's table i (0 cuda, 1 cuda-fp8), loading it on first use; NULL with err set. */
static const mr_backend *real(int i, mr_err *err) {
    pthread_once(&g_once, load);
    if (!g_real[i]) {
        if (err) *err = g_why;
        return NULL;
    }
    return g_real[i];
}

/* One forwarding table VAR named NAME for the module's table I. available and ctx_new may come
 * first and load; the others get a context that ctx_new made, so the module is loaded by then. */
#define MR__CUDA_FORWARDERS(I, P, VAR, NAME)                                                   \
    static int P##available(mr_err *err) {                                                     \
        const mr_backend *b = real(I, err);                                                    \
        return b ? mr_backend_available(b, err) : g_why.code;                                  \
    }                                                                                          \
    static int P##ctx_new(const mr_model *m, int max_tokens, int max_rows, int max_len,        \
                          void **ctx, mr_err *err) {                                           \
        const mr_backend *b = real(I, err);                                                    \
        *ctx = NULL;                                                                           \
        return b ? b->ctx_new(m, max_tokens, max_rows, max_len, ctx, err) : g_why.code;        \
    }                                                                                          \
    static void P##ctx_free(void *ctx) { mr_backend_ctx_free(g_real[I], ctx); }                \
    static int P##score(void *ctx, const mr_row *rows, int n_rows, const mr_run_opts *o,       \
                        float *scores, int *depth, mr_err *err) {                              \
        return mr_backend_score(g_real[I], ctx, rows, n_rows, o, scores, depth, err);          \
    }                                                                                          \
    static const char *P##describe(void *ctx) { return mr_backend_describe(g_real[I], ctx); }  \
    static long long P##token_layers(void *ctx) {                                              \
        return mr_backend_token_layers(g_real[I], ctx);                                        \
    }                                                                                          \
    const mr_backend VAR = {                                                                   \
        .name = NAME,                                                                          \
        .available = P##available,                                                             \
        .ctx_new = P##ctx_new,                                                                 \
        .ctx_free = P##ctx_free,                                                               \
        .score = P##score,                                                                     \
        .describe = P##describe,                                                               \
        .token_layers = P##token_layers,                                                       \
    };

MR__CUDA_FORWARDERS(0, bf16_, mr_backend_cuda, "cuda")
MR__CUDA_FORWARDERS(1, fp8_, mr_backend_cuda_fp8, "cuda-fp8")
