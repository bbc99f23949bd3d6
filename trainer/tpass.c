/* tpass.c: the training pass (see tpass.h): forward over packed rows with every activation
 * cached in mr_tcache, all exits scored in one pass, and the backward that walks the cache in
 * reverse, accumulating into the model's gradients.
 *
 * Layout as in common/forward.c: the residual stream holds the rows packed back to back, row
 * r = [query nq | passage np | suffix ns]. Width compression pools the passage into a new
 * buffer (the pre-compression stream stays cached for the backward). Unlike the scoring pass,
 * every layer runs every token (the backward needs them all), and no row is pruned.
 * Attention pooling at layer idx: layer idx-1's mr_attention call also writes last_probs (the
 * last token's attention to each key of its row, summed over heads) into L[idx].pw, which
 * mr_pool takes as weights, as common/forward.c does; the backward holds them constant.
 *
 * LoRA dropout makes the dropped copy of a LoRA input in a scratch buffer (xdrop) and calls
 * the same mr_lora / mr_lora_backward on it; the keep bits (dropout.h) are regenerated in the
 * backward instead of stored. On the exit heads, where only the last token of a row is
 * scored, the dropped LoRA term is folded into a per-row head, head + mask * scale B A, that
 * mr_exit_head and its backward take as the head.
 *
 * Not here: sizing the cache (tcache.c), the losses that produce dscores (loss.c, lm.c). */
#include "tpass.h"

#include <math.h>
#include <string.h>

#include "backward.h"
#include "dropout.h"
#include "kernels.h"
#include "lora.h"
#include "tcache_layout.h"

/* ============================== forward ============================== */

/* y (n, out) = x W^T + b + scale (drop(x) A^T) B^T; drop(x) = x without LoRA dropout. */
static void lin_fwd(const mr_tmodel *m, mr_tcache *c, int l, int j, const float *x, int n,
                    float *y, float *lt) {
    const mr_tlayer_w *L = &m->w.layers[l];
    int in, out;
    mr__lin_dims(&m->cfg, j, &in, &out);
    mr_matmul_wt(y, x, L->w[j], n, in, out, 0.0f);
    if (j <= MR_LV && L->b[j])
        for (int i = 0; i < n; i++) mr_add(y + (size_t)i * out, L->b[j], (size_t)out);
    if (m->mode != MR_TRAIN_LORA) return;
    if (c->drop_p > 0.0f) {
        mr__drop_copy(c->xdrop, x, (size_t)n * in, mr__drop_unit_key(c->drop_key, l, j), c->drop_p);
        x = c->xdrop;
    }
    mr_lora(y, lt, x, L->A[j], L->B[j], n, in, out, m->rank, m->lora_scale);
}

/* dx (n, in) += dy W (+ LoRA); weight, bias and LoRA gradients accumulate. */
static void lin_bwd(mr_tmodel *m, mr_tcache *c, int l, int j, const float *dy, const float *x,
                    int n, const float *lt, float *dx) {
    const mr_tlayer_w *L = &m->w.layers[l];
    mr_tlayer_w *G = &m->g.layers[l];
    int in, out;
    mr__lin_dims(&m->cfg, j, &in, &out);
    mr_matmul_wt_backward(dx, G->w[j], j <= MR_LV ? G->b[j] : NULL, dy, x, L->w[j], n, in, out);
    if (m->mode != MR_TRAIN_LORA) return;
    if (c->drop_p > 0.0f) { /* A, B see the dropped x; dx gets the LoRA part through the mask */
        size_t ni = (size_t)n * in;
        uint64_t key = mr__drop_unit_key(c->drop_key, l, j);
        mr__drop_copy(c->xdrop, x, ni, key, c->drop_p);
        memset(c->dxdrop, 0, sizeof(float) * ni);
        mr_lora_backward(c->dxdrop, G->A[j], G->B[j], dy, c->xdrop, lt, L->A[j], L->B[j], n, in,
                         out, m->rank, m->lora_scale, c->dt);
        mr__drop_add(dx, c->dxdrop, ni, key, c->drop_p);
        return;
    }
    mr_lora_backward(dx, G->A[j], G->B[j], dy, x, lt, L->A[j], L->B[j], n, in, out, m->rank,
                     m->lora_scale, c->dt);
}

