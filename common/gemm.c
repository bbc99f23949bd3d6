/* gemm.c: the linear layers' GEMM paths (gemm.h): OpenBLAS sgemm, oneDNN sgemm, and oneDNN's
 * bf16 and int8 matmuls.
 *
 * The bf16 and int8 paths make, per weight shape, one matmul primitive whose row count is a
 * run-time dimension (oneDNN picks the kernel and ISA once), and memory objects for row blocks
 * of every power of two up to max_m: a call of n rows runs as the blocks of n's binary
 * expansion, each pointing the block's objects at the caller's buffers (set_data_handle), so a
 * call creates nothing. Activations are converted into the context's buffer first: rounded to
 * bf16 (nearest even), or quantized to s8 with one scale per row. bf16 accumulates in f32;
 * int8 in s32, written as f32 and then multiplied by the row's and the output channel's scales
 * here (the primitive has no scales: oneDNN 2.6 leaves its VNNI kernels for a slower one when
 * scales are given at run time, docs/perf.md). The weights are read in the engine's (out, in)
 * layout through strides; no reorder.
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

#include <float.h>
#include <math.h>
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
    case MR_GEMM_ONEDNN_INT8: return "onednn-int8";
    default: return "openblas-f32";
    }
}

mr_dtype mr_gemm_weight_dtype(mr_gemm_path p) {
    return p == MR_GEMM_ONEDNN_BF16 ? MR_DT_BF16 : MR_DT_F32;
}

/* One row: returns its scale; Inf or NaN anywhere gives NaN and a row of zeros (a float to int
 * conversion of either is undefined). Both loops vectorise (omp simd). */
static float quantize_row(int8_t *q, const float *x, int in) {
    float mx = 0, poison = 0;
#pragma omp simd reduction(max : mx) reduction(+ : poison)
    for (int k = 0; k < in; k++) {
        float a = fabsf(x[k]);
        mx = a > mx ? a : mx;  /* not fmaxf: its NaN rule keeps GCC from vectorising */
        poison += x[k] * 0.0f; /* NaN when x[k] is Inf or NaN, else 0 */
    }
    if (poison != 0.0f || !(mx <= FLT_MAX)) {
        memset(q, 0, (size_t)in);
        return NAN;
    }
    float inv = mx > 0 ? 127.0f / mx : 0.0f;
#pragma omp simd
    for (int k = 0; k < in; k++) {
        float v = x[k] * inv; /* |v| <= 127 (+ rounding), so the sum stays below 127.5 */
        q[k] = (int8_t)(int)(v + copysignf(0.5f, v));
    }
    return mx / 127.0f;
}

void mr_gemm_quantize_rows(int8_t *q, float *scale, const float *x, int n, int in) {
#pragma omp parallel for schedule(static) if ((size_t)n * in > (1u << 16))
    for (int i = 0; i < n; i++)
        scale[i] = quantize_row(q + (size_t)i * in, x + (size_t)i * in, in);
}

void mr_gemm_q8_free(mr_gemm_q8 *w) {
    free(w->q);
    free(w->scale);
    memset(w, 0, sizeof *w);
}

