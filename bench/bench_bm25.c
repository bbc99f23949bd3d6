/* bench_bm25.c: the lexical stage's cost (common/bm25.c) against the query's length: N
 * candidates of W random words, scored with English stemming and the candidates' own
 * statistics (two tokenizing passes, the stage's worst case) by a query of 1 term and of Q
 * terms, R rounds each, interleaved; prints the median microseconds per candidate and their
 * ratio (docs/cluster.md, "Lexical stage").
 * Usage: bench_bm25 [N 1000] [W 900] [Q 256] [R 3] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bm25.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* " w00000 w00007 ..." with n words: every 7th of the vocabulary, from 0 */
static char *query_of(int n) {
    char *q = malloc((size_t)n * 8 + 1), *p = q;
    *p = 0;
    for (int i = 0; i < n; i++) p += sprintf(p, "w%05d ", (i * 7) % 20000);
    return q;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000, w = argc > 2 ? atoi(argv[2]) : 900;
    int nq = argc > 3 ? atoi(argv[3]) : 256, rounds = argc > 4 ? atoi(argv[4]) : 3;
    if (n < 1 || w < 1 || nq < 1 || rounds < 1 || rounds > 99 || n > 100000 || w > 100000) {
        fprintf(stderr, "usage: bench_bm25 [N] [W] [Q] [R]\n");
        return 2;
    }
    char **docs = malloc(sizeof *docs * (size_t)n);
    srand(1);
    for (int d = 0; d < n; d++) {
        char *p = docs[d] = malloc((size_t)w * 8 + 1);
        *p = 0;
        for (int i = 0; i < w; i++) p += sprintf(p, "w%05d ", rand() % 20000);
    }
    char *q[2] = {query_of(1), query_of(nq)};
    float *out = malloc(sizeof *out * (size_t)n);
    mr_bm25_params prm = {MR_BM25_DEFAULT_K1, MR_BM25_DEFAULT_B, MR_BM25_STEM_ENGLISH};
    double t[2][99];
    mr_err err = {0};
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < 2; k++) {
            double t0 = now_ms();
            if (mr_bm25_score(NULL, &prm, q[k], (const char *const *)docs, n, out, &err)) {
                fprintf(stderr, "bench_bm25: %s\n", err.msg);
                return 1;
            }
            t[k][r] = (now_ms() - t0) * 1e3 / n;
        }
    qsort(t[0], (size_t)rounds, sizeof(double), cmp);
    qsort(t[1], (size_t)rounds, sizeof(double), cmp);
    double m1 = t[0][rounds / 2], mq = t[1][rounds / 2];
    printf("%d candidates x %d words: %.1f us/candidate with 1 query term, %.1f with %d "
           "(ratio %.2f; medians of %d rounds)\n", n, w, m1, mq, nq, mq / m1, rounds);
    for (int d = 0; d < n; d++) free(docs[d]);
    free(docs), free(q[0]), free(q[1]), free(out);
    return 0;
}
