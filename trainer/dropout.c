/* dropout.c: keys and masked copies of LoRA dropout (see dropout.h). The per-element keep
 * factor is the inline mr__drop_f of the header; this file derives the keys and applies the
 * mask to whole buffers (OpenMP over large ones). Not here: which buffers get dropped
 * (tpass.c). */
#include "dropout.h"

uint64_t mr__drop_pass_key(const mr_tmodel *m, int pass) {
    return mr_prng_mix(mr_prng_mix(mr_prng_mix(m->drop_seed ^ 0xd40b0c7ull) ^ m->drop_step) ^
                       (uint64_t)pass);
}

uint64_t mr__drop_unit_key(uint64_t pass, int unit, int j) {
    return mr_prng_mix(pass ^ mr_prng_mix(((uint64_t)unit << 8) + (uint64_t)j));
}

uint64_t mr__drop_thr(float p) { return (uint64_t)((double)p * 9007199254740992.0); }

void mr__drop_copy(float *xd, const float *x, size_t n, uint64_t key, float p) {
    uint64_t thr = mr__drop_thr(p);
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) xd[i] = x[i] * mr__drop_f(key, i, thr, keep);
}

void mr__drop_add(float *dx, const float *dxd, size_t n, uint64_t key, float p) {
    uint64_t thr = mr__drop_thr(p);
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dx[i] += dxd[i] * mr__drop_f(key, i, thr, keep);
}
