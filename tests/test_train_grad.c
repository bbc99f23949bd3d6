/* test_train_grad.c: finite-difference checks of every backward kernel in trainer/backward.c.
 *
 * Each test builds tiny packed inputs (several rows of different lengths), defines the scalar
 * L = sum(R * y) for a fixed random R (summed in double), runs the backward with dy = R, and
 * compares the analytic gradient of every input with central differences of L computed from
 * the fp32 forward: along three random directions for every tensor (relative tolerance 1e-2)
 * and element by element for tensors of at most 64 values. The whole-model gradient is checked
 * against PyTorch autograd in tests/train_vs_torch.sh. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backward.h"
#include "kernels.h"

static unsigned g_seed = 12345;
static float frand(void) { /* uniform [-1, 1) */
    g_seed = g_seed * 1664525u + 1013904223u;
    return (float)((g_seed >> 8) & 0xffff) / 32768.0f - 1.0f;
}
static float *rnd(size_t n, float scale) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = scale * frand();
    return p;
}
static float *zeros(size_t n) { return calloc(n, sizeof(float)); }
static double dotR(const float *y, const float *R, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)y[i] * R[i];
    return s;
}

/* L(ctx) evaluates the forward from the current inputs and returns sum(R * y). */
typedef double (*loss_fn)(void *ctx);

static void check_dir(const char *what, loss_fn f, void *ctx, float *x, const float *g, size_t n,
                      const float *u, float eps) {
    float *save = malloc(sizeof(float) * n);
    memcpy(save, x, sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = save[i] + eps * u[i];
    double lp = f(ctx);
    for (size_t i = 0; i < n; i++) x[i] = save[i] - eps * u[i];
    double lm = f(ctx);
    memcpy(x, save, sizeof(float) * n);
    free(save);
    double num = (lp - lm) / (2.0 * eps), ana = 0, gn = 0;
    for (size_t i = 0; i < n; i++) {
        ana += (double)g[i] * u[i];
        gn += (double)g[i] * g[i];
    }
    /* central differences of an f32 forward (L summed in double): 1e-2 relative for the
     * O(eps^2) truncation, 1e-4 * |g| for the f32 rounding of the outputs over 2 eps, 1e-5
     * floor for near-zero directional derivatives; measured worst 0.125 of this bound */
    double tol = 1e-2 * fmax(fabs(ana), fabs(num)) + 1e-4 * sqrt(gn) + 1e-5;
    if (!(fabs(num - ana) <= tol))
        fail_msg("%s: analytic %.7g vs numeric %.7g (tol %.3g)", what, ana, num, tol);
}

/* Random directions for every tensor; unit vectors too for small ones. */
static void check_grad(const char *what, loss_fn f, void *ctx, float *x, const float *g,
                       size_t n, float eps) {
    float *u = malloc(sizeof(float) * n);
    char name[128];
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < n; i++) u[i] = frand();
        snprintf(name, sizeof name, "%s (direction %d)", what, k);
        check_dir(name, f, ctx, x, g, n, u, eps);
    }
    if (n <= 64)
        for (size_t e = 0; e < n; e++) {
            memset(u, 0, sizeof(float) * n);
            u[e] = 1.0f;
            snprintf(name, sizeof name, "%s [%zu]", what, e);
            check_dir(name, f, ctx, x, g, n, u, eps);
        }
    free(u);
}

