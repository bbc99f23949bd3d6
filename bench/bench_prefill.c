/* bench_prefill.c: mrank's side of the llama.cpp comparison (bench/llama_baseline.sh): the
 * engine scoring N rows of L tokens each (one request: a query segment of Q tokens shared by
 * every row, passages of random vocabulary ids, a suffix of 14 tokens; fixed seed) at the
 * model's deepest exit, in one mr_model_score call, as llama-batched-bench prefills N
 * sequences of L tokens. Prints one JSON line: the GEMM path chosen at load (MR_GEMM), prefix
 * sharing on or off, tokens/s (N * L over the median wall time of the timed runs), the
 * token-layers through the K/V projections per pass, and the checksum of the scores. A warm-up
 * call on 2 rows precedes the timed runs.
 * --ab instead times shared and unshared runs alternately in the same process (the order
 * flips every rep) and prints one JSON line with both medians, their ratio and the median of
 * the per-rep ratios (shared / unshared time), the OpenMP team size, and the largest score
 * difference shared vs unshared, relative to max(|unshared|, 1) (the tests' convention); with
 * --ref MODE also against the same rows scored unshared on GEMM mode MODE (e.g. openblas).
 * --fused DA:K instead times a two-stage cascade over the rows, split (a pass to exit DA over
 * every row, then a pass to the deepest exit over the K best) against fused (one pass with
 * exits [DA, deepest] and a prune step keeping the best K at DA: what the coordinator sends
 * for stages that continue, docs/cluster.md), alternately in the same process, and prints one
 * JSON line: each way's token-layers (the engine's own count) and median time, their ratios,
 * and the largest score difference of the K survivors at both exits, relative to
 * max(|split|, 1).
 * Usage: bench_prefill MODEL [--rows N] [--len L] [--query Q] [--reps R] [--no-share]
 *                            [--ab [--ref MODE]] [--fused DA:K] */
#include <math.h>
#include <omp.h>
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

/* Largest |a - b| / max(|b|, 1) over n scores. */
static double max_rel(const float *a, const float *b, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(fabs((double)b[i]), 1.0);
        if (!(d <= m)) m = d; /* NaN wins */
    }
    return m;
}

/* Scores rows once with sharing on or off; the wall time in seconds, or -1 (message printed). */
static double timed_score(mr_ctx *c, const mr_row *rows, int n, mr_run_opts *o, int share,
                          float *scores) {
    mr_err err = {0};
    o->no_prefix_share = !share;
    double t0 = now();
    if (mr_model_score(c, rows, n, o, scores, NULL, &err)) {
        fprintf(stderr, "score: %s\n", err.msg);
        return -1;
    }
    return now() - t0;
}

/* --ab: see the header. Returns the exit status. */
static int run_ab(mr_ctx *c, const mr_model *m, const mr_row *rows, int n_rows, int len,
                  int reps, const char *ref_mode, const char *model_dir) {
    mr_run_opts o;
    mr_run_opts_init(&o, m);
    size_t nr = (size_t)n_rows;
    float *sh = malloc(sizeof(float) * nr), *un = malloc(sizeof(float) * nr);
    double *ts = malloc(sizeof(double) * (size_t)reps), *tu = malloc(sizeof(double) * (size_t)reps),
           *ratio = malloc(sizeof(double) * (size_t)reps);
    if (!sh || !un || !ts || !tu || !ratio) return 1;
    if (timed_score(c, rows, n_rows < 2 ? n_rows : 2, &o, 1, sh) < 0) return 1; /* warm-up */
    long long tl_sh = 0, tl_un = 0;
    for (int i = 0; i < reps; i++) {
        for (int k = 0; k < 2; k++) {
            int share = (i + k) % 2 == 0; /* shared first on even reps */
            double t = timed_score(c, rows, n_rows, &o, share, share ? sh : un);
            if (t < 0) return 1;
            *(share ? &ts[i] : &tu[i]) = t;
            *(share ? &tl_sh : &tl_un) = c->token_layers;
        }
        ratio[i] = ts[i] / tu[i];
    }
    double rel_ref = 0;
    const char *ref_name = "";
    if (ref_mode) {
        mr_model rm;
        mr_ctx rc;
        mr_err err = {0};
        mr_model_opts mo = {.gemm = ref_mode};
        float *ref = malloc(sizeof(float) * (size_t)n_rows);
        if (!ref || mr_model_load(&rm, model_dir, &mo, &err) ||
            mr_ctx_init(&rc, &rm, c->max_tokens, c->max_rows, c->max_len, &err)) {
            fprintf(stderr, "reference: %s\n", err.msg[0] ? err.msg : "out of memory");
            return 1;
        }
        if (timed_score(&rc, rows, n_rows, &o, 0, ref) < 0) return 1;
        ref_name = mr_gemm_path_name(rm.gemm);
        rel_ref = max_rel(sh, ref, n_rows);
        double rel_un = max_rel(un, ref, n_rows);
        if (rel_un > rel_ref) rel_ref = rel_un;
        mr_ctx_close(&rc);
        mr_model_close(&rm);
        free(ref);
    }
    int team = 0;
#pragma omp parallel
#pragma omp single
    team = omp_get_num_threads();
    double rel_share = max_rel(sh, un, n_rows);
    qsort(ts, (size_t)reps, sizeof *ts, cmp_d);
    qsort(tu, (size_t)reps, sizeof *tu, cmp_d);
    qsort(ratio, (size_t)reps, sizeof *ratio, cmp_d);
    printf("{\"gemm\":\"%s\",\"omp_team\":%d,\"rows\":%d,\"len\":%d,\"reps\":%d,"
           "\"median_shared_s\":%.4f,\"median_unshared_s\":%.4f,\"ratio_of_medians\":%.3f,"
           "\"median_ratio\":%.3f,\"token_layers_shared\":%lld,\"token_layers_unshared\":%lld,"
           "\"max_rel_shared_vs_unshared\":%.3g",
           mr_gemm_path_name(m->gemm), team, n_rows, len, reps, ts[reps / 2], tu[reps / 2],
           ts[reps / 2] / tu[reps / 2], ratio[reps / 2], tl_sh, tl_un, rel_share);
    if (ref_mode)
        printf(",\"ref_gemm\":\"%s\",\"max_rel_vs_ref_unshared\":%.3g", ref_name, rel_ref);
    printf("}\n");
    free(sh);
    free(un);
    free(ts);
    free(tu);
    free(ratio);
    return 0;
}

