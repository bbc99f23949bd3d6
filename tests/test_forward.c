/* test_forward.c: kernels against naive double-precision references, and properties of the
 * forward pass that must hold whatever the weights: one pass with many exits equals one pass
 * per exit; ratio 1 equals no compression; a row scores the same alone or packed with others;
 * pruning keeps the right rows and leaves survivors' scores unchanged; unmerged LoRA equals
 * merged LoRA; a stop check (mr_run_opts.stop) ends the pass between layers, leaving the exits
 * reached unchanged; bad input is refused with a message. Numerical parity with the spec is checked
 * against the PyTorch oracle in tests/oracle_grid.sh. */
#define _GNU_SOURCE /* memmem */
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "kernels.h"
#include "lora.h"
#include "model.h"
#include "seeded.h"
#include "testutil.h"

/* Tolerances of assert_close, relative to max(|want|, 1), each with its reason (measured on
 * the seeded models below, -march=native x86-64, OpenBLAS):
 *  KERNEL_TOL: one f32 kernel against a double reference over a few dozen terms differs by a
 *    few f32 ulps (2^-24 = 6e-8): measured at most 1.3e-7 (rmsnorm, rope, swiglu, geglu).
 *  ATTN_TOL: attention's f32 dot products (head dim up to 64) and softmax over up to 9 keys:
 *    measured 3.9e-7 (outputs) and 2.4e-7 (last-row probabilities); ~10x.
 *  BATCH_TOL: the same rows through the whole model in another batch (alone or packed, fewer
 *    rows after pruning, other exits, LoRA merged into W or applied beside it): the GEMMs sum
 *    in another order (OpenBLAS blocks by row count; (W + sBA)x vs Wx + sB(Ax)): measured at
 *    most 7.0e-7 (a row alone vs packed), 2.1e-7 (merged vs unmerged); ~14x.
 *  0: two runs of the same computation are bit-equal (the engine is deterministic): ratio 1
 *    is the uncompressed path, exit 1 precedes any pruning, a zero-B adapter adds exactly 0.
 * "Must differ" checks use thresholds above BATCH_TOL's noise and well below the effect. */
#define KERNEL_TOL 1e-6
#define ATTN_TOL 4e-6
#define BATCH_TOL 1e-5

static void assert_close(float got, double want, double rel, const char *what) {
    double tol = rel * fmax(1.0, fabs(want));
    if (!(fabs(got - want) <= tol)) fail_msg("%s: got %.9g want %.9g (tol %.3g)", what, got, want, tol);
}

/* ---- kernels ---- */

static void test_rmsnorm(void **state) {
    enum { N = 3, D = 37 };
    float x[N * D], w[D], y[N * D];
    unsigned s = 1;
    for (int i = 0; i < N * D; i++) x[i] = 3 * frand(&s);
    for (int i = 0; i < D; i++) w[i] = frand(&s);
    for (int off = 0; off < 2; off++) {
        mr_rmsnorm(y, x, w, N, D, 1e-5f, (float)off);
        for (int i = 0; i < N; i++) {
            double ss = 0;
            for (int j = 0; j < D; j++) ss += (double)x[i * D + j] * x[i * D + j];
            double r = 1.0 / sqrt(ss / D + 1e-5);
            for (int j = 0; j < D; j++)
                assert_close(y[i * D + j], x[i * D + j] * r * (w[j] + off), KERNEL_TOL,
                             "rmsnorm");
        }
    }
}

static void test_rope(void **state) {
    enum { T = 5, H = 2, HD = 8, MAXP = 16 };
    float x[T * H * HD], ref[T * H * HD], table[MAXP * HD];
    int32_t pos[T] = {0, 1, 7, 3, 15};
    unsigned s = 2;
    for (int i = 0; i < T * H * HD; i++) ref[i] = x[i] = frand(&s);
    mr_rope_table(table, MAXP, HD, 10000.0);
    mr_rope(x, pos, T, H, HD, table);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < HD / 2; i++) {
                double th = pos[t] * pow(10000.0, -2.0 * i / HD);
                const float *v = ref + (t * H + h) * HD;
                assert_close(x[(t * H + h) * HD + i], v[i] * cos(th) - v[i + HD / 2] * sin(th),
                             KERNEL_TOL, "rope lo");
                assert_close(x[(t * H + h) * HD + i + HD / 2],
                             v[i + HD / 2] * cos(th) + v[i] * sin(th), KERNEL_TOL, "rope hi");
            }
}

static void test_glu(void **state) {
    enum { N = 4000 };
    float *g = malloc(sizeof(float) * N), *u = malloc(sizeof(float) * N);
    float *o = malloc(sizeof(float) * N);
    unsigned s = 5;
    for (int i = 0; i < N; i++) g[i] = 30 * frand(&s) * frand(&s), u[i] = frand(&s);
    g[0] = -100, g[1] = 100, g[2] = 0, g[3] = -88.5f;
    mr_swiglu(o, g, u, N);
    for (int i = 0; i < N; i++)
        assert_close(o[i], g[i] / (1.0 + exp(-(double)g[i])) * u[i], KERNEL_TOL, "swiglu");
    mr_geglu_tanh(o, g, u, N);
    for (int i = 0; i < N; i++) {
        double x = g[i];
        double want = 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))) * u[i];
        assert_close(o[i], want, KERNEL_TOL, "geglu");
    }
    free(g), free(u), free(o);
}

