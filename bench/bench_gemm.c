/* bench_gemm.c: the engine's GEMM paths (common/gemm.h) on the seven linear layers of one
 * transformer layer, as the scoring pass calls them: k converts the normed activations, v and q
 * reuse them (mr_gemm_wt_again), o converts its own, gate converts, up reuses, down converts.
 * The paths run interleaved in the same process, one rep of each in turn:
 *   onednn-f32, onednn-bf16 (activations rounded per call, bf16 weights), onednn-int8
 *   (activations quantized per call, weights quantized once as the model does at load).
 * Times include each path's activation conversion and, for int8, the output scaling: what a
 * pass pays. Each output is compared with onednn-f32's (relative Frobenius error) on random
 * activations with outliers (every 97th value 4x larger). One line per linear layer and a
 * layer total; nothing is allocated inside the timed loop.
 *
 *   bench_gemm [--rows M] [--hidden D] [--ff F] [--kv K] [--reps R]
 *
 * Defaults: the seeded Mistral shape of bench/llama_baseline.sh (hidden 1024, FFN 2816, KV
 * width 512) and 8 rows of 304 tokens. Threads: OpenMP's (OMP_NUM_THREADS). Needs a build with
 * oneDNN (MR_ONEDNN). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gemm.h"

enum { N_PATHS = 3, N_LIN = 7, MAX_REPS = 64 };
static const mr_gemm_path paths[N_PATHS] = {MR_GEMM_ONEDNN_F32, MR_GEMM_ONEDNN_BF16,
                                            MR_GEMM_ONEDNN_INT8};

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint32_t rng = 12345;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
}

static double rel_err(const float *y, const float *ref, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        e += (double)(y[i] - ref[i]) * (y[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return sqrt(e / (r > 0 ? r : 1));
}

static double median(double *v, int n) { /* sorts v */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double u = v[j];
            v[j] = v[j - 1];
            v[j - 1] = u;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One linear layer of the pass: its shape, which activations it reads, whether it reuses the
 * previous call's conversion. */
typedef struct lin {
    const char *name;
    int in, out, src, again; /* src: 0 the normed input, 1 the attention output, 2 the FFN */
} lin;

static int bench(int M, int D, int F, int KV, int reps);

int main(int argc, char **argv) {
    int M = 8 * 304, D = 1024, F = 2816, KV = 512, reps = 5;
    for (int i = 1; i < argc; i += 2) {
        int *v = !strcmp(argv[i], "--rows")     ? &M
                 : !strcmp(argv[i], "--hidden") ? &D
                 : !strcmp(argv[i], "--ff")     ? &F
                 : !strcmp(argv[i], "--kv")     ? &KV
                 : !strcmp(argv[i], "--reps")   ? &reps
                                                : NULL;
        if (!v || i + 1 >= argc) {
            fprintf(stderr, "usage: bench_gemm [--rows M] [--hidden D] [--ff F] [--kv K] "
                            "[--reps R]\n");
            return 2;
        }
        *v = atoi(argv[i + 1]);
    }
    if (M < 1 || D < 1 || F < 1 || KV < 1 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "bench_gemm: sizes must be >= 1 and reps 1..%d\n", MAX_REPS);
        return 2;
    }
    return bench(M, D, F, KV, reps) ? 1 : 0;
}

