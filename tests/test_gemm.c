/* test_gemm.c: every GEMM path of gemm.h writes every element of y = x W^T, within the f32
 * summation bound, for row counts that oneDNN splits between threads (1 to 300 rows) and for
 * each OpenMP team size: the default team, and teams of one while omp_get_max_threads() still
 * says more (max-active-levels 0 here; OMP_THREAD_LIMIT=1 in the test_gemm_1thread entry,
 * as the TSan stage runs). oneDNN splits a product into omp_get_max_threads() parts, one per
 * thread of the team it gets, so a smaller team used to leave parts of y unwritten (half of it
 * with 2 threads). Contexts made under one team size are also used under the other. The int8
 * path is checked against the exact integer product of the quantized operands (the rounding it
 * adds is its quantization, stated by mr_gemm_quantize_rows and checked here too); reusing a
 * conversion (mr_gemm_wt_again) is checked on both low-precision paths. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gemm.h"
#include "testutil.h"

enum { MAX_M = 300 };
static const int shapes[2][2] = {{48, 32}, {384, 128}}; /* (out, in) */
static const int row_counts[] = {1, 2, 5, 16, 37, 64, 200, 300};

/* Checks y (n, out) against x W^T in double, with x and W as the path sees them (bf16-rounded
 * activations on the bf16 path; its weights are bf16 already). Tolerance: f32 summation of in
 * terms (any order, FMA or not) errs by at most gamma_in * sum |x_i w_i|, gamma_k = k u / (1 -
 * k u), u = 2^-24 (Higham, Accuracy and Stability, 3.1); bf16 operands multiply exactly in f32
 * (8 + 8 significant bits), so the same bound holds there. An unwritten element (NaN, as
 * prefilled) fails. Returns the number of elements outside the bound. */
static int check_product(const float *y, const float *x, const float *w, int n, int in, int out,
                         int bf16_acts) {
    int bad = 0;
    double u = ldexp(1.0, -24), gamma = in * u / (1 - in * u);
    float *xr = malloc(sizeof(float) * (size_t)in);
    uint16_t *xb = malloc(sizeof(uint16_t) * (size_t)in);
    assert_non_null(xr);
    assert_non_null(xb);
    for (int i = 0; i < n; i++) {
        memcpy(xr, x + (size_t)i * in, sizeof(float) * (size_t)in);
        if (bf16_acts) {
            mr_from_f32(xb, xr, MR_DT_BF16, (size_t)in);
            mr_to_f32(xr, xb, MR_DT_BF16, (size_t)in);
        }
        for (int o = 0; o < out; o++) {
            double s = 0, a = 0;
            for (int k = 0; k < in; k++) {
                double p = (double)xr[k] * w[(size_t)o * in + k];
                s += p;
                a += fabs(p);
            }
            float got = y[(size_t)i * out + o];
            if (!(fabs(got - s) <= gamma * a)) {
                if (!bad)
                    print_message("  row %d of %d, col %d of (%d, %d): got %g want %g\n", i, n,
                                  o, out, in, got, s);
                bad++;
            }
        }
    }
    free(xr);
    free(xb);
    return bad;
}

/* The int8 path: y (n, out) against sx[i] sw[o] sum_k qx[i][k] qw[o][k], the operands quantized
 * by mr_gemm_quantize_rows and the sum exact in double. Tolerance: the integer sum is exact in
 * s32 and in f32 (|sum| <= in 127^2 < 2^24 for in <= 1040, here in <= 128); the two scale
 * multiplications round twice, so 3 u |ref| (u = 2^-24) plus the smallest normal. */