static int layer_window(const mr_config *k, int l) {
    return k->sliding_window > 0 && (k->arch != MR_ARCH_GEMMA2 || l % 2 == 0) ? k->sliding_window
                                                                              : 0;
}

static mr_attn_args attn_args(const mr_tmodel *m, mr_tcache *c, mr__lcache *L, int l, int n_rows) {
    const mr_config *k = &m->cfg;
    float scale = 1.0f / sqrtf(k->query_pre_attn_scalar > 0 ? k->query_pre_attn_scalar
                                                            : (float)k->head_dim);
    int max_len = 2;
    for (int r = 0; r < n_rows; r++) max_len = L->len[r] > max_len ? L->len[r] : max_len;
    return (mr_attn_args){.q = L->q, .k = L->k, .v = L->v, .out = L->att, .off = L->off,
                          .len = L->len, .n_rows = n_rows, .n_heads = k->n_heads,
                          .n_kv = k->n_kv_heads, .head_dim = k->head_dim, .scale = scale,
                          .softcap = k->attn_softcap, .window = layer_window(k, l),
                          .scratch = c->attn_scratch, .max_len = max_len};
}

/* Decoder layer l: L->in -> out (n, d); last_probs (n) non-NULL: also the attention of each
 * row's last token to its keys, summed over heads (mr_attn_args.last_probs). */
static void layer_fwd(mr_tmodel *m, mr_tcache *c, int l, float *out, float *last_probs) {
    const mr_config *k = &m->cfg;
    const mr_tlayer_w *W = &m->w.layers[l];
    mr__lcache *L = &c->L[l];
    int n = L->n, d = k->d_model;
    float eps = k->rms_eps, no = m->norm_offset;
    mr_rmsnorm(L->xn1, L->in, W->attn_norm, n, d, eps, no);
    lin_fwd(m, c, l, MR_LQ, L->xn1, n, L->q, L->lt[MR_LQ]);
    lin_fwd(m, c, l, MR_LK, L->xn1, n, L->k, L->lt[MR_LK]);
    lin_fwd(m, c, l, MR_LV, L->xn1, n, L->v, L->lt[MR_LV]);
    mr_rope(L->q, L->pos, n, k->n_heads, k->head_dim, m->rope);
    mr_rope(L->k, L->pos, n, k->n_kv_heads, k->head_dim, m->rope);
    mr_attn_args a = attn_args(m, c, L, l, c->n_rows);
    a.last_probs = last_probs;
    mr_attention(&a);
    lin_fwd(m, c, l, MR_LO, L->att, n, L->ao, L->lt[MR_LO]);
    memcpy(L->h, L->in, sizeof(float) * (size_t)n * d);
    if (W->post_attn_norm) {
        mr_rmsnorm(out, L->ao, W->post_attn_norm, n, d, eps, no);
        mr_add(L->h, out, (size_t)n * d);
    } else {
        mr_add(L->h, L->ao, (size_t)n * d);
    }
    mr_rmsnorm(L->xn2, L->h, W->ffn_norm, n, d, eps, no);
    lin_fwd(m, c, l, MR_LGATE, L->xn2, n, L->gate, L->lt[MR_LGATE]);
    lin_fwd(m, c, l, MR_LUP, L->xn2, n, L->up, L->lt[MR_LUP]);
    size_t nf = (size_t)n * k->d_ff;
    if (k->act == MR_ACT_GELU_TANH) mr_geglu_tanh(L->act, L->gate, L->up, nf);
    else mr_swiglu(L->act, L->gate, L->up, nf);
    lin_fwd(m, c, l, MR_LDOWN, L->act, n, L->fo, L->lt[MR_LDOWN]);
    if (W->post_ffn_norm) mr_rmsnorm(out, L->fo, W->post_ffn_norm, n, d, eps, no);
    else memcpy(out, L->fo, sizeof(float) * (size_t)n * d);
    mr_add(out, L->h, (size_t)n * d);
}

