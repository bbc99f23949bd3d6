/* tcache.h: the activation cache of the training pass: every activation the backward needs,
 * plus the backward's scratch, in one float arena and one int arena grown on demand and reused
 * from pass to pass. Callers see an opaque heap object; its layout (tcache_layout.h) is shared
 * only by tcache.c, which sizes and carves it, and tpass.c, which fills and reads it.
 *
 * Not here: the passes themselves (tpass.h). Callers: tpass.c, loss.c, lm.c,
 * cli/cmd_train.c, tests/test_train_*.c. */
#ifndef MR_TCACHE_H
#define MR_TCACHE_H

#include <stdint.h>

#include "mr_err.h"

typedef struct mr_tcache mr_tcache;

/* A new, empty cache in *c (the first pass sizes it); MR_ENOMEM. Free with mr_tcache_free. */
int mr_tcache_new(mr_tcache **c, mr_err *err);
/* Accepts NULL. */
void mr_tcache_free(mr_tcache *c);

/* Tests: on = 1 makes later forwards keep the attention pooling weights that the previous
 * pass left in c instead of recomputing them, so a finite-difference check sees the weights as
 * the constants the backward takes them for. Valid only while every pass in c has the same
 * rows and width (e.g. mr_train_micro without the cascade's teacher pass). */
void mr_tcache_freeze_pool_weights(mr_tcache *c, int on);

/* The residual after the deepest exit layer of the cached pass (all tokens; every layer when
 * the deepest exit is n_layers): (n, d), row r at tokens [off[r], off[r] + len[r]). Valid
 * until the next pass in c. */
const float *mr_tcache_final(const mr_tcache *c, int *n, const int32_t **off,
                             const int32_t **len);

#endif