/* Naive causal attention for one row in double. */
static void naive_attention(double *out, const float *q, const float *k, const float *v, int L,
                            int nh, int nkv, int hd, float scale, float cap, int window,
                            double *last_probs) {
    int g = nh / nkv;
    double *p = malloc(sizeof(double) * L);
    for (int i = 0; i < L * nh * hd; i++) out[i] = 0;
    for (int j = 0; j < L; j++) last_probs[j] = 0;
    for (int h = 0; h < nh; h++)
        for (int t = 0; t < L; t++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= t; j++) {
                double s = 0;
                for (int i = 0; i < hd; i++)
                    s += (double)q[(t * nh + h) * hd + i] * k[(j * nkv + h / g) * hd + i];
                s *= scale;
                if (cap > 0) s = cap * tanh(s / cap);
                if (window > 0 && t - j >= window) s = -INFINITY;
                p[j] = s;
                if (s > mx) mx = s;
            }
            for (int j = 0; j <= t; j++) sum += p[j] = isinf(p[j]) ? 0 : exp(p[j] - mx);
            for (int j = 0; j <= t; j++) {
                p[j] /= sum;
                if (t == L - 1) last_probs[j] += p[j];
                for (int i = 0; i < hd; i++)
                    out[(t * nh + h) * hd + i] += p[j] * v[(j * nkv + h / g) * hd + i];
            }
        }
    free(p);
}

/* Three packed rows (9, 1 and 6 tokens) against the naive reference, plain, with a softcap and
 * with a sliding window. head_dim 64 takes the register-blocked path of the value sum. */
static void check_attention(int NH, int NKV, int HD) {
    enum { MAXL = 9, T = 16 };
    int32_t off[3] = {0, 9, 10}, len[3] = {9, 1, 6};
    float *q = malloc(sizeof(float) * T * NH * HD), *k = malloc(sizeof(float) * T * NKV * HD);
    float *v = malloc(sizeof(float) * T * NKV * HD), *out = malloc(sizeof(float) * T * NH * HD);
    float *scratch = malloc(sizeof(float) * mr_attention_scratch(MAXL, HD)), probs[T];
    double *ref = malloc(sizeof(double) * MAXL * NH * HD), ref_p[MAXL];
    unsigned s = 3;
    for (int i = 0; i < T * NH * HD; i++) q[i] = 2 * frand(&s);
    for (int i = 0; i < T * NKV * HD; i++) k[i] = 2 * frand(&s), v[i] = frand(&s);
    float scale = 1.0f / sqrtf((float)HD) * 2;
    for (int variant = 0; variant < 3; variant++) {
        float cap = variant == 1 ? 1.5f : 0.0f;
        int window = variant == 2 ? 3 : 0;
        mr_attn_args a = {.q = q, .k = k, .v = v, .out = out, .off = off, .len = len,
                          .n_rows = 3, .n_heads = NH, .n_kv = NKV, .head_dim = HD,
                          .scale = scale, .softcap = cap, .window = window,
                          .last_probs = probs, .scratch = scratch, .max_len = MAXL};
        mr_attention(&a);
        for (int r = 0; r < 3; r++) {
            naive_attention(ref, q + off[r] * NH * HD, k + off[r] * NKV * HD,
                            v + off[r] * NKV * HD, len[r], NH, NKV, HD, scale, cap, window,
                            ref_p);
            for (int i = 0; i < len[r] * NH * HD; i++)
                assert_close(out[off[r] * NH * HD + i], ref[i], ATTN_TOL, "attention out");
            for (int j = 0; j < len[r]; j++)
                assert_close(probs[off[r] + j], ref_p[j], ATTN_TOL, "attention last probs");
        }
    }
    free(q), free(k), free(v), free(out), free(scratch), free(ref);
}

static void test_attention(void **state) {
    check_attention(4, 2, 8);
    check_attention(4, 1, 64);
}

/* ---- model ---- */

typedef struct fixture {
    char dir[256];
    mr_model m;
    mr_ctx c;
} fixture;

static fixture *make_fixture_dt(mr_arch arch, const mr_model_opts *mo, mr_dtype dt) {
    fixture *f = calloc(1, sizeof *f);
    mr_config cfg;
    mr_err err = {0};
    tiny_config(&cfg, arch, dt);
    snprintf(f->dir, sizeof f->dir, "%s/tfwd-%d-%d", MR_BINARY_DIR, (int)getpid(), (int)arch);
    mkdir(f->dir, 0755);
    if (mr_seeded_write(&cfg, f->dir, 7, &err)) fail_msg("seeded: %s", err.msg);
    if (mr_model_load(&f->m, f->dir, mo, &err)) fail_msg("load: %s", err.msg);
    if (mr_ctx_init(&f->c, &f->m, 512, 16, 64, &err)) fail_msg("ctx: %s", err.msg);
    return f;
}

static fixture *make_fixture(mr_arch arch, const mr_model_opts *mo) {
    return make_fixture_dt(arch, mo, MR_DT_F32);
}

static void free_fixture(fixture *f) {
    char cmd[300];
    mr_ctx_close(&f->c);
    mr_model_close(&f->m);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd)) { /* best effort */ }
    free(f);
}

/* n rows of varying passage length (row i: 3 + 5 * i tokens), ids from a fixed stream. */
static int32_t g_ids[16][64];
static void make_rows(mr_row *rows, int n) {
    static const int32_t q[4] = {1, 10, 11, 12}, s[3] = {13, 14, 15};
    unsigned st = 9;
    for (int i = 0; i < n; i++) {
        int np = 3 + 5 * i;
        for (int j = 0; j < np; j++) g_ids[i][j] = 2 + (int32_t)((frand(&st) + 1) * 30);
        rows[i] = (mr_row){q, 4, g_ids[i], np, s, 3};
    }
}

static void score(fixture *f, const mr_row *rows, int n, const mr_run_opts *o, float *out) {
    mr_err err = {0};
    if (mr_model_score(&f->c, rows, n, o, out, NULL, &err)) fail_msg("score: %s", err.msg);
}

static void opts(mr_run_opts *o, const mr_model *m, int n, const int *exits) {
    mr_run_opts_init(o, m);
    o->n_exits = n;
    memcpy(o->exits, exits, sizeof(int) * n);
}