static int check_rows(const mr_tmodel *m, const mr_row *rows, int n_rows, mr_err *err) {
    for (int r = 0; r < n_rows; r++) {
        const mr_row *w = &rows[r];
        if (w->nq < 1 || w->ns < 1 || w->np < 0)
            return mr_err_set(err, MR_EINVAL, "row %d: query and suffix must not be empty", r);
        if (w->nq + w->np + w->ns > m->max_len)
            return mr_err_set(err, MR_ERANGE, "row %d: %d tokens exceed max_len %d", r,
                              w->nq + w->np + w->ns, m->max_len);
        const int32_t *segs[3] = {w->q, w->p, w->s};
        int lens[3] = {w->nq, w->np, w->ns};
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < lens[s]; i++)
                if (segs[s][i] < 0 || segs[s][i] >= m->cfg.vocab_size)
                    return mr_err_set(err, MR_EINVAL, "row %d: token id %d outside vocab", r,
                                      segs[s][i]);
    }
    return 0;
}

/* LoRA dropout on head e's input at row r: out (d) = head + mask * scale B A, so that
 * xn . out = xn . head + drop(xn) . (scale B A). */
static const float *head_row(const mr_tmodel *m, const mr_tcache *c, int e, int r, float *out) {
    int d = m->cfg.d_model;
    uint64_t key = mr__drop_unit_key(c->drop_key, MR__DROP_HEAD + e, 0);
    uint64_t thr = mr__drop_thr(c->drop_p);
    float keep = 1.0f / (1.0f - c->drop_p);
    const float *h = m->w.heads + (size_t)e * d, *dl = c->hdelta + (size_t)e * d;
    for (int j = 0; j < d; j++)
        out[j] = h[j] + dl[j] * mr__drop_f(key, (size_t)r * d + j, thr, keep);
    return out;
}

/* Score of every row at exit e from the residual res with layout (off, len). */
static void score_exit(mr_tmodel *m, mr_tcache *c, int e, const float *res, const int32_t *off,
                       const int32_t *len) {
    const mr_config *k = &m->cfg;
    int d = k->d_model;
    float *xn = c->dn; /* scratch (d) */
    for (int r = 0; r < c->n_rows; r++) {
        const float *head = c->drop_p > 0.0f ? head_row(m, c, e, r, c->hrow)
                                             : c->heads_eff + (size_t)e * d;
        c->scores[(size_t)e * c->n_rows + r] =
            mr_exit_head(xn, res + (size_t)(off[r] + len[r] - 1) * d, m->w.final_norm, head, d,
                         k->rms_eps, m->norm_offset, k->final_softcap);
    }
}