/* ---- linear ---- */
typedef struct { int n, in, out; float *x, *w, *b, *y, *R; } lin_ctx;
static double lin_loss(void *p) {
    lin_ctx *c = p;
    mr_matmul_wt(c->y, c->x, c->w, c->n, c->in, c->out, 0.0f);
    for (int i = 0; i < c->n; i++)
        for (int j = 0; j < c->out; j++) c->y[i * c->out + j] += c->b[j];
    return dotR(c->y, c->R, (size_t)c->n * c->out);
}
static void test_linear(void **state) {
    int ns[2] = {1, 7};
    for (int k = 0; k < 2; k++) {
        lin_ctx c = {.n = ns[k], .in = 5, .out = 4};
        c.x = rnd(c.n * c.in, 1), c.w = rnd(c.out * c.in, 1), c.b = rnd(c.out, 1);
        c.y = zeros(c.n * c.out), c.R = rnd(c.n * c.out, 1);
        float *dx = zeros(c.n * c.in), *dw = zeros(c.out * c.in), *db = zeros(c.out);
        mr_matmul_wt_backward(dx, dw, db, c.R, c.x, c.w, c.n, c.in, c.out);
        check_grad("linear dx", lin_loss, &c, c.x, dx, c.n * c.in, 1e-2f);
        check_grad("linear dw", lin_loss, &c, c.w, dw, c.out * c.in, 1e-2f);
        check_grad("linear db", lin_loss, &c, c.b, db, c.out, 1e-2f);
        free(c.x), free(c.w), free(c.b), free(c.y), free(c.R), free(dx), free(dw), free(db);
    }
}

/* ---- rmsnorm ---- */
typedef struct { int n, d; float off, *x, *w, *y, *R; } rms_ctx;
static double rms_loss(void *p) {
    rms_ctx *c = p;
    mr_rmsnorm(c->y, c->x, c->w, c->n, c->d, 1e-6f, c->off);
    return dotR(c->y, c->R, (size_t)c->n * c->d);
}
static void test_rmsnorm(void **state) {
    for (int off = 0; off < 2; off++) {
        rms_ctx c = {.n = 5, .d = 12, .off = (float)off};
        c.x = rnd(c.n * c.d, 2), c.w = rnd(c.d, 1), c.y = zeros(c.n * c.d);
        c.R = rnd(c.n * c.d, 1);
        float *dx = zeros(c.n * c.d), *dw = zeros(c.d);
        mr_rmsnorm_backward(dx, dw, c.R, c.x, c.w, c.n, c.d, 1e-6f, c.off);
        check_grad(off ? "rmsnorm(1+w) dx" : "rmsnorm dx", rms_loss, &c, c.x, dx, c.n * c.d,
                   1e-2f);
        check_grad(off ? "rmsnorm(1+w) dw" : "rmsnorm dw", rms_loss, &c, c.w, dw, c.d, 1e-2f);
        free(c.x), free(c.w), free(c.y), free(c.R), free(dx), free(dw);
    }
}

/* ---- rope ---- */
typedef struct { int n, h, hd; int32_t *pos; float *tab, *x, *y, *R; } rope_ctx;
static double rope_loss(void *p) {
    rope_ctx *c = p;
    size_t n = (size_t)c->n * c->h * c->hd;
    memcpy(c->y, c->x, sizeof(float) * n);
    mr_rope(c->y, c->pos, c->n, c->h, c->hd, c->tab);
    return dotR(c->y, c->R, n);
}
static void test_rope(void **state) {
    int32_t pos[6] = {0, 1, 2, 0, 5, 3};
    rope_ctx c = {.n = 6, .h = 2, .hd = 8, .pos = pos};
    size_t n = (size_t)c.n * c.h * c.hd;
    c.tab = malloc(sizeof(float) * 8 * c.hd);
    mr_rope_table(c.tab, 8, c.hd, 100.0);
    c.x = rnd(n, 1), c.y = zeros(n), c.R = rnd(n, 1);
    float *dx = malloc(sizeof(float) * n);
    memcpy(dx, c.R, sizeof(float) * n);
    mr_rope_inverse(dx, c.pos, c.n, c.h, c.hd, c.tab);
    check_grad("rope dx", rope_loss, &c, c.x, dx, n, 1e-2f);
    free(c.tab), free(c.x), free(c.y), free(c.R), free(dx);
}

