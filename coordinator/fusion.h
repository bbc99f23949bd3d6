/* fusion.h: score fusion, the optional final phase of a cascade profile ("fusion" in the
 * config, docs/cluster.md). Pure functions, no I/O; coordinator/fuse.c applies them to a
 * request and tests/test_fusion.c checks them.
 *
 * Fusion combines the scores the profile's stages gave the candidates of the final group (those
 * the deepest stage that ran scored; each of them was scored by every earlier stage too):
 *   weighted: sum over the fused stages of weight * norm(score), norm per request over the
 *             group: min-max ((x - min) / (max - min), 0 when all are equal) or z-score
 *             ((x - mean) / stddev, 0 when stddev is 0); a NaN score counts as the stage's
 *             lowest normalised value;
 *   rrf:      reciprocal-rank fusion, sum of weight / (k + rank), rank 1-based in the stage's
 *             order over the group (the merge rule: score desc, NaN last, index asc).
 * The request's own order can join the sum as one more term (input_weight > 0): the order the
 * caller sent, usually its retriever's ranking, scored -position (earlier is better) and then
 * normalised or ranked like a stage's scores.
 * A fused stage deeper than the deepest that ran (a degraded answer) drops out of the sum. */
#ifndef MR_FUSION_H
#define MR_FUSION_H

#include "mr_err.h"

#define MR_FUSION_MAX 16

typedef enum mr_fusion_method {
    MR_FUSION_NONE = 0,         /* no fusion: the merge rule alone */
    MR_FUSION_WEIGHTED,
    MR_FUSION_RRF
} mr_fusion_method;

typedef enum mr_fusion_norm {
    MR_FUSION_MINMAX = 0,
    MR_FUSION_ZSCORE
} mr_fusion_norm;

typedef struct mr_fusion {
    mr_fusion_method method;
    mr_fusion_norm norm;        /* weighted */
    double k;                   /* rrf, > 0 (60 by default) */
    int n;                      /* fused stages */
    int pos[MR_FUSION_MAX];     /* their positions in the profile */
    double weight[MR_FUSION_MAX];
    double input_weight;        /* the request order's weight ("input_order"; 0: not fused) */
} mr_fusion;

#define MR_FUSION_DEFAULT_K 60.0

/* Normalises x[0..n) in place (NaN: the lowest normalised value; all NaN: all 0). */
void mr_fusion_normalize(float *x, int n, mr_fusion_norm norm);

/* 1-based ranks of x[0..n) in the merge rule's order (score desc, NaN last, index asc) into
 * rank[0..n). MR_ENOMEM. */
int mr_fusion_ranks(const float *x, int n, int *rank, mr_err *err);

/* Fuses: scores[p] (p in [0, deepest]) holds profile position p's raw scores of the group's
 * n members (a row may be NULL for a position that is not fused); input[0..n) their positions
 * in the request (read when f->input_weight > 0); out[0..n) the fused scores. MR_ENOMEM. */
int mr_fusion_apply(const mr_fusion *f, const float *const *scores, int deepest, int n,
                    const int *input, float *out, mr_err *err);

#endif