int mr__tmodel_forward_pass(mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                            const mr_twidth *w, float *scores, int pass, mr_err *err) {
    const mr_config *k = &m->cfg;
    int rc, D = mr_tmodel_deepest(m), d = k->d_model;
    if ((rc = check_rows(m, rows, n_rows, err)) || (rc = mr_twidth_check(w, m, err)) ||
        (rc = mr__tcache_prepare(m, c, rows, n_rows, w, D, err)))
        return rc;
    c->drop_p = m->mode == MR_TRAIN_LORA && m->lora_dropout > 0.0f ? m->lora_dropout : 0.0f;
    c->drop_key = mr__drop_pass_key(m, pass);
    /* effective heads: head + scale B A (with dropout: the delta apart, masked per row) */
    memcpy(c->heads_eff, m->w.heads, sizeof(float) * (size_t)m->n_exits * d);
    if (c->drop_p > 0.0f) memset(c->hdelta, 0, sizeof(float) * (size_t)m->n_exits * d);
    float *he = c->drop_p > 0.0f ? c->hdelta : c->heads_eff;
    if (m->mode == MR_TRAIN_LORA)
        for (int e = 0; e < m->n_exits; e++)
            for (int r = 0; r < m->rank; r++) {
                float b = m->lora_scale * m->w.head_B[(size_t)e * m->rank + r];
                const float *a = m->w.head_A + ((size_t)e * m->rank + r) * d;
                for (int j = 0; j < d; j++) he[(size_t)e * d + j] += b * a[j];
            }
    /* embed */
    float *x0 = c->L[0].res;
    int t = 0;
    for (int r = 0; r < n_rows; r++) {
        const mr_row *w_ = &rows[r];
        c->off0[r] = t;
        c->len0[r] = w_->nq + w_->np + w_->ns;
        c->nq0[r] = w_->nq, c->np0[r] = w_->np, c->ns0[r] = w_->ns;
        const int32_t *segs[3] = {w_->q, w_->p, w_->s};
        int lens[3] = {w_->nq, w_->np, w_->ns};
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < lens[s]; i++, t++) {
                c->ids[t] = segs[s][i];
                const float *e = m->w.embed + (size_t)segs[s][i] * d;
                for (int j = 0; j < d; j++) x0[(size_t)t * d + j] = e[j] * m->embed_scale;
            }
    }
    int ei = 0;
    const int32_t *poff = c->off0, *plen = c->len0, *pnq = c->nq0, *pnp = c->np0, *pns = c->ns0;
    for (int l = 0; l < D; l++) {
        mr__lcache *L = &c->L[l];
        if (L->compressed) {
            mr_pool(L->in, L->res, poff, pnq, pnp, pns, n_rows, d, w->ratio, L->pw, NULL, L->off,
                    L->np);
        } else {
            memcpy(L->off, poff, sizeof(int32_t) * n_rows);
            memcpy(L->np, pnp, sizeof(int32_t) * n_rows);
        }
        for (int r = 0; r < n_rows; r++) {
            L->nq[r] = pnq[r], L->ns[r] = pns[r];
            L->len[r] = L->nq[r] + L->np[r] + L->ns[r];
            for (int i = 0; i < L->len[r]; i++) L->pos[L->off[r] + i] = i;
        }
        float *out = l + 1 < D ? c->L[l + 1].res : c->out;
        layer_fwd(m, c, l, out, l + 1 < D && !c->freeze_pw ? c->L[l + 1].pw : NULL);
        poff = L->off, plen = L->len, pnq = L->nq, pnp = L->np, pns = L->ns;
        while (ei < m->n_exits && m->exit_layer[ei] == l + 1)
            score_exit(m, c, ei++, out, poff, plen);
    }
    if (scores) memcpy(scores, c->scores, sizeof(float) * (size_t)m->n_exits * n_rows);
    return 0;
}

int mr_tmodel_forward(mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                      const mr_twidth *w, float *scores, mr_err *err) {
    return mr__tmodel_forward_pass(m, c, rows, n_rows, w, scores, 0, err);
}

/* ============================== backward ============================== */

