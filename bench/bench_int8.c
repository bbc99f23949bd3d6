/* bench_int8.c: would an int8 weight path beat the bf16 one? (P10: "an int8 weight path
 * (per-channel scales, VNNI) only if it measures faster"). Times oneDNN matmul primitives on
 * the linear layers of one transformer layer, interleaved in the same run:
 *   f32   f32 x f32 -> f32 (the onednn-f32 path),
 *   bf16  the activations rounded to bf16, x bf16 weights -> f32 (the onednn-bf16 path,
 *         common/gemm.c: the conversion is part of its cost),
 *   int8  the activations quantized to s8 with one scale per row (absmax / 127), x s8 weights
 *         with one scale per output channel (oneDNN output scales, fixed at load) -> f32, then
 *         each output row times its activation scale: the VNNI kernels; the quantization and
 *         the row scaling are part of the cost.
 * Each path's output is compared with f32 (relative Frobenius error). Prints one line per
 * shape and a total; no allocation inside the timed loops.
 *
 *   bench_int8 [--rows M] [--hidden D] [--ff F] [--kv K] [--reps R]
 *
 * Defaults: the seeded Mistral shape of bench/llama_baseline.sh (hidden 1024, FFN 2816, KV
 * width 512) and 8 rows of 304 tokens. Threads: oneDNN's OpenMP (OMP_NUM_THREADS). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <oneapi/dnnl/dnnl.h>

#include "safetensors.h"

/* a failed oneDNN call: said on stderr, and the function returns -1 */
#define CHECK(x)                                                                  \
    do {                                                                          \
        if ((x) != dnnl_success) {                                                \
            fprintf(stderr, "bench_int8: %s failed (line %d)\n", #x, __LINE__);   \
            return -1;                                                            \
        }                                                                         \
    } while (0)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint32_t rng = 12345;
static float frand(void) {           /* uniform in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
}

typedef struct path {
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
} path;

static int md2(dnnl_memory_desc_t *md, dnnl_dim_t r, dnnl_dim_t c, dnnl_data_type_t dt,
                dnnl_dim_t rs, dnnl_dim_t cs) {
    dnnl_dims_t dims = {r, c}, strides = {rs, cs};
    CHECK(dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides));
    return 0;
}

/* y (M x N) = x (M x K) w^T, w stored (N x K) row-major as the engine keeps weights */
static int make_path(path *p, dnnl_engine_t eng, dnnl_stream_t st, dnnl_data_type_t in_dt,
                      int M, int K, int N, void *x, void *w, float *y, const float *wsc) {
    int int8 = wsc != NULL;
    dnnl_memory_desc_t a, b, c;
    if (md2(&a, M, K, in_dt, K, 1) || md2(&b, K, N, in_dt, 1, K) || md2(&c, M, N, dnnl_f32, N, 1))
        return -1;
    dnnl_primitive_attr_t attr;
    CHECK(dnnl_primitive_attr_create(&attr));
    if (int8)   /* the weights' per-channel scales, fixed at load (runtime scales would send
                 * oneDNN 2.6 from its brgemm VNNI kernels to a slower gemm) */
        CHECK(dnnl_primitive_attr_set_output_scales(attr, N, 1 << 1, wsc));
    dnnl_matmul_desc_t mm;
    dnnl_primitive_desc_t pd;
    dnnl_memory_desc_t plain = b;
    if (int8) {        /* let the VNNI kernels choose their weight layout: reordered once */
        dnnl_dims_t d = {K, N};
        CHECK(dnnl_memory_desc_init_by_tag(&b, 2, d, in_dt, dnnl_format_tag_any));
    }
    CHECK(dnnl_matmul_desc_init(&mm, &a, &b, NULL, &c));
    CHECK(dnnl_primitive_desc_create(&pd, &mm, attr, eng, NULL));
    if (int8) b = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const char *impl = NULL;
    CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    fprintf(stderr, "  %s %dx%dx%d: %s\n", int8 ? "int8" : in_dt == dnnl_bf16 ? "bf16" : "f32",
            M, K, N, impl);
    CHECK(dnnl_primitive_create(&p->prim, pd));
    CHECK(dnnl_primitive_desc_destroy(pd));
    CHECK(dnnl_primitive_attr_destroy(attr));
    CHECK(dnnl_memory_create(&p->src, &a, eng, x));
    if (int8) {
        dnnl_memory_t from;
        dnnl_primitive_desc_t rpd;
        dnnl_primitive_t re;
        CHECK(dnnl_memory_create(&from, &plain, eng, w));
        CHECK(dnnl_memory_create(&p->wei, &b, eng, DNNL_MEMORY_ALLOCATE));
        CHECK(dnnl_reorder_primitive_desc_create(&rpd, &plain, eng, &b, eng, NULL));
        CHECK(dnnl_primitive_create(&re, rpd));
        dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, p->wei}};
        CHECK(dnnl_primitive_execute(re, st, 2, ra));
        CHECK(dnnl_stream_wait(st));
        dnnl_primitive_destroy(re);
        dnnl_primitive_desc_destroy(rpd);
        dnnl_memory_destroy(from);
    } else {
        CHECK(dnnl_memory_create(&p->wei, &b, eng, w));
    }
    CHECK(dnnl_memory_create(&p->dst, &c, eng, y));
    return 0;
}

