/* twidth.c: validation and random sampling of a training pass's width (see twidth.h). Not
 * here: applying a width to a pass (tpass.c). */
#include "twidth.h"

#include <string.h>

#include "prng.h"

int mr_twidth_check(const mr_twidth *w, const mr_tmodel *m, mr_err *err) {
    if (w->ratio != 1 && w->ratio != 2 && w->ratio != 4 && w->ratio != 8)
        return mr_err_set(err, MR_EINVAL, "compress ratio must be 1, 2, 4 or 8, not %d",
                          w->ratio);
    if (w->n_compress < 0 || w->n_compress > MR_MAX_COMPRESS)
        return mr_err_set(err, MR_EINVAL, "compress layers: at most %d", MR_MAX_COMPRESS);
    if (w->pooling != MR_POOL_MEAN && w->pooling != MR_POOL_ATTENTION)
        return mr_err_set(err, MR_EINVAL, "unknown pooling %d", (int)w->pooling);
    for (int i = 0; i < w->n_compress; i++) {
        int l = w->compress_layers[i];
        if (l < 0 || l >= m->cfg.n_layers || (i > 0 && l <= w->compress_layers[i - 1]))
            return mr_err_set(err, MR_EINVAL, "compress layers must be increasing in 0..%d",
                              m->cfg.n_layers - 1);
        if (w->pooling == MR_POOL_ATTENTION && l == 0 && w->ratio > 1)
            return mr_err_set(err, MR_EINVAL,
                              "attention pooling needs a previous layer: compress layer 0 "
                              "only works with mean pooling");
    }
    return 0;
}

int mr_twidth_step(const mr_tmodel *m, int step) {
    int D = mr_tmodel_deepest(m);
    return step > 0 ? step : D / 8 > 1 ? D / 8 : 1;
}

int mr_twidth_can_compress(const mr_tmodel *m, int step) {
    step = mr_twidth_step(m, step);
    return step <= mr_tmodel_deepest(m) - step;
}

void mr_twidth_sample(mr_twidth *w, const mr_tmodel *m, int step, uint64_t *rng) {
    static const int ratios[4] = {1, 2, 4, 8};
    int D = mr_tmodel_deepest(m);
    step = mr_twidth_step(m, step);
    memset(w, 0, sizeof *w);
    w->ratio = ratios[mr_prng_next(rng) & 3];
    for (int l = step; l <= D - step && w->n_compress < MR_MAX_COMPRESS; l += step)
        if (mr_prng_next(rng) & 1) w->compress_layers[w->n_compress++] = l;
}