/* dout (n, d): gradient of layer l's output; adds the gradient of its input into din. */
static void layer_bwd(mr_tmodel *m, mr_tcache *c, int l, const float *dout, float *din) {
    const mr_config *k = &m->cfg;
    const mr_tlayer_w *W = &m->w.layers[l];
    mr_tlayer_w *G = &m->g.layers[l];
    mr__lcache *L = &c->L[l];
    int n = L->n, d = k->d_model, qd = k->n_heads * k->head_dim,
        kvd = k->n_kv_heads * k->head_dim;
    float eps = k->rms_eps, no = m->norm_offset;
    size_t nd = (size_t)n * d, nf = (size_t)n * k->d_ff;
    /* out = h + post_ffn(fo): dh = dout, dfo */
    float *dh = din; /* din accumulates dh, then the attention branch */
    mr_add(dh, dout, nd);
    float *dfo = c->dn;
    if (W->post_ffn_norm) {
        memset(dfo, 0, sizeof(float) * nd);
        mr_rmsnorm_backward(dfo, G->post_ffn_norm, dout, L->fo, W->post_ffn_norm, n, d, eps, no);
    } else {
        memcpy(dfo, dout, sizeof(float) * nd);
    }
    memset(c->dact, 0, sizeof(float) * nf);
    lin_bwd(m, c, l, MR_LDOWN, dfo, L->act, n, L->lt[MR_LDOWN], c->dact);
    memset(c->dgate, 0, sizeof(float) * nf);
    memset(c->dup, 0, sizeof(float) * nf);
    if (k->act == MR_ACT_GELU_TANH)
        mr_geglu_tanh_backward(c->dgate, c->dup, c->dact, L->gate, L->up, nf);
    else
        mr_swiglu_backward(c->dgate, c->dup, c->dact, L->gate, L->up, nf);
    float *dxn = c->dn;
    memset(dxn, 0, sizeof(float) * nd);
    lin_bwd(m, c, l, MR_LGATE, c->dgate, L->xn2, n, L->lt[MR_LGATE], dxn);
    lin_bwd(m, c, l, MR_LUP, c->dup, L->xn2, n, L->lt[MR_LUP], dxn);
    mr_rmsnorm_backward(dh, G->ffn_norm, dxn, L->h, W->ffn_norm, n, d, eps, no);
    /* h = in + post_attn(ao): dao; din already holds dh (the residual path to in) */
    float *dao = c->dn;
    if (W->post_attn_norm) {
        memset(dao, 0, sizeof(float) * nd);
        mr_rmsnorm_backward(dao, G->post_attn_norm, dh, L->ao, W->post_attn_norm, n, d, eps, no);
    } else {
        memcpy(dao, dh, sizeof(float) * nd);
    }
    memset(c->datt, 0, sizeof(float) * (size_t)n * qd);
    lin_bwd(m, c, l, MR_LO, dao, L->att, n, L->lt[MR_LO], c->datt);
    memset(c->dq, 0, sizeof(float) * (size_t)n * qd);
    memset(c->dk, 0, sizeof(float) * (size_t)n * kvd);
    memset(c->dv, 0, sizeof(float) * (size_t)n * kvd);
    mr_attn_args a = attn_args(m, c, L, l, c->n_rows);
    mr_attention_backward(&a, c->datt, c->dq, c->dk, c->dv, c->attn_bscratch);
    mr_rope_inverse(c->dq, L->pos, n, k->n_heads, k->head_dim, m->rope);
    mr_rope_inverse(c->dk, L->pos, n, k->n_kv_heads, k->head_dim, m->rope);
    float *dxn1 = c->dn;
    memset(dxn1, 0, sizeof(float) * nd);
    lin_bwd(m, c, l, MR_LQ, c->dq, L->xn1, n, L->lt[MR_LQ], dxn1);
    lin_bwd(m, c, l, MR_LK, c->dk, L->xn1, n, L->lt[MR_LK], dxn1);
    lin_bwd(m, c, l, MR_LV, c->dv, L->xn1, n, L->lt[MR_LV], dxn1);
    mr_rmsnorm_backward(din, G->attn_norm, dxn1, L->in, W->attn_norm, n, d, eps, no);
}

/* Gradient of exit e's scores into dres (residual with layout off, len). */
static void exit_bwd(mr_tmodel *m, mr_tcache *c, int e, const float *dscores, const float *res,
                     const int32_t *off, const int32_t *len, float *dres) {
    const mr_config *k = &m->cfg;
    int d = k->d_model;
    for (int r = 0; r < c->n_rows; r++) {
        float ds = dscores[(size_t)e * c->n_rows + r];
        if (ds == 0.0f) continue;
        size_t t = (size_t)(off[r] + len[r] - 1) * d;
        if (c->drop_p > 0.0f) { /* the row's own head; its gradient splits base / masked LoRA */
            float *dh = c->hrow + d;
            memset(dh, 0, sizeof(float) * d);
            mr_exit_head_backward(dres + t, m->g.final_norm, dh, ds,
                                  c->scores[(size_t)e * c->n_rows + r], res + t, m->w.final_norm,
                                  head_row(m, c, e, r, c->hrow), d, k->rms_eps, m->norm_offset,
                                  k->final_softcap);
            mr_add(c->dheads + (size_t)e * d, dh, (size_t)d);
            uint64_t key = mr__drop_unit_key(c->drop_key, MR__DROP_HEAD + e, 0);
            uint64_t thr = mr__drop_thr(c->drop_p);
            float keep = 1.0f / (1.0f - c->drop_p), *dl = c->dhdelta + (size_t)e * d;
            for (int j = 0; j < d; j++)
                dl[j] += dh[j] * mr__drop_f(key, (size_t)r * d + j, thr, keep);
            continue;
        }
        mr_exit_head_backward(dres + t, m->g.final_norm, c->dheads + (size_t)e * d, ds,
                              c->scores[(size_t)e * c->n_rows + r], res + t, m->w.final_norm,
                              c->heads_eff + (size_t)e * d, d, k->rms_eps, m->norm_offset,
                              k->final_softcap);
    }
}