/* ---- attention ---- */
typedef struct { mr_attn_args a; float *q, *k, *v, *out, *R; size_t nq_el; } att_ctx;
static double att_loss(void *p) {
    att_ctx *c = p;
    mr_attention(&c->a);
    return dotR(c->out, c->R, c->nq_el);
}
static void run_attention_case(float softcap, int window, int last_only) {
    int32_t off[4] = {0, 3, 8, 9}, len[4] = {3, 5, 1, 4}, q_off[4] = {0, 1, 2, 3},
            q_from[4] = {2, 4, 0, 3};
    int n_tok = 13, nh = 4, nkv = 2, hd = 4, max_len = 5;
    int n_q = last_only ? 4 : n_tok;
    att_ctx c = {0};
    c.q = rnd((size_t)n_q * nh * hd, 1.5f), c.k = rnd((size_t)n_tok * nkv * hd, 1.5f);
    c.v = rnd((size_t)n_tok * nkv * hd, 1), c.out = zeros((size_t)n_q * nh * hd);
    c.nq_el = (size_t)n_q * nh * hd;
    c.R = rnd(c.nq_el, 1);
    float *scratch = zeros((size_t)64 * max_len);
    c.a = (mr_attn_args){.q = c.q, .k = c.k, .v = c.v, .out = c.out, .off = off, .len = len,
                         .q_off = last_only ? q_off : NULL, .q_from = last_only ? q_from : NULL,
                         .n_rows = 4, .n_heads = nh, .n_kv = nkv, .head_dim = hd,
                         .scale = 0.5f, .softcap = softcap, .window = window,
                         .scratch = scratch, .max_len = max_len};
    mr_attention(&c.a);
    float *dq = zeros((size_t)n_q * nh * hd), *dk = zeros((size_t)n_tok * nkv * hd),
          *dv = zeros((size_t)n_tok * nkv * hd);
    float *bscr = zeros(mr_attention_backward_scratch(max_len));
    mr_attention_backward(&c.a, c.R, dq, dk, dv, bscr);
    char name[64];
    snprintf(name, sizeof name, "attention(cap %g win %d last %d) dq", softcap, window, last_only);
    check_grad(name, att_loss, &c, c.q, dq, (size_t)n_q * nh * hd, 5e-3f);
    name[strlen(name) - 1] = 'k';
    check_grad(name, att_loss, &c, c.k, dk, (size_t)n_tok * nkv * hd, 5e-3f);
    name[strlen(name) - 1] = 'v';
    check_grad(name, att_loss, &c, c.v, dv, (size_t)n_tok * nkv * hd, 5e-3f);
    free(c.q), free(c.k), free(c.v), free(c.out), free(c.R), free(scratch), free(dq), free(dk);
    free(dv), free(bscr);
}
static void test_attention(void **state) {
    run_attention_case(0.0f, 0, 0);
    run_attention_case(2.0f, 0, 0);
    run_attention_case(0.0f, 3, 0);
    run_attention_case(2.0f, 2, 0);
    run_attention_case(2.0f, 3, 1);
}

/* ---- gated activations ---- */
typedef struct { size_t n; int gelu; float *g, *u, *y, *R; } glu_ctx;
static double glu_loss(void *p) {
    glu_ctx *c = p;
    if (c->gelu) mr_geglu_tanh(c->y, c->g, c->u, c->n);
    else mr_swiglu(c->y, c->g, c->u, c->n);
    return dotR(c->y, c->R, c->n);
}
static void test_glu(void **state) {
    for (int gelu = 0; gelu < 2; gelu++) {
        glu_ctx c = {.n = 40, .gelu = gelu};
        c.g = rnd(c.n, 3), c.u = rnd(c.n, 1), c.y = zeros(c.n), c.R = rnd(c.n, 1);
        float *dg = zeros(c.n), *du = zeros(c.n);
        if (gelu) mr_geglu_tanh_backward(dg, du, c.R, c.g, c.u, c.n);
        else mr_swiglu_backward(dg, du, c.R, c.g, c.u, c.n);
        check_grad(gelu ? "geglu dgate" : "swiglu dgate", glu_loss, &c, c.g, dg, c.n, 1e-2f);
        check_grad(gelu ? "geglu dup" : "swiglu dup", glu_loss, &c, c.u, du, c.n, 1e-2f);
        free(c.g), free(c.u), free(c.y), free(c.R), free(dg), free(du);
    }
}

