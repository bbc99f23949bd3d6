/* seeded.h: seeded checkpoints in the Hugging Face format, for tests, benches,
 * `mrank init-checkpoint` and the fresh models `mrank train` starts from.
 *
 * Every tensor is drawn from its own generator seeded by (seed, tensor name), so a tensor's
 * values do not depend on which others are written; data is streamed in chunks, so a
 * Mistral-7B-shaped bf16 checkpoint (14.5 GB) is written in bounded memory. Weights are uniform
 * with the standard deviation of a small-init LLM; norms are 1 (Gemma: 0 under its (1 + w)
 * form) plus a little noise so that norm weights matter in parity checks; exit heads every
 * layer_sep layers from start_layer on. The weights are untrained: a model scored from them
 * checks code paths and memory, never quality. */
#ifndef MR_SEEDED_H
#define MR_SEEDED_H

#include <stdint.h>

#include "config.h"
#include "mr_err.h"

/* Writes DIR/config.json, DIR/model.safetensors and the marker DIR/SEEDED that tells loaders
 * (mr_model.untrained) and users the weights are not trained (DIR must exist). */
int mr_seeded_write(const mr_config *c, const char *dir, uint64_t seed, mr_err *err);

#endif
