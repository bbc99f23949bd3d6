/* dropout.h: LoRA dropout masks of the training pass (PEFT semantics), trainer-internal.
 *
 * With p = lora_dropout > 0 every LoRA pair, the exit heads' included, sees an inverted-dropout
 * copy of its input, y = W x + scale B A (x * mask / (1-p)), while the base path sees x; the
 * backward multiplies the gradient into x through the LoRA path by the same mask. Masks are
 * not stored: each element's keep bit is a counter-based hash (mr_prng_mix) of (seed,
 * drop_step, pass, layer, linear, element), regenerated in the backward, so a run is
 * reproducible (and a resumed one byte-identical) from the caller's drop_step alone.
 * tests/oracle/train_ref.py recomputes the same bits.
 *
 * Only the training pass drops (trainer/tpass.c); the engine (common/) never does. Not here:
 * where the dropped copies go (tpass.c), the dropout probability's validation (tmodel.c). */
#ifndef MR_DROPOUT_H
#define MR_DROPOUT_H

#include <stddef.h>
#include <stdint.h>

#include "prng.h"
#include "tmodel.h"

/* Unit of the exit heads' LoRA inputs: MR__DROP_HEAD + exit (decoder linears use the layer). */
enum { MR__DROP_HEAD = 1 << 20 };

/* Key of one forward pass: (seed, caller's step counter, pass: 0 student, 1 teacher). */
uint64_t mr__drop_pass_key(const mr_tmodel *m, int pass);

/* Key of one LoRA input of the pass: unit = layer (decoder linears, j = MR_LQ..MR_LDOWN) or
 * MR__DROP_HEAD + exit (heads, j = 0). */
uint64_t mr__drop_unit_key(uint64_t pass, int unit, int j);

/* Hash threshold of probability p: p 2^53. */
uint64_t mr__drop_thr(float p);

/* Factor of element i under key: 0 (dropped, hash below thr) or keep = 1/(1-p). Inline: it
 * runs once per element of every dropped LoRA input. */
static inline float mr__drop_f(uint64_t key, size_t i, uint64_t thr, float keep) {
    return (mr_prng_mix(key + (uint64_t)i * MR_PRNG_GOLDEN) >> 11) >= thr ? keep : 0.0f;
}

/* xd (n) = x * mask / (1 - p) under key. */
void mr__drop_copy(float *xd, const float *x, size_t n, uint64_t key, float p);

/* dx (n) += dxd * mask / (1 - p) under key: the gradient through the dropout. */
void mr__drop_add(float *dx, const float *dxd, size_t n, uint64_t key, float p);

#endif
