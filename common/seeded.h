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

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "mr_err.h"

/* Writes DIR/config.json, DIR/model.safetensors and the marker DIR/SEEDED that tells loaders
 * (mr_model.untrained) and users the weights are not trained (DIR must exist). */
int mr_seeded_write(const mr_config *c, const char *dir, uint64_t seed, mr_err *err);
/* The tensors alone (names from c: base model `model.` names, `lm_head.weight` unless tied,
 * exit heads `lm_head.{k}.linear_head.weight`), stored as c->dtype: DIR/model.safetensors when
 * n_shards is 1, else model-0000i-of-0000n.safetensors (contiguous runs of about equal size)
 * plus model.safetensors.index.json, the layout transformers writes. */
int mr_seeded_write_weights(const mr_config *c, const char *dir, uint64_t seed, int n_shards,
                            mr_err *err);
/* n values uniform with mean center and standard deviation std, from the generator of (seed,
 * name): the same draw the weights of a tensor called name get. */
void mr_seeded_fill(float *out, size_t n, uint64_t seed, const char *name, float center,
                    float std);
/* DIR/SEEDED: the marker that tells loaders and users the weights are untrained; note (may be
 * NULL) is appended as further lines. */
int mr_seeded_mark(const char *dir, uint64_t seed, const char *note, mr_err *err);

#endif