/* ---- embedding ---- */
typedef struct { int n, d; const int32_t *ids; float scale, *E, *y, *R; } emb_ctx;
static double emb_loss(void *p) {
    emb_ctx *c = p;
    for (int t = 0; t < c->n; t++)
        for (int j = 0; j < c->d; j++) c->y[t * c->d + j] = c->scale * c->E[c->ids[t] * c->d + j];
    return dotR(c->y, c->R, (size_t)c->n * c->d);
}
static void test_embedding(void **state) {
    int32_t ids[7] = {3, 1, 3, 0, 5, 3, 1};
    emb_ctx c = {.n = 7, .d = 6, .ids = ids, .scale = 1.7f};
    c.E = rnd(8 * 6, 1), c.y = zeros(7 * 6), c.R = rnd(7 * 6, 1);
    float *dE = zeros(8 * 6);
    mr_embedding_backward(dE, c.R, ids, c.n, c.d, c.scale);
    check_grad("embedding dE", emb_loss, &c, c.E, dE, 8 * 6, 1e-2f);
    free(c.E), free(c.y), free(c.R), free(dE);
}

/* ---- mean pooling ---- */
typedef struct { int d, r, n_out; int32_t off[4], nq[4], np[4], ns[4], noff[4], nnp[4];
                 float *x, *y, *R; } pool_ctx;
static double pool_loss(void *p) {
    pool_ctx *c = p;
    c->n_out = mr_pool(c->y, c->x, c->off, c->nq, c->np, c->ns, 4, c->d, c->r, NULL, NULL,
                       c->noff, c->nnp);
    return dotR(c->y, c->R, (size_t)c->n_out * c->d);
}
static void test_pool_mean(void **state) {
    int rs[3] = {2, 3, 4};
    for (int k = 0; k < 3; k++) {
        pool_ctx c = {.d = 3, .r = rs[k], .nq = {2, 1, 3, 1}, .np = {5, 0, 4, 1},
                      .ns = {1, 2, 1, 2}};
        int n_in = 0;
        for (int i = 0; i < 4; i++) {
            c.off[i] = n_in;
            n_in += c.nq[i] + c.np[i] + c.ns[i];
        }
        c.x = rnd((size_t)n_in * c.d, 1), c.y = zeros((size_t)n_in * c.d);
        c.R = rnd((size_t)n_in * c.d, 1);
        pool_loss(&c);
        assert_int_equal(c.nnp[0], (5 + c.r - 1) / c.r);
        assert_int_equal(c.nnp[1], 0);
        float *dx = zeros((size_t)n_in * c.d);
        mr_pool_backward(dx, c.R, c.off, c.nq, c.np, c.ns, 4, c.d, c.r, NULL, c.noff);
        check_grad("pool mean dx", pool_loss, &c, c.x, dx, (size_t)n_in * c.d, 1e-2f);
        free(c.x), free(c.y), free(c.R), free(dx);
    }
}