static void check_exits_in_one_pass(mr_arch arch) {
    fixture *f = make_fixture(arch, NULL);
    mr_row rows[5];
    mr_run_opts o;
    float all[5 * 4], one[5];
    make_rows(rows, 5);
    opts(&o, &f->m, 4, (int[]){1, 2, 3, 4});
    score(f, rows, 5, &o, all);
    for (int e = 0; e < 4; e++) {
        opts(&o, &f->m, 1, (int[]){e + 1});
        score(f, rows, 5, &o, one);
        for (int r = 0; r < 5; r++) assert_close(all[r * 4 + e], one[r], BATCH_TOL, "exit alone");
    }
    /* packing: each row alone */
    opts(&o, &f->m, 4, (int[]){1, 2, 3, 4});
    for (int r = 0; r < 5; r++) {
        float alone[4];
        score(f, &rows[r], 1, &o, alone);
        for (int e = 0; e < 4; e++) assert_close(alone[e], all[r * 4 + e], BATCH_TOL, "row alone");
    }
    /* distinct rows give distinct scores (the pass is not constant): measured 0.16 apart */
    assert_true(fabsf(all[0 * 4 + 3] - all[4 * 4 + 3]) > 1e-3);
    free_fixture(f);
}

static void test_exits_llama(void **state) { check_exits_in_one_pass(MR_ARCH_LLAMA); }
static void test_exits_qwen2(void **state) { check_exits_in_one_pass(MR_ARCH_QWEN2); }
static void test_exits_gemma2(void **state) { check_exits_in_one_pass(MR_ARCH_GEMMA2); }

/* mr_run_opts.stop: asked before each layer from the second on; a nonzero answer ends the
 * pass there. */
typedef struct stop_log {
    int stop_at;            /* answer 1 from this layer on (0: never) */
    int asked[8], n_asked;
} stop_log;

static int stop_at_layer(void *user, int layer) {
    stop_log *s = user;
    if (s->n_asked < 8) s->asked[s->n_asked++] = layer;
    return s->stop_at && layer >= s->stop_at;
}

static void test_stop_between_layers(void **state) {
    fixture *f = make_fixture(MR_ARCH_LLAMA, NULL);
    mr_row rows[5];
    mr_run_opts o;
    float all[5 * 4], part[5 * 4];
    int depth[5];
    mr_err err = {0};
    make_rows(rows, 5);
    opts(&o, &f->m, 4, (int[]){1, 2, 3, 4});
    score(f, rows, 5, &o, all);
    /* a check that never stops: asked before layers 1, 2, 3 (0-based), same scores */
    stop_log never = {0};
    o.stop = stop_at_layer;
    o.stop_user = &never;
    score(f, rows, 5, &o, part);
    assert_int_equal(never.n_asked, 3);
    for (int l = 0; l < 3; l++) assert_int_equal(never.asked[l], l + 1);
    for (int i = 0; i < 5 * 4; i++) assert_close(part[i], all[i], BATCH_TOL, "never stopped");
    /* stop before layer 2: exits 1 and 2 as before, 3 and 4 NAN, depth 2, not asked again */
    stop_log two = {.stop_at = 2};
    o.stop_user = &two;
    assert_int_equal(mr_model_score(&f->c, rows, 5, &o, part, depth, &err), 0);
    assert_int_equal(two.n_asked, 2);
    for (int r = 0; r < 5; r++) {
        for (int e = 0; e < 2; e++) assert_close(part[r * 4 + e], all[r * 4 + e], BATCH_TOL, "before");
        for (int e = 2; e < 4; e++) assert_true(isnan(part[r * 4 + e]));
        assert_int_equal(depth[r], 2);
    }
    /* stop before any exit: all NAN, depth 0 */
    opts(&o, &f->m, 1, (int[]){4});
    stop_log one = {.stop_at = 1};
    o.stop = stop_at_layer;
    o.stop_user = &one;
    assert_int_equal(mr_model_score(&f->c, rows, 5, &o, part, depth, &err), 0);
    for (int r = 0; r < 5; r++) {
        assert_true(isnan(part[r]));
        assert_int_equal(depth[r], 0);
    }
    free_fixture(f);
}

static void test_compression(void **state) {
    fixture *f = make_fixture(MR_ARCH_LLAMA, NULL);
    mr_row rows[4];
    mr_run_opts o;
    float base[4 * 2], r1[4 * 2], r2[4 * 2], r2a[4 * 2];
    make_rows(rows, 4);
    opts(&o, &f->m, 2, (int[]){2, 4});
    score(f, rows, 4, &o, base);
    o.n_compress = 2;
    o.compress_layers[0] = 1;
    o.compress_layers[1] = 3;
    score(f, rows, 4, &o, r1); /* ratio 1: no compression */
    for (int i = 0; i < 8; i++) assert_close(r1[i], base[i], 0, "ratio 1");
    o.ratio = 2;
    score(f, rows, 4, &o, r2);
    o.pooling = MR_POOL_ATTENTION;
    score(f, rows, 4, &o, r2a);
    /* exit 2 only sees the compression at layer 1; rows with >= 2 passage tokens change
     * (measured at least 4.5e-3), and attention pooling differs from mean pooling (at least
     * 6.2e-5): both thresholds are above the batching noise (7e-7) that a no-op would show */
    for (int r = 0; r < 4; r++) {
        assert_true(fabsf(r2[r * 2] - base[r * 2]) > 1e-4);
        assert_true(fabsf(r2a[r * 2 + 1] - r2[r * 2 + 1]) > 1e-5);
    }
    /* compress layers at or beyond the deepest exit change nothing */
    o.pooling = MR_POOL_MEAN;
    o.n_compress = 1;
    o.compress_layers[0] = 2;
    o.n_exits = 1;
    o.exits[0] = 2;
    score(f, rows, 4, &o, r2);
    /* 1e-6: the same rows and batch, one exit fewer: measured 9.0e-8 (~11x) */
    for (int r = 0; r < 4; r++) assert_close(r2[r], base[r * 2], 1e-6, "compress after exit");
    free_fixture(f);
}

