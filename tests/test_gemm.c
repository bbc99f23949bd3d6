/* test_gemm.c: every GEMM path of gemm.h writes every element of y = x W^T, within the f32
 * summation bound, for row counts that oneDNN splits between threads (1 to 300 rows) and for
 * each OpenMP team size: the default team, and teams of one while omp_get_max_threads() still
 * says more (max-active-levels 0 here; OMP_THREAD_LIMIT=1 in the test_gemm_1thread entry,
 * as the TSan stage runs). oneDNN splits a product into omp_get_max_threads() parts, one per
 * thread of the team it gets, so a smaller team used to leave parts of y unwritten (half of it
 * with 2 threads). Contexts made under one team size are also used under the other. */
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

/* Multiplies with context g every row count in row_counts by every shape, y prefilled with
 * NaN; fails on any element outside check_product's bound. */
static void check_ctx(mr_gemm_ctx *g, mr_gemm_path p, const char *what) {
    int bf16 = p == MR_GEMM_ONEDNN_BF16;
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
        int bad = 0;
        for (size_t r = 0; r < sizeof row_counts / sizeof *row_counts; r++) {
            int n = row_counts[r];
            for (size_t i = 0; i < ny; i++) y[i] = NAN;
            assert_int_equal(mr_gemm_wt(g, y, x, bf16 ? (const void *)wb : w, n, in, out), 0);
            int b = check_product(y, x, w, n, in, out, bf16);
            if (b)
                print_message("%s, %s: %d rows x (%d, %d): %d of %d elements wrong\n",
                              mr_gemm_path_name(p), what, n, out, in, b, n * out);
            bad += b;
        }
        free(x);
        free(w);
        free(y);
        free(wb);
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
        cmocka_unit_test(test_auto),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
