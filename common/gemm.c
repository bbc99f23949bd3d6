/* gemm.c: the linear layers' GEMM paths (gemm.h): OpenBLAS sgemm, oneDNN sgemm, and oneDNN's
 * bf16 matmul.
 *
 * The bf16 path makes, per weight shape, one matmul primitive whose row count is a run-time
 * dimension (oneDNN picks the kernel and ISA once), and memory objects for row blocks of every
 * power of two up to max_m: a call of n rows runs as the blocks of n's binary expansion, each
 * pointing the block's objects at the caller's buffers (set_data_handle), so a call creates
 * nothing. Activations are rounded to bf16 (nearest even) into the context's buffer first;
 * accumulation and output are f32.
 *
 * oneDNN (OpenMP runtime) splits a product into omp_get_max_threads() parts and runs them in
 * one parallel region, part i on thread i, without checking the team it got: a team smaller
 * than omp_get_max_threads() (OMP_THREAD_LIMIT, OMP_DYNAMIC, max-active-levels, a call inside
 * a parallel region) leaves the other parts of y unwritten (half of it with 2 threads and
 * OMP_THREAD_LIMIT=1). Every oneDNN call here therefore runs with the calling thread's
 * nthreads-var set to the team a parallel region will really get (team_fit), and restored
 * after. */
#include "gemm.h"

#include "kernels.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef MR_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

const char *mr_gemm_path_name(mr_gemm_path p) {
    switch (p) {
    case MR_GEMM_ONEDNN_F32: return "onednn-f32";
    case MR_GEMM_ONEDNN_BF16: return "onednn-bf16";
    default: return "openblas-f32";
    }
}

mr_dtype mr_gemm_weight_dtype(mr_gemm_path p) {
    return p == MR_GEMM_ONEDNN_BF16 ? MR_DT_BF16 : MR_DT_F32;
}

static int cpu_has_bf16(void) {
#ifdef MR_HAVE_ONEDNN
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return ((unsigned)isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) ==
           (unsigned)dnnl_cpu_isa_avx512_core_bf16;
#else
    return 0;
#endif
}

int mr_gemm_resolve(const char *mode, int all_bf16, mr_gemm_path *out, mr_err *err) {
    if (!mode || !*mode) mode = getenv("MR_GEMM");
    if (!mode || !*mode) mode = "auto";
#ifdef MR_HAVE_ONEDNN
    int dnnl = 1;
#else
    int dnnl = 0;
#endif
    if (!strcmp(mode, "openblas")) {
        *out = MR_GEMM_OPENBLAS_F32;
    } else if (!strcmp(mode, "f32")) {
        *out = dnnl ? MR_GEMM_ONEDNN_F32 : MR_GEMM_OPENBLAS_F32;
    } else if (!strcmp(mode, "bf16")) {
        if (!dnnl)
            return mr_err_set(err, MR_EUNSUPPORTED,
                              "gemm bf16 needs oneDNN (this build has MR_ONEDNN off)");
        *out = MR_GEMM_ONEDNN_BF16;
    } else if (!strcmp(mode, "auto")) {
        /* the fastest path measured (docs/perf.md) that keeps the checkpoint's precision */
        *out = dnnl && all_bf16 && cpu_has_bf16() ? MR_GEMM_ONEDNN_BF16
               : dnnl                              ? MR_GEMM_ONEDNN_F32
                                                   : MR_GEMM_OPENBLAS_F32;
    } else {
        return mr_err_set(err, MR_EINVAL, "gemm mode '%s': use auto, f32, bf16 or openblas",
                          mode);
    }
    return 0;
}

#ifdef MR_HAVE_ONEDNN
/* The calling thread's OpenMP settings that team_fit changes, for team_unfit. */
typedef struct team_saved {
    int nthreads, dynamic;
} team_saved;

/* Makes omp_get_max_threads() in this thread equal the team the next parallel region gets:
 * dynamic adjustment off (it may shrink any region), then nthreads-var capped by the thread
 * limit, and 1 inside an active region or where max-active-levels allows none. */
static team_saved team_fit(void) {
    team_saved s = {omp_get_max_threads(), omp_get_dynamic()};
    int n = s.nthreads, limit = omp_get_thread_limit();
    if (s.dynamic) omp_set_dynamic(0);
    if (n > limit) n = limit;
    if (omp_in_parallel() || omp_get_active_level() >= omp_get_max_active_levels()) n = 1;
    if (n != s.nthreads) omp_set_num_threads(n);
    return s;
}

static void team_unfit(team_saved s) {
    if (omp_get_max_threads() != s.nthreads) omp_set_num_threads(s.nthreads);
    if (s.dynamic) omp_set_dynamic(1);
}

