/* calib_fit.c: Platt scaling fitted to labelled raw scores (the offline half of calib.c,
 * used by `mrank calibrate`): a, b minimising the log loss of sigmoid(a * raw + b) against
 * Platt's smoothed targets ((N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for negatives,
 * which keep a separable set finite), by Newton's method on the two parameters with a
 * backtracking line search. Pure arithmetic, no I/O. */
#include <math.h>
#include <stdlib.h>

#include "calib.h"

#define FIT_ITERS 100
#define FIT_TOL 1e-10   /* stop when the loss improves by less than this (relative) */

/* Mean log loss of sigmoid(a x + b) against targets t (numerically stable form). */
static double loss(const float *x, const double *t, int n, double a, double b) {
    double s = 0;
    for (int i = 0; i < n; i++) {
        double z = a * x[i] + b;
        /* -[t log p + (1-t) log(1-p)] = log(1 + e^z) - t z */
        s += (z > 0 ? z + log1p(exp(-z)) : log1p(exp(z))) - t[i] * z;
    }
    return s / n;
}

int mr_calib_fit(const float *raw, const int *label, int n, double *a, double *b,
                  double *loss_identity, double *loss_fit, mr_err *err) {
    int pos = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(raw[i]))
            return mr_err_set(err, MR_EINVAL, "pair %d: score %g is not finite", i, raw[i]);
        pos += label[i] > 0;
    }
    if (pos < 1 || pos == n)
        return mr_err_set(err, MR_EINVAL, "%d pairs, %d positive: both labels are needed", n,
                          pos);
    double *t = malloc((size_t)n * sizeof *t);
    if (!t) return mr_err_set(err, MR_ENOMEM, "out of memory");
    double tp = (pos + 1.0) / (pos + 2.0), tn = 1.0 / (n - pos + 2.0);
    for (int i = 0; i < n; i++) t[i] = label[i] > 0 ? tp : tn;
    double A = 1, B = 0, L = loss(raw, t, n, A, B);
    *loss_identity = L;
    for (int it = 0; it < FIT_ITERS; it++) {
        double ga = 0, gb = 0, haa = 0, hab = 0, hbb = 0;
        for (int i = 0; i < n; i++) {
            double p = 1 / (1 + exp(-(A * raw[i] + B))), d = p - t[i], w = p * (1 - p);
            ga += d * raw[i];
            gb += d;
            haa += w * raw[i] * raw[i];
            hab += w * raw[i];
            hbb += w;
        }
        haa = haa / n + 1e-12;   /* a tiny ridge keeps the step defined on flat data */
        hbb = hbb / n + 1e-12;
        hab /= n;
        ga /= n;
        gb /= n;
        double det = haa * hbb - hab * hab;
        if (!(det > 0)) break;
        double da = -(hbb * ga - hab * gb) / det, db = -(haa * gb - hab * ga) / det;
        double step = 1, Ln = L;
        for (int k = 0; k < 40; k++, step /= 2) {   /* backtracking */
            Ln = loss(raw, t, n, A + step * da, B + step * db);
            if (Ln <= L) break;
        }
        if (!(Ln <= L)) break;
        A += step * da;
        B += step * db;
        int done = L - Ln <= FIT_TOL * fabs(L);
        L = Ln;
        if (done) break;
    }
    free(t);
    *a = A;
    *b = B;
    *loss_fit = L;
    if (!(A > 0) || !isfinite(A) || !isfinite(B))
        return mr_err_set(err, MR_EINVAL, "the fitted slope a = %g is not positive: the scores "
                          "do not increase with the labels", A);
    return 0;
}