static int check_product_q8(const float *y, const float *x, const float *w, int n, int in,
                            int out) {
    int bad = 0;
    int8_t *qx = malloc((size_t)n * in), *qw = malloc((size_t)out * in);
    float *sx = malloc(sizeof(float) * (size_t)n), *sw = malloc(sizeof(float) * (size_t)out);
    assert_true(qx && qw && sx && sw);
    mr_gemm_quantize_rows(qx, sx, x, n, in);
    mr_gemm_quantize_rows(qw, sw, w, out, in);
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double acc = 0;
            for (int k = 0; k < in; k++)
                acc += (double)qx[(size_t)i * in + k] * qw[(size_t)o * in + k];
            double ref = acc * sx[i] * sw[o];
            float got = y[(size_t)i * out + o];
            if (!(fabs(got - ref) <= 3 * ldexp(1.0, -24) * fabs(ref) + FLT_MIN)) {
                if (!bad)
                    print_message("  int8: row %d of %d, col %d of (%d, %d): got %.9g want "
                                  "%.9g\n", i, n, o, out, in, got, ref);
                bad++;
            }
        }
    free(qx);
    free(qw);
    free(sx);
    free(sw);
    return bad;
}

/* Multiplies with context g every row count in row_counts by every shape, y prefilled with
 * NaN; fails on any element outside check_product's (check_product_q8's) bound. */
static void check_ctx(mr_gemm_ctx *g, mr_gemm_path p, const char *what) {
    int bf16 = p == MR_GEMM_ONEDNN_BF16, int8 = p == MR_GEMM_ONEDNN_INT8;
    for (int s = 0; s < 2; s++) {
        int out = shapes[s][0], in = shapes[s][1];
        size_t nx = (size_t)MAX_M * in, nw = (size_t)out * in, ny = (size_t)MAX_M * out;
        float *x = malloc(sizeof(float) * nx), *w = malloc(sizeof(float) * nw),
              *y = malloc(sizeof(float) * ny);
        uint16_t *wb = malloc(sizeof(uint16_t) * nw);
        assert_true(x && w && y && wb);
        unsigned seed = (unsigned)(7 + s);
        for (size_t i = 0; i < nx; i++) x[i] = frand(&seed);
        for (size_t i = 0; i < nw; i++) w[i] = frand(&seed);
        if (bf16) { /* the path's weights: bf16; the reference reads them back as f32 */
            mr_from_f32(wb, w, MR_DT_BF16, nw);
            mr_to_f32(w, wb, MR_DT_BF16, nw);
        }
        mr_gemm_q8 q8 = {0};
        if (int8) { /* the path's weights: quantized as the model does at load */
            mr_tensor t = {.name = "w", .dtype = MR_DT_F32, .ndim = 2, .shape = {out, in},
                           .numel = (int64_t)nw, .data = w};
            mr_err err = {0};
            assert_int_equal(mr_gemm_q8_new(&q8, &t, &err), 0);
        }
        const void *wp = int8 ? (const void *)&q8 : bf16 ? (const void *)wb : w;
        int bad = 0;
        for (size_t r = 0; r < sizeof row_counts / sizeof *row_counts; r++) {
            int n = row_counts[r];
            for (size_t i = 0; i < ny; i++) y[i] = NAN;
            assert_int_equal(mr_gemm_wt(g, y, x, wp, n, in, out), 0);
            int b = int8 ? check_product_q8(y, x, w, n, in, out)
                         : check_product(y, x, w, n, in, out, bf16);
            if (b)
                print_message("%s, %s: %d rows x (%d, %d): %d of %d elements wrong\n",
                              mr_gemm_path_name(p), what, n, out, in, b, n * out);
            bad += b;
        }
        free(x);
        free(w);
        free(y);
        free(wb);
        mr_gemm_q8_free(&q8);
        assert_int_equal(bad, 0);
    }
}

/* Runs path p with a context made under the default team and with one made under teams of one,
 * each used under both. 0, or MR_EUNSUPPORTED where this build or CPU lacks the path. */