static int run(const path *p, dnnl_stream_t st) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, p->src},
                               {DNNL_ARG_WEIGHTS, p->wei},
                               {DNNL_ARG_DST, p->dst}};
    CHECK(dnnl_primitive_execute(p->prim, st, 3, args));
    CHECK(dnnl_stream_wait(st));
    return 0;
}

static void free_path(path *p) {
    dnnl_primitive_destroy(p->prim);
    dnnl_memory_destroy(p->src);
    dnnl_memory_destroy(p->wei);
    dnnl_memory_destroy(p->dst);
}

static double rel_err(const float *y, const float *ref, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        e += (double)(y[i] - ref[i]) * (y[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return sqrt(e / (r > 0 ? r : 1));
}

typedef struct shape {
    const char *name;
    int K, N;
} shape;

static int bench(int M, int D, int F, int KV, int reps);

int main(int argc, char **argv) {
    int M = 8 * 304, D = 1024, F = 2816, KV = 512, reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows")) M = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--hidden")) D = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ff")) F = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--kv")) KV = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench_int8 [--rows M] [--hidden D] [--ff F] [--kv K] "
                            "[--reps R]\n");
            return 2;
        }
    }
    if (M < 1 || D < 1 || F < 1 || KV < 1 || reps < 1) {
        fprintf(stderr, "bench_int8: every size must be >= 1\n");
        return 2;
    }
    return bench(M, D, F, KV, reps) ? 1 : 0;
}