/* One mr_model_score call of the --fused comparison; its token-layers, or -1 (printed). */
static long long fused_pass(mr_ctx *c, const mr_row *rows, int n, const mr_run_opts *o,
                            float *scores) {
    mr_err err = {0};
    if (mr_model_score(c, rows, n, o, scores, NULL, &err)) {
        fprintf(stderr, "score: %s\n", err.msg);
        return -1;
    }
    return c->token_layers;
}

/* --fused: see the header. Returns the exit status. */
static int run_fused(mr_ctx *c, const mr_model *m, const mr_row *rows, int n_rows, int reps,
                     int da, int k, int share) {
    mr_run_opts oa, ob, of;
    mr_run_opts_init(&oa, m);
    mr_run_opts_init(&ob, m);
    mr_run_opts_init(&of, m);
    int deep = ob.exits[ob.n_exits - 1];
    oa.no_prefix_share = ob.no_prefix_share = of.no_prefix_share = !share;
    oa.exits[0] = da;
    of.n_exits = 2;
    of.exits[0] = da;
    of.exits[1] = deep;
    of.n_prune = 1;
    of.prune[0] = (mr_prune){.layer = da, .top_k = k};
    size_t nr = (size_t)n_rows;
    float *sa = malloc(sizeof(float) * nr), *sb = malloc(sizeof(float) * nr),
          *sf = malloc(sizeof(float) * 2 * nr);
    int *best = malloc(sizeof(int) * nr);
    mr_row *sel = malloc(sizeof *sel * nr);
    double *ts = malloc(sizeof(double) * (size_t)reps), *tf = malloc(sizeof(double) * (size_t)reps);
    if (!sa || !sb || !sf || !best || !sel || !ts || !tf) return 1;
    if (fused_pass(c, rows, n_rows < 2 ? n_rows : 2, &ob, sb) < 0) return 1;   /* warm-up */
    long long tl_split = 0, tl_fused = 0;
    for (int i = 0; i < reps; i++) {
        for (int w = 0; w < 2; w++) {
            int split = (i + w) % 2 == 0;   /* split first on even reps */
            double t0 = now();
            if (split) {
                long long a = fused_pass(c, rows, n_rows, &oa, sa);
                if (a < 0) return 1;
                /* the K best at DA (score descending, index ascending), in request order */
                char *taken = (char *)sf;   /* sf is free until the fused pass */
                memset(taken, 0, nr);
                for (int j = 0; j < k; j++) {
                    int b = -1;
                    for (int r = 0; r < n_rows; r++)
                        if (!taken[r] && (b < 0 || sa[r] > sa[b])) b = r;
                    taken[b] = 1;
                }
                int n_sel = 0;
                for (int r = 0; r < n_rows; r++)
                    if (taken[r]) best[n_sel] = r, sel[n_sel++] = rows[r];
                long long b = fused_pass(c, sel, n_sel, &ob, sb);
                if (b < 0) return 1;
                ts[i] = now() - t0;
                tl_split = a + b;
            } else {
                long long f = fused_pass(c, rows, n_rows, &of, sf);
                if (f < 0) return 1;
                tf[i] = now() - t0;
                tl_fused = f;
            }
        }
    }
    double rel = 0;   /* survivors: exit DA and the deepest exit, fused against split */
    for (int j = 0; j < k; j++) {
        int r = best[j];
        double da_d = fabs((double)sf[2 * r] - sa[r]) / fmax(fabs((double)sa[r]), 1.0);
        double dd = fabs((double)sf[2 * r + 1] - sb[j]) / fmax(fabs((double)sb[j]), 1.0);
        if (!(da_d <= rel)) rel = da_d;   /* NaN wins: a survivor the step dropped */
        if (!(dd <= rel)) rel = dd;
    }
    qsort(ts, (size_t)reps, sizeof *ts, cmp_d);
    qsort(tf, (size_t)reps, sizeof *tf, cmp_d);
    printf("{\"gemm\":\"%s\",\"share\":%d,\"rows\":%d,\"exits\":[%d,%d],\"keep\":%d,\"reps\":%d,"
           "\"token_layers_split\":%lld,\"token_layers_fused\":%lld,\"token_layers_ratio\":%.3f,"
           "\"median_split_s\":%.4f,\"median_fused_s\":%.4f,\"time_ratio\":%.3f,"
           "\"max_rel_fused_vs_split\":%.3g}\n",
           mr_gemm_path_name(m->gemm), share, n_rows, da, deep, k, reps, tl_split, tl_fused,
           (double)tl_fused / (double)tl_split, ts[reps / 2], tf[reps / 2],
           tf[reps / 2] / ts[reps / 2], rel);
    free(sa);
    free(sb);
    free(sf);
    free(best);
    free(sel);
    free(ts);
    free(tf);
    return 0;
}

