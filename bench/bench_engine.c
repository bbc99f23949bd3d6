/* bench_engine.c: CPU throughput of the mrank engine on a seeded checkpoint.
 *
 * Builds a fixed set of synthetic (query, passage) rows straight from token ids (one query
 * segment of ~12 tokens starting with BOS and one suffix of ~14 tokens shared by every row, as
 * one request's passages share them; passages of 160..240 random ids from the vocabulary,
 * fixed seed), then for each (depth, width) configuration of a grid scores all rows in one
 * mr_model_score call: warm-up runs, then the median of N timed runs. It prints pairs/s,
 * tokens/s, the effective GFLOP/s of the linear layers (mr_model_row_flops over the wall time
 * of the whole call) and its ratio to the OpenBLAS sgemm peak measured in the same process on
 * the model's own linear shapes (M = all tokens of the rows, the call the engine makes).
 *
 * Per-kernel breakdown: the build links this program with -Wl,--wrap for the kernels that
 * forward.c calls (mr_matmul_wt, mr_attention, mr_rmsnorm, mr_rope, mr_swiglu, mr_geglu_tanh,
 * mr_add), so every call the engine makes goes through a timer here. These are measured times
 * of the real run (a clock_gettime pair per kernel call, ~100 calls per run), not estimates;
 * "other" is the rest of the wall time (embedding, width compression, last-token gather, exit
 * heads, weight views, OpenMP fork/join outside the kernels).
 *
 * --rows-out FILE writes the rows, the configurations, the C scores and the C figures as JSON,
 * for bench/torch_eager.py to score the very same inputs. */
#define _GNU_SOURCE
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "kernels.h"
#include "model.h"
#include "prng.h"

/* ---- timers around the engine's kernels (see -Wl,--wrap in bench/CMakeLists.txt) ---- */

enum { K_MATMUL, K_ATTN, K_NORM, K_ROPE, K_ACT, K_ADD, K_N };
static const char *k_names[K_N] = {"linear (sgemm/sgemv)", "attention", "rmsnorm", "rope",
                                   "swiglu/geglu", "residual add"};
static double k_time[K_N];
static double k_flops; /* 2 n in out summed over mr_matmul_wt calls */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void __real_mr_matmul_wt(float *y, const float *x, const float *w, int n, int in, int out,
                         float beta);
void __wrap_mr_matmul_wt(float *y, const float *x, const float *w, int n, int in, int out,
                         float beta);
static int in_gemm; /* inside mr_gemm_wt, whose OpenBLAS path calls mr_matmul_wt */
void __wrap_mr_matmul_wt(float *y, const float *x, const float *w, int n, int in, int out,
                         float beta) {
    if (in_gemm) {
        __real_mr_matmul_wt(y, x, w, n, in, out, beta);
        return;
    }
    double t = now();
    __real_mr_matmul_wt(y, x, w, n, in, out, beta);
    k_time[K_MATMUL] += now() - t;
    k_flops += 2.0 * n * in * out;
}

/* the layers' GEMMs (gemm.h: OpenBLAS, oneDNN f32 or bf16), timed as "linear" */
int __real_mr_gemm_wt(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in,
                      int out);
int __wrap_mr_gemm_wt(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in,
                      int out);
int __wrap_mr_gemm_wt(mr_gemm_ctx *g, float *y, const float *x, const void *w, int n, int in,
                      int out) {
    double t = now();
    in_gemm = 1;
    int rc = __real_mr_gemm_wt(g, y, x, w, n, in, out);
    in_gemm = 0;
    k_time[K_MATMUL] += now() - t;
    k_flops += 2.0 * n * in * out;
    return rc;
}

void __real_mr_attention(const mr_attn_args *a);
void __wrap_mr_attention(const mr_attn_args *a);
void __wrap_mr_attention(const mr_attn_args *a) {
    double t = now();
    __real_mr_attention(a);
    k_time[K_ATTN] += now() - t;
}

void __real_mr_rmsnorm(float *y, const float *x, const float *w, int n, int d, float eps,
                       float w_offset);
void __wrap_mr_rmsnorm(float *y, const float *x, const float *w, int n, int d, float eps,
                       float w_offset);