/* ---- exit head ---- */
typedef struct { int d; float off, cap, R, *x, *fn, *head, *xn; } head_ctx;
static double head_loss(void *p) {
    head_ctx *c = p;
    return c->R * (double)mr_exit_head(c->xn, c->x, c->fn, c->head, c->d, 1e-6f, c->off, c->cap);
}
static void test_exit_head(void **state) {
    for (int k = 0; k < 4; k++) {
        head_ctx c = {.d = 10, .off = (float)(k & 1), .cap = k & 2 ? 3.0f : 0.0f, .R = -1.3f};
        c.x = rnd(c.d, 2), c.fn = rnd(c.d, 1), c.head = rnd(c.d, 1), c.xn = zeros(c.d);
        float s = mr_exit_head(c.xn, c.x, c.fn, c.head, c.d, 1e-6f, c.off, c.cap);
        float *dx = zeros(c.d), *dfn = zeros(c.d), *dh = zeros(c.d);
        mr_exit_head_backward(dx, dfn, dh, c.R, s, c.x, c.fn, c.head, c.d, 1e-6f, c.off, c.cap);
        check_grad("exit head dx", head_loss, &c, c.x, dx, c.d, 1e-2f);
        check_grad("exit head dnorm", head_loss, &c, c.fn, dfn, c.d, 1e-2f);
        check_grad("exit head dhead", head_loss, &c, c.head, dh, c.d, 1e-2f);
        free(c.x), free(c.fn), free(c.head), free(c.xn), free(dx), free(dfn), free(dh);
    }
}

/* ---- LoRA ---- */
typedef struct { int n, in, out, rank; float scale, *x, *A, *B, *y, *t, *R; } lora_ctx;
static double lora_loss(void *p) {
    lora_ctx *c = p;
    memset(c->y, 0, sizeof(float) * c->n * c->out);
    mr_lora(c->y, c->t, c->x, c->A, c->B, c->n, c->in, c->out, c->rank, c->scale);
    return dotR(c->y, c->R, (size_t)c->n * c->out);
}
static void test_lora(void **state) {
    lora_ctx c = {.n = 6, .in = 7, .out = 5, .rank = 3, .scale = 2.0f};
    c.x = rnd(c.n * c.in, 1), c.A = rnd(c.rank * c.in, 1), c.B = rnd(c.out * c.rank, 1);
    c.y = zeros(c.n * c.out), c.t = zeros(c.n * c.rank), c.R = rnd(c.n * c.out, 1);
    lora_loss(&c);
    float *dx = zeros(c.n * c.in), *dA = zeros(c.rank * c.in), *dB = zeros(c.out * c.rank),
          *dt = zeros(c.n * c.rank);
    mr_lora_backward(dx, dA, dB, c.R, c.x, c.t, c.A, c.B, c.n, c.in, c.out, c.rank, c.scale, dt);
    check_grad("lora dx", lora_loss, &c, c.x, dx, c.n * c.in, 1e-2f);
    check_grad("lora dA", lora_loss, &c, c.A, dA, c.rank * c.in, 1e-2f);
    check_grad("lora dB", lora_loss, &c, c.B, dB, c.out * c.rank, 1e-2f);
    free(c.x), free(c.A), free(c.B), free(c.y), free(c.t), free(c.R), free(dx), free(dA);
    free(dB), free(dt);
}

/* ---- listwise softmax cross-entropy ---- */
typedef struct { int G; float *s, *tgt; } xent_ctx;
static double xent_loss(void *p) {
    xent_ctx *c = p;
    return 0.7 * mr_softmax_xent(NULL, c->s, c->tgt, c->G, 0.0f);
}
static void test_softmax_xent(void **state) {
    for (int soft = 0; soft < 2; soft++) {
        xent_ctx c = {5, rnd(5, 3), NULL};
        float traw[5] = {0.3f, -1.0f, 2.0f, 0.0f, 0.5f}, tp[5];
        if (soft) {
            mr_softmax(tp, traw, 5);
            c.tgt = tp;
        }
        float ds[5] = {0};
        double l = mr_softmax_xent(ds, c.s, c.tgt, 5, 0.7f);
        assert_true(l > 0);
        check_grad(soft ? "xent soft ds" : "xent hard ds", xent_loss, &c, c.s, ds, 5, 1e-2f);
        free(c.s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),    cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),      cmocka_unit_test(test_attention),
        cmocka_unit_test(test_glu),       cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_pool_mean), cmocka_unit_test(test_exit_head),
        cmocka_unit_test(test_lora),      cmocka_unit_test(test_softmax_xent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