enum { MAX_BLOCKS = 31 }; /* row blocks 2^0 .. 2^30 */

typedef struct gemm_shape {
    int out, in;
    dnnl_primitive_t prim;
    dnnl_memory_t wei;
    dnnl_memory_t src[MAX_BLOCKS], dst[MAX_BLOCKS];
} gemm_shape;
#endif

struct mr_gemm_ctx {
    mr_gemm_path path;
    int max_m, n_shapes, n_blocks;
#ifdef MR_HAVE_ONEDNN
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    gemm_shape shapes[MR_GEMM_MAX_SHAPES];
    uint16_t *xb; /* (max_m, largest in) bf16 activations */
#endif
};

void mr_gemm_ctx_free(mr_gemm_ctx *g) {
    if (!g) return;
#ifdef MR_HAVE_ONEDNN
    for (int s = 0; s < g->n_shapes; s++) {
        gemm_shape *sh = &g->shapes[s];
        for (int b = 0; b < MAX_BLOCKS; b++) {
            if (sh->src[b]) dnnl_memory_destroy(sh->src[b]);
            if (sh->dst[b]) dnnl_memory_destroy(sh->dst[b]);
        }
        if (sh->wei) dnnl_memory_destroy(sh->wei);
        if (sh->prim) dnnl_primitive_destroy(sh->prim);
    }
    if (g->stream) dnnl_stream_destroy(g->stream);
    if (g->eng) dnnl_engine_destroy(g->eng);
    free(g->xb);
#endif
    free(g);
}

#ifdef MR_HAVE_ONEDNN
/* A (rows, cols) memory descriptor with element strides (rs, cs). */
static int md2(dnnl_memory_desc_t *md, dnnl_dim_t rows, dnnl_dim_t cols, dnnl_data_type_t dt,
               dnnl_dim_t rs, dnnl_dim_t cs) {
    dnnl_dims_t dims = {rows, cols}, strides = {rs, cs};
    return dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides) != dnnl_success;
}

static int shape_init(mr_gemm_ctx *g, gemm_shape *sh) {
    dnnl_memory_desc_t a, w, c;
    dnnl_matmul_desc_t mm;
    dnnl_primitive_desc_t pd = NULL;
    /* src (M, in) bf16, weights (in, out) = W^T read with strides (1, in), dst (M, out) f32 */
    if (md2(&a, DNNL_RUNTIME_DIM_VAL, sh->in, dnnl_bf16, sh->in, 1) ||
        md2(&w, sh->in, sh->out, dnnl_bf16, 1, sh->in) ||
        md2(&c, DNNL_RUNTIME_DIM_VAL, sh->out, dnnl_f32, sh->out, 1) ||
        dnnl_matmul_desc_init(&mm, &a, &w, NULL, &c) != dnnl_success ||
        dnnl_primitive_desc_create(&pd, &mm, NULL, g->eng, NULL) != dnnl_success)
        return -1;
    int bad = dnnl_primitive_create(&sh->prim, pd) != dnnl_success;
    dnnl_primitive_desc_destroy(pd);
    if (bad || dnnl_memory_create(&sh->wei, &w, g->eng, DNNL_MEMORY_NONE) != dnnl_success)
        return -1;
    for (int b = 0; b < g->n_blocks; b++) {
        dnnl_dim_t rows = (dnnl_dim_t)1 << b;
        if (md2(&a, rows, sh->in, dnnl_bf16, sh->in, 1) ||
            md2(&c, rows, sh->out, dnnl_f32, sh->out, 1) ||
            dnnl_memory_create(&sh->src[b], &a, g->eng, DNNL_MEMORY_NONE) != dnnl_success ||
            dnnl_memory_create(&sh->dst[b], &c, g->eng, DNNL_MEMORY_NONE) != dnnl_success)
            return -1;
    }
    return 0;
}
#endif

