/* twidth.h: the width of one training pass: the compression ratio of the passage tokens, the
 * layers whose input is compressed and the pooling, its validation, and the random width of
 * cascaded self-distillation (matryoshka-method.md section 6) that `mrank train` draws per
 * micro-batch.
 *
 * Width compression pools with mean or attention weights (the engine's mr_pool either way).
 * Attention pooling: at a compress layer idx every passage token is weighted by the attention
 * it receives from its row's last token in layer idx-1, summed over heads and normalised per
 * group, as in the engine (common/forward.c); compress layer 0 therefore needs mean pooling
 * (no previous layer). How the training pass applies a width is tpass.h's business. */
#ifndef MR_TWIDTH_H
#define MR_TWIDTH_H

#include <stdint.h>

#include "tmodel.h"

/* Width of one pass: ratio in {1,2,4,8} at the listed layers (increasing, in [0, n_layers)),
 * pooled by pooling (MR_POOL_MEAN = 0, so zero-initialised widths pool by means; with
 * MR_POOL_ATTENTION and ratio > 1 no compress layer may be 0). */
typedef struct mr_twidth {
    int ratio;
    int n_compress;
    int compress_layers[MR_MAX_COMPRESS];
    mr_pooling pooling;
} mr_twidth;

/* MR_EINVAL, naming the fault, unless w is a valid width for m. */
int mr_twidth_check(const mr_twidth *w, const mr_tmodel *m, mr_err *err);

/* Random width of section 6, generalised: r uniform in {1,2,4,8}; each layer that is a
 * multiple of step in [step, D - step] (D = deepest exit; step 0 -> max(1, D/8), i.e. 4..28
 * for 32 layers) is included with probability 1/2. *rng is a splitmix64 state (prng.h). Sets
 * pooling to MR_POOL_MEAN: the caller chooses the pooling after sampling. */
void mr_twidth_sample(mr_twidth *w, const mr_tmodel *m, int step, uint64_t *rng);
/* The spacing mr_twidth_sample uses for step (0: max(1, D/8)). */
int mr_twidth_step(const mr_tmodel *m, int step);
/* 1 when mr_twidth_sample(m, step) can pick a compress layer (spacing <= D/2), else 0: then
 * every sampled width is full (n_compress 0). */
int mr_twidth_can_compress(const mr_tmodel *m, int step);

#endif
