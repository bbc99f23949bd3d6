/* adamw.c: AdamW with linear warmup and decay (see adamw.h). Two passes over the floats per
 * step: the global gradient norm first (for clipping), then the moment updates, the decoupled
 * weight decay and the bias-corrected step. Not here: which floats are trainable (tmodel.c),
 * saving the moments (checkpoint.c). */
#include "adamw.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int mr_adamw_init(mr_adamw *a, size_t n, float lr, int warmup_steps, int total_steps,
                  float weight_decay, mr_err *err) {
    memset(a, 0, sizeof *a);
    a->lr = lr, a->beta1 = 0.9f, a->beta2 = 0.999f, a->eps = 1e-8f;
    a->weight_decay = weight_decay, a->clip = 0.0f;
    a->warmup_steps = warmup_steps, a->total_steps = total_steps, a->n = n;
    if (!(a->m = calloc(2 * (n ? n : 1), sizeof(float))))
        return mr_err_set(err, MR_ENOMEM, "out of memory for optimizer state (%zu)", n);
    a->v = a->m + n;
    return 0;
}

void mr_adamw_close(mr_adamw *a) {
    if (!a) return;
    free(a->m);
    memset(a, 0, sizeof *a);
}

float mr_adamw_lr(const mr_adamw *a, int step) {
    if (a->warmup_steps > 0 && step <= a->warmup_steps)
        return a->lr * (float)step / (float)a->warmup_steps;
    if (a->total_steps <= a->warmup_steps) return a->lr;
    float f = (float)(a->total_steps - step) / (float)(a->total_steps - a->warmup_steps);
    return a->lr * (f > 0.0f ? f : 0.0f);
}

double mr_adamw_step(mr_adamw *a, float *params, const float *grads) {
    a->step++;
    double nrm = 0.0;
    for (size_t i = 0; i < a->n; i++) nrm += (double)grads[i] * grads[i];
    nrm = sqrt(nrm);
    float gs = a->clip > 0.0f && nrm > a->clip ? (float)(a->clip / nrm) : 1.0f;
    float lr = mr_adamw_lr(a, a->step);
    float bc1 = 1.0f - powf(a->beta1, (float)a->step), bc2 = 1.0f - powf(a->beta2, (float)a->step);
    for (size_t i = 0; i < a->n; i++) {
        float g = grads[i] * gs;
        a->m[i] = a->beta1 * a->m[i] + (1.0f - a->beta1) * g;
        a->v[i] = a->beta2 * a->v[i] + (1.0f - a->beta2) * g * g;
        params[i] -= lr * a->weight_decay * params[i];
        params[i] -= lr * (a->m[i] / bc1) / (sqrtf(a->v[i] / bc2) + a->eps);
    }
    return nrm;
}
