/* testutil.h: helpers shared by the engine's cmocka tests (static functions, included by each
 * test file that needs them): a small seeded random stream, and a random PEFT adapter writer. */
#ifndef MR_TESTUTIL_H
#define MR_TESTUTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "lora.h"

/* Uniform in [-1, 1) from a 32-bit LCG. */
static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Writes DIR as a rank-2 (alpha 4) PEFT adapter over n modules: A ~ 0.2 U[-1,1), B ~ bscale
 * U[-1,1) (bscale 0: an adapter that changes nothing). Fails the test on error. */
static void write_random_adapter(const char *dir, int n, char (*names)[64], const int64_t *in,
                                 const int64_t *out, float bscale) {
    enum { R = 2 };
    const char **mods = calloc((size_t)n, sizeof *mods);
    float **A = calloc((size_t)n, sizeof *A), **B = calloc((size_t)n, sizeof *B);
    unsigned s = 11;
    for (int i = 0; i < n; i++) {
        mods[i] = names[i];
        A[i] = malloc(sizeof(float) * R * (size_t)in[i]);
        B[i] = malloc(sizeof(float) * R * (size_t)out[i]);
        for (int j = 0; j < R * in[i]; j++) A[i][j] = 0.2f * frand(&s);
        for (int j = 0; j < R * out[i]; j++) B[i][j] = bscale * frand(&s);
    }
    mr_err err = {0};
    mkdir(dir, 0755);
    if (mr_adapter_save(dir, R, 4.0f, n, mods, in, out, (const float *const *)A,
                        (const float *const *)B, MR_DT_F32, &err))
        fail_msg("adapter save: %s", err.msg);
    for (int i = 0; i < n; i++) free(A[i]), free(B[i]);
    free(A), free(B), free(mods);
}

#endif
