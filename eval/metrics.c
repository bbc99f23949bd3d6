/* metrics.c: nDCG@k and MRR@k of a ranked list of gains and their expected values under a
 * uniformly random order (see metrics.h). Not here: ranking or judging (cli/cmd_eval.c,
 * qrels.c). */
#include "metrics.h"

#include <math.h>

static double idcg(const int *ideal, int n_ideal, int k) {
    double s = 0;
    for (int i = 0; i < n_ideal && i < k; i++) s += ideal[i] / log2(i + 2.0);
    return s;
}

double mr_ndcg_at(const int *gains, int n, const int *ideal, int n_ideal, int k) {
    double id = idcg(ideal, n_ideal, k), s = 0;
    if (id <= 0) return 0;
    for (int i = 0; i < n && i < k; i++)
        if (gains[i] > 0) s += gains[i] / log2(i + 2.0);
    return s / id;
}

double mr_mrr_at(const int *gains, int n, int k) {
    for (int i = 0; i < n && i < k; i++)
        if (gains[i] > 0) return 1.0 / (i + 1);
    return 0;
}

double mr_ndcg_at_random(const int *gains, int n, const int *ideal, int n_ideal, int k) {
    double id = idcg(ideal, n_ideal, k), g = 0, disc = 0;
    if (id <= 0 || n == 0) return 0;
    for (int i = 0; i < n; i++) g += gains[i] > 0 ? gains[i] : 0;
    for (int i = 0; i < n && i < k; i++) disc += 1.0 / log2(i + 2.0);
    return g * disc / n / id; /* each document lands at each rank with probability 1/n */
}

double mr_mrr_at_random(const int *gains, int n, int k) {
    int R = 0;
    for (int i = 0; i < n; i++) R += gains[i] > 0;
    if (R == 0) return 0;
    /* P(first relevant at rank i) = prod_{j<i-1} (n-R-j)/(n-j) * R/(n-i+1) */
    double none = 1.0, s = 0;
    for (int i = 1; i <= k && i <= n; i++) {
        s += none * (double)R / (n - i + 1) / i;
        none *= (double)(n - R - (i - 1)) / (n - (i - 1));
        if (none <= 0) break;
    }
    return s;
}
