/* bench_prefill.c: mrank's side of the llama.cpp comparison (bench/llama_baseline.sh): the
 * engine scoring N rows of L tokens each (one request: a query segment of Q tokens shared by
 * every row, passages of random vocabulary ids, a suffix of 14 tokens; fixed seed) at the
 * model's deepest exit, in one mr_model_score call, as llama-batched-bench prefills N
 * sequences of L tokens. Prints one JSON line: the GEMM path chosen at load (MR_GEMM), prefix
 * sharing on or off, tokens/s (N * L over the median wall time of the timed runs), the
 * token-layers through the K/V projections per pass, and the checksum of the scores. A warm-up
 * call on 2 rows precedes the timed runs.
 * Usage: bench_prefill MODEL [--rows N] [--len L] [--query Q] [--reps R] [--no-share] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"
#include "prng.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_prefill MODEL [--rows N] [--len L] [--query Q] [--reps R]"
                        " [--no-share]\n");
        return 2;
    }
    int n_rows = 64, len = 304, nq = 12, ns = 14, reps = 3, share = 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "0";
        if (!strcmp(a, "--rows")) n_rows = atoi(v), i++;
        else if (!strcmp(a, "--len")) len = atoi(v), i++;
        else if (!strcmp(a, "--query")) nq = atoi(v), i++;
        else if (!strcmp(a, "--reps")) reps = atoi(v), i++;
        else if (!strcmp(a, "--no-share")) share = 0;
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
    }
    int np = len - nq - ns;
    if (n_rows < 1 || np < 1 || reps < 1 || reps > 100) {
        fprintf(stderr, "bad sizes\n");
        return 2;
    }
    mr_model m;
    mr_err err = {0};
    if (mr_model_load(&m, argv[1], NULL, &err)) {
        fprintf(stderr, "load: %s\n", err.msg);
        return 1;
    }
    int vocab = m.cfg.vocab_size;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(nq + ns + n_rows * np));
    mr_row *rows = malloc(sizeof *rows * (size_t)n_rows);
    float *scores = malloc(sizeof(float) * (size_t)n_rows);
    double *t = malloc(sizeof(double) * (size_t)reps);
    mr_ctx c;
    if (!ids || !rows || !scores || !t ||
        mr_ctx_init(&c, &m, n_rows * len, n_rows, len, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg[0] ? err.msg : "out of memory");
        return 1;
    }
    uint64_t s = 1;
    for (int i = 0; i < nq + ns + n_rows * np; i++)
        ids[i] = 3 + (int32_t)(mr_prng_next(&s) % (uint64_t)(vocab - 3));
    ids[0] = 1; /* BOS */
    for (int r = 0; r < n_rows; r++)
        rows[r] = (mr_row){ids, nq, ids + nq + ns + (size_t)r * np, np, ids + nq, ns};
    mr_run_opts o;
    mr_run_opts_init(&o, &m);
    o.no_prefix_share = !share;
    for (int i = -1; i < reps; i++) { /* a warm-up on 2 rows (oneDNN's JIT, first touches) */
        double t0 = now();
        if (mr_model_score(&c, rows, i < 0 && n_rows > 2 ? 2 : n_rows, &o, scores, NULL, &err)) {
            fprintf(stderr, "score: %s\n", err.msg);
            return 1;
        }
        if (i >= 0) t[i] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_d);
    double sum = 0;
    for (int r = 0; r < n_rows; r++) sum += scores[r];
    printf("{\"gemm\":\"%s\",\"share\":%d,\"rows\":%d,\"len\":%d,\"tokens_per_s\":%.1f,"
           "\"median_s\":%.4f,\"token_layers\":%lld,\"score_sum\":%.6f}\n",
           mr_gemm_path_name(m.gemm), share, n_rows, len, n_rows * len / t[reps / 2],
           t[reps / 2], c.token_layers, sum);
    mr_ctx_close(&c);
    mr_model_close(&m);
    free(ids);
    free(rows);
    free(scores);
    free(t);
    return 0;
}
