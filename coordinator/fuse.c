/* fuse.c: a profile's fusion phase on one request (see coord_internal.h; the rules are
 * fusion.h's): the cascade records each stage's raw scores as it runs, and after the last stage
 * that ran the candidates the deepest stage scored get the fused score in place of that stage's
 * raw score. The merge rule is unchanged (deeper stage first), so the fused group still ranks
 * above the candidates earlier stages dropped, and within it the fused score is the order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"

struct mr__fuse {
    int n_pos, n;
    float *hist;                 /* (n_pos x n) raw score of each candidate at each position */
};

mr__fuse *mr__fuse_begin(const mr__req *r) {
    const mr_cc_profile *pr = &r->co->cfg.profiles[r->profile];
    if (pr->fusion.method == MR_FUSION_NONE) return NULL;
    mr__fuse *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->n_pos = pr->n_stages;
    f->n = r->n;
    if (!(f->hist = malloc((size_t)f->n_pos * (size_t)f->n * sizeof *f->hist))) {
        free(f);
        return NULL;
    }
    for (size_t i = 0; i < (size_t)f->n_pos * (size_t)f->n; i++) f->hist[i] = NAN;
    return f;
}

void mr__fuse_record(mr__fuse *f, const mr__req *r, int pos, const int *active, int n_active) {
    if (!f) return;
    for (int i = 0; i < n_active; i++)
        f->hist[(size_t)pos * f->n + active[i]] = r->score[active[i]];
}

int mr__fuse_finish(mr__fuse *f, mr__req *r) {
    if (!f) return 0;
    const mr_fusion *fu = &r->co->cfg.profiles[r->profile].fusion;
    int deepest = -1, m = 0, rc = 0;
    for (int i = 0; i < r->n; i++)
        if (r->stage[i] > deepest) deepest = r->stage[i];
    int *group = malloc((size_t)r->n * sizeof *group);
    if (!r->logit) r->logit = malloc((size_t)r->n * sizeof *r->logit);
    float *rows = malloc(((size_t)f->n_pos + 1) * (size_t)r->n * sizeof *rows);
    const float *row[MR_CC_MAX_STAGES] = {0};
    mr_err err = {0};
    if (!group || !rows || !r->logit) {
        rc = -1;
        goto done;
    }
    if (deepest < 0) goto done;
    for (int i = 0; i < r->n; i++)
        if (r->stage[i] == deepest) group[m++] = i;
    for (int p = 0; p <= deepest; p++) {   /* the group's scores, position by position */
        float *dst = rows + (size_t)p * r->n;
        for (int k = 0; k < m; k++) dst[k] = f->hist[(size_t)p * f->n + group[k]];
        row[p] = dst;
    }
    float *out = rows + (size_t)f->n_pos * r->n;
    if ((rc = mr_fusion_apply(fu, row, deepest, m, group, out, &err))) goto done;
    for (int k = 0; k < m; k++) {
        r->logit[group[k]] = r->score[group[k]];
        r->score[group[k]] = out[k];
    }
    r->fused_stage = deepest;
done:
    free(group);
    free(rows);
    return rc ? -1 : 0;
}

void mr__fuse_free(mr__fuse *f) {
    if (!f) return;
    free(f->hist);
    free(f);
}