static int check_path(mr_gemm_path p) {
    mr_err err = {0};
    int saved_levels = omp_get_max_active_levels();
    if (omp_get_max_threads() < 2)
        print_message("omp_get_max_threads() is 1: the one-thread team is the default here\n");
    for (int made_single = 0; made_single < 2; made_single++) {
        mr_gemm_ctx *g;
        omp_set_max_active_levels(made_single ? 0 : saved_levels);
        int rc = mr_gemm_ctx_new(&g, p, shapes, 2, MAX_M, &err);
        if (rc == MR_EUNSUPPORTED) {
            omp_set_max_active_levels(saved_levels);
            print_message("%s: %s\n", mr_gemm_path_name(p), err.msg);
            return rc;
        }
        assert_int_equal(rc, 0);
        for (int run_single = 0; run_single < 2; run_single++) {
            /* max-active-levels 0: every parallel region runs on one thread while
             * omp_get_max_threads() is unchanged, as under OMP_THREAD_LIMIT=1 */
            omp_set_max_active_levels(run_single ? 0 : saved_levels);
            char what[64];
            snprintf(what, sizeof what, "made with %s team, run with %s team",
                     made_single ? "a one-thread" : "the default",
                     run_single ? "a one-thread" : "the default");
            check_ctx(g, p, what);
        }
        omp_set_max_active_levels(saved_levels);
        mr_gemm_ctx_free(g);
    }
    return 0;
}

static void test_openblas_f32(void **state) {
    assert_int_equal(check_path(MR_GEMM_OPENBLAS_F32), 0);
}

static void test_onednn_f32(void **state) {
    if (check_path(MR_GEMM_ONEDNN_F32)) skip(); /* a build without oneDNN */
}

static void test_onednn_bf16(void **state) {
    if (check_path(MR_GEMM_ONEDNN_BF16)) skip(); /* no oneDNN, or no bf16 matmul on this CPU */
}

static void test_onednn_int8(void **state) {
    if (check_path(MR_GEMM_ONEDNN_INT8)) skip(); /* a build without oneDNN */
}

/* mr_gemm_quantize_rows keeps its statement: the largest |q| of a nonzero row is 127, every
 * x within scale / 2 of q scale (plus f32 rounding of x * 127 / max: 2 u |x|), rounding half
 * away from zero; a zero row has scale 0, a row with Inf or NaN scale NaN and zeros. */
static void test_quantize_rows(void **state) {
    enum { N = 5, IN = 67 }; /* 67: a vector loop with a tail */
    float x[N * IN], scale[N];
    int8_t q[N * IN];
    unsigned seed = 3;
    for (int i = 0; i < N * IN; i++) x[i] = 10 * frand(&seed);
    for (int k = 0; k < IN; k++) x[2 * IN + k] = 0;
    x[3 * IN + 5] = INFINITY;
    x[4 * IN + 60] = NAN;
    x[0] = -12.7f, x[1] = 6.35f, x[2] = -6.35f; /* row 0: max 12.7, so 6.35 -> +-63.5 -> +-64 */
    memset(q, 99, sizeof q);
    mr_gemm_quantize_rows(q, scale, x, N, IN);
    for (int i = 0; i < 2; i++) {
        int top = 0;
        for (int k = 0; k < IN; k++) {
            int v = q[i * IN + k];
            top = top > abs(v) ? top : abs(v);
            float xv = x[i * IN + k];
            assert_true(fabsf(v * scale[i] - xv) <= scale[i] / 2 + 2 * ldexpf(fabsf(xv), -24) +
                                                         1e-6f * scale[i]);
        }
        assert_int_equal(top, 127);
    }
    assert_int_equal(q[0], -127);
    assert_int_equal(q[1], 64);
    assert_int_equal(q[2], -64);
    assert_true(scale[2] == 0.0f);
    for (int r = 2; r < N; r++)
        for (int k = 0; k < IN; k++) assert_int_equal(q[r * IN + k], 0);
    assert_true(isnan(scale[3]) && isnan(scale[4]));
}

/* mr_gemm_wt_again reuses the previous call's conversion of the same x (so it sees x's old
 * values when they changed: that is the contract's consequence, and what shows the reuse), and
 * converts afresh for another pointer or more rows. */
