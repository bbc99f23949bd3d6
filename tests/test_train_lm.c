/* test_train_lm.c: the causal-LM pre-training objective (trainer/lm.c).
 *
 * cmocka tests: the LM cross-entropy of the tied head equals a direct computation (double
 * precision, per token); whole-model finite differences of the LM loss against the backward
 * (every tensor, one random direction each, llama and qwen2); a tiny model memorises a few
 * sequences (the loss falls) under AdamW with gradient accumulation. */
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
#include "lm.h"
#include "seeded.h"
#include "tcache.h"
#include "tmodel.h"

static unsigned g_seed = 4242;
static float frand(void) {
    g_seed = g_seed * 1664525u + 1013904223u;
    return (float)((g_seed >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void make_model(char *dir, size_t cap, mr_arch arch) {
    mr_config c = {.arch = arch, .n_layers = 3, .d_model = 16, .n_heads = 4, .n_kv_heads = 2,
                   .head_dim = 4, .d_ff = 24, .vocab_size = 40, .max_pos = 128,
                   .rope_theta = 10000, .rms_eps = 1e-6f, .bos_token_id = 1,
                   .tie_word_embeddings = 1, .layer_wise = 1, .start_layer = 1, .layer_sep = 1,
                   .dtype = MR_DT_F32};
    if (arch == MR_ARCH_QWEN2) c.attn_bias = 1;
    mr_err err = {0};
    snprintf(dir, cap, "%s/tlm-%d-%d", MR_BINARY_DIR, (int)getpid(), (int)arch);
    mkdir(dir, 0755);
    if (mr_seeded_write(&c, dir, 5, &err)) fail_msg("seeded: %s", err.msg);
}
static void rm_model(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) {}
}
static void load(mr_tmodel *m, const char *dir) {
    mr_err err = {0};
    mr_tmodel_opts o = {.mode = MR_TRAIN_FULL, .max_len = 64};
    if (mr_tmodel_load(m, dir, &o, &err)) fail_msg("tmodel load: %s", err.msg);
}

enum { NS = 3 };
static int32_t seq_buf[NS][12];
static const int seq_len[NS] = {7, 12, 2};
static const int32_t *seqs[NS];
static void make_seqs(void) {
    unsigned s = 17;
    for (int i = 0; i < NS; i++) {
        seq_buf[i][0] = 1;
        for (int t = 1; t < 12; t++) seq_buf[i][t] = (int32_t)((s = s * 69069 + 1) >> 20) % 40;
        seqs[i] = seq_buf[i];
    }
}

static double lm_loss(mr_tmodel *m, mr_tcache *c, int grads) {
    mr_err err = {0};
    double l;
    if (grads) mr_tmodel_zero_grad(m);
    if (mr_lm_micro(m, c, seqs, seq_len, NS, 1.0f, &l, &err)) fail_msg("lm: %s", err.msg);
    return l;
}

static void test_xent_direct(void **s) {
    enum { N = 5, D = 6, V = 11 };
    float x[N * D], fn[D], E[V * D];
    for (int i = 0; i < N * D; i++) x[i] = frand();
    for (int i = 0; i < D; i++) fn[i] = 1 + 0.2f * frand();
    for (int i = 0; i < V * D; i++) E[i] = frand();
    int32_t tg[N] = {3, -1, 10, 0, 7};
    int cnt;
    double got;
    mr_err err = {0};
    assert_int_equal(mr_lm_xent(x, N, tg, fn, E, V, D, 1e-6f, 0, 1, NULL, NULL, NULL, &got, &cnt,
                                &err), 0);
    double want = 0;
    for (int t = 0; t < N; t++) {
        if (tg[t] < 0) continue;
        double ms = 0, z[V], mx = -1e30, se = 0;
        for (int j = 0; j < D; j++) ms += (double)x[t * D + j] * x[t * D + j];
        double r = 1 / sqrt(ms / D + 1e-6);
        for (int v = 0; v < V; v++) {
            z[v] = 0;
            for (int j = 0; j < D; j++) z[v] += x[t * D + j] * r * fn[j] * E[v * D + j];
            mx = z[v] > mx ? z[v] : mx;
        }
        for (int v = 0; v < V; v++) se += exp(z[v] - mx);
        want += mx + log(se) - z[tg[t]];
    }
    assert_int_equal(cnt, 4);
    /* 1e-6: f32 logits and log-sum-exp against double, a few f32 ulps (6e-8 each); measured
     * 5.9e-9 (was 1e-4, with no reason) */
    if (fabs(got - want) > 1e-6 * fabs(want)) fail_msg("xent %g want %g", got, want);
}

static void fd_check(mr_arch arch) {
    char dir[512];
    make_model(dir, sizeof dir, arch);
    make_seqs();
    mr_tmodel m;
    load(&m, dir);
    for (size_t i = 0; i < m.n_params; i++) m.params[i] *= 6.0f; /* far from linear */
    for (int t = 0; t < m.n_tensors; t++)
        if (m.tensors[t].ndim == 1 && !strstr(m.tensors[t].name, "bias"))
            for (int64_t i = 0; i < m.tensors[t].shape[0]; i++)
                m.params[m.tensors[t].off + i] = 1 + 0.1f * frand();
    mr_tcache *c;
    mr_err err = {0};
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    lm_loss(&m, c, 1);
    float *g = malloc(sizeof(float) * m.n_train), *save = malloc(sizeof(float) * m.n_train);
    float *u = malloc(sizeof(float) * m.n_train), *p = m.params;
    memcpy(g, m.grads, sizeof(float) * m.n_train);
    memcpy(save, p, sizeof(float) * m.n_train);
    int checked = 0;
    for (int t = 0; t < m.n_tensors; t++) {
        const mr_tparam *tp = &m.tensors[t];
        size_t o = tp->off, n = (size_t)tp->shape[0] * (tp->ndim == 2 ? (size_t)tp->shape[1] : 1);
        double ana = 0, gn = 0;
        for (size_t i = 0; i < n; i++) {
            u[i] = frand();
            ana += (double)g[o + i] * u[i];
            gn += (double)g[o + i] * g[o + i];
        }
        float eps = 1e-3f;
        for (size_t i = 0; i < n; i++) p[o + i] = save[o + i] + eps * u[i];
        double lp = lm_loss(&m, c, 0);
        for (size_t i = 0; i < n; i++) p[o + i] = save[o + i] - eps * u[i];
        double lm = lm_loss(&m, c, 0);
        memcpy(p + o, save + o, sizeof(float) * n);
        double num = (lp - lm) / (2 * eps);
        /* central differences of an f32 loss at eps 1e-3: 2e-2 relative for the O(eps^2)
         * truncation (parameters scaled 6x, far from linear), 1e-3 * |g| for the f32 rounding
         * of the loss over 2 eps, 2e-5 floor; measured worst 0.27 of this bound */
        double tol = 2e-2 * fmax(fabs(ana), fabs(num)) + 1e-3 * sqrt(gn) + 2e-5;
        if (!(fabs(num - ana) <= tol))
            fail_msg("arch %d %s: analytic %.7g numeric %.7g (tol %.3g)", (int)arch, tp->name,
                     ana, num, tol);
        if (strstr(tp->name, "linear_head")) assert_true(gn == 0.0); /* heads unused */
        else checked += gn > 0;
    }
    assert_true(checked >= 3 * 9 + 2); /* every layer tensor, embed, final norm */
    free(g), free(save), free(u);
    mr_tcache_free(c);
    mr_tmodel_close(&m);
    rm_model(dir);
}
static void test_fd_llama(void **s) { fd_check(MR_ARCH_LLAMA); }
static void test_fd_qwen2(void **s) { fd_check(MR_ARCH_QWEN2); }

static void test_lm_loss_falls(void **s) {
    char dir[512];
    make_model(dir, sizeof dir, MR_ARCH_LLAMA);
    make_seqs();
    mr_tmodel m;
    load(&m, dir);
    mr_tcache *c;
    mr_err err = {0};
    assert_int_equal(mr_tcache_new(&c, &err), 0);
    mr_adamw opt;
    assert_int_equal(mr_adamw_init(&opt, m.n_train, 1e-2f, 3, 60, 0.0f, &err), 0);
    double first = 0, last = 0;
    for (int step = 0; step < 60; step++) {
        mr_tmodel_zero_grad(&m);
        double tot = 0, l;
        for (int a = 0; a < 2; a++) { /* accumulation: the sequences split over 2 micro-batches */
            int lo = a ? 1 : 0, n = a ? NS - 1 : 1;
            if (mr_lm_micro(&m, c, seqs + lo, seq_len + lo, n, 0.5f, &l, &err))
                fail_msg("lm: %s", err.msg);
            tot += l / 2;
        }
        mr_adamw_step(&opt, m.params, m.grads);
        if (step == 0) first = tot;
        last = tot;
    }
    if (!(first > 3.0 && last < 0.5 * first)) fail_msg("lm loss %g -> %g", first, last);
    mr_adamw_close(&opt);
    mr_tcache_free(c);
    mr_tmodel_close(&m);
    rm_model(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xent_direct),
        cmocka_unit_test(test_fd_llama),
        cmocka_unit_test(test_fd_qwen2),
        cmocka_unit_test(test_lm_loss_falls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