static void test_pruning(void **state) {
    fixture *f = make_fixture(MR_ARCH_LLAMA, NULL);
    mr_row rows[6];
    mr_run_opts o;
    float base[6 * 3], pr[6 * 3];
    int depth[6];
    mr_err err = {0};
    make_rows(rows, 6);
    opts(&o, &f->m, 3, (int[]){1, 2, 4});
    score(f, rows, 6, &o, base);
    o.n_prune = 2;
    o.prune[0] = (mr_prune){.layer = 1, .top_k = 4};
    o.prune[1] = (mr_prune){.layer = 2, .top_k = 2};
    assert_int_equal(mr_model_score(&f->c, rows, 6, &o, pr, depth, &err), 0);
    int kept1 = 0, kept2 = 0;
    for (int r = 0; r < 6; r++) {
        assert_close(pr[r * 3], base[r * 3], 0, "exit 1 for all rows");
        int better = 0;
        for (int j = 0; j < 6; j++)
            better += base[j * 3] > base[r * 3] || (base[j * 3] == base[r * 3] && j < r);
        if (better < 4) {
            kept1++;
            assert_close(pr[r * 3 + 1], base[r * 3 + 1], BATCH_TOL, "survivor at exit 2");
            if (!isnan(pr[r * 3 + 2])) {
                kept2++;
                assert_close(pr[r * 3 + 2], base[r * 3 + 2], BATCH_TOL, "survivor at exit 4");
                assert_int_equal(depth[r], 4);
            } else {
                assert_int_equal(depth[r], 2);
            }
        } else {
            assert_true(isnan(pr[r * 3 + 1]) && isnan(pr[r * 3 + 2]));
            assert_int_equal(depth[r], 1);
        }
    }
    assert_int_equal(kept1, 4);
    assert_int_equal(kept2, 2);
    /* an attention-pooled compression right after a prune exit: survivors keep their scores */
    float cbase[6 * 3], cpr[6 * 3];
    opts(&o, &f->m, 3, (int[]){1, 2, 4});
    o.ratio = 2;
    o.pooling = MR_POOL_ATTENTION;
    o.n_compress = 1;
    o.compress_layers[0] = 2;
    score(f, rows, 6, &o, cbase);
    o.n_prune = 1;
    o.prune[0] = (mr_prune){.layer = 2, .top_k = 3};
    score(f, rows, 6, &o, cpr);
    int survivors = 0;
    for (int r = 0; r < 6; r++) {
        if (isnan(cpr[r * 3 + 2])) continue;
        survivors++;
        assert_close(cpr[r * 3 + 2], cbase[r * 3 + 2], BATCH_TOL, "survivor after pooled exit");
    }
    assert_int_equal(survivors, 3);
    o.n_compress = 0;
    o.ratio = 1;
    o.pooling = MR_POOL_MEAN;
    /* threshold pruning: min_score above every score drops all rows after exit 1 */
    o.n_prune = 1;
    o.prune[0] = (mr_prune){.layer = 1, .top_k = 0, .min_score = 1e9f};
    score(f, rows, 6, &o, pr);
    for (int r = 0; r < 6; r++) assert_true(isnan(pr[r * 3 + 2]));
    free_fixture(f);
}

static void write_adapter(const char *dir, const mr_model *m, float bscale) {
    const mr_config *c = &m->cfg;
    int n = c->n_layers * 2 + m->n_heads_exit;
    int64_t *in = calloc(n, 8), *out = calloc(n, 8);
    char (*names)[64] = calloc(n, 64);
    int i = 0;
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(names[i], 64, "model.layers.%d.self_attn.q_proj", l);
        in[i] = c->d_model, out[i] = c->n_heads * c->head_dim, i++;
        snprintf(names[i], 64, "model.layers.%d.mlp.down_proj", l);
        in[i] = c->d_ff, out[i] = c->d_model, i++;
    }
    for (int k = 0; k < m->n_heads_exit; k++) {
        snprintf(names[i], 64, "lm_head.%d.linear_head", k);
        in[i] = c->d_model, out[i] = 1, i++;
    }
    write_random_adapter(dir, n, names, in, out, bscale);
    free(in), free(out), free(names);
}

/* Prune groups (a worker batching several requests' fused calls): one pass over two groups of
 * rows, interleaved, with top-k steps at exits 1 and 2 gives each group exactly the scores and
 * depths it gets scored alone (BATCH_TOL: other row blocks); with one group (no prune_group)
 * the same pass keeps only top_k rows in all, so this fails where groups are ignored. Both
 * groups share the query segment, as a fused stage pair's calls of one query would. */
static void test_prune_groups(void **state) {
    fixture *f = make_fixture(MR_ARCH_LLAMA, NULL);
    mr_row rows[8], sub[8];
    make_rows(rows, 8);
    static const int32_t group[8] = {0, 1, 1, 0, 0, 1, 0, 1};
    mr_run_opts o;
    opts(&o, &f->m, 3, (int[]){1, 2, 4});
    o.n_prune = 2;
    o.prune[0] = (mr_prune){.layer = 1, .top_k = 3};
    o.prune[1] = (mr_prune){.layer = 2, .top_k = 2};
    float all[8 * 3], alone[8 * 3];
    int depth[8], depth_alone[8];
    mr_err err = {0};
    o.prune_group = group;
    assert_int_equal(mr_model_score(&f->c, rows, 8, &o, all, depth, &err), 0);
    o.prune_group = NULL;
    int kept_total = 0;
    for (int g = 0; g < 2; g++) {
        int idx[8], n = 0;
        for (int r = 0; r < 8; r++)
            if (group[r] == g) idx[n] = r, sub[n++] = rows[r];
        assert_int_equal(mr_model_score(&f->c, sub, n, &o, alone, depth_alone, &err), 0);
        int kept = 0;
        for (int i = 0; i < n; i++) {
            int r = idx[i];
            assert_int_equal(depth[r], depth_alone[i]);
            kept += depth_alone[i] == 4;
            for (int e = 0; e < 3; e++) {
                if (isnan(alone[i * 3 + e])) {
                    assert_true(isnan(all[r * 3 + e]));
                    continue;
                }
                assert_close(all[r * 3 + e], alone[i * 3 + e], BATCH_TOL, "group vs alone");
            }
        }
        assert_int_equal(kept, 2); /* top 2 of each group reach exit 4 */
        kept_total += kept;
    }
    assert_int_equal(kept_total, 4);
    score(f, rows, 8, &o, all); /* one group: 2 rows in all */
    int one_group = 0;
    for (int r = 0; r < 8; r++) one_group += !isnan(all[r * 3 + 2]);
    assert_int_equal(one_group, 2);
    free_fixture(f);
}