void __wrap_mr_rmsnorm(float *y, const float *x, const float *w, int n, int d, float eps,
                       float w_offset) {
    double t = now();
    __real_mr_rmsnorm(y, x, w, n, d, eps, w_offset);
    k_time[K_NORM] += now() - t;
}

void __real_mr_rope(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
                    const float *cos_sin);
void __wrap_mr_rope(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
                    const float *cos_sin);
void __wrap_mr_rope(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
                    const float *cos_sin) {
    double t = now();
    __real_mr_rope(x, pos, n_tok, n_heads, head_dim, cos_sin);
    k_time[K_ROPE] += now() - t;
}

void __real_mr_swiglu(float *out, const float *gate, const float *up, size_t n);
void __wrap_mr_swiglu(float *out, const float *gate, const float *up, size_t n);
void __wrap_mr_swiglu(float *out, const float *gate, const float *up, size_t n) {
    double t = now();
    __real_mr_swiglu(out, gate, up, n);
    k_time[K_ACT] += now() - t;
}

void __real_mr_geglu_tanh(float *out, const float *gate, const float *up, size_t n);
void __wrap_mr_geglu_tanh(float *out, const float *gate, const float *up, size_t n);
void __wrap_mr_geglu_tanh(float *out, const float *gate, const float *up, size_t n) {
    double t = now();
    __real_mr_geglu_tanh(out, gate, up, n);
    k_time[K_ACT] += now() - t;
}

void __real_mr_add(float *x, const float *y, size_t n);
void __wrap_mr_add(float *x, const float *y, size_t n);
void __wrap_mr_add(float *x, const float *y, size_t n) {
    double t = now();
    __real_mr_add(x, y, n);
    k_time[K_ADD] += now() - t;
}