int mr_gemm_q8_new(mr_gemm_q8 *w, const mr_tensor *t, mr_err *err) {
    memset(w, 0, sizeof *w);
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > INT32_MAX ||
        t->shape[1] > INT32_MAX)
        return mr_err_set(err, MR_EINVAL, "int8 weights: %s is not a 2-D matrix", t->name);
    int out = (int)t->shape[0], in = (int)t->shape[1];
    w->out = out;
    w->in = in;
    /* blocks of rows widened to f32, then quantized as activations are (in parallel) */
    int block = in >= (1 << 18) ? 1 : (1 << 18) / in;
    float *buf = malloc(sizeof(float) * (size_t)block * in);
    if (!buf || !(w->q = malloc((size_t)out * in)) || !(w->scale = malloc(sizeof(float) * out))) {
        free(buf);
        mr_gemm_q8_free(w);
        return mr_err_set(err, MR_ENOMEM, "out of memory for the int8 copy of %s", t->name);
    }
    size_t es = mr_dtype_size(t->dtype);
    for (int o = 0; o < out; o += block) {
        int nb = out - o < block ? out - o : block;
        mr_to_f32(buf, (const char *)t->data + (size_t)o * in * es, t->dtype, (size_t)nb * in);
        mr_gemm_quantize_rows(w->q + (size_t)o * in, w->scale + o, buf, nb, in);
    }
    free(buf);
    return 0;
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
    } else if (!strcmp(mode, "int8")) {
        if (!dnnl)
            return mr_err_set(err, MR_EUNSUPPORTED,
                              "gemm int8 needs oneDNN (this build has MR_ONEDNN off)");
        *out = MR_GEMM_ONEDNN_INT8;
    } else if (!strcmp(mode, "auto")) {
        /* the fastest path measured (docs/perf.md) that keeps the checkpoint's precision */
        *out = dnnl && all_bf16 && cpu_has_bf16() ? MR_GEMM_ONEDNN_BF16
               : dnnl                              ? MR_GEMM_ONEDNN_F32
                                                   : MR_GEMM_OPENBLAS_F32;
    } else {
        return mr_err_set(err, MR_EINVAL, "gemm mode '%s': use auto, f32, bf16, int8 or openblas",
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
    void *xc;           /* (max_m, largest in) activations as bf16 or s8 */
    float *xs;          /* (max_m) int8 path: each row's scale */
    const float *conv_x; /* the x that xc holds (mr_gemm_wt_again), NULL: none */
    int conv_n, conv_in;
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
    free(g->xc);
    free(g->xs);
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
    dnnl_data_type_t dt = g->path == MR_GEMM_ONEDNN_INT8 ? dnnl_s8 : dnnl_bf16;
    /* src (M, in), weights (in, out) = W^T read with strides (1, in), dst (M, out) f32 */
    if (md2(&a, DNNL_RUNTIME_DIM_VAL, sh->in, dt, sh->in, 1) ||
        md2(&w, sh->in, sh->out, dt, 1, sh->in) ||
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
        if (md2(&a, rows, sh->in, dt, sh->in, 1) ||
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
    if (p == MR_GEMM_ONEDNN_BF16 || p == MR_GEMM_ONEDNN_INT8) {
        int int8 = p == MR_GEMM_ONEDNN_INT8;
        while (g->n_blocks < MAX_BLOCKS && ((int64_t)1 << g->n_blocks) <= max_m) g->n_blocks++;
        size_t max_in = 1;
        for (int s = 0; s < n_shapes; s++)
            if ((size_t)shapes[s][1] > max_in) max_in = (size_t)shapes[s][1];
        if (!(g->xc = malloc((int8 ? 1 : 2) * max_in * (size_t)max_m)) ||
            (int8 && !(g->xs = malloc(sizeof(float) * (size_t)max_m)))) {
            mr_gemm_ctx_free(g);
            return mr_err_set(err, MR_ENOMEM, "out of memory for %s activations",
                              int8 ? "int8" : "bf16");
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
                                  "oneDNN: no %s matmul for a (%d, %d) weight",
                                  int8 ? "int8" : "bf16", shapes[s][0], shapes[s][1]);
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
/* Converts x (n, in) into g->xc: bf16, or s8 with row scales in g->xs. */
static void convert(mr_gemm_ctx *g, const float *x, int n, int in) {
    if (g->path == MR_GEMM_ONEDNN_INT8) {
        mr_gemm_quantize_rows(g->xc, g->xs, x, n, in);
        return;
    }
    size_t total = (size_t)n * in, chunk = 1 << 16, n_chunks = (total + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (size_t i = 0; i < n_chunks; i++) {
        size_t a = i * chunk, len = total - a < chunk ? total - a : chunk;
        mr_from_f32((uint16_t *)g->xc + a, x + a, MR_DT_BF16, len);
    }
}

/* The bf16 and int8 paths; again: xc may already hold x (mr_gemm_wt_again). */
static int lowp_wt(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in,
                   int out, int again) {
    gemm_shape *sh = NULL;
    for (int s = 0; s < g->n_shapes && !sh; s++)
        if (g->shapes[s].out == out && g->shapes[s].in == in) sh = &g->shapes[s];
    if (!sh) return MR_EINVAL;
    int int8 = g->path == MR_GEMM_ONEDNN_INT8;
    const mr_gemm_q8 *q8 = w;
    if (int8 && (q8->out != out || q8->in != in)) return MR_EINVAL;
    if (!(again && g->conv_x == x && g->conv_in == in && n <= g->conv_n)) {
        g->conv_x = NULL;
        convert(g, x, n, in);
        g->conv_x = x;
        g->conv_n = n;
        g->conv_in = in;
    }
    size_t es = int8 ? 1 : 2;
    if (dnnl_memory_set_data_handle(sh->wei, int8 ? (void *)q8->q : (void *)w) != dnnl_success)
        return MR_EUNSUPPORTED;
    int row = 0;
    for (int b = g->n_blocks - 1; b >= 0; b--) {
        if (!(n >> b & 1)) continue;
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, sh->src[b]},
                                   {DNNL_ARG_WEIGHTS, sh->wei},
                                   {DNNL_ARG_DST, sh->dst[b]}};
        if (dnnl_memory_set_data_handle(sh->src[b], (char *)g->xc + (size_t)row * in * es) !=
                dnnl_success ||
            dnnl_memory_set_data_handle(sh->dst[b], y + (size_t)row * out) != dnnl_success ||
            dnnl_primitive_execute(sh->prim, g->stream, 3, args) != dnnl_success)
            return MR_EUNSUPPORTED;
        row += 1 << b;
    }
    if (dnnl_stream_wait(g->stream) != dnnl_success) return MR_EUNSUPPORTED;
    if (int8) { /* y = (q_x . q_w^T) * row scale * channel scale */
        const float *xs = g->xs, *ws = q8->scale;
#pragma omp parallel for schedule(static) if ((size_t)n * out > (1u << 16))
        for (int i = 0; i < n; i++) {
            float *yr = y + (size_t)i * out, s = xs[i];
#pragma omp simd
            for (int j = 0; j < out; j++) yr[j] *= s * ws[j];
        }
    }
    return 0;
}
#endif

static int gemm_wt(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in,
                   int out, int again) {
    if (n <= 0 || out <= 0) return 0;
    if (n > g->max_m) return MR_ERANGE;
    int rc = 0;
    switch (g->path) {
#ifdef MR_HAVE_ONEDNN
    case MR_GEMM_ONEDNN_INT8:
    case MR_GEMM_ONEDNN_BF16:
    case MR_GEMM_ONEDNN_F32: {
        team_saved ts = team_fit();
        if (g->path != MR_GEMM_ONEDNN_F32)
            rc = lowp_wt(g, y, x, w, n, in, out, again);
        else /* oneDNN's BLAS-like sgemm is row-major */
            rc = dnnl_sgemm('N', 'T', n, out, in, 1.0f, x, in, w, in, 0.0f, y, out) ==
                         dnnl_success
                     ? 0
                     : MR_EUNSUPPORTED;
        team_unfit(ts);
        break;
    }
#endif
    default: (void)again; mr_matmul_wt(y, x, w, n, in, out, 0.0f);
    }
    return rc;
}

int mr_gemm_wt(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in, int out) {
    return gemm_wt(g, y, x, w, n, in, out, 0);
}

int mr_gemm_wt_again(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in,
                     int out) {
    return gemm_wt(g, y, x, w, n, in, out, 1);
}