int mr_gemm_ctx_new(mr_gemm_ctx **gp, mr_gemm_path p, const int (*shapes)[2], int n_shapes,
                    int max_m, mr_err *err) {
    *gp = NULL;
    if (n_shapes < 0 || n_shapes > MR_GEMM_MAX_SHAPES || max_m < 1)
        return mr_err_set(err, MR_EINVAL, "gemm context: bad sizes (%d shapes, %d rows)",
                          n_shapes, max_m);
    mr_gemm_ctx *g = calloc(1, sizeof *g);
    if (!g) return mr_err_set(err, MR_ENOMEM, "out of memory for a gemm context");
    g->path = p;
    g->max_m = max_m;
#ifdef MR_HAVE_ONEDNN
    if (p == MR_GEMM_ONEDNN_BF16) {
        while (g->n_blocks < MAX_BLOCKS && ((int64_t)1 << g->n_blocks) <= max_m) g->n_blocks++;
        size_t max_in = 1;
        for (int s = 0; s < n_shapes; s++)
            if ((size_t)shapes[s][1] > max_in) max_in = (size_t)shapes[s][1];
        if (!(g->xb = malloc(2 * max_in * (size_t)max_m))) {
            mr_gemm_ctx_free(g);
            return mr_err_set(err, MR_ENOMEM, "out of memory for bf16 activations");
        }
        if (dnnl_engine_create(&g->eng, dnnl_cpu, 0) != dnnl_success ||
            dnnl_stream_create(&g->stream, g->eng, dnnl_stream_default_flags) != dnnl_success) {
            mr_gemm_ctx_free(g);
            return mr_err_set(err, MR_EUNSUPPORTED, "oneDNN: no CPU engine");
        }
        for (int s = 0; s < n_shapes; s++) {
            gemm_shape *sh = &g->shapes[g->n_shapes++];
            sh->out = shapes[s][0];
            sh->in = shapes[s][1];
            team_saved ts = team_fit(); /* a primitive may fix its thread split here */
            int bad = shape_init(g, sh);
            team_unfit(ts);
            if (bad) {
                mr_gemm_ctx_free(g);
                return mr_err_set(err, MR_EUNSUPPORTED,
                                  "oneDNN: no bf16 matmul for a (%d, %d) weight", shapes[s][0],
                                  shapes[s][1]);
            }
        }
    }
#else
    (void)shapes;
    if (p != MR_GEMM_OPENBLAS_F32) {
        mr_gemm_ctx_free(g);
        return mr_err_set(err, MR_EUNSUPPORTED, "gemm path %s is not built in",
                          mr_gemm_path_name(p));
    }
#endif
    *gp = g;
    return 0;
}

#ifdef MR_HAVE_ONEDNN
static int bf16_wt(mr_gemm_ctx *g, float *y, const float *x, const uint16_t *w, int n, int in,
                   int out) {
    gemm_shape *sh = NULL;
    for (int s = 0; s < g->n_shapes && !sh; s++)
        if (g->shapes[s].out == out && g->shapes[s].in == in) sh = &g->shapes[s];
    if (!sh) return MR_EINVAL;
    size_t total = (size_t)n * in, chunk = 1 << 16, n_chunks = (total + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (size_t i = 0; i < n_chunks; i++) {
        size_t a = i * chunk, len = total - a < chunk ? total - a : chunk;
        mr_from_f32(g->xb + a, x + a, MR_DT_BF16, len);
    }
    if (dnnl_memory_set_data_handle(sh->wei, (void *)w) != dnnl_success) return MR_EUNSUPPORTED;
    int row = 0;
    for (int b = g->n_blocks - 1; b >= 0; b--) {
        if (!(n >> b & 1)) continue;
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, sh->src[b]},
                                   {DNNL_ARG_WEIGHTS, sh->wei},
                                   {DNNL_ARG_DST, sh->dst[b]}};
        if (dnnl_memory_set_data_handle(sh->src[b], g->xb + (size_t)row * in) != dnnl_success ||
            dnnl_memory_set_data_handle(sh->dst[b], y + (size_t)row * out) != dnnl_success ||
            dnnl_primitive_execute(sh->prim, g->stream, 3, args) != dnnl_success)
            return MR_EUNSUPPORTED;
        row += 1 << b;
    }
    return dnnl_stream_wait(g->stream) == dnnl_success ? 0 : MR_EUNSUPPORTED;
}
#endif

int mr_gemm_wt(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in, int out) {
    if (n <= 0 || out <= 0) return 0;
    if (n > g->max_m) return MR_ERANGE;
    int rc = 0;
    switch (g->path) {
#ifdef MR_HAVE_ONEDNN
    case MR_GEMM_ONEDNN_BF16:
    case MR_GEMM_ONEDNN_F32: {
        team_saved ts = team_fit();
        if (g->path == MR_GEMM_ONEDNN_BF16)
            rc = bf16_wt(g, y, x, w, n, in, out);
        else /* oneDNN's BLAS-like sgemm is row-major */
            rc = dnnl_sgemm('N', 'T', n, out, in, 1.0f, x, in, w, in, 0.0f, y, out) ==
                         dnnl_success
                     ? 0
                     : MR_EUNSUPPORTED;
        team_unfit(ts);
        break;
    }
#endif
    default: mr_matmul_wt(y, x, w, n, in, out, 0.0f);
    }
    return rc;
}
