/* adamw.h: the optimizer of `mrank train`: AdamW (decoupled weight decay) over a flat array of
 * trainable floats, with linear warmup, linear decay to 0 and optional global-norm clipping.
 *
 * It knows nothing of the model: callers pass the trainable slice of the parameters and its
 * gradients (mr_tmodel params + train_off, grads). Its moments are part of the resume state
 * (checkpoint.h). Callers: cli/cmd_train.c, tests/test_train_*.c. */
#ifndef MR_ADAMW_H
#define MR_ADAMW_H

#include <stddef.h>

#include "mr_err.h"

/* lr warms up linearly over warmup steps, then decays linearly to 0 at total_steps. */
typedef struct mr_adamw {
    float lr, beta1, beta2, eps, weight_decay, clip; /* clip <= 0: off */
    int warmup_steps, total_steps, step;
    size_t n;
    float *m, *v;           /* (n) one allocation */
} mr_adamw;
/* a is caller-owned: zeroed moments for n floats, beta (0.9, 0.999), eps 1e-8, no clipping;
 * MR_ENOMEM. */
int mr_adamw_init(mr_adamw *a, size_t n, float lr, int warmup_steps, int total_steps,
                  float weight_decay, mr_err *err);
/* Accepts NULL, idempotent. */
void mr_adamw_close(mr_adamw *a);
float mr_adamw_lr(const mr_adamw *a, int step); /* step counts from 1 */
/* Applies one update to params (n) from grads (n); returns the gradient norm (pre-clip). */
double mr_adamw_step(mr_adamw *a, float *params, const float *grads);

#endif
