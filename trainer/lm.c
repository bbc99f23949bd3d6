/* lm.c: causal-LM objective through the tied LM head (see lm.h). */
#include "lm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "kernels.h"
#include "tpass.h"

#define LM_CHUNK 64

int mr_lm_xent(const float *x, int n, const int32_t *targets, const float *fnorm,
               const float *E, int vocab, int d, float eps, float w_offset, float wgt,
               float *dx, float *dfnorm, float *dE, double *loss, int *n_targets, mr_err *err) {
    int T = n < LM_CHUNK ? n : LM_CHUNK;
    float *xn = malloc(sizeof(float) * (size_t)T * d);
    float *dxn = malloc(sizeof(float) * (size_t)T * d);
    float *lg = malloc(sizeof(float) * (size_t)T * vocab);
    double total = 0.0;
    int cnt = 0;
    if (!xn || !dxn || !lg) {
        free(xn), free(dxn), free(lg);
        return mr_err_set(err, MR_ENOMEM, "out of memory for %d x %d logits", T, vocab);
    }
    for (int t0 = 0; t0 < n; t0 += LM_CHUNK) {
        int nt = n - t0 < LM_CHUNK ? n - t0 : LM_CHUNK, any = 0;
        for (int i = 0; i < nt; i++) any |= targets[t0 + i] >= 0;
        if (!any) continue;
        const float *xc = x + (size_t)t0 * d;
        mr_rmsnorm(xn, xc, fnorm, nt, d, eps, w_offset);
        mr_matmul_wt(lg, xn, E, nt, d, vocab, 0.0f);
        for (int i = 0; i < nt; i++) {
            float *z = lg + (size_t)i * vocab;
            int32_t tg = targets[t0 + i];
            if (tg < 0 || tg >= vocab) {
                memset(z, 0, sizeof(float) * vocab); /* no gradient from this token */
                continue;
            }
            float mx = -INFINITY;
            for (int v = 0; v < vocab; v++) mx = z[v] > mx ? z[v] : mx;
            double s = 0.0;
            for (int v = 0; v < vocab; v++) s += exp((double)(z[v] - mx));
            double lse = mx + log(s);
            total += lse - z[tg];
            cnt++;
            float inv = (float)(1.0 / s);
            for (int v = 0; v < vocab; v++) z[v] = wgt * expf(z[v] - mx) * inv;
            z[tg] -= wgt;
        }
        if (!dx && !dfnorm && !dE) continue;
        memset(dxn, 0, sizeof(float) * (size_t)nt * d);
        mr_matmul_wt_backward(dxn, dE, NULL, lg, xn, E, nt, d, vocab);
        if (dx || dfnorm)
            mr_rmsnorm_backward(dx ? dx + (size_t)t0 * d : xn, dfnorm, dxn, xc, fnorm, nt, d,
                                eps, w_offset);
    }
    free(xn), free(dxn), free(lg);
    if (loss) *loss = total;
    if (n_targets) *n_targets = cnt;
    return 0;
}

int mr_lm_micro(mr_tmodel *m, mr_tcache *c, const int32_t *const *seqs, const int *lens,
                int n_seqs, float grad_scale, double *loss, mr_err *err) {
    if (m->mode != MR_TRAIN_FULL)
        return mr_err_set(err, MR_ESTATE, "LM training needs a full-mode model");
    if (mr_tmodel_deepest(m) != m->cfg.n_layers)
        return mr_err_set(err, MR_EINVAL, "LM training needs an exit at the last layer (%d)",
                          m->cfg.n_layers);
    mr_row *rows = malloc(sizeof(mr_row) * (size_t)(n_seqs ? n_seqs : 1));
    if (!rows) return mr_err_set(err, MR_ENOMEM, "out of memory");
    int n_tok = 0;
    for (int i = 0; i < n_seqs; i++) {
        if (lens[i] < 2) {
            free(rows);
            return mr_err_set(err, MR_EINVAL, "LM sequence %d: fewer than 2 tokens", i);
        }
        /* the whole sequence as [query | empty passage | last token]: one causal row */
        rows[i] = (mr_row){.q = seqs[i], .nq = lens[i] - 1, .p = NULL, .np = 0,
                           .s = seqs[i] + lens[i] - 1, .ns = 1};
        n_tok += lens[i];
    }
    mr_twidth full = {.ratio = 1};
    int rc = mr_tmodel_forward(m, c, rows, n_seqs, &full, NULL, err);
    free(rows);
    if (rc) return rc;
    int n, d = m->cfg.d_model;
    const int32_t *off, *len;
    const float *h = mr_tcache_final(c, &n, &off, &len);
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)n);
    float *dh = calloc((size_t)n * d, sizeof(float));
    if (!tg || !dh) {
        free(tg), free(dh);
        return mr_err_set(err, MR_ENOMEM, "out of memory");
    }
    int n_targets = 0;
    for (int i = 0; i < n_seqs; i++) {
        for (int t = 0; t < lens[i]; t++)
            tg[off[i] + t] = t + 1 < lens[i] ? seqs[i][t + 1] : -1;
        n_targets += lens[i] - 1;
    }
    (void)n_tok;
    float wgt = grad_scale / (float)n_targets;
    int cnt = 0;
    double sum = 0.0;
    rc = mr_lm_xent(h, n, tg, m->w.final_norm, m->w.embed, m->cfg.vocab_size, d,
                    m->cfg.rms_eps, m->norm_offset, wgt, dh, m->g.final_norm, m->g.embed, &sum,
                    &cnt, err);
    if (!rc) mr_tmodel_backward_ex(m, c, NULL, dh);
    if (loss) *loss = sum / (cnt ? cnt : 1);
    free(tg), free(dh);
    return rc;
}