void mr_tmodel_backward(mr_tmodel *m, mr_tcache *c, const float *dscores) {
    mr_tmodel_backward_ex(m, c, dscores, NULL);
}

void mr_tmodel_backward_ex(mr_tmodel *m, mr_tcache *c, const float *dscores,
                           const float *dfinal) {
    const mr_config *k = &m->cfg;
    int D = c->n_layers, d = k->d_model, ei = m->n_exits - 1;
    memset(c->dheads, 0, sizeof(float) * (size_t)m->n_exits * d);
    if (c->drop_p > 0.0f) memset(c->dhdelta, 0, sizeof(float) * (size_t)m->n_exits * d);
    /* dres: gradient of the residual after layer l (layout of layer l) */
    float *dres = c->dres, *din = c->din;
    if (dfinal) memcpy(dres, dfinal, sizeof(float) * (size_t)c->L[D - 1].n * d);
    else memset(dres, 0, sizeof(float) * (size_t)c->L[D - 1].n * d);
    for (int l = D - 1; l >= 0; l--) {
        mr__lcache *L = &c->L[l];
        const float *res_out = l + 1 < D ? c->L[l + 1].res : c->out;
        while (ei >= 0 && m->exit_layer[ei] == l + 1) {
            if (dscores) exit_bwd(m, c, ei, dscores, res_out, L->off, L->len, dres);
            ei--;
        }
        memset(din, 0, sizeof(float) * (size_t)L->n * d);
        layer_bwd(m, c, l, dres, din);
        /* gradient of the residual entering layer l (before compression) */
        if (L->compressed) {
            const int32_t *poff = l ? c->L[l - 1].off : c->off0, *pnq = l ? c->L[l - 1].nq : c->nq0,
                          *pnp = l ? c->L[l - 1].np : c->np0, *pns = l ? c->L[l - 1].ns : c->ns0;
            int n_prev = l ? c->L[l - 1].n : c->off0[c->n_rows - 1] + c->len0[c->n_rows - 1];
            memset(dres, 0, sizeof(float) * (size_t)n_prev * d);
            mr_pool_backward(dres, din, poff, pnq, pnp, pns, c->n_rows, d, c->ratio, L->pw,
                             L->off); /* weights constant: stop-gradient */
        } else {
            float *tmp = dres;
            dres = din;
            din = tmp;
        }
    }
    if (m->g.embed) {
        int n0 = c->off0[c->n_rows - 1] + c->len0[c->n_rows - 1];
        mr_embedding_backward(m->g.embed, dres, c->ids, n0, d, m->embed_scale);
    }
    /* heads: base or LoRA (the LoRA delta's gradient is masked under dropout) */
    if (m->g.heads) mr_add(m->g.heads, c->dheads, (size_t)m->n_exits * d);
    const float *dhl = c->drop_p > 0.0f ? c->dhdelta : c->dheads;
    if (m->mode == MR_TRAIN_LORA)
        for (int e = 0; e < m->n_exits; e++)
            for (int r = 0; r < m->rank; r++) {
                const float *a = m->w.head_A + ((size_t)e * m->rank + r) * d;
                float *ga = m->g.head_A + ((size_t)e * m->rank + r) * d;
                const float *dh = dhl + (size_t)e * d;
                float b = m->w.head_B[(size_t)e * m->rank + r], s = m->lora_scale;
                m->g.head_B[(size_t)e * m->rank + r] += s * mr_dot(dh, a, d);
                for (int j = 0; j < d; j++) ga[j] += s * b * dh[j];
            }
}
