/* fusion.c: the pure rules of score fusion (see fusion.h): per-request normalisation, ranks,
 * the weighted sum and reciprocal-rank fusion, over the stages' scores and the request order. */
#include "fusion.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cascade.h"

void mr_fusion_normalize(float *x, int n, mr_fusion_norm norm) {
    double lo = INFINITY, hi = -INFINITY, sum = 0, sq = 0;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(x[i])) {
            lo = fmin(lo, x[i]);
            hi = fmax(hi, x[i]);
            sum += x[i];
            m++;
        }
    double mean = m ? sum / m : 0;
    for (int i = 0; i < n; i++)
        if (!isnan(x[i])) sq += (x[i] - mean) * (x[i] - mean);
    double sd = m ? sqrt(sq / m) : 0;
    double floor_v = 0;         /* the lowest normalised value: what a NaN gets */
    if (m && norm == MR_FUSION_ZSCORE && sd > 0) floor_v = (lo - mean) / sd;
    for (int i = 0; i < n; i++) {
        double v;
        if (isnan(x[i]) || !isfinite(hi - lo)) v = floor_v;
        else if (norm == MR_FUSION_MINMAX) v = hi > lo ? (x[i] - lo) / (hi - lo) : 0;
        else v = sd > 0 ? (x[i] - mean) / sd : 0;
        x[i] = (float)v;
    }
}

int mr_fusion_ranks(const float *x, int n, int *rank, mr_err *err) {
    mr_cand *c = malloc((size_t)(n > 0 ? n : 1) * sizeof *c);
    if (!c) return mr_err_set(err, MR_ENOMEM, "fusion: out of memory");
    for (int i = 0; i < n; i++) c[i] = (mr_cand){i, 0, x[i]};
    mr_cascade_sort(c, n);
    for (int r = 0; r < n; r++) rank[c[r].index] = r + 1;
    free(c);
    return 0;
}

/* Adds weight x (x's normalised values or reciprocal ranks) into acc[0..n). */
static int add_term(const mr_fusion *f, double weight, const float *x, int n, float *tmp,
                    int *rank, double *acc, mr_err *err) {
    if (f->method == MR_FUSION_RRF) {
        int rc = mr_fusion_ranks(x, n, rank, err);
        if (rc) return rc;
        for (int i = 0; i < n; i++) acc[i] += weight / (f->k + rank[i]);
    } else {
        memcpy(tmp, x, (size_t)n * sizeof *tmp);
        mr_fusion_normalize(tmp, n, f->norm);
        for (int i = 0; i < n; i++) acc[i] += weight * tmp[i];
    }
    return 0;
}

int mr_fusion_apply(const mr_fusion *f, const float *const *scores, int deepest, int n,
                    const int *input, float *out, mr_err *err) {
    float *tmp = malloc((size_t)(n > 0 ? n : 1) * sizeof *tmp);
    float *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    int *rank = malloc((size_t)(n > 0 ? n : 1) * sizeof *rank);
    double *acc = calloc((size_t)(n > 0 ? n : 1), sizeof *acc);
    int rc = 0;
    if (!tmp || !order || !rank || !acc) {
        rc = mr_err_set(err, MR_ENOMEM, "fusion: out of memory");
        goto done;
    }
    for (int s = 0; s < f->n; s++) {
        int p = f->pos[s];
        if (p > deepest || !scores[p]) continue;
        if ((rc = add_term(f, f->weight[s], scores[p], n, tmp, rank, acc, err))) goto done;
    }
    if (f->input_weight > 0 && input) {  /* earlier in the request is better: -position */
        for (int i = 0; i < n; i++) order[i] = -(float)input[i];
        if ((rc = add_term(f, f->input_weight, order, n, tmp, rank, acc, err))) goto done;
    }
    for (int i = 0; i < n; i++) out[i] = (float)acc[i];
done:
    free(tmp);
    free(order);
    free(rank);
    free(acc);
    return rc;
}