/* Times n_rows rows reps times (after a warm-up on 2 rows: oneDNN's JIT, first touches), with
 * query-prefix sharing on or off, and prints one JSON line: the median, tokens/s, token-layers
 * and the score sum. 0, or 1 on a scoring error. */
static int run_timed(mr_ctx *ctx, mr_model *m, const mr_row *rows, int n_rows, int len,
                     int reps, int share, float *scores, double *t) {
    mr_err err = {0};
    mr_run_opts o;
    mr_run_opts_init(&o, m);
    o.no_prefix_share = !share;
    for (int i = -1; i < reps; i++) { /* a warm-up on 2 rows (oneDNN's JIT, first touches) */
        double t0 = now();
        if (mr_model_score(ctx, rows, i < 0 && n_rows > 2 ? 2 : n_rows, &o, scores, NULL,
                           &err)) {
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
           mr_gemm_path_name(m->gemm), share, n_rows, len, n_rows * len / t[reps / 2],
           t[reps / 2], ctx->token_layers, sum);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_prefill MODEL [--rows N] [--len L] [--query Q] [--reps R]"
                        " [--no-share] [--ab [--ref MODE]] [--fused DA:K]\n");
        return 2;
    }
    int n_rows = 64, len = 304, nq = 12, ns = 14, reps = 3, share = 1, ab = 0, da = 0, keep = 0;
    const char *ref_mode = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "0";
        if (!strcmp(a, "--rows")) n_rows = atoi(v), i++;
        else if (!strcmp(a, "--len")) len = atoi(v), i++;
        else if (!strcmp(a, "--query")) nq = atoi(v), i++;
        else if (!strcmp(a, "--reps")) reps = atoi(v), i++;
        else if (!strcmp(a, "--no-share")) share = 0;
        else if (!strcmp(a, "--ab")) ab = 1;
        else if (!strcmp(a, "--ref")) ref_mode = v, i++;
        else if (!strcmp(a, "--fused")) {
            if (sscanf(v, "%d:%d", &da, &keep) != 2 || da < 1 || keep < 1) {
                fprintf(stderr, "--fused: '%s' is not DA:K\n", v);
                return 2;
            }
            i++;
        }
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
    }
    int np = len - nq - ns;
    if (ref_mode && !ab) {
        fprintf(stderr, "--ref needs --ab\n");
        return 2;
    }
    if (n_rows < 1 || np < 1 || reps < 1 || reps > 100 || keep > n_rows) {
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
    int rc = da ? run_fused(&c, &m, rows, n_rows, reps, da, keep, share)
             : ab ? run_ab(&c, &m, rows, n_rows, len, reps, ref_mode, argv[1])
                  : run_timed(&c, &m, rows, n_rows, len, reps, share, scores, t);
    mr_ctx_close(&c);
    mr_model_close(&m);
    free(ids);
    free(rows);
    free(scores);
    free(t);
    return rc;
}
