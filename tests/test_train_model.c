/* test_train_model.c: the training-mode model (trainer/tmodel.c, tpass.c, tcache.c, twidth.c,
 * dropout.c, loss.c, adamw.c).
 *
 * cmocka tests: the training forward scores every exit like the engine's mr_model_score at
 * any width (llama, qwen2 bias, gemma2 softcaps + sliding window); LoRA with B = 0 equals the
 * base; an adapter saved by the trainer scores the same in the engine (merged and unmerged); whole-model finite differences of the loss against the backward (full and LoRA,
 * compressed width); the cascade anchor rule; width sampling; a few AdamW steps lower the loss.
 * LoRA dropout: finite differences under a fixed mask (same drop_step), p = 0 is the plain
 * path bit for bit, masks change the loss and repeat for the same counter, the dropped LoRA
 * term is unbiased (inverted dropout), the engine never drops, and the range check.
 * Attention pooling: the forward equals the engine's (pooling attention) and differs from
 * mean pooling; finite differences with the pooling weights frozen (the stop-gradient the
 * backward assumes), and unfrozen for the tensors the weights do not depend on.
 *
 * Dump mode (used by tests/train_vs_torch.sh, compared with PyTorch autograd in
 * tests/oracle/train_ref.py):
 *     test_train_model dump BATCH.json OUT_DIR
 * writes OUT_DIR/grads.safetensors, OUT_DIR/params.safetensors (trainable tensors) and
 * OUT_DIR/result.json {"loss", "ce", "ext", "cascade", "scores" (n_exits x n_rows)}. In LoRA
 * mode the batch's "lora_dropout", "seed" and "drop_step" select the dropout masks, which the
 * PyTorch side recomputes. */
#include <cjson/cJSON.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "adamw.h"
#include "loss.h"
#include "model.h"
#include "seeded.h"
#include "tcache.h"
#include "tmodel.h"
#include "tpass.h"
#include "twidth.h"

