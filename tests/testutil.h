/* testutil.h: helpers shared by the engine's cmocka tests (static inline functions, included by
 * each test file that needs them, unused ones without a warning): a small seeded random stream,
 * a tiny model config, and a random PEFT adapter writer. */
#ifndef MR_TESTUTIL_H
#define MR_TESTUTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "config.h"
#include "lora.h"

/* Uniform in [-1, 1) from a 32-bit LCG. */
static inline float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* A 4-layer, 32-wide model of arch (Gemma2 with its softcaps and a 5-token sliding window),
 * exits at every layer, vocabulary 64. */
static inline void tiny_config(mr_config *c, mr_arch arch, mr_dtype dt) {
    *c = (mr_config){.arch = arch, .n_layers = 4, .d_model = 32, .n_heads = 4, .n_kv_heads = 2,
                     .head_dim = 8, .d_ff = 48, .vocab_size = 64, .max_pos = 256,
                     .rope_theta = 10000, .rms_eps = 1e-6f, .bos_token_id = 1,
                     .layer_wise = 1, .start_layer = 1, .layer_sep = 1, .dtype = dt};
    if (arch == MR_ARCH_QWEN2) c->attn_bias = 1;
    if (arch == MR_ARCH_GEMMA2) {
        c->act = MR_ACT_GELU_TANH;
        c->attn_softcap = 50;
        c->final_softcap = 30;
        c->query_pre_attn_scalar = 8;
        c->tie_word_embeddings = 1;
        c->sliding_window = 5;
    }
}

/* Writes DIR as a rank-2 (alpha 4) PEFT adapter over n modules: A ~ 0.2 U[-1,1), B ~ bscale
 * U[-1,1) (bscale 0: an adapter that changes nothing). Fails the test on error. */
static inline void write_random_adapter(const char *dir, int n, char (*names)[64],
                                        const int64_t *in, const int64_t *out, float bscale) {
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
    if (mr_adapter_save(dir, R, 4.0f, 0.0f, n, mods, in, out, (const float *const *)A,
                        (const float *const *)B, MR_DT_F32, &err))
        fail_msg("adapter save: %s", err.msg);
    for (int i = 0; i < n; i++) free(A[i]), free(B[i]);
    free(A), free(B), free(mods);
}

#endif