/* An adapter whose update overflows (r 1, lora_alpha 1e6, every value 1e20: the update is
 * 1e46) must not serve NaN scores: merged, the load refuses it naming the adapter and the
 * weight; unmerged (A x scale stays finite), the pass refuses the row whose score is not
 * finite (before, both scored every row NaN). */
static void test_lora_overflow(void **state) {
    (void)state;
    fixture *base = make_fixture(MR_ARCH_LLAMA, NULL);
    const mr_config *c = &base->m.cfg;
    char ad[300];
    snprintf(ad, sizeof ad, "%s/adapter-huge", base->dir);
    mkdir(ad, 0755);
    const char *mods[] = {"model.layers.0.self_attn.q_proj"};
    int64_t in[] = {c->d_model}, out[] = {(int64_t)c->n_heads * c->head_dim};
    float *A = malloc(sizeof(float) * (size_t)in[0]), *B = malloc(sizeof(float) * (size_t)out[0]);
    for (int i = 0; i < in[0]; i++) A[i] = 1e20f;
    for (int i = 0; i < out[0]; i++) B[i] = 1e20f;
    mr_err err = {0};
    assert_int_equal(mr_adapter_save(ad, 1, 1e6f, 0.0f, 1, mods, in, out,
                                     (const float *const *)&A, (const float *const *)&B,
                                     MR_DT_F32, &err), 0);
    free(A), free(B);
    const char *ads[] = {ad};
    mr_model m;
    mr_model_opts mo = {.adapters = ads, .n_adapters = 1, .merge = 1};
    assert_int_equal(mr_model_load(&m, base->dir, &mo, &err), MR_EFORMAT);
    if (!strstr(err.msg, ad) || !strstr(err.msg, "model.layers.0.self_attn.q_proj.weight") ||
        !strstr(err.msg, "not a finite F32"))
        fail_msg("merged: %s", err.msg);
    mo.merge = 0;
    assert_int_equal(mr_model_load(&m, base->dir, &mo, &err), 0);
    mr_ctx cu;
    assert_int_equal(mr_ctx_init(&cu, &m, 256, 4, 64, &err), 0);
    mr_row rows[3];
    mr_run_opts o;
    float s[3 * 2];
    make_rows(rows, 3);
    opts(&o, &m, 2, (int[]){2, 4});
    o.adapter_mask = 1;
    assert_int_equal(mr_model_score(&cu, rows, 3, &o, s, NULL, &err), MR_ENUMERIC);
    if (!strstr(err.msg, "row 0: its score at exit 2 is not finite")) fail_msg("unmerged: %s", err.msg);
    o.adapter_mask = 0;   /* the base model through the same context still scores */
    assert_int_equal(mr_model_score(&cu, rows, 3, &o, s, NULL, &err), 0);
    for (int i = 0; i < 6; i++) assert_true(isfinite(s[i]));
    mr_ctx_close(&cu);
    mr_model_close(&m);
    free_fixture(base);
}

static void test_lora_merged_equals_unmerged(void **state) {
    fixture *base = make_fixture(MR_ARCH_LLAMA, NULL);
    char ad[300], ad0[300];
    snprintf(ad, sizeof ad, "%s/adapter", base->dir);
    snprintf(ad0, sizeof ad0, "%s/adapter0", base->dir);
    write_adapter(ad, &base->m, 0.3f);
    write_adapter(ad0, &base->m, 0.0f);
    mr_row rows[3];
    mr_run_opts o;
    float s_base[3 * 2], s_m[3 * 2], s_u[3 * 2], s_off[3 * 2];
    make_rows(rows, 3);
    opts(&o, &base->m, 2, (int[]){2, 4});
    score(base, rows, 3, &o, s_base);

    mr_model merged, unmerged;
    mr_ctx cm, cu;
    mr_err err = {0};
    const char *both[2] = {ad0, ad};
    mr_model_opts mo = {.adapters = both, .n_adapters = 2, .merge = 1};
    assert_int_equal(mr_model_load(&merged, base->dir, &mo, &err), 0);
    mo.merge = 0;
    assert_int_equal(mr_model_load(&unmerged, base->dir, &mo, &err), 0);
    assert_int_equal(mr_ctx_init(&cm, &merged, 256, 4, 64, &err), 0);
    assert_int_equal(mr_ctx_init(&cu, &unmerged, 256, 4, 64, &err), 0);
    o.adapter_mask = 0;
    assert_int_equal(mr_model_score(&cm, rows, 3, &o, s_m, NULL, &err), 0);
    o.adapter_mask = 3;
    assert_int_equal(mr_model_score(&cu, rows, 3, &o, s_u, NULL, &err), 0);
    o.adapter_mask = 1; /* only the zero-B adapter: the base model */
    assert_int_equal(mr_model_score(&cu, rows, 3, &o, s_off, NULL, &err), 0);
    for (int i = 0; i < 6; i++) {
        assert_close(s_u[i], s_m[i], BATCH_TOL, "unmerged vs merged");
        assert_close(s_off[i], s_base[i], 0, "zero adapter");
        assert_true(fabsf(s_m[i] - s_base[i]) > 1e-4); /* the adapter acts: measured >= 0.02 */
    }
    /* merging must not write through to the checkpoint file: reload the base and compare */
    mr_model fresh;
    mr_ctx cf;
    float s_fresh[3 * 2];
    assert_int_equal(mr_model_load(&fresh, base->dir, NULL, &err), 0);
    assert_int_equal(mr_ctx_init(&cf, &fresh, 256, 4, 64, &err), 0);
    o.adapter_mask = 0;
    assert_int_equal(mr_model_score(&cf, rows, 3, &o, s_fresh, NULL, &err), 0);
    for (int i = 0; i < 6; i++) assert_close(s_fresh[i], s_base[i], 0, "base after merge");
    mr_ctx_close(&cf);
    mr_model_close(&fresh);
    mr_ctx_close(&cm);
    mr_ctx_close(&cu);
    mr_model_close(&merged);
    mr_model_close(&unmerged);
    free_fixture(base);
}