static int bench(int M, int D, int F, int KV, int reps) {
    shape sh[] = {{"q", D, D}, {"k", D, KV}, {"v", D, KV}, {"o", D, D},
                  {"gate", D, F}, {"up", D, F}, {"down", F, D}};
    int n_sh = (int)(sizeof sh / sizeof *sh);
    dnnl_engine_t eng;
    dnnl_stream_t st;
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));
    double t_tot[5] = {0, 0, 0, 0, 0}, flop_tot = 0;
    printf("# bench_int8: rows %d, hidden %d, ffn %d, kv %d, %d interleaved reps (median);\n"
           "# GFLOP/s of the kernels; i8/bf: int8 kernel speed over bf16's; i8/bf+cv: the same\n"
           "# with each side's activation conversion (bf16 rounding; s8 quantization + row scaling)\n",
           M, D, F, KV, reps);
    printf("%-5s %6s %6s %8s %8s %8s %8s %8s %9s %9s\n", "shape", "K", "N", "f32", "bf16",
           "int8", "i8/bf", "i8/bf+cv", "err_bf16", "err_int8");
    for (int s = 0; s < n_sh; s++) {
        int K = sh[s].K, N = sh[s].N;
        size_t nx = (size_t)M * K, nw = (size_t)N * K, ny = (size_t)M * N;
        float *x = malloc(nx * 4), *w = malloc(nw * 4), *y[3], *wsc = malloc((size_t)N * 4);
        float *sx = malloc((size_t)M * 4);
        uint16_t *xb = malloc(nx * 2), *wb = malloc(nw * 2);
        int8_t *xq = malloc(nx), *wq = malloc(nw);
        for (int k = 0; k < 3; k++) y[k] = malloc(ny * 4);
        if (!x || !w || !wsc || !sx || !xb || !wb || !xq || !wq || !y[0] || !y[1] || !y[2]) {
            fprintf(stderr, "bench_int8: out of memory\n");
            return -1;
        }
        for (size_t i = 0; i < nx; i++) x[i] = frand() * (1 + 3 * (i % 97 == 0));  /* outliers */
        for (size_t i = 0; i < nw; i++) w[i] = 0.05f * frand();
        mr_from_f32(wb, w, MR_DT_BF16, nw);
        for (int n = 0; n < N; n++) {   /* per-output-channel symmetric weight scales */
            float mx = 0;
            for (int k = 0; k < K; k++) mx = fmaxf(mx, fabsf(w[(size_t)n * K + k]));
            wsc[n] = mx > 0 ? mx / 127 : 1;
            for (int k = 0; k < K; k++)
                wq[(size_t)n * K + k] = (int8_t)lrintf(w[(size_t)n * K + k] / wsc[n]);
        }
        path p[3];
        if (make_path(&p[0], eng, st, dnnl_f32, M, K, N, x, w, y[0], NULL) ||
            make_path(&p[1], eng, st, dnnl_bf16, M, K, N, xb, wb, y[1], NULL) ||
            make_path(&p[2], eng, st, dnnl_s8, M, K, N, xq, wq, y[2], wsc))
            return -1;
        double t[5][64];
        int R = reps < 64 ? reps : 64;
        for (int r = -1; r < R; r++) {   /* r = -1: warm-up, not counted */
            double t0 = now_s();
            if (run(&p[0], st)) return -1;
            double t1 = now_s();
            mr_from_f32(xb, x, MR_DT_BF16, nx);   /* common/gemm.c's conversion */
            double tc = now_s();
            if (run(&p[1], st)) return -1;
            double t2 = now_s();
            for (int m = 0; m < M; m++) {   /* one scale per row (token) */
                const float *xr = x + (size_t)m * K;
                float mx = 0;
                for (int k = 0; k < K; k++) mx = fmaxf(mx, fabsf(xr[k]));
                sx[m] = mx > 0 ? mx / 127 : 1;
                float inv = 1 / sx[m];
                int8_t *q = xq + (size_t)m * K;
                for (int k = 0; k < K; k++) {   /* round half away from zero: vectorises */
                    float v = xr[k] * inv;
                    q[k] = (int8_t)(int)(v + (v >= 0 ? 0.5f : -0.5f));
                }
            }
            double tq = now_s();
            if (run(&p[2], st)) return -1;
            double tg = now_s();
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) y[2][(size_t)m * N + n] *= sx[m];
            double t3 = now_s();
            if (r >= 0) {
                t[0][r] = t1 - t0, t[1][r] = t2 - tc, t[2][r] = tg - tq;   /* kernels */
                t[3][r] = t2 - t1, t[4][r] = t3 - t2;                     /* with conversions */
            }
        }
        double med[5], flop = 2.0 * M * K * N;
        for (int k = 0; k < 5; k++) {   /* median by insertion sort */
            for (int i = 1; i < R; i++)
                for (int j = i; j > 0 && t[k][j] < t[k][j - 1]; j--) {
                    double u = t[k][j];
                    t[k][j] = t[k][j - 1];
                    t[k][j - 1] = u;
                }
            med[k] = R % 2 ? t[k][R / 2] : 0.5 * (t[k][R / 2 - 1] + t[k][R / 2]);
            t_tot[k] += med[k];
        }
        flop_tot += flop;
        printf("%-5s %6d %6d %8.1f %8.1f %8.1f %8.2f %8.2f %9.2e %9.2e\n", sh[s].name, K, N,
               flop / med[0] / 1e9, flop / med[1] / 1e9, flop / med[2] / 1e9, med[1] / med[2],
               med[3] / med[4], rel_err(y[1], y[0], ny), rel_err(y[2], y[0], ny));
        for (int k = 0; k < 3; k++) {
            free_path(&p[k]);
            free(y[k]);
        }
        free(x), free(w), free(wsc), free(sx), free(xb), free(wb), free(xq), free(wq);
    }
    printf("%-5s %6s %6s %8.1f %8.1f %8.1f %8.2f %8.2f\n", "layer", "", "",
           flop_tot / t_tot[0] / 1e9, flop_tot / t_tot[1] / 1e9, flop_tot / t_tot[2] / 1e9,
           t_tot[1] / t_tot[2], t_tot[3] / t_tot[4]);
    dnnl_stream_destroy(st);
    dnnl_engine_destroy(eng);
    return 0;
}