static unsigned g_seed = 777;
static float frand(void) {
    g_seed = g_seed * 1664525u + 1013904223u;
    return (float)((g_seed >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void tiny_config(mr_config *c, mr_arch arch) {
    *c = (mr_config){.arch = arch, .n_layers = 4, .d_model = 16, .n_heads = 4, .n_kv_heads = 2,
                     .head_dim = 4, .d_ff = 24, .vocab_size = 40, .max_pos = 128,
                     .rope_theta = 10000, .rms_eps = 1e-6f, .bos_token_id = 1,
                     .layer_wise = 1, .start_layer = 1, .layer_sep = 1, .dtype = MR_DT_F32};
    if (arch == MR_ARCH_QWEN2) c->attn_bias = 1;
    if (arch == MR_ARCH_GEMMA2) {
        c->act = MR_ACT_GELU_TANH;
        c->attn_softcap = 3;
        c->final_softcap = 2;
        c->query_pre_attn_scalar = 8;
        c->tie_word_embeddings = 1;
        c->sliding_window = 5;
    }
}

static void make_model(char *dir, size_t cap, mr_arch arch) {
    mr_config cfg;
    mr_err err = {0};
    tiny_config(&cfg, arch);
    snprintf(dir, cap, "%s/ttrain-%d-%d", MR_BINARY_DIR, (int)getpid(), (int)arch);
    mkdir(dir, 0755);
    if (mr_seeded_write(&cfg, dir, 3, &err)) fail_msg("seeded: %s", err.msg);
}

static void rm_model(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) {}
}

/* A batch of 2 queries x 3 candidates with passages of different lengths. */
enum { NG = 2, GG = 3, NR = NG * GG };
static int32_t tok_q[NR][4], tok_p[NR][9], tok_s[NR][3];
static void make_rows(mr_row *rows) {
    static const int nq[NR] = {2, 3, 2, 4, 1, 2}, np[NR] = {5, 9, 0, 7, 3, 8},
                     ns[NR] = {2, 1, 3, 2, 2, 3};
    unsigned s = 5;
    for (int r = 0; r < NR; r++) {
        for (int i = 0; i < 4; i++) tok_q[r][i] = (int32_t)((s = s * 69069 + 1) >> 20) % 40;
        for (int i = 0; i < 9; i++) tok_p[r][i] = (int32_t)((s = s * 69069 + 1) >> 20) % 40;
        for (int i = 0; i < 3; i++) tok_s[r][i] = (int32_t)((s = s * 69069 + 1) >> 20) % 40;
        rows[r] = (mr_row){tok_q[r], nq[r], tok_p[r], np[r], tok_s[r], ns[r]};
    }
}

static void load_p(mr_tmodel *m, const char *dir, mr_train_mode mode, float b_std, float p) {
    mr_err err = {0};
    mr_tmodel_opts o = {.mode = mode, .lora_rank = 3, .lora_alpha = 6, .lora_dropout = p,
                        .seed = 9, .lora_b_std = b_std, .max_len = 64};
    if (mr_tmodel_load(m, dir, &o, &err)) fail_msg("tmodel load: %s", err.msg);
}
static void load(mr_tmodel *m, const char *dir, mr_train_mode mode, float b_std) {
    load_p(m, dir, mode, b_std, 0.0f);
}

/* Makes the seeded weights (std 0.02) larger so the model is far from linear. */
static void roughen(mr_tmodel *m) {
    for (int t = 0; t < m->n_tensors; t++) {
        const mr_tparam *p = &m->tensors[t];
        if (strstr(p->name, "lora_")) continue;
        size_t n = (size_t)p->shape[0] * (p->ndim == 2 ? (size_t)p->shape[1] : 1);
        float *x = m->params + p->off;
        int norm = p->ndim == 1 && !strstr(p->name, "bias");
        for (size_t i = 0; i < n; i++) x[i] = norm ? x[i] + 0.1f * frand() : 8.0f * x[i];
    }
}

/* ---- forward equals the engine ---- */

static void check_vs_engine(mr_arch arch, mr_pooling pooling) {
    char dir[512];
    make_model(dir, sizeof dir, arch);
    mr_model em;
    mr_ctx ctx;
    mr_err err = {0};
    assert_int_equal(mr_model_load(&em, dir, NULL, &err), 0);
    assert_int_equal(mr_ctx_init(&ctx, &em, 256, 16, 64, &err), 0);
    mr_tmodel m;
    load(&m, dir, MR_TRAIN_FULL, 0);
    mr_tcache *c;
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    mr_row rows[NR];
    make_rows(rows);
    /* attention pooling: layer 0 has no previous layer; {1, 2}: weights on a pooled layout */
    mr_twidth widths[4] = {{1, 0, {0}, pooling},
                           {2, 2, {1, 3}, pooling},
                           {4, 2, {pooling == MR_POOL_ATTENTION, 2}, pooling},
                           {8, 1, {2}, pooling}};
    /* 1e-5 of max(|s|, 1): the training forward and the engine are separate code summing in
     * other orders (f32): measured at most 1.7e-7 (attention pooling), 1.5e-7 (mean) over the
     * three archs, ~60x; a wrong pooling weight or layout is off by 1e-4 or more (below). Mean
     * pooling had 1e-4 here, with no reason. */
    float tol = 1e-5f;
    for (int wi = 0; wi < 4; wi++) {
        mr_run_opts o;
        mr_run_opts_init(&o, &em);
        o.n_exits = m.n_exits;
        for (int e = 0; e < m.n_exits; e++) o.exits[e] = m.exit_layer[e];
        o.ratio = widths[wi].ratio;
        o.n_compress = widths[wi].n_compress;
        memcpy(o.compress_layers, widths[wi].compress_layers, sizeof o.compress_layers);
        o.pooling = pooling;
        float want[NR * MR_MAX_EXITS], got[NR * MR_MAX_EXITS];
        assert_int_equal(mr_model_score(&ctx, rows, NR, &o, want, NULL, &err), 0);
        if (mr_tmodel_forward(&m, c, rows, NR, &widths[wi], got, &err))
            fail_msg("forward: %s", err.msg);
        for (int r = 0; r < NR; r++)
            for (int e = 0; e < m.n_exits; e++) {
                float a = got[e * NR + r], b = want[r * m.n_exits + e];
                if (!(fabsf(a - b) <= tol * fmaxf(1.0f, fabsf(b))))
                    fail_msg("arch %d pooling %d width %d row %d exit %d: train %.7g engine %.7g",
                             (int)arch, (int)pooling, wi, r, e, a, b);
            }
        if (pooling == MR_POOL_ATTENTION && widths[wi].ratio > 1) {
            /* the weights matter: mean pooling of the same width scores differently */
            mr_twidth wm = widths[wi];
            wm.pooling = MR_POOL_MEAN;
            float mean[NR * MR_MAX_EXITS];
            assert_int_equal(mr_tmodel_forward(&m, c, rows, NR, &wm, mean, &err), 0);
            float dmax = 0;
            for (int i = 0; i < NR * m.n_exits; i++) dmax = fmaxf(dmax, fabsf(mean[i] - got[i]));
            /* measured at least 1.8e-4 apart, 1000x the forward noise above */
            if (!(dmax > 1e-4f)) fail_msg("width %d: attention = mean pooling (%g)", wi, dmax);
        }
    }
    if (pooling == MR_POOL_ATTENTION) { /* as the engine: compress layer 0 needs mean */
        mr_twidth w0 = {2, 1, {0}, MR_POOL_ATTENTION};
        float got[NR * MR_MAX_EXITS];
        assert_int_not_equal(mr_tmodel_forward(&m, c, rows, NR, &w0, got, &err), 0);
        assert_non_null(strstr(err.msg, "attention pooling"));
        w0.ratio = 1; /* ratio 1: nothing is pooled */
        assert_int_equal(mr_tmodel_forward(&m, c, rows, NR, &w0, got, &err), 0);
    }
    mr_tcache_free(c);
    mr_tmodel_close(&m);
    mr_ctx_close(&ctx);
    mr_model_close(&em);
    rm_model(dir);
}
static void test_forward_llama(void **s) { check_vs_engine(MR_ARCH_LLAMA, MR_POOL_MEAN); }
static void test_forward_qwen2(void **s) { check_vs_engine(MR_ARCH_QWEN2, MR_POOL_MEAN); }
static void test_forward_gemma2(void **s) { check_vs_engine(MR_ARCH_GEMMA2, MR_POOL_MEAN); }
/* attention pooling: the weights from the training forward's own attention of layer idx-1 */
static void test_forward_attn_llama(void **s) {
    check_vs_engine(MR_ARCH_LLAMA, MR_POOL_ATTENTION);
}
static void test_forward_attn_qwen2(void **s) {
    check_vs_engine(MR_ARCH_QWEN2, MR_POOL_ATTENTION);
}
static void test_forward_attn_gemma2(void **s) {
    check_vs_engine(MR_ARCH_GEMMA2, MR_POOL_ATTENTION);
}

/* ---- LoRA with B = 0 is the base ---- */

static void test_lora_zero_is_base(void **s) {
    char dir[512];
    make_model(dir, sizeof dir, MR_ARCH_LLAMA);
    mr_tmodel a, b;
    load(&a, dir, MR_TRAIN_FULL, 0);
    load(&b, dir, MR_TRAIN_LORA, 0);
    assert_true(b.n_train > 0 && b.n_train < a.n_train);
    mr_tcache *c;
    mr_err err = {0};
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    mr_row rows[NR];
    make_rows(rows);
    mr_twidth w = {2, 1, {1}, MR_POOL_MEAN};
    float sa[NR * 8], sb[NR * 8];
    assert_int_equal(mr_tmodel_forward(&a, c, rows, NR, &w, sa, &err), 0);
    assert_int_equal(mr_tmodel_forward(&b, c, rows, NR, &w, sb, &err), 0);
    /* B = 0 at load: the LoRA path adds exactly 0 (measured 0; was < 1e-6) */
    for (int i = 0; i < NR * a.n_exits; i++) assert_true(sa[i] == sb[i]);
    mr_tcache_free(c);
    mr_tmodel_close(&a);
    mr_tmodel_close(&b);
    rm_model(dir);
}

/* ---- a saved adapter scores the same in the engine ---- */

static void test_adapter_roundtrip(void **s) {
    char dir[512], ad[600];
    make_model(dir, sizeof dir, MR_ARCH_GEMMA2);
    snprintf(ad, sizeof ad, "%s/adapter", dir);
    mkdir(ad, 0755);
    mr_tmodel m;
    load_p(&m, dir, MR_TRAIN_LORA, 0.3f, 0.25f); /* trained with dropout: the engine ignores it */
    mr_err err = {0};
    if (mr_tmodel_save_adapter(&m, ad, &err)) fail_msg("save adapter: %s", err.msg);
    char cfg[700], text[1 << 14];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", ad);
    FILE *f = fopen(cfg, "rb");
    assert_non_null(f);
    text[fread(text, 1, sizeof text - 1, f)] = 0;
    fclose(f);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    assert_true(cJSON_GetObjectItem(j, "lora_dropout")->valuedouble == 0.25);
    cJSON_Delete(j);
    mr_tcache *c;
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    mr_row rows[NR];
    make_rows(rows);
    mr_twidth w = {2, 1, {2}, MR_POOL_MEAN};
    float got[NR * 8], want[NR * 8], dropped[NR * 8];
    assert_int_equal(mr_tmodel_forward(&m, c, rows, NR, &w, dropped, &err), 0);
    m.lora_dropout = 0.0f; /* eval mode */
    assert_int_equal(mr_tmodel_forward(&m, c, rows, NR, &w, got, &err), 0);
    int differ = 0;
    /* 1e-4: far above the f32 noise of one forward (~1e-7); measured >= 0.039 apart */
    for (int i = 0; i < NR * m.n_exits; i++) differ += fabsf(dropped[i] - got[i]) > 1e-4f;
    assert_true(differ > NR * m.n_exits / 2);
    for (int merge = 0; merge < 2; merge++) {
        const char *ads[1] = {ad};
        mr_model_opts mo = {.adapters = ads, .n_adapters = 1, .merge = merge};
        mr_model em;
        mr_ctx ctx;
        if (mr_model_load(&em, dir, &mo, &err)) fail_msg("engine load: %s", err.msg);
        assert_int_equal(mr_ctx_init(&ctx, &em, 256, 16, 64, &err), 0);
        mr_run_opts o;
        mr_run_opts_init(&o, &em);
        o.n_exits = m.n_exits;
        for (int e = 0; e < m.n_exits; e++) o.exits[e] = m.exit_layer[e];
        o.ratio = 2, o.n_compress = 1, o.compress_layers[0] = 2;
        assert_int_equal(mr_model_score(&ctx, rows, NR, &o, want, NULL, &err), 0);
        for (int r = 0; r < NR; r++)
            for (int e = 0; e < m.n_exits; e++) {
                float a = got[e * NR + r], b = want[r * m.n_exits + e];
                /* 2e-5: LoRA applied beside W (training) vs merged into W or unmerged in the
                 * engine, other summation orders: measured at most 1.25e-6, ~16x (was 1e-4) */
                if (!(fabsf(a - b) <= 2e-5f * fmaxf(1.0f, fabsf(b))))
                    fail_msg("merge %d row %d exit %d: train %.7g engine %.7g", merge, r, e, a, b);
            }
        mr_ctx_close(&ctx);
        mr_model_close(&em);
    }
    mr_tcache_free(c);
    mr_tmodel_close(&m);
    rm_model(dir);
}

/* ---- whole-model finite differences ---- */

static double batch_loss_o(mr_tmodel *m, mr_tcache *c, const mr_tbatch *b, const mr_twidth *w,
                           int grads, const mr_loss_opts *lo) {
    mr_err err = {0};
    mr_tloss l;
    mr_loss_opts o = lo ? *lo : (mr_loss_opts){0};
    if (grads) mr_tmodel_zero_grad(m);
    if (mr_train_micro(m, c, b, w, &o, 1.0f, &l, &err)) fail_msg("micro: %s", err.msg);
    return l.total;
}
static double batch_loss(mr_tmodel *m, mr_tcache *c, const mr_tbatch *b, const mr_twidth *w,
                         int grads) {
    return batch_loss_o(m, c, b, w, grads, NULL);
}

/* p: LoRA dropout; every loss below runs at the same drop_step, so under the same masks.
 * freeze: the attention pooling weights of the first pass are kept for the perturbed ones
 * (mr_tcache_freeze_pool_weights), the constants the stop-gradient backward assumes.
 * from_layer > 0: only tensors of layers >= from_layer, the norm and the heads. fd_eps: the
 * step (2e-3; gemma2 under attention pooling is curved enough at 2e-3 that its embedding's
 * central difference is 5% off, converging to the analytic value as the step shrinks). */
static void fd_check_x(mr_arch arch, mr_train_mode mode, const mr_twidth *w, int with_teacher,
                       float drop, int freeze, int from_layer, float fd_eps) {
    char dir[512];
    make_model(dir, sizeof dir, arch);
    mr_tmodel m;
    load_p(&m, dir, mode, 0.3f, drop);
    m.drop_step = 12345;
    roughen(&m);
    mr_tcache *c;
    mr_err err = {0};
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    mr_row rows[NR];
    make_rows(rows);
    float teacher[NR] = {1.0f, -0.5f, 0.3f, 2.0f, 0.1f, -1.0f};
    mr_tbatch b = {rows, NG, GG, with_teacher ? teacher : NULL};
    batch_loss(&m, c, &b, w, 1);
    if (freeze) mr_tcache_freeze_pool_weights(c, 1);
    float *g = malloc(sizeof(float) * m.n_train), *save = malloc(sizeof(float) * m.n_train);
    float *u = malloc(sizeof(float) * m.n_train), *p = m.params + m.train_off;
    memcpy(g, m.grads, sizeof(float) * m.n_train);
    memcpy(save, p, sizeof(float) * m.n_train);
    /* per tensor: one random direction (tensors with tiny gradients are skipped) */
    for (int t = 0; t < m.n_tensors; t++) {
        const mr_tparam *tp = &m.tensors[t];
        if (!tp->trainable) continue;
        const char *ln = strstr(tp->name, "layers.");
        if (from_layer > 0 && (strstr(tp->name, "embed") || (ln && atoi(ln + 7) < from_layer)))
            continue;
        size_t o = tp->off - m.train_off,
               n = (size_t)tp->shape[0] * (tp->ndim == 2 ? (size_t)tp->shape[1] : 1);
        double ana = 0, gn = 0;
        for (size_t i = 0; i < n; i++) {
            u[i] = frand();
            ana += (double)g[o + i] * u[i];
            gn += (double)g[o + i] * g[o + i];
        }
        float eps = fd_eps;
        for (size_t i = 0; i < n; i++) p[o + i] = save[o + i] + eps * u[i];
        double lp = batch_loss(&m, c, &b, w, 0);
        for (size_t i = 0; i < n; i++) p[o + i] = save[o + i] - eps * u[i];
        double lm = batch_loss(&m, c, &b, w, 0);
        memcpy(p + o, save + o, sizeof(float) * n);
        double num = (lp - lm) / (2 * eps);
        /* central differences of an f32 loss: 2e-2 relative for the O(eps^2) truncation on
         * these deliberately curved models, 1e-3 * |g| for the f32 rounding of the loss
         * divided by 2 eps, 2e-5 absolute floor; measured worst 0.58 of this bound */
        double tol = 2e-2 * fmax(fabs(ana), fabs(num)) + 1e-3 * sqrt(gn) + 2e-5;
        if (!(fabs(num - ana) <= tol))
            fail_msg("arch %d mode %d p %g %s: analytic %.7g numeric %.7g (tol %.3g)", (int)arch,
                     (int)mode, drop, tp->name, ana, num, tol);
    }
    free(g), free(save), free(u);
    mr_tcache_free(c);
    mr_tmodel_close(&m);
    rm_model(dir);
}
static void fd_check_p(mr_arch arch, mr_train_mode mode, const mr_twidth *w, int with_teacher,
                       float drop) {
    fd_check_x(arch, mode, w, with_teacher, drop, 0, 0, 2e-3f);
}
static void fd_check(mr_arch arch, mr_train_mode mode, const mr_twidth *w, int with_teacher) {
    fd_check_p(arch, mode, w, with_teacher, 0.0f);
}
static void test_fd_full_llama(void **s) {
    mr_twidth w = {2, 2, {1, 2}, MR_POOL_MEAN};
    fd_check(MR_ARCH_LLAMA, MR_TRAIN_FULL, &w, 1);
}
static void test_fd_full_gemma2(void **s) {
    mr_twidth w = {4, 1, {2}, MR_POOL_MEAN};
    fd_check(MR_ARCH_GEMMA2, MR_TRAIN_FULL, &w, 0);
}
static void test_fd_lora_qwen2(void **s) {
    mr_twidth w = {2, 1, {0}, MR_POOL_MEAN};
    fd_check(MR_ARCH_QWEN2, MR_TRAIN_LORA, &w, 1);
}

/* Attention pooling, every trainable tensor (layers before the compress layer included:
 * their gradient reaches them through weight * upstream) under frozen weights. */
static void test_fd_attn_full_llama(void **s) {
    mr_twidth w = {2, 2, {1, 2}, MR_POOL_ATTENTION};
    fd_check_x(MR_ARCH_LLAMA, MR_TRAIN_FULL, &w, 1, 0.0f, 1, 0, 2e-3f);
}
static void test_fd_attn_full_gemma2(void **s) {
    mr_twidth w = {4, 1, {2}, MR_POOL_ATTENTION};
    fd_check_x(MR_ARCH_GEMMA2, MR_TRAIN_FULL, &w, 0, 0.0f, 1, 0, 5e-4f);
}
static void test_fd_attn_lora_qwen2(void **s) {
    mr_twidth w = {2, 1, {1}, MR_POOL_ATTENTION};
    fd_check_x(MR_ARCH_QWEN2, MR_TRAIN_LORA, &w, 1, 0.0f, 1, 0, 2e-3f);
}
/* Without freezing, the tensors from the compress layer on (and the heads) still match: the
 * weights depend only on earlier layers. */
static void test_fd_attn_unfrozen_late(void **s) {
    mr_twidth w = {2, 1, {3}, MR_POOL_ATTENTION};
    fd_check_x(MR_ARCH_LLAMA, MR_TRAIN_FULL, &w, 1, 0.0f, 0, 3, 2e-3f);
}

/* ---- LoRA dropout ---- */

/* Finite differences of A and B (every layer, every linear, the heads) under one mask: the
 * earlier layers' pairs check the gradient into x through the masked LoRA path too. */
static void test_fd_lora_dropout_llama(void **s) {
    mr_twidth w = {2, 2, {1, 2}, MR_POOL_MEAN};
    fd_check_p(MR_ARCH_LLAMA, MR_TRAIN_LORA, &w, 1, 0.3f);
}
static void test_fd_lora_dropout_gemma2(void **s) {
    mr_twidth w = {4, 1, {0}, MR_POOL_MEAN};
    fd_check_p(MR_ARCH_GEMMA2, MR_TRAIN_LORA, &w, 0, 0.3f);
}

/* Loss and gradients of one micro-batch (cascade on: the teacher pass draws masks too). */
static double loss_grads(mr_tmodel *m, mr_tcache *c, const mr_tbatch *b, const mr_twidth *w,
                         float *g) {
    mr_loss_opts o = {.cascade = 1};
    double l = batch_loss_o(m, c, b, w, 1, &o);
    memcpy(g, m->grads, sizeof(float) * m->n_train);
    return l;
}

static void test_dropout_masks(void **s) {
    char dir[512];
    make_model(dir, sizeof dir, MR_ARCH_QWEN2);
    mr_tmodel a, b;
    load_p(&a, dir, MR_TRAIN_LORA, 0.3f, 0.0f);
    load_p(&b, dir, MR_TRAIN_LORA, 0.3f, 0.3f);
    mr_tcache *c;
    mr_err err = {0};
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    mr_row rows[NR];
    make_rows(rows);
    mr_tbatch bt = {rows, NG, GG, NULL};
    mr_twidth w = {2, 1, {1}, MR_POOL_MEAN};
    size_t n = a.n_train, sz = sizeof(float) * n;
    float *g0 = malloc(sz), *g1 = malloc(sz), *g2 = malloc(sz);
    /* p = 0: the counter is ignored, and a p > 0 model in eval mode is the same path */
    a.drop_step = 1;
    double l0 = loss_grads(&a, c, &bt, &w, g0);
    a.drop_step = 99;
    double l1 = loss_grads(&a, c, &bt, &w, g1);
    assert_true(l0 == l1 && !memcmp(g0, g1, sz));
    b.lora_dropout = 0.0f;
    l1 = loss_grads(&b, c, &bt, &w, g1);
    assert_true(l0 == l1 && !memcmp(g0, g1, sz));
    /* p > 0: the masks change the loss, repeat for the same counter, not for another */
    b.lora_dropout = 0.3f;
    b.drop_step = 7;
    l1 = loss_grads(&b, c, &bt, &w, g1);
    assert_true(fabs(l1 - l0) > 1e-4); /* masks move the loss by >= 0.43 (measured) */
    double l2 = loss_grads(&b, c, &bt, &w, g2);
    assert_true(l1 == l2 && !memcmp(g1, g2, sz));
    b.drop_step = 8;
    l2 = loss_grads(&b, c, &bt, &w, g2);
    assert_true(fabs(l2 - l1) > 1e-4 && memcmp(g1, g2, sz)); /* another mask: >= 0.43 too */
    free(g0), free(g1), free(g2);
    mr_tcache_free(c);
    mr_tmodel_close(&a);
    mr_tmodel_close(&b);
    rm_model(dir);
}

/* Inverted dropout is unbiased: with a small LoRA delta (near-linear scores) the mean over
 * masks of the LoRA effect (dropped - base) is the undropped effect; a missing 1/(1-p) or a
 * keep probability of p instead of 1-p would miss by 30% or more. */
static void test_dropout_unbiased(void **s) {
    char dir[512];
    make_model(dir, sizeof dir, MR_ARCH_LLAMA);
    mr_tmodel m, base;
    load_p(&m, dir, MR_TRAIN_LORA, 0.02f, 0.3f);
    load_p(&base, dir, MR_TRAIN_LORA, 0.0f, 0.0f); /* B = 0: the base model */
    mr_tcache *c;
    mr_err err = {0};
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    mr_row rows[NR];
    make_rows(rows);
    mr_twidth w = {1, 0, {0}, MR_POOL_MEAN};
    enum { N = 400 };
    int ne = m.n_exits;
    float s0[NR * 8], se[NR * 8], sd[NR * 8];
    double mean[NR * 8] = {0};
    assert_int_equal(mr_tmodel_forward(&base, c, rows, NR, &w, s0, &err), 0);
    for (int k = 0; k < N; k++) {
        m.drop_step = (uint64_t)k;
        assert_int_equal(mr_tmodel_forward(&m, c, rows, NR, &w, sd, &err), 0);
        for (int i = 0; i < NR * ne; i++) mean[i] += (double)(sd[i] - s0[i]) / N;
    }
    m.lora_dropout = 0.0f;
    assert_int_equal(mr_tmodel_forward(&m, c, rows, NR, &w, se, &err), 0);
    double num = 0, den = 0;
    for (int i = 0; i < NR * ne; i++) {
        double want = (double)se[i] - s0[i];
        num += (mean[i] - want) * (mean[i] - want);
        den += want * want;
    }
    if (!(den > 0 && sqrt(num / den) < 0.1))
        fail_msg("mean dropped LoRA effect off by %.3g (relative)", sqrt(num / den));
    mr_tcache_free(c);
    mr_tmodel_close(&m);
    mr_tmodel_close(&base);
    rm_model(dir);
}

/* Both kinds of LoRA pair drop: with only the heads' B (or only the layers' B) non-zero,
 * scores under dropout differ from eval mode. */
static void test_dropout_everywhere(void **s) {
    char dir[512];
    make_model(dir, sizeof dir, MR_ARCH_LLAMA);
    mr_tcache *c;
    mr_err err = {0};
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    mr_row rows[NR];
    make_rows(rows);
    mr_twidth w = {1, 0, {0}, MR_POOL_MEAN};
    for (int heads = 0; heads < 2; heads++) {
        mr_tmodel m;
        load_p(&m, dir, MR_TRAIN_LORA, 0.3f, 0.5f);
        for (int t = 0; t < m.n_tensors; t++) { /* keep B of the heads or of the layers */
            const mr_tparam *p = &m.tensors[t];
            int is_head = strstr(p->name, "lm_head.") != NULL;
            if (strstr(p->name, "lora_B") && is_head != heads)
                memset(m.params + p->off, 0, sizeof(float) * (size_t)p->shape[0] * p->shape[1]);
        }
        float sd[NR * 8], se[NR * 8];
        assert_int_equal(mr_tmodel_forward(&m, c, rows, NR, &w, sd, &err), 0);
        m.lora_dropout = 0.0f;
        assert_int_equal(mr_tmodel_forward(&m, c, rows, NR, &w, se, &err), 0);
        int differ = 0;
        /* 1e-5: 100x the f32 noise of one forward; measured >= 0.018 apart */
        for (int i = 0; i < NR * m.n_exits; i++) differ += fabsf(sd[i] - se[i]) > 1e-5f;
        if (differ < NR * m.n_exits / 2)
            fail_msg("%s only: %d of %d scores change under dropout", heads ? "heads" : "layers",
                     differ, NR * m.n_exits);
        mr_tmodel_close(&m);
    }
    mr_tcache_free(c);
    rm_model(dir);
}

static void test_dropout_range(void **s) {
    char dir[512];
    make_model(dir, sizeof dir, MR_ARCH_LLAMA);
    const float bad[3] = {-0.1f, 1.0f, NAN};
    for (int i = 0; i < 3; i++) {
        mr_tmodel m;
        mr_err err = {0};
        mr_tmodel_opts o = {.mode = MR_TRAIN_LORA, .lora_rank = 3, .lora_dropout = bad[i]};
        assert_int_equal(mr_tmodel_load(&m, dir, &o, &err), MR_EINVAL);
        assert_non_null(strstr(err.msg, "lora_dropout"));
    }
    rm_model(dir);
}

/* ---- anchors and width sampling ---- */

static void test_anchor_rule(void **s) {
    mr_tmodel m = {0};
    m.n_exits = 29; /* Mistral-7B: exits 4..32 */
    for (int k = 0; k < 29; k++) m.exit_layer[k] = 4 + k;
    mr_loss_opts o = {.cascade = 1};
    for (int l = 4; l <= 7; l++) assert_int_equal(mr_tloss_anchor(&m, &o, l), 8);
    for (int l = 8; l <= 15; l++) assert_int_equal(mr_tloss_anchor(&m, &o, l), 16);
    for (int l = 16; l <= 23; l++) assert_int_equal(mr_tloss_anchor(&m, &o, l), 24);
    for (int l = 24; l <= 32; l++) assert_int_equal(mr_tloss_anchor(&m, &o, l), 32);
    m.n_exits = 4; /* tiny: exits 1..4, step max(1, 4/4) = 1 -> a(l) = l + 1 */
    for (int k = 0; k < 4; k++) m.exit_layer[k] = 1 + k;
    for (int l = 1; l <= 3; l++) assert_int_equal(mr_tloss_anchor(&m, &o, l), l + 1);
    o.cascade_step = 2;
    assert_int_equal(mr_tloss_anchor(&m, &o, 1), 2);
    assert_int_equal(mr_tloss_anchor(&m, &o, 2), 4);
    assert_int_equal(mr_tloss_anchor(&m, &o, 3), 4);
}

static void test_width_sample(void **s) {
    mr_tmodel m = {0};
    m.n_exits = 29;
    for (int k = 0; k < 29; k++) m.exit_layer[k] = 4 + k;
    uint64_t rng = 1;
    int seen_r[9] = {0}, seen_l[33] = {0};
    for (int i = 0; i < 400; i++) {
        mr_twidth w;
        mr_twidth_sample(&w, &m, 0, &rng);
        seen_r[w.ratio]++;
        for (int j = 0; j < w.n_compress; j++) {
            int l = w.compress_layers[j];
            assert_true(l % 4 == 0 && l >= 4 && l <= 28);
            if (j) assert_true(l > w.compress_layers[j - 1]);
            seen_l[l]++;
        }
    }
    for (int r = 1; r <= 8; r *= 2) assert_true(seen_r[r] > 60);
    for (int l = 4; l <= 28; l += 4) assert_true(seen_l[l] > 140 && seen_l[l] < 260);
}

/* ---- training lowers the loss ---- */

static void test_training_lowers_loss(void **s) {
    char dir[512];
    make_model(dir, sizeof dir, MR_ARCH_LLAMA);
    for (int mode = 0; mode < 2; mode++) {
        mr_tmodel m;
        load(&m, dir, (mr_train_mode)mode, 0);
        roughen(&m);
        mr_tcache *c;
        mr_err err = {0};
        assert_int_equal(mr_tcache_new(&c, &err), 0);
        mr_row rows[NR];
        make_rows(rows);
        mr_tbatch b = {rows, NG, GG, NULL};
        mr_adamw opt;
        assert_int_equal(mr_adamw_init(&opt, m.n_train, mode ? 1e-2f : 3e-3f, 2, 30, 0.01f, &err),
                         0);
        mr_loss_opts lo = {.cascade = 1};
        uint64_t rng = 42;
        double first = 0, last = 0;
        for (int step = 0; step < 30; step++) {
            mr_tmodel_zero_grad(&m);
            mr_tloss l, tot = {0};
            for (int a = 0; a < 2; a++) { /* accumulation over 2 micro-batches */
                mr_twidth w;
                mr_twidth_sample(&w, &m, 1, &rng);
                if (mr_train_micro(&m, c, &b, &w, &lo, 0.5f, &l, &err))
                    fail_msg("micro: %s", err.msg);
                tot.ce += l.ce / 2;
            }
            mr_adamw_step(&opt, m.params + m.train_off, m.grads);
            if (step == 0) first = tot.ce;
            last = tot.ce;
        }
        /* two groups memorised in 30 steps: ce falls 4 orders of magnitude (measured ratio
         * <= 8.6e-5 in both modes); a wrong gradient or update stays near 1. Was 0.7. */
        if (!(last < 0.01 * first)) fail_msg("mode %d: ce %g -> %g", mode, first, last);
        assert_true(mr_adamw_lr(&opt, 1) == opt.lr / 2); /* warm-up step 1 of 2: exact */
        assert_true(mr_adamw_lr(&opt, 30) == 0.0f);
        mr_adamw_close(&opt);
        mr_tcache_free(c);
        mr_tmodel_close(&m);
    }
    rm_model(dir);
}

/* ---- dump mode ---- */

static int32_t *ids_of(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    int32_t *p = malloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
    for (int i = 0; i < *n; i++) p[i] = cJSON_GetArrayItem(a, i)->valueint;
    return p;
}

static double num(const cJSON *j, const char *k, double dflt) {
    const cJSON *v = cJSON_GetObjectItem(j, k);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static int dump(const char *batch_path, const char *out_dir) {
    FILE *f = fopen(batch_path, "rb");
    if (!f) return perror(batch_path), 2;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    if (!j) return fprintf(stderr, "%s: bad json\n", batch_path), 2;
    const char *mode = cJSON_GetStringValue(cJSON_GetObjectItem(j, "mode"));
    mr_tmodel_opts mo = {.mode = mode && !strcmp(mode, "lora") ? MR_TRAIN_LORA : MR_TRAIN_FULL,
                         .lora_rank = (int)num(j, "lora_rank", 4),
                         .lora_alpha = (float)num(j, "lora_alpha", 8),
                         .seed = (uint64_t)num(j, "seed", 1),
                         .lora_b_std = (float)num(j, "lora_b_std", 0.05), .max_len = 256,
                         .lora_dropout = (float)num(j, "lora_dropout", 0)};
    mr_tmodel m;
    mr_err err = {0};
    if (mr_tmodel_load(&m, cJSON_GetStringValue(cJSON_GetObjectItem(j, "model")), &mo, &err))
        return fprintf(stderr, "load: %s\n", err.msg), 2;
    m.drop_step = (uint64_t)num(j, "drop_step", 0);
    const cJSON *groups = cJSON_GetObjectItem(j, "groups");
    int B = cJSON_GetArraySize(groups), G = cJSON_GetArraySize(cJSON_GetArrayItem(groups, 0));
    mr_row *rows = calloc((size_t)B * G, sizeof *rows);
    for (int g = 0; g < B; g++)
        for (int k = 0; k < G; k++) {
            const cJSON *r = cJSON_GetArrayItem(cJSON_GetArrayItem(groups, g), k);
            mr_row *w = &rows[g * G + k];
            w->q = ids_of(cJSON_GetObjectItem(r, "q"), &w->nq);
            w->p = ids_of(cJSON_GetObjectItem(r, "p"), &w->np);
            w->s = ids_of(cJSON_GetObjectItem(r, "s"), &w->ns);
        }
    float *teacher = NULL;
    const cJSON *tj = cJSON_GetObjectItem(j, "teacher");
    if (cJSON_IsArray(tj)) {
        teacher = malloc(sizeof(float) * (size_t)B * G);
        for (int g = 0; g < B; g++)
            for (int k = 0; k < G; k++)
                teacher[g * G + k] =
                    (float)cJSON_GetArrayItem(cJSON_GetArrayItem(tj, g), k)->valuedouble;
    }
    mr_twidth w = {.ratio = (int)num(j, "ratio", 1)};
    const cJSON *cl = cJSON_GetObjectItem(j, "compress_layers");
    w.n_compress = cJSON_GetArraySize(cl);
    for (int i = 0; i < w.n_compress; i++) w.compress_layers[i] = cJSON_GetArrayItem(cl, i)->valueint;
    const char *pool = cJSON_GetStringValue(cJSON_GetObjectItem(j, "pooling"));
    w.pooling = pool && !strcmp(pool, "attention") ? MR_POOL_ATTENTION : MR_POOL_MEAN;
    mr_loss_opts lo = {.cascade = (int)num(j, "cascade", 0),
                       .cascade_step = (int)num(j, "cascade_step", 0),
                       .cascade_weight = (float)num(j, "cascade_weight", 1)};
    mr_tbatch b = {rows, B, G, teacher};
    mr_tcache *c;
    mr_tloss l;
    char path[1024];
    int rc = mr_tcache_new(&c, &err);
    mr_tmodel_zero_grad(&m);
    if (!rc) rc = mr_train_micro(&m, c, &b, &w, &lo, 1.0f, &l, &err);
    snprintf(path, sizeof path, "%s/grads.safetensors", out_dir);
    if (!rc) rc = mr_tmodel_save_trainable(&m, path, 1, &err);
    snprintf(path, sizeof path, "%s/params.safetensors", out_dir);
    if (!rc) rc = mr_tmodel_save_trainable(&m, path, 0, &err);
    float *scores = malloc(sizeof(float) * (size_t)m.n_exits * B * G);
    if (!rc) rc = mr_tmodel_forward(&m, c, rows, B * G, &w, scores, &err);
    if (rc) return fprintf(stderr, "dump: %s\n", err.msg), 2;
    snprintf(path, sizeof path, "%s/result.json", out_dir);
    FILE *o = fopen(path, "w");
    fprintf(o, "{\"loss\": %.9g, \"ce\": %.9g, \"ext\": %.9g, \"cascade\": %.9g, \"scores\": [",
            l.total, l.ce, l.ext, l.cascade);
    for (int e = 0; e < m.n_exits; e++) {
        fprintf(o, "%s[", e ? ", " : "");
        for (int r = 0; r < B * G; r++)
            fprintf(o, "%s%.9g", r ? ", " : "", scores[(size_t)e * B * G + r]);
        fprintf(o, "]");
    }
    fprintf(o, "]}\n");
    fclose(o);
    for (int r = 0; r < B * G; r++) {
        free((void *)rows[r].q), free((void *)rows[r].p), free((void *)rows[r].s);
    }
    free(rows), free(teacher), free(scores);
    mr_tcache_free(c);
    mr_tmodel_close(&m);
    cJSON_Delete(j);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "dump")) return dump(argv[2], argv[3]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_llama),     cmocka_unit_test(test_forward_qwen2),
        cmocka_unit_test(test_forward_gemma2),    cmocka_unit_test(test_forward_attn_llama),
        cmocka_unit_test(test_forward_attn_qwen2), cmocka_unit_test(test_forward_attn_gemma2),
        cmocka_unit_test(test_lora_zero_is_base),
        cmocka_unit_test(test_adapter_roundtrip),
        cmocka_unit_test(test_fd_full_llama),     cmocka_unit_test(test_fd_full_gemma2),
        cmocka_unit_test(test_fd_lora_qwen2),     cmocka_unit_test(test_fd_attn_full_llama),
        cmocka_unit_test(test_fd_attn_full_gemma2), cmocka_unit_test(test_fd_attn_lora_qwen2),
        cmocka_unit_test(test_fd_attn_unfrozen_late),
        cmocka_unit_test(test_fd_lora_dropout_llama),
        cmocka_unit_test(test_fd_lora_dropout_gemma2),
        cmocka_unit_test(test_dropout_masks),     cmocka_unit_test(test_dropout_unbiased),
        cmocka_unit_test(test_dropout_everywhere), cmocka_unit_test(test_dropout_range),
        cmocka_unit_test(test_anchor_rule),
        cmocka_unit_test(test_width_sample),      cmocka_unit_test(test_training_lowers_loss),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