static void test_bad_input(void **state) {
    fixture *f = make_fixture(MR_ARCH_LLAMA, NULL);
    mr_row rows[2];
    mr_run_opts o;
    float sc[8];
    mr_err err = {0};
    make_rows(rows, 2);
    opts(&o, &f->m, 1, (int[]){4});
    int32_t bad[3] = {1, 64, 2};
    mr_row r = rows[0];
    r.p = bad;
    r.np = 3;
    assert_int_equal(mr_model_score(&f->c, &r, 1, &o, sc, NULL, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "64"));
    r = rows[0];
    r.ns = 0;
    assert_int_equal(mr_model_score(&f->c, &r, 1, &o, sc, NULL, &err), MR_EINVAL);
    o.exits[0] = 5;
    assert_int_equal(mr_model_score(&f->c, rows, 2, &o, sc, NULL, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "exit"));
    o.exits[0] = 4;
    o.ratio = 3;
    assert_int_equal(mr_model_score(&f->c, rows, 2, &o, sc, NULL, &err), MR_EINVAL);
    o.ratio = 2;
    o.pooling = MR_POOL_ATTENTION;
    o.n_compress = 1;
    o.compress_layers[0] = 0;
    assert_int_equal(mr_model_score(&f->c, rows, 2, &o, sc, NULL, &err), MR_EINVAL);
    o.n_compress = 0;
    o.n_prune = 1;
    o.prune[0] = (mr_prune){.layer = 3, .top_k = 1};
    assert_int_equal(mr_model_score(&f->c, rows, 2, &o, sc, NULL, &err), MR_EINVAL);
    free_fixture(f);
}

/* A tiny seeded Llama checkpoint (f32, seed 1) of *cfg in a fresh folder dir (cap bytes) under
 * the build folder, named by tag; the caller removes it. */
static void seeded_folder(mr_config *cfg, const char *tag, char *dir, size_t cap) {
    mr_err err = {0};
    tiny_config(cfg, MR_ARCH_LLAMA, MR_DT_F32);
    snprintf(dir, cap, "%s/tfwd-%s-%d", MR_BINARY_DIR, tag, (int)getpid());
    mkdir(dir, 0755);
    if (mr_seeded_write(cfg, dir, 1, &err)) fail_msg("seeded %s: %s", dir, err.msg);
}

