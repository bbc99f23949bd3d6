/* tcache.c: the training pass's activation cache (see tcache.h): creation, sizing for a pass
 * (mr__tcache_prepare, tcache_layout.h) and the final-residual accessor. The float arena holds,
 * in order: the embeddings, per layer its pooling weights, compressed input, intermediates and
 * output, the scores and effective heads, the backward scratch (sized for the widest layer),
 * the attention scratch and the LoRA dropout buffers; the int arena the token layouts. Not
 * here: what fills the arenas (tpass.c). */
#include "tcache_layout.h"

#include <stdlib.h>

#include "backward.h"
#include "kernels.h"

int mr_tcache_new(mr_tcache **c, mr_err *err) {
    *c = calloc(1, sizeof **c);
    return *c ? 0 : mr_err_set(err, MR_ENOMEM, "out of memory");
}

void mr_tcache_freeze_pool_weights(mr_tcache *c, int on) { c->freeze_pw = on; }

void mr_tcache_free(mr_tcache *c) {
    if (!c) return;
    free(c->L);
    free(c->fbuf);
    free(c->ibuf);
    free(c);
}

int mr__tcache_prepare(const mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                       const mr_twidth *w, int D, mr_err *err) {
    const mr_config *k = &m->cfg;
    size_t d = (size_t)k->d_model, qd = (size_t)k->n_heads * k->head_dim,
           kvd = (size_t)k->n_kv_heads * k->head_dim, ff = (size_t)k->d_ff;
    size_t rk = m->mode == MR_TRAIN_LORA ? (size_t)m->rank : 0;
    size_t din = d > qd ? d : qd; /* widest LoRA input (dropout scratch) */
    din = rk && m->lora_dropout > 0.0f ? (din > ff ? din : ff) : 0;
    if ((size_t)D > c->lcap) {
        mr__lcache *L = realloc(c->L, sizeof *L * (size_t)D);
        if (!L) return mr_err_set(err, MR_ENOMEM, "out of memory");
        c->L = L;
        c->lcap = (size_t)D;
    }
    int ntok[MR_MAX_EXITS * 4 + 1];
    if (D > (int)(sizeof ntok / sizeof *ntok) - 1)
        return mr_err_set(err, MR_ERANGE, "too many layers (%d)", D);
    int *np = malloc(sizeof(int) * (size_t)(n_rows ? n_rows : 1));
    if (!np) return mr_err_set(err, MR_ENOMEM, "out of memory");
    int n0 = 0, nmax = 0, max_len = 2;
    for (int r = 0; r < n_rows; r++) {
        np[r] = rows[r].np;
        n0 += rows[r].nq + rows[r].np + rows[r].ns;
    }
    int ci = 0;
    nmax = n0;
    size_t nf = (size_t)n0 * d, ni = 5 * (size_t)n_rows + (size_t)n0;
    for (int l = 0; l < D; l++) {
        int comp = ci < w->n_compress && w->compress_layers[ci] == l && w->ratio > 1;
        if (ci < w->n_compress && w->compress_layers[ci] == l) ci++;
        int n = 0;
        for (int r = 0; r < n_rows; r++) {
            if (comp) np[r] = (np[r] + w->ratio - 1) / w->ratio;
            n += rows[r].nq + np[r] + rows[r].ns;
        }
        ntok[l] = n;
        nf += (size_t)n * (6 * d + 2 * qd + 2 * kvd + 3 * ff + MR_N_LIN * rk) +
              (comp ? (size_t)n * d : 0);
        if (comp && w->pooling == MR_POOL_ATTENTION) nf += (size_t)(l ? ntok[l - 1] : n0);
        ni += 5 * (size_t)n_rows + (size_t)n;
    }
    free(np);
    for (int r = 0; r < n_rows; r++) {
        int len = rows[r].nq + rows[r].np + rows[r].ns;
        if (len > max_len) max_len = len;
    }
    nf += 2 * (size_t)m->n_exits * ((size_t)n_rows + d);      /* scores, heads_eff... */
    nf += (size_t)nmax * (3 * d + 2 * qd + 2 * kvd + 3 * ff + rk + 1); /* bwd scratch */
    if (din) nf += 2 * (size_t)nmax * din + 2 * (size_t)m->n_exits * d + 2 * d; /* dropout */
    nf += mr_attention_scratch(max_len, k->head_dim) + mr_attention_backward_scratch(max_len);
    nf += 64 * 16; /* slack for alignment */
    if (nf > c->fcap) {
        free(c->fbuf);
        if (!(c->fbuf = malloc(sizeof(float) * nf))) {
            c->fcap = 0;
            return mr_err_set(err, MR_ENOMEM, "out of memory for %zu activations", nf);
        }
        c->fcap = nf;
    }
    if (ni > c->icap) {
        free(c->ibuf);
        if (!(c->ibuf = malloc(sizeof(int32_t) * ni))) {
            c->icap = 0;
            return mr_err_set(err, MR_ENOMEM, "out of memory");
        }
        c->icap = ni;
    }
    float *f = c->fbuf;
    int32_t *ip = c->ibuf;
#define TAKE(n) (f += (n), f - (n))
#define ITAKE(n) (ip += (n), ip - (n))
    c->off0 = ITAKE(n_rows), c->len0 = ITAKE(n_rows), c->nq0 = ITAKE(n_rows);
    c->np0 = ITAKE(n_rows), c->ns0 = ITAKE(n_rows), c->ids = ITAKE(n0);
    float *res = TAKE((size_t)n0 * d);
    ci = 0;
    for (int l = 0; l < D; l++) {
        mr__lcache *L = &c->L[l];
        size_t n = (size_t)ntok[l];
        L->n = (int)n;
        L->compressed = ci < w->n_compress && w->compress_layers[ci] == l && w->ratio > 1;
        if (ci < w->n_compress && w->compress_layers[ci] == l) ci++;
        L->off = ITAKE(n_rows), L->len = ITAKE(n_rows), L->nq = ITAKE(n_rows);
        L->np = ITAKE(n_rows), L->ns = ITAKE(n_rows), L->pos = ITAKE(n);
        L->res = res;
        L->pw = L->compressed && w->pooling == MR_POOL_ATTENTION
                    ? TAKE((size_t)(l ? ntok[l - 1] : n0)) : NULL;
        L->in = L->compressed ? TAKE(n * d) : res;
        L->xn1 = TAKE(n * d), L->ao = TAKE(n * d), L->h = TAKE(n * d), L->xn2 = TAKE(n * d);
        L->fo = TAKE(n * d), L->q = TAKE(n * qd), L->att = TAKE(n * qd), L->k = TAKE(n * kvd);
        L->v = TAKE(n * kvd), L->gate = TAKE(n * ff), L->up = TAKE(n * ff), L->act = TAKE(n * ff);
        for (int j = 0; j < MR_N_LIN; j++) L->lt[j] = rk ? TAKE(n * rk) : NULL;
        res = l + 1 < D ? TAKE(n * d) : NULL;
        if (l + 1 == D) c->out = TAKE(n * d);
    }
    if (D == 0) c->out = res;
    size_t nm = (size_t)nmax;
    c->scores = TAKE((size_t)m->n_exits * n_rows);
    c->heads_eff = TAKE((size_t)m->n_exits * d);
    c->dheads = TAKE((size_t)m->n_exits * d);
    c->dres = TAKE(nm * d), c->din = TAKE(nm * d), c->dn = TAKE(nm * d);
    c->dq = TAKE(nm * qd), c->datt = TAKE(nm * qd), c->dk = TAKE(nm * kvd), c->dv = TAKE(nm * kvd);
    c->dgate = TAKE(nm * ff), c->dup = TAKE(nm * ff), c->dact = TAKE(nm * ff);
    c->dt = TAKE(nm * (rk ? rk : 1));
    c->attn_scratch = TAKE(mr_attention_scratch(max_len, k->head_dim));
    c->attn_bscratch = TAKE(mr_attention_backward_scratch(max_len));
    c->xdrop = c->dxdrop = c->hdelta = c->dhdelta = c->hrow = NULL;
    if (din) {
        c->xdrop = TAKE(nm * din), c->dxdrop = TAKE(nm * din);
        c->hdelta = TAKE((size_t)m->n_exits * d), c->dhdelta = TAKE((size_t)m->n_exits * d);
        c->hrow = TAKE(2 * d);
    }
#undef TAKE
#undef ITAKE
    c->n_rows = n_rows;
    c->n_layers = D;
    c->ratio = w->ratio;
    return 0;
}

const float *mr_tcache_final(const mr_tcache *c, int *n, const int32_t **off,
                             const int32_t **len) {
    const mr__lcache *L = &c->L[c->n_layers - 1];
    if (n) *n = L->n;
    if (off) *off = L->off;
    if (len) *len = L->len;
    return c->out;
}