static void test_again(void **state) {
    static const mr_gemm_path paths[2] = {MR_GEMM_ONEDNN_BF16, MR_GEMM_ONEDNN_INT8};
    enum { OUT = 48, IN = 32, N = 20 };
    float x[N * IN], x2[N * IN], w[OUT * IN], y1[N * OUT], y2[N * OUT];
    uint16_t wb[OUT * IN];
    unsigned seed = 11;
    for (int i = 0; i < N * IN; i++) x[i] = frand(&seed), x2[i] = x[i];
    for (int i = 0; i < OUT * IN; i++) w[i] = frand(&seed);
    mr_from_f32(wb, w, MR_DT_BF16, OUT * IN);
    mr_tensor t = {.name = "w", .dtype = MR_DT_F32, .ndim = 2, .shape = {OUT, IN},
                   .numel = OUT * IN, .data = w};
    int ran = 0;
    for (int p = 0; p < 2; p++) {
        mr_err err = {0};
        mr_gemm_ctx *g;
        if (mr_gemm_ctx_new(&g, paths[p], shapes, 2, MAX_M, &err)) continue; /* no oneDNN */
        ran++;
        memcpy(x, x2, sizeof x); /* undo the last path's doubling */
        mr_gemm_q8 q8;
        assert_int_equal(mr_gemm_q8_new(&q8, &t, &err), 0);
        const void *wp = p ? (const void *)&q8 : wb;
        assert_int_equal(mr_gemm_wt(g, y1, x, wp, N, IN, OUT), 0);
        for (int i = 0; i < N * IN; i++) x[i] *= 2; /* same pointer, new values */
        /* 16 rows: the first row block of N = 20 (16 + 4), the same kernel call */
        assert_int_equal(mr_gemm_wt_again(g, y2, x, wp, 16, IN, OUT), 0);
        assert_memory_equal(y1, y2, sizeof(float) * 16 * OUT); /* the old conversion */
        assert_int_equal(mr_gemm_wt_again(g, y2, x2, wp, N, IN, OUT), 0); /* another x */
        assert_memory_equal(y1, y2, sizeof y1);
        assert_int_equal(mr_gemm_wt_again(g, y2, x, wp, N, IN, OUT), 0); /* x is not x2 */
        for (int i = 0; i < N * OUT; i++) /* x doubled exactly: so are both paths' products */
            assert_true(y2[i] == 2 * y1[i]);
        /* x2's first N - 1 rows; the buffer's last row still holds x's (doubled) last row */
        assert_int_equal(mr_gemm_wt_again(g, y2, x2, wp, N - 1, IN, OUT), 0);
        assert_int_equal(mr_gemm_wt_again(g, y2, x2, wp, N, IN, OUT), 0); /* more rows */
        assert_memory_equal(y1, y2, sizeof y1);
        mr_gemm_q8_free(&q8);
        mr_gemm_ctx_free(g);
    }
    if (!ran) skip(); /* a build without oneDNN */
}

/* "auto" on f32 weights: onednn-f32 where oneDNN is built (faster than OpenBLAS, docs/perf.md),
 * else openblas-f32; bf16 weights take onednn-bf16 only on CPUs with AVX512-BF16. */
static void test_auto(void **state) {
    mr_err err = {0};
    mr_gemm_path p, b;
    int dnnl = mr_gemm_resolve("bf16", 1, &b, &err) == 0;
    assert_int_equal(mr_gemm_resolve("auto", 0, &p, &err), 0);
    assert_int_equal(p, dnnl ? MR_GEMM_ONEDNN_F32 : MR_GEMM_OPENBLAS_F32);
    assert_int_equal(mr_gemm_resolve("auto", 1, &p, &err), 0);
    assert_true(p == (dnnl ? MR_GEMM_ONEDNN_F32 : MR_GEMM_OPENBLAS_F32) ||
                (dnnl && p == MR_GEMM_ONEDNN_BF16));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openblas_f32),
        cmocka_unit_test(test_onednn_f32),
        cmocka_unit_test(test_onednn_bf16),
        cmocka_unit_test(test_onednn_int8),
        cmocka_unit_test(test_quantize_rows),
        cmocka_unit_test(test_again),
        cmocka_unit_test(test_auto),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