static int bench(int M, int D, int F, int KV, int reps) {
    const lin lins[N_LIN] = {{"k", D, KV, 0, 0},   {"v", D, KV, 0, 1},    {"q", D, D, 0, 1},
                             {"o", D, D, 1, 0},    {"gate", D, F, 0, 0},  {"up", D, F, 0, 1},
                             {"down", F, D, 2, 0}};
    const int shapes[4][2] = {{KV, D}, {D, D}, {F, D}, {D, F}};
    float *src[3] = {NULL}, *w[N_LIN] = {NULL}, *y[N_PATHS][N_LIN] = {{NULL}};
    uint16_t *wb[N_LIN] = {NULL};
    mr_gemm_q8 wq[N_LIN] = {{0}};
    mr_gemm_ctx *g[N_PATHS] = {NULL};
    mr_err err = {0};
    int rc = -1, widths[3] = {D, D, F};
    for (int s = 0; s < 3; s++) {
        size_t n = (size_t)M * widths[s];
        if (!(src[s] = malloc(4 * n))) goto oom;
        for (size_t i = 0; i < n; i++) src[s][i] = frand() * (1 + 3 * (i % 97 == 0));
    }
    for (int l = 0; l < N_LIN; l++) {
        size_t nw = (size_t)lins[l].out * lins[l].in;
        if (!(w[l] = malloc(4 * nw)) || !(wb[l] = malloc(2 * nw))) goto oom;
        for (size_t i = 0; i < nw; i++) w[l][i] = 0.05f * frand();
        mr_from_f32(wb[l], w[l], MR_DT_BF16, nw);
        mr_tensor t = {.name = lins[l].name, .dtype = MR_DT_F32, .ndim = 2,
                       .shape = {lins[l].out, lins[l].in}, .numel = (int64_t)nw, .data = w[l]};
        if (mr_gemm_q8_new(&wq[l], &t, &err)) goto fail;
        for (int p = 0; p < N_PATHS; p++)
            if (!(y[p][l] = malloc(4 * (size_t)M * lins[l].out))) goto oom;
    }
    for (int p = 0; p < N_PATHS; p++)
        if (mr_gemm_ctx_new(&g[p], paths[p], shapes, 4, M, &err)) goto fail;

    static double t[N_PATHS][N_LIN][MAX_REPS];
    for (int r = -1; r < reps; r++) /* r = -1: warm-up, not counted */
        for (int p = 0; p < N_PATHS; p++)
            for (int l = 0; l < N_LIN; l++) {
                const void *wp = paths[p] == MR_GEMM_ONEDNN_INT8   ? (const void *)&wq[l]
                                 : paths[p] == MR_GEMM_ONEDNN_BF16 ? (const void *)wb[l]
                                                                   : (const void *)w[l];
                const lin *L = &lins[l];
                double t0 = now_s();
                int e = L->again ? mr_gemm_wt_again(g[p], y[p][l], src[L->src], wp, M, L->in,
                                                    L->out)
                                 : mr_gemm_wt(g[p], y[p][l], src[L->src], wp, M, L->in, L->out);
                if (e) {
                    fprintf(stderr, "bench_gemm: %s on %s failed (%d)\n", L->name,
                            mr_gemm_path_name(paths[p]), e);
                    goto fail;
                }
                if (r >= 0) t[p][l][r] = now_s() - t0;
            }

    printf("# bench_gemm: rows %d, hidden %d, ffn %d, kv %d; %d interleaved reps (median), "
           "GFLOP/s with conversions; error: relative to onednn-f32\n", M, D, F, KV, reps);
    printf("%-5s %6s %6s %9s %9s %9s %8s %8s %9s %9s\n", "gemm", "in", "out", "f32", "bf16",
           "int8", "bf16/f32", "i8/bf16", "err_bf16", "err_int8");
    double tot[N_PATHS] = {0}, flop_tot = 0;
    for (int l = 0; l < N_LIN; l++) {
        double med[N_PATHS], flop = 2.0 * M * lins[l].in * lins[l].out;
        for (int p = 0; p < N_PATHS; p++) tot[p] += med[p] = median(t[p][l], reps);
        flop_tot += flop;
        size_t ny = (size_t)M * lins[l].out;
        printf("%-5s %6d %6d %9.1f %9.1f %9.1f %8.2f %8.2f %9.2e %9.2e\n", lins[l].name,
               lins[l].in, lins[l].out, flop / med[0] / 1e9, flop / med[1] / 1e9,
               flop / med[2] / 1e9, med[0] / med[1], med[1] / med[2],
               rel_err(y[1][l], y[0][l], ny), rel_err(y[2][l], y[0][l], ny));
    }
    printf("%-5s %6s %6s %9.1f %9.1f %9.1f %8.2f %8.2f\n", "layer", "", "", flop_tot / tot[0] / 1e9,
           flop_tot / tot[1] / 1e9, flop_tot / tot[2] / 1e9, tot[0] / tot[1], tot[1] / tot[2]);
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "bench_gemm: out of memory\n");
    goto done;
fail:
    if (err.msg[0]) fprintf(stderr, "bench_gemm: %s\n", err.msg);
done:
    for (int p = 0; p < N_PATHS; p++) {
        mr_gemm_ctx_free(g[p]);
        for (int l = 0; l < N_LIN; l++) free(y[p][l]);
    }
    for (int l = 0; l < N_LIN; l++) {
        free(w[l]);
        free(wb[l]);
        mr_gemm_q8_free(&wq[l]);
    }
    for (int s = 0; s < 3; s++) free(src[s]);
    return rc;
}