static double cpu_seconds(void) { /* user + system time of the process */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static void timers_reset(void) {
    memset(k_time, 0, sizeof k_time);
    k_flops = 0;
}

/* ---- deterministic inputs ---- */

static uint64_t rng_state;
static int rng_range(int lo, int hi) { /* uniform in [lo, hi] */
    return lo + (int)(mr_prng_next(&rng_state) % (uint64_t)(hi - lo + 1));
}

typedef struct bench_cfg {
    char name[64];
    mr_run_opts o;
} bench_cfg;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The grid: full and partial depths, with and without width compression. */
static int make_grid(const mr_model *m, bench_cfg *g) {
    int L = m->cfg.n_layers, n = 0;
    int q4 = L / 4 > 0 ? L / 4 : 1;
    struct { int exit, ratio, at; } spec[] = {
        {L, 1, -1}, {L / 2, 1, -1}, {L, 2, q4}, {L, 4, q4}, {L / 4, 4, L / 8},
    };
    for (size_t i = 0; i < sizeof spec / sizeof *spec; i++) {
        bench_cfg *c = &g[n];
        mr_run_opts_init(&c->o, m);
        c->o.n_exits = 1;
        c->o.exits[0] = spec[i].exit;
        if (spec[i].exit < m->cfg.start_layer || spec[i].exit < 1) continue;
        if (spec[i].ratio > 1) {
            if (spec[i].at >= spec[i].exit) continue;
            c->o.ratio = spec[i].ratio;
            c->o.n_compress = 1;
            c->o.compress_layers[0] = spec[i].at;
            snprintf(c->name, sizeof c->name, "depth %d/%d r=%d@%d", spec[i].exit, L,
                     spec[i].ratio, spec[i].at);
        } else {
            snprintf(c->name, sizeof c->name, "depth %d/%d r=1", spec[i].exit, L);
        }
        n++;
    }
    return n;
}

/* sgemm peak on the model's linear shapes: y (M, out) = x (M, in) W^T, the call
 * mr_matmul_wt makes, best of reps. Returns the rate of the whole per-layer mix (the seven
 * matrices of one decoder layer, FLOP-weighted: total FLOPs / total time) and the best
 * single-shape rate in *best. */
static double sgemm_peak(const mr_config *k, int M, int reps, double *best, double *cpu_rate,
                         FILE *log) {
    int d = k->d_model, qd = k->n_heads * k->head_dim, kvd = k->n_kv_heads * k->head_dim;
    struct { const char *name; int in, out, count; } sh[] = {
        {"q_proj", d, qd, 1}, {"k/v_proj", d, kvd, 2}, {"o_proj", qd, d, 1},
        {"gate/up_proj", d, k->d_ff, 2}, {"down_proj", k->d_ff, d, 1},
    };
    size_t maxin = (size_t)(d > qd ? d : qd), maxdim = (size_t)k->d_ff;
    if (maxin < maxdim) maxin = maxdim;
    float *x = malloc(sizeof(float) * (size_t)M * maxin);
    float *y = malloc(sizeof(float) * (size_t)M * maxin);
    float *w = malloc(sizeof(float) * maxin * maxin);
    if (!x || !y || !w) {
        fprintf(stderr, "bench_engine: out of memory for the sgemm peak\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)M * maxin; i++) x[i] = (float)((i * 7919) % 1000) * 1e-3f;
    for (size_t i = 0; i < maxin * maxin; i++) w[i] = (float)((i * 104729) % 1000) * 1e-3f;
    double mix_flops = 0, mix_time = 0, mix_cpu = 0;
    *best = 0;
    for (size_t s = 0; s < sizeof sh / sizeof *sh; s++) {
        double tbest = INFINITY, cbest = INFINITY;
        for (int r = 0; r < reps + 1; r++) { /* first call warms up */
            double c = cpu_seconds(), t = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, sh[s].out, sh[s].in, 1.0f,
                        x, sh[s].in, w, sh[s].in, 0.0f, y, sh[s].out);
            t = now() - t;
            c = cpu_seconds() - c;
            if (r > 0 && t < tbest) tbest = t;
            if (r > 0 && c < cbest) cbest = c;
        }
        mix_cpu += cbest * sh[s].count;
        double fl = 2.0 * M * sh[s].in * sh[s].out, gf = fl / tbest / 1e9;
        if (log) fprintf(log, "  sgemm (%d x %d) x (%d x %d)^T  %-13s %7.1f GFLOP/s\n", M, sh[s].in,
                sh[s].out, sh[s].in, sh[s].name, gf);
        mix_flops += fl * sh[s].count;
        mix_time += tbest * sh[s].count;
        if (gf > *best) *best = gf;
    }
    free(x);
    free(y);
    free(w);
    /* CPU-time rate: FLOPs per second of the threads' own CPU time, times the thread count,
     * i.e. the rate the cores would give if nothing else ran on them (spin-waits count) */
    *cpu_rate = mix_flops / (mix_cpu / omp_get_max_threads()) / 1e9;
    return mix_flops / mix_time / 1e9;
}

static void json_ids(FILE *f, const int32_t *v, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? "," : "", v[i]);
    fputc(']', f);
}

static void usage(void) {
    fputs("usage: bench_engine --model DIR [--passages N] [--seed S] [--reps N] [--warmup N]\n"
          "                    [--rows-out FILE] [--only NAME_SUBSTRING]\n",
          stderr);
}

int main(int argc, char **argv) {
    const char *model = NULL, *rows_out = NULL, *only = NULL;
    int n_pass = 100, reps = 3, warmup = 1;
    uint64_t seed = 12345;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v && strcmp(a, "-h") && strcmp(a, "--help")) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--model")) model = v, i++;
        else if (!strcmp(a, "--rows-out")) rows_out = v, i++;
        else if (!strcmp(a, "--only")) only = v, i++;
        else if (!strcmp(a, "--passages")) n_pass = atoi(v), i++;
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10), i++;
        else if (!strcmp(a, "--reps")) reps = atoi(v), i++;
        else if (!strcmp(a, "--warmup")) warmup = atoi(v), i++;
        else {
            usage();
            return 2;
        }
    }
    if (!model || n_pass < 1 || reps < 1 || warmup < 0) {
        usage();
        return 2;
    }

    mr_model m;
    mr_err err = {0};
    mr_model_opts mo = {0};
    if (mr_model_load(&m, model, &mo, &err)) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    const mr_config *k = &m.cfg;
    int vocab = k->vocab_size;

    /* Inputs: one query segment and one suffix shared by all rows, passages of 160..240. */
    rng_state = seed;
    int nq = 12, ns = 14;
    int32_t qseg[12], sseg[14];
    qseg[0] = k->bos_token_id;
    for (int i = 1; i < nq; i++) qseg[i] = rng_range(3, vocab - 1);
    for (int i = 0; i < ns; i++) sseg[i] = rng_range(3, vocab - 1);
    mr_row *rows = calloc((size_t)n_pass, sizeof *rows);
    int32_t **pbuf = calloc((size_t)n_pass, sizeof *pbuf);
    int total_tok = 0, longest = 2;
    for (int r = 0; r < n_pass; r++) {
        int np = rng_range(160, 240);
        pbuf[r] = malloc(sizeof(int32_t) * (size_t)np);
        for (int i = 0; i < np; i++) pbuf[r][i] = rng_range(3, vocab - 1);
        rows[r] = (mr_row){qseg, nq, pbuf[r], np, sseg, ns};
        int len = nq + np + ns;
        total_tok += len;
        if (len > longest) longest = len;
    }

    bench_cfg grid[16];
    int n_cfg = make_grid(&m, grid);
    int nthr = omp_get_max_threads();
    printf("mrank bench_engine: %s\n", model);
    printf("model: %d layers, hidden %d, heads %d/%d kv, head_dim %d, intermediate %d, vocab %d,"
           " %s\n", k->n_layers, k->d_model, k->n_heads, k->n_kv_heads, k->head_dim, k->d_ff,
           vocab, mr_dtype_name(k->dtype));
    printf("rows: %d pairs, %d tokens (query %d + passage 160..240 + suffix %d; longest %d),"
           " seed %llu\n", n_pass, total_tok, nq, ns, longest, (unsigned long long)seed);
    printf("threads: OpenMP %d, OpenBLAS %d (%s)\n", nthr, openblas_get_num_threads(),
           openblas_get_corename());
    printf("timing: %d warm-up run(s) of the first config, then the median of %d runs per config;"
           " all rows in one mr_model_score call\n\n",
           warmup, reps);

    double best_shape;
    printf("OpenBLAS sgemm on the model's linear shapes (M = %d tokens, best of 3):\n",
           total_tok);
    double peak_cpu, peak = sgemm_peak(k, total_tok, 3, &best_shape, &peak_cpu, stdout);
    printf("sgemm peak: %.1f GFLOP/s for one decoder layer's shape mix "
           "(best single shape %.1f GFLOP/s); per CPU time: %.1f GFLOP/s\n\n", peak,
           best_shape, peak_cpu);

    mr_ctx ctx;
    if (mr_ctx_init(&ctx, &m, total_tok, n_pass, longest, &err)) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    float *scores = malloc(sizeof(float) * (size_t)n_pass);
    float **cfg_scores = calloc((size_t)n_cfg, sizeof *cfg_scores);
    double *res_pairs = calloc((size_t)n_cfg, sizeof(double));
    double *res_eff = calloc((size_t)n_cfg, sizeof(double));
    double *res_gf = calloc((size_t)n_cfg, sizeof(double));
    double *res_lin = calloc((size_t)n_cfg, sizeof(double));
    double *res_gf_cpu = calloc((size_t)n_cfg, sizeof(double));
    double *res_eff_cpu = calloc((size_t)n_cfg, sizeof(double));
    double *res_cpu = calloc((size_t)n_cfg, sizeof(double));
    int *ran = calloc((size_t)n_cfg, sizeof(int));
    double *times = malloc(sizeof(double) * (size_t)reps);
    double(*ktimes)[K_N] = malloc(sizeof(double[K_N]) * (size_t)reps);
    double *kfl = malloc(sizeof(double) * (size_t)reps);
    double *kcpu = malloc(sizeof(double) * (size_t)reps);

    int warmed = 0;
    for (int ci = 0; ci < n_cfg; ci++) {
        bench_cfg *c = &grid[ci];
        if (only && !strstr(c->name, only)) continue;
        double flops = 0;
        for (int r = 0; r < n_pass; r++)
            flops += mr_model_row_flops(&m, &c->o, rows[r].nq, rows[r].np, rows[r].ns);
        cfg_scores[ci] = malloc(sizeof(float) * (size_t)n_pass);
        /* warm-up (page faults on weights and buffers, thread pools): before the first
         * configuration only, every later one runs on a warm process */
        int wu = warmed ? 0 : warmup;
        warmed = 1;
        for (int it = 0; it < wu + reps; it++) {
            timers_reset();
            double cpu0 = cpu_seconds();
            double t = now();
            if (mr_model_score(&ctx, rows, n_pass, &c->o, scores, NULL, &err)) {
                fprintf(stderr, "bench_engine: %s: %s\n", c->name, err.msg);
                return 1;
            }
            t = now() - t;
            double cpu = cpu_seconds() - cpu0;
            if (it == 0) memcpy(cfg_scores[ci], scores, sizeof(float) * (size_t)n_pass);
            else if (memcmp(cfg_scores[ci], scores, sizeof(float) * (size_t)n_pass))
                fprintf(stderr, "bench_engine: %s: scores differ between runs\n", c->name);
            if (it >= wu) {
                times[it - wu] = t;
                memcpy(ktimes[it - wu], k_time, sizeof k_time);
                kfl[it - wu] = k_flops;
                kcpu[it - wu] = cpu;
            }
        }
        /* the median run, with its own breakdown */
        double *sorted = malloc(sizeof(double) * (size_t)reps);
        memcpy(sorted, times, sizeof(double) * (size_t)reps);
        qsort(sorted, (size_t)reps, sizeof(double), cmp_double);
        double med = sorted[(reps - 1) / 2];
        int mi = 0;
        for (int i = 0; i < reps; i++)
            if (times[i] == med) mi = i;
        double gf = flops / med / 1e9, eff = gf / peak;
        double lin_t = ktimes[mi][K_MATMUL], sum_k = 0;
        res_pairs[ci] = n_pass / med;
        res_eff[ci] = eff;
        res_gf[ci] = gf;
        res_lin[ci] = lin_t / med;
        res_cpu[ci] = kcpu[mi];
        res_gf_cpu[ci] = flops / (kcpu[mi] / nthr) / 1e9;
        ran[ci] = 1;
        printf("[%s]  exit %d, ratio %d%s\n", c->name, c->o.exits[0], c->o.ratio,
               c->o.n_compress ? " (mean pooling)" : "");
        printf("  time %.3f s (min %.3f, max %.3f)  %.1f pairs/s  %.0f tokens/s\n", med,
               sorted[0], sorted[reps - 1], n_pass / med, total_tok / med);
        printf("  process CPU time %.2f s = %.0f%% of %d threads x wall (below 100%%: the cores"
               " were shared with other processes)\n", kcpu[mi], 100 * kcpu[mi] / med / nthr,
               nthr);
        printf("  linear FLOPs %.1f G (mr_model_row_flops; engine's own sgemm calls: %.1f G)\n",
               flops / 1e9, kfl[mi] / 1e9);
        printf("  effective %.1f GFLOP/s -> linear-layer efficiency = %.1f%% of sgemm peak "
               "(%.1f%% of best single shape; first peak measurement, see summary)\n", gf,
               100 * eff, 100 * gf / best_shape);
        printf("  breakdown (measured, kernel calls timed via --wrap):\n");
        for (int kk = 0; kk < K_N; kk++) {
            sum_k += ktimes[mi][kk];
            if (ktimes[mi][kk] > 0)
                printf("    %-22s %7.3f s  %5.1f%%\n", k_names[kk], ktimes[mi][kk],
                       100 * ktimes[mi][kk] / med);
        }
        printf("    %-22s %7.3f s  %5.1f%%\n", "other", med - sum_k, 100 * (med - sum_k) / med);
        printf("  in-sgemm rate %.1f GFLOP/s = %.1f%% of sgemm peak\n\n",
               kfl[mi] / lin_t / 1e9, 100 * kfl[mi] / lin_t / 1e9 / peak);
        fflush(stdout);
    }

    /* the load on a shared machine varies: measure the peak again after the grid and use the
     * higher of the two for the summary and the JSON */
    double best2, peak_cpu2, peak2 = sgemm_peak(k, total_tok, 3, &best2, &peak_cpu2, NULL);
    if (peak_cpu2 > peak_cpu) peak_cpu = peak_cpu2;
    printf("sgemm peak re-measured after the grid: %.1f GFLOP/s (best single shape %.1f); "
           "using the higher: ", peak2, best2);
    if (peak2 > peak) peak = peak2;
    if (best2 > best_shape) best_shape = best2;
    printf("%.1f GFLOP/s\n\n", peak);
    for (int ci = 0; ci < n_cfg; ci++) {
        res_eff[ci] = res_gf[ci] / peak;
        res_eff_cpu[ci] = res_gf_cpu[ci] / peak_cpu;
    }
    printf("summary (threads %d, efficiency vs sgemm peak %.1f GFLOP/s):\n", nthr, peak);
    printf("  %-22s %10s %12s %10s %10s %14s %10s\n", "config", "pairs/s", "GFLOP/s", "eff",
           "linear%", "GFLOP/cpu-s*n", "eff(cpu)");
    for (int ci = 0; ci < n_cfg; ci++)
        if (ran[ci])
            printf("  %-22s %10.2f %12.1f %9.1f%% %9.1f%% %14.1f %9.1f%%\n", grid[ci].name,
                   res_pairs[ci], res_gf[ci], 100 * res_eff[ci], 100 * res_lin[ci],
                   res_gf_cpu[ci], 100 * res_eff_cpu[ci]);
    printf("  (eff: wall-clock GFLOP/s / wall-clock sgemm peak; eff(cpu): the same with both\n"
           "   rates taken per CPU-second of the process x %d threads, %.1f GFLOP/s peak, less\n"
           "   sensitive to other load on the machine)\n", nthr, peak_cpu);

    if (rows_out) {
        FILE *f = fopen(rows_out, "w");
        if (!f) {
            perror(rows_out);
            return 1;
        }
        fprintf(f, "{\"model\":\"%s\",\"threads\":%d,\"seed\":%llu,\"sgemm_peak_gflops\":%.3f,"
                   "\"sgemm_best_shape_gflops\":%.3f,\"sgemm_peak_cpu_gflops\":%.3f,\n"
                   "\"configs\":[", model, nthr, (unsigned long long)seed, peak, best_shape,
                peak_cpu);
        int first = 1;
        for (int ci = 0; ci < n_cfg; ci++) {
            if (!ran[ci]) continue;
            const mr_run_opts *o = &grid[ci].o;
            fprintf(f, "%s\n{\"name\":\"%s\",\"exit\":%d,\"ratio\":%d,\"compress_layers\":[",
                    first ? "" : ",", grid[ci].name, o->exits[0], o->ratio);
            for (int j = 0; j < o->n_compress; j++)
                fprintf(f, "%s%d", j ? "," : "", o->compress_layers[j]);
            fprintf(f, "],\"c_pairs_per_s\":%.4f,\"c_gflops\":%.3f,\"c_efficiency\":%.5f,"
                       "\"c_linear_fraction\":%.5f,\"c_cpu_s\":%.4f,\"c_efficiency_cpu\":%.5f,"
                       "\"c_scores\":[",
                    res_pairs[ci], res_gf[ci], res_eff[ci], res_lin[ci], res_cpu[ci],
                    res_eff_cpu[ci]);
            for (int r = 0; r < n_pass; r++)
                fprintf(f, "%s%.9g", r ? "," : "", cfg_scores[ci][r]);
            fprintf(f, "]}");
            first = 0;
        }
        fprintf(f, "],\n\"rows\":[");
        for (int r = 0; r < n_pass; r++) {
            fprintf(f, "%s\n{\"q\":", r ? "," : "");
            json_ids(f, rows[r].q, rows[r].nq);
            fprintf(f, ",\"p\":");
            json_ids(f, rows[r].p, rows[r].np);
            fprintf(f, ",\"s\":");
            json_ids(f, rows[r].s, rows[r].ns);
            fputc('}', f);
        }
        fprintf(f, "]}\n");
        fclose(f);
        printf("\nrows, configs and C scores written to %s\n", rows_out);
    }

    for (int ci = 0; ci < n_cfg; ci++) free(cfg_scores[ci]);
    free(cfg_scores);
    free(res_pairs);
    free(res_eff);
    free(res_gf);
    free(res_lin);
    free(res_gf_cpu);
    free(res_eff_cpu);
    free(res_cpu);
    free(ran);
    free(times);
    free(ktimes);
    free(kfl);
    free(kcpu);
    free(scores);
    for (int r = 0; r < n_pass; r++) free(pbuf[r]);
    free(pbuf);
    free(rows);
    mr_ctx_close(&ctx);
    mr_model_close(&m);
    return 0;
}
