/* fuzz_adapter.c: libFuzzer target for PEFT LoRA adapters (common/lora.c, and model.c applying
 * them), the folders users bring beside a checkpoint.
 *
 * The input up to its first NUL byte is written as adapter_config.json, the rest as
 * adapter_model.safetensors, in a folder made once; the first call also writes a seeded 2-layer
 * model (no tokenizer: nothing here encodes text). The model is loaded with the adapter merged
 * into its weights, and again unmerged (applied at run time), as `mrank worker --adapter` and
 * `--unmerged` do. A refusal must come with a message naming the adapter folder; an accepted
 * adapter leaves every merged weight and every unmerged A and B finite (a non-finite one would
 * score every pair NaN). Must never crash, leak or read out of bounds. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "model.h"
#include "seeded.h"

static char g_model[64], g_ad[64], g_cfg[96], g_st[96];

static void cleanup(void) {
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", g_model, g_ad);
    if (system(cmd)) {
    }
}

static void fail(const char *what, const mr_err *err) {
    fprintf(stderr, "fuzz_adapter: %s (%s)\n", what, err ? err->msg : "");
    abort();
}

static void start(void) {
    mr_err err = {0};
    strcpy(g_model, "/tmp/mr_fuzz_admodel_XXXXXX");
    strcpy(g_ad, "/tmp/mr_fuzz_adapter_XXXXXX");
    if (!mkdtemp(g_model) || !mkdtemp(g_ad)) abort();
    atexit(cleanup);
    snprintf(g_cfg, sizeof g_cfg, "%s/adapter_config.json", g_ad);
    snprintf(g_st, sizeof g_st, "%s/adapter_model.safetensors", g_ad);
    /* q/o: 16 x 16, k/v: 8 x 16, gate/up: 24 x 16, down: 16 x 24; exit heads 1 x 16 */
    mr_config c = {.arch = MR_ARCH_LLAMA, .n_layers = 2, .d_model = 16, .n_heads = 2,
                   .n_kv_heads = 1, .head_dim = 8, .d_ff = 24, .max_pos = 256,
                   .rope_theta = 10000, .rms_eps = 1e-6f, .bos_token_id = 1, .layer_wise = 1,
                   .start_layer = 1, .layer_sep = 1, .dtype = MR_DT_F32, .vocab_size = 64};
    if (mr_seeded_write(&c, g_model, 1, &err)) fail("seeded model", &err);
}

static void write_file(const char *path, const uint8_t *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp || (n && fwrite(p, 1, n, fp) != n) || fclose(fp)) abort();
}

static int finite_all(const float *v, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* An f32 tensor in the mapping (its data may be unaligned: read by memcpy). */
static int finite_tensor(const mr_tensor *t) {
    for (int64_t i = 0; i < t->numel; i++) {
        float x;
        memcpy(&x, (const char *)t->data + 4 * i, 4);
        if (!isfinite(x)) return 0;
    }
    return 1;
}

/* Every weight the adapter can reach is finite: the merged copies (f32 here), the unmerged
 * low-rank pairs and the exit heads with their deltas. */
static void check_finite(const mr_model *m) {
    const mr_config *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        const mr_linear *lin[] = {&m->layers[l].q,    &m->layers[l].k,  &m->layers[l].v,
                                  &m->layers[l].o,    &m->layers[l].gate, &m->layers[l].up,
                                  &m->layers[l].down};
        for (int k = 0; k < 7; k++) {
            const mr_linear *x = lin[k];
            if (x->w->dtype == MR_DT_F32 && !finite_tensor(x->w))
                fail("a merged weight is not finite", NULL);
            for (int u = 0; u < x->n_lora; u++)
                if (!finite_all(x->lora[u].A, (int64_t)x->lora[u].rank * x->in) ||
                    !finite_all(x->lora[u].B, (int64_t)x->out * x->lora[u].rank))
                    fail("an unmerged LoRA matrix is not finite", NULL);
        }
    }
    if (!finite_all(m->heads, (int64_t)m->n_heads_exit * c->d_model))
        fail("an exit head is not finite", NULL);
    for (int a = 0; a < m->n_adapters; a++)
        if (m->head_delta[a] && !finite_all(m->head_delta[a], (int64_t)m->n_heads_exit * c->d_model))
            fail("an exit head's delta is not finite", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_model[0]) start();
    const uint8_t *nul = memchr(data, 0, size);
    size_t n_cfg = nul ? (size_t)(nul - data) : size;
    write_file(g_cfg, data, n_cfg);
    write_file(g_st, nul ? nul + 1 : data, nul ? size - n_cfg - 1 : 0);
    const char *ads[] = {g_ad};
    for (int merge = 1; merge >= 0; merge--) {
        mr_model_opts o = {.adapters = ads, .n_adapters = 1, .merge = merge, .gemm = "f32"};
        mr_model m;
        mr_err err = {0};
        if (mr_model_load(&m, g_model, &o, &err)) {
            if (!err.msg[0] || !strstr(err.msg, g_ad)) fail("a refusal that does not name the adapter", &err);
            continue;
        }
        check_finite(&m);
        mr_model_close(&m);
    }
    return 0;
}