static void test_missing_tensor(void **state) {
    mr_config cfg;
    mr_err err = {0};
    mr_model m;
    char dir[256], cmd[600];
    seeded_folder(&cfg, "missing", dir, sizeof dir);
    /* declare one more layer than the file has */
    cfg.n_layers = 5;
    snprintf(cmd, sizeof cmd, "%s/config.json", dir);
    assert_int_equal(mr_config_save(&cfg, cmd, &err), 0);
    assert_int_not_equal(mr_model_load(&m, dir, NULL, &err), 0);
    assert_non_null(strstr(err.msg, "model.layers.4."));
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* Exit heads numbered with a gap (lm_head.1 renamed away in the file's header: same length, so
 * the file stays valid) are refused, naming the head past the gap; loading only the heads
 * before it served the model shallower than its checkpoint, without a word. */
static void test_exit_head_gap(void **state) {
    mr_config cfg;
    mr_err err = {0};
    mr_model m;
    char dir[256], path[600];
    seeded_folder(&cfg, "headgap", dir, sizeof dir);
    assert_int_equal(mr_model_load(&m, dir, NULL, &err), 0);   /* as written: 4 heads */
    assert_int_equal(m.n_heads_exit, 4);
    mr_model_close(&m);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    char head[4096];
    size_t n = fread(head, 1, sizeof head, f);
    const char *from = "\"lm_head.1.linear_head.weight\"", *to = "\"lm_xead.1.linear_head.weight\"";
    char *at = memmem(head, n, from, strlen(from));
    assert_non_null(at);
    assert_int_equal(fseek(f, at - head, SEEK_SET), 0);
    assert_int_equal(fwrite(to, 1, strlen(to), f), strlen(to));
    fclose(f);
    assert_int_equal(mr_model_load(&m, dir, NULL, &err), MR_EFORMAT);
    if (!strstr(err.msg, "exit head 2 is present but head 1 is missing"))
        fail_msg("message: %s", err.msg);
    snprintf(path, sizeof path, "rm -rf %s", dir);
    assert_int_equal(system(path), 0);
}

/* Sharded weights (model-0000i-of-0000n.safetensors + index, as transformers writes them and
 * `init-checkpoint --release` does) load through the index and score exactly as one file with
 * the same seed: the same bytes under the same names. */
static void test_sharded_weights(void **state) {
    mr_config cfg;
    mr_err err = {0};
    mr_model m1, m3;
    mr_ctx c1, c3;
    char d1[256], d3[256], path[600];
    tiny_config(&cfg, MR_ARCH_GEMMA2, MR_DT_BF16);
    snprintf(d1, sizeof d1, "%s/tfwd-one-%d", MR_BINARY_DIR, (int)getpid());
    snprintf(d3, sizeof d3, "%s/tfwd-shards-%d", MR_BINARY_DIR, (int)getpid());
    mkdir(d1, 0755);
    mkdir(d3, 0755);
    assert_int_equal(mr_seeded_write(&cfg, d1, 5, &err), 0);
    snprintf(path, sizeof path, "%s/config.json", d3);
    assert_int_equal(mr_config_save(&cfg, path, &err), 0);
    assert_int_equal(mr_seeded_write_weights(&cfg, d3, 5, 3, &err), 0);
    for (int k = 1; k <= 3; k++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/model-%05d-of-00003.safetensors", d3, k);
        assert_int_equal(stat(path, &st), 0);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", d3);
    assert_int_not_equal(access(path, F_OK), 0);
    if (mr_model_load(&m1, d1, NULL, &err) || mr_model_load(&m3, d3, NULL, &err))
        fail_msg("load: %s", err.msg);
    assert_int_equal(mr_ctx_init(&c1, &m1, 512, 16, 64, &err), 0);
    assert_int_equal(mr_ctx_init(&c3, &m3, 512, 16, 64, &err), 0);
    mr_row rows[3];
    mr_run_opts o;
    float a[3 * 2], b[3 * 2];
    make_rows(rows, 3);
    opts(&o, &m1, 2, (int[]){2, 4});
    if (mr_model_score(&c1, rows, 3, &o, a, NULL, &err) ||
        mr_model_score(&c3, rows, 3, &o, b, NULL, &err))
        fail_msg("score: %s", err.msg);
    for (int i = 0; i < 6; i++) assert_true(a[i] == b[i]);
    mr_ctx_close(&c1);
    mr_ctx_close(&c3);
    mr_model_close(&m1);
    mr_model_close(&m3);
    snprintf(path, sizeof path, "rm -rf %s %s", d1, d3);
    assert_int_equal(system(path), 0);
}

/* ---- query-prefix sharing ---- */

/* Rows with identical query segments share one copy of it per pass: the scores equal the
 * unshared path's within BATCH_TOL (the same products in other GEMM row blocks) for several
 * exits, widths (mean and attention pooling, which pool passage tokens only) and pruning, and
 * the K/V token-layers drop by exactly the repeated prefixes. Two requests' queries (lengths 4
 * and 6) are interleaved in one batch. Sharing is the default. Run on the GEMM path gemm with
 * OpenMP's default team, or (one_thread) with teams of one while omp_get_max_threads() still
 * says more (max-active-levels 0, as OMP_THREAD_LIMIT=1 does): oneDNN's sgemm then left parts
 * of the bigger products unwritten and the shared and unshared scores differed by up to 2e-2. */
static void check_prefix_sharing(const char *gemm, int one_thread) {
    mr_model_opts mo = {.gemm = gemm};
    fixture *f = make_fixture(MR_ARCH_LLAMA, &mo);
    int saved_levels = omp_get_max_active_levels();
    if (one_thread) omp_set_max_active_levels(0);
    static const int32_t qb[6] = {1, 10, 20, 21, 22, 12};
    mr_row rows[6];
    make_rows(rows, 6);
    rows[1].q = rows[3].q = qb; /* rows 0, 2, 4, 5: query A (4 tokens); 1, 3: query B (6) */
    rows[1].nq = rows[3].nq = 6;
    rows[5].q = (const int32_t[]){1, 10, 11, 12}; /* equal to A by value, another pointer */
    struct { int ratio, n_compress, layers[2], pooling, prune; } cases[] = {
        {1, 0, {0, 0}, MR_POOL_MEAN, 0},      {2, 2, {1, 3}, MR_POOL_MEAN, 0},
        {4, 2, {1, 2}, MR_POOL_ATTENTION, 0}, {8, 1, {0, 0}, MR_POOL_MEAN, 0},
        {2, 1, {1, 0}, MR_POOL_ATTENTION, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        mr_run_opts o;
        float shared[6 * 4], unshared[6 * 4];
        opts(&o, &f->m, 4, (int[]){1, 2, 3, 4});
        assert_int_equal(o.no_prefix_share, 0); /* the default */
        o.ratio = cases[k].ratio;
        o.n_compress = cases[k].n_compress;
        memcpy(o.compress_layers, cases[k].layers, sizeof cases[k].layers);
        o.pooling = cases[k].pooling;
        if (cases[k].prune) {
            o.n_prune = 1;
            o.prune[0] = (mr_prune){.layer = 2, .top_k = 3};
        }
        score(f, rows, 6, &o, shared);
        long long tl_shared = f->c.token_layers;
        int groups_shared = f->c.n_groups;
        o.no_prefix_share = 1;
        score(f, rows, 6, &o, unshared);
        long long tl_unshared = f->c.token_layers;
        int groups_unshared = f->c.n_groups;
        for (int i = 0; i < 6 * 4; i++) {
            if (isnan(unshared[i])) {
                assert_true(isnan(shared[i])); /* pruned the same rows */
                continue;
            }
            char what[96];
            snprintf(what, sizeof what, "shared prefix (%s, %s team, case %zu)",
                     mr_gemm_path_name(f->m.gemm), one_thread ? "one-thread" : "default", k);
            assert_close(shared[i], unshared[i], BATCH_TOL, what);
        }
        /* 4 layers; repeated prefixes: query A 3 times (4 tokens), query B once (6 tokens) */
        if (!cases[k].prune) {
            assert_int_equal(groups_shared, 2);
            assert_int_equal(groups_unshared, 6);
            assert_int_equal(tl_unshared - tl_shared, 4 * (3 * 4 + 1 * 6));
            continue;
        }
        /* pruned at layer 2: layers 2 and 3 carry only the kept rows' prefixes (a prefix
         * whose rows were all dropped is not computed further), so the repeated ones there
         * are the kept rows' less one per distinct kept query */
        int kept_nq = 0, kept_a = 0, kept_b = 0;
        for (int r = 0; r < 6; r++) {
            if (isnan(unshared[r * 4 + 3])) continue;
            kept_nq += rows[r].nq;
            if (rows[r].nq == 6) kept_b = 1;
            else kept_a = 1;
        }
        assert_int_equal(groups_shared, kept_a + kept_b);
        assert_int_equal(groups_unshared, 3);
        assert_int_equal(tl_unshared - tl_shared,
                         2 * (3 * 4 + 1 * 6) + 2 * (kept_nq - 4 * kept_a - 6 * kept_b));
    }
    omp_set_max_active_levels(saved_levels);
    free_fixture(f);
}

/* Every f32 GEMM path of this build ("f32" is OpenBLAS where oneDNN is not built), each with
 * both team sizes. */
static void test_prefix_sharing(void **state) {
    static const char *const gemms[] = {"openblas", "f32"};
    for (int g = 0; g < 2; g++)
        for (int one = 0; one < 2; one++) check_prefix_sharing(gemms[g], one);
}

/* ---- GEMM paths (gemm.h) ---- */

/* Scores 5 rows at exits 1..4 with the model in dir loaded under gemm mode. */
static void score_with_gemm(mr_arch arch, mr_dtype dt, const char *gemm, float *out,
                            char *path_name) {
    mr_model_opts mo = {.gemm = gemm};
    fixture *f = make_fixture_dt(arch, &mo, dt);
    mr_row rows[5];
    mr_run_opts o;
    make_rows(rows, 5);
    opts(&o, &f->m, 4, (int[]){1, 2, 3, 4});
    score(f, rows, 5, &o, out);
    strcpy(path_name, mr_gemm_path_name(f->m.gemm));
    free_fixture(f);
}

/* The f32 paths agree with each other within BATCH_TOL (same f32 products, another summation
 * order); the bf16 path (activations rounded to bf16, 8 significant bits, relative error up to
 * 2^-9 = 2e-3 per operand) stays within BF16_TOL of f32 on the same bf16 weights. BF16_TOL:
 * 4 layers of rounded activations on the seeded tiny models move scores by at most 5.1e-3
 * relative to max(|score|, 1) (measured: llama 1.2e-3, qwen2 1.5e-3, gemma2 5.1e-3); ~6x. */
#define BF16_TOL 0.03
/* INT8_TOL: s8 keeps 7 bits of each row (its largest element / 254 per element, 2e-3 of the
 * largest and more of a small element) on both operands of every GEMM; measured on the same 4
 * layers: llama 5.7e-3, qwen2 3.5e-3, gemma2 2.55e-2 (its (1 + w) norms and soft caps amplify);
 * ~4x. (A silent f32 fallback is caught by the drift having to exceed 1e-6.) */
#define INT8_TOL 0.1
static void test_gemm_paths(void **state) {
    mr_arch archs[3] = {MR_ARCH_LLAMA, MR_ARCH_QWEN2, MR_ARCH_GEMMA2};
    for (int a = 0; a < 3; a++) {
        float ob[20], f32[20], b32[20], b16[20];
        char n1[32], n2[32], n3[32], n4[32];
        score_with_gemm(archs[a], MR_DT_F32, "openblas", ob, n1);
        score_with_gemm(archs[a], MR_DT_F32, "f32", f32, n2);
        assert_string_equal(n1, "openblas-f32");
        for (int i = 0; i < 20; i++) assert_close(f32[i], ob[i], BATCH_TOL, "f32 paths");
        mr_err err = {0};
        mr_gemm_path p;
        if (mr_gemm_resolve("bf16", 1, &p, &err)) {
            assert_int_equal(err.code, MR_EUNSUPPORTED); /* a build without oneDNN */
            continue;
        }
        score_with_gemm(archs[a], MR_DT_BF16, "f32", b32, n3);
        score_with_gemm(archs[a], MR_DT_BF16, "bf16", b16, n4);
        assert_string_equal(n4, "onednn-bf16");
        double worst = 0;
        for (int i = 0; i < 20; i++) {
            assert_close(b16[i], b32[i], BF16_TOL, "bf16 path");
            worst = fmax(worst, fabs(b16[i] - b32[i]) / fmax(1.0, fabs(b32[i])));
        }
        /* the bf16 path is really another computation (catches a silent f32 fallback) */
        assert_true(worst > 1e-6);
        printf("gemm drift arch %d: bf16 vs f32 %.2e relative\n", (int)archs[a], worst);
        float i8[20];
        score_with_gemm(archs[a], MR_DT_F32, "int8", i8, n4);
        assert_string_equal(n4, "onednn-int8");
        worst = 0;
        for (int i = 0; i < 20; i++) {
            assert_close(i8[i], f32[i], INT8_TOL, "int8 path");
            worst = fmax(worst, fabs(i8[i] - f32[i]) / fmax(1.0, fabs(f32[i])));
        }
        assert_true(worst > 1e-6);
        printf("gemm drift arch %d: int8 vs f32 %.2e relative\n", (int)archs[a], worst);
    }
    mr_err err = {0};
    mr_gemm_path p;
    assert_int_equal(mr_gemm_resolve("fp8", 0, &p, &err), MR_EINVAL);
    assert_int_equal(mr_gemm_resolve("openblas", 1, &p, &err), 0);
    assert_int_equal(p, MR_GEMM_OPENBLAS_F32);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_glu),
        cmocka_unit_test(test_exits_llama),
        cmocka_unit_test(test_exits_qwen2),
        cmocka_unit_test(test_exits_gemma2),
        cmocka_unit_test(test_stop_between_layers),
        cmocka_unit_test(test_compression),
        cmocka_unit_test(test_pruning),
        cmocka_unit_test(test_prune_groups),
        cmocka_unit_test(test_lora_merged_equals_unmerged),
        cmocka_unit_test(test_lora_overflow),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_exit_head_gap),
        cmocka_unit_test(test_sharded_weights),
        cmocka_unit_test(test_gemm_paths),
        cmocka_unit_test(test_prefix_sharing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
