/* fusion.c: the pure rules of score fusion (see fusion.h): per-request normalisation, ranks,
 * the weighted sum and reciprocal-rank fusion. */
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

int mr_fusion_apply(const mr_fusion *f, const float *const *scores, int deepest, int n,
                    float *out, mr_err *err) {
    float *tmp = malloc((size_t)(n > 0 ? n : 1) * sizeof *tmp);
    int *rank = malloc((size_t)(n > 0 ? n : 1) * sizeof *rank);
    double *acc = calloc((size_t)(n > 0 ? n : 1), sizeof *acc);
    int rc = 0;
    if (!tmp || !rank || !acc) {
        rc = mr_err_set(err, MR_ENOMEM, "fusion: out of memory");
        goto done;
    }
    for (int s = 0; s < f->n; s++) {
        int p = f->pos[s];
        if (p > deepest || !scores[p]) continue;
        if (f->method == MR_FUSION_RRF) {
            if ((rc = mr_fusion_ranks(scores[p], n, rank, err))) goto done;
            for (int i = 0; i < n; i++) acc[i] += f->weight[s] / (f->k + rank[i]);
        } else {
            memcpy(tmp, scores[p], (size_t)n * sizeof *tmp);
            mr_fusion_normalize(tmp, n, f->norm);
            for (int i = 0; i < n; i++) acc[i] += f->weight[s] * tmp[i];
        }
    }
    for (int i = 0; i < n; i++) out[i] = (float)acc[i];
done:
    free(tmp);
    free(rank);
    free(acc);
    return rc;
}
