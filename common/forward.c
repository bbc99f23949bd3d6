/* forward.c: the scoring pass of a Matryoshka re-ranker: one pass over packed rows that
 * returns a score at every requested exit, compresses passage tokens at the listed layers,
 * drops pruned rows at exits, and at the deepest exit runs only the last token of each row.
 *
 * Layout (prefix.h): the residual stream c->x holds one copy of each distinct query prefix,
 * then the current own tokens of the surviving rows packed back to back (row r: tokens
 * [off[r], off[r] + len[r]) = passage | suffix, attending to its prefix first). Width
 * compression and pruning rewrite that layout in place, front to back, which is safe because
 * every token only moves towards the start. An optional stop check (mr_run_opts.stop) may end
 * the pass between layers. mr_ctx_init sizes every buffer once;
 * mr_model_score allocates nothing. Semantics: matryoshka-method.md sections 3-5. Loading and
 * adapters are model.c's and the arithmetic is kernels.c's; this file owns the run options, the
 * packed layout and the order of the calls. */
#include "kernels.h"
#include "model.h"
#include "prefix.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

void mr_run_opts_init(mr_run_opts *o, const mr_model *m) {
    memset(o, 0, sizeof *o);
    o->n_exits = 1;
    o->exits[0] = mr_model_exit_layer(m, m->n_heads_exit - 1);
    o->ratio = 1;
    o->pooling = MR_POOL_MEAN;
    o->adapter_mask = m->merged ? 0 : (uint32_t)((1ull << m->n_adapters) - 1);
    o->no_prefix_share = 0; /* query prefixes are shared */
}

int mr_run_opts_check(const mr_run_opts *o, const mr_model *m, mr_err *err) {
    if (o->n_exits < 1 || o->n_exits > MR_MAX_EXITS)
        return mr_err_set(err, MR_EINVAL, "exits: need 1..%d exit layers", MR_MAX_EXITS);
    for (int i = 0; i < o->n_exits; i++) {
        int l = o->exits[i];
        if (i > 0 && l <= o->exits[i - 1])
            return mr_err_set(err, MR_EINVAL, "exits: must be strictly increasing (%d after %d)",
                              l, o->exits[i - 1]);
        int k = o->head_by_position ? i : mr_model_head_of(m, l);
        if (l < 1 || l > m->cfg.n_layers || k < 0 || k >= m->n_heads_exit)
            return mr_err_set(err, MR_EINVAL,
                              "exits: layer %d has no exit head (valid: %d..%d every %d)", l,
                              m->cfg.start_layer, mr_model_exit_layer(m, m->n_heads_exit - 1),
                              m->cfg.layer_sep);
    }
    if (o->ratio != 1 && o->ratio != 2 && o->ratio != 4 && o->ratio != 8)
        return mr_err_set(err, MR_EINVAL, "compress ratio must be 1, 2, 4 or 8, not %d",
                          o->ratio);
    if (o->n_compress < 0 || o->n_compress > MR_MAX_COMPRESS)
        return mr_err_set(err, MR_EINVAL, "compress layers: at most %d", MR_MAX_COMPRESS);
    for (int i = 0; i < o->n_compress; i++) {
        int l = o->compress_layers[i];
        if (l < 0 || l >= m->cfg.n_layers || (i > 0 && l <= o->compress_layers[i - 1]))
            return mr_err_set(err, MR_EINVAL,
                              "compress layers must be increasing, in 0..%d (got %d)",
                              m->cfg.n_layers - 1, l);
        if (o->pooling == MR_POOL_ATTENTION && l == 0 && o->ratio > 1)
            return mr_err_set(err, MR_EINVAL,
                              "attention pooling needs a previous layer: compress layer 0 "
                              "only works with mean pooling");
    }
    if (o->pooling != MR_POOL_MEAN && o->pooling != MR_POOL_ATTENTION)
        return mr_err_set(err, MR_EINVAL, "unknown pooling %d", (int)o->pooling);
    if (o->n_prune < 0 || o->n_prune > MR_MAX_PRUNE)
        return mr_err_set(err, MR_EINVAL, "prune: at most %d steps", MR_MAX_PRUNE);
    for (int i = 0; i < o->n_prune; i++) {
        int found = 0;
        for (int j = 0; j < o->n_exits; j++) found |= o->exits[j] == o->prune[i].layer;
        if (!found || (i > 0 && o->prune[i].layer <= o->prune[i - 1].layer))
            return mr_err_set(err, MR_EINVAL,
                              "prune at layer %d: must be a requested exit, in increasing order",
                              o->prune[i].layer);
        if (o->prune[i].top_k < 0 || !isfinite(o->prune[i].min_score))
            return mr_err_set(err, MR_EINVAL, "prune at layer %d: bad top_k or min_score",
                              o->prune[i].layer);
    }
    uint32_t have = m->n_adapters >= 32 ? 0xffffffffu : (uint32_t)((1ull << m->n_adapters) - 1);
    if (o->adapter_mask & ~have)
        return mr_err_set(err, MR_EINVAL, "adapter mask 0x%x names adapters not loaded (%d)",
                          o->adapter_mask, m->n_adapters);
    if (m->merged && o->adapter_mask)
        return mr_err_set(err, MR_EINVAL, "adapters were merged at load: adapter mask must be 0");
    return 0;
}

/* Matrices in the GEMM path's weight dtype, aligned to their element size, are used in place;
 * any other goes through a wbuf copy (weight_view). */
static int usable_in_place(const mr_tensor *t, mr_dtype want) {
    return t->dtype == want && ((uintptr_t)t->data & (mr_dtype_size(want) - 1)) == 0;
}

static size_t max_matrix(const mr_config *c) {
    size_t qd = (size_t)c->n_heads * c->head_dim, a = (size_t)c->d_ff * c->d_model;
    size_t b = qd * c->d_model;
    return a > b ? a : b;
}

int mr_ctx_init(mr_ctx *c, const mr_model *m, int max_tokens, int max_rows, int max_len,
                mr_err *err) {
    memset(c, 0, sizeof *c);
    const mr_config *k = &m->cfg;
    if (max_tokens < 1 || max_rows < 1 || max_len < 2 || max_rows > max_tokens)
        return mr_err_set(err, MR_EINVAL, "context: bad sizes (tokens %d, rows %d, len %d)",
                          max_tokens, max_rows, max_len);
    c->m = m;
    c->max_tokens = max_tokens;
    c->max_rows = max_rows;
    c->max_len = max_len;
    size_t T = (size_t)max_tokens, d = (size_t)k->d_model;
    size_t qd = (size_t)k->n_heads * k->head_dim, kvd = (size_t)k->n_kv_heads * k->head_dim;
    int max_rank = 0, all_in_place = 1, n_shapes = 0, shapes[MR_GEMM_MAX_SHAPES][2];
    mr_dtype want = mr_gemm_weight_dtype(m->gemm);
    for (int i = 0; i < k->n_layers; i++) {
        const mr_layer *L = &m->layers[i];
        const mr_linear *lins[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) {
            /* by tensor, not by config dtype: a checkpoint may mix dtypes */
            /* the int8 path's weights are the model's mr_gemm_q8 copies */
            all_in_place &= m->gemm == MR_GEMM_ONEDNN_INT8 || usable_in_place(lins[j]->w, want);
            int s = 0;
            while (s < n_shapes && (shapes[s][0] != lins[j]->out || shapes[s][1] != lins[j]->in))
                s++;
            if (s == n_shapes && n_shapes < MR_GEMM_MAX_SHAPES) {
                shapes[n_shapes][0] = lins[j]->out;
                shapes[n_shapes++][1] = lins[j]->in;
            }
            for (int a = 0; a < lins[j]->n_lora; a++)
                if (lins[j]->lora[a].rank > max_rank) max_rank = lins[j]->lora[a].rank;
        }
    }
    /* MLP chunks keep the (chunk, dff) activations in cache and bound their memory */
    size_t ff_chunk = T < MR_FF_CHUNK ? T : MR_FF_CHUNK;
    int ok = (c->x = malloc(4 * T * d)) && (c->xn = malloc(4 * T * d)) &&
             (c->q = malloc(4 * T * qd)) && (c->k = malloc(4 * T * kvd)) &&
             (c->v = malloc(4 * T * kvd)) && (c->att = malloc(4 * T * qd)) &&
             (c->ff_a = malloc(4 * ff_chunk * k->d_ff)) &&
             (c->ff_b = malloc(4 * ff_chunk * k->d_ff)) &&
             (!max_rank || (c->lora_tmp = malloc(4 * T * max_rank))) &&
             (all_in_place || ((c->wbuf[0] = malloc(4 * max_matrix(k))) &&
                               (c->wbuf[1] = malloc(4 * max_matrix(k))) &&
                               (c->wbuf[2] = malloc(4 * max_matrix(k))))) &&
             (c->rope = malloc(4 * (size_t)max_len * k->head_dim)) &&
             (c->attn_scratch = malloc(4 * mr_attention_scratch(max_len, k->head_dim))) &&
             (c->last_probs = malloc(4 * T)) && (c->tmp_d = malloc(4 * d)) &&
             (c->head_tmp = malloc(4 * d)) && (c->pos = malloc(4 * T));
    int32_t **ints[] = {&c->off, &c->len, &c->nq, &c->np, &c->ns, &c->row_id, &c->q_off,
                        &c->q_from, &c->order, &c->g_off, &c->g_len, &c->pre_off, &c->pre_len};
    for (size_t i = 0; ok && i < sizeof ints / sizeof *ints; i++)
        ok = (*ints[i] = malloc(4 * (size_t)max_rows)) != NULL;
    ok = ok && (c->row_score = malloc(4 * (size_t)max_rows));
    if (!ok) {
        mr_ctx_close(c);
        return mr_err_set(err, MR_ENOMEM, "out of memory for a context of %d tokens",
                          max_tokens);
    }
    int rc = mr_gemm_ctx_new(&c->gemm, m->gemm, (const int (*)[2])shapes, n_shapes, max_tokens,
                             err);
    if (rc) {
        mr_ctx_close(c);
        return rc;
    }
    c->ff_chunk = (int)ff_chunk;
    mr_rope_table(c->rope, max_len, k->head_dim, k->rope_theta);
    return 0;
}

void mr_ctx_close(mr_ctx *c) {
    void *bufs[] = {c->x, c->xn, c->q, c->k, c->v, c->att, c->ff_a, c->ff_b, c->lora_tmp,
                    c->wbuf[0], c->wbuf[1], c->wbuf[2], c->rope, c->attn_scratch, c->last_probs,
                    c->tmp_d, c->head_tmp, c->pos, c->off, c->len, c->nq, c->np, c->ns,
                    c->row_id, c->q_off, c->q_from, c->order, c->row_score, c->g_off,
                    c->g_len, c->pre_off, c->pre_len};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    mr_gemm_ctx_free(c->gemm);
    memset(c, 0, sizeof *c);
}

/* l's weight matrix in the GEMM path's form: its mr_gemm_q8 on the int8 path; else in the
 * path's dtype (f32 or bf16), in place when usable, else converted into c->wbuf[slot]. */
static const void *weight_view(mr_ctx *c, const mr_linear *l, int slot) {
    if (c->m->gemm == MR_GEMM_ONEDNN_INT8) return &l->q8;
    const mr_tensor *t = l->w;
    mr_dtype want = mr_gemm_weight_dtype(c->m->gemm);
    if (usable_in_place(t, want)) return t->data;
    size_t n = (size_t)t->numel, es = mr_dtype_size(t->dtype), chunk = 4096;
    size_t n_chunks = (n + chunk - 1) / chunk;
    char *dst = (char *)c->wbuf[slot];
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n_chunks; i++) {
        size_t a = i * chunk, len = n - a < chunk ? n - a : chunk;
        const char *src = (const char *)t->data + a * es;
        if (want == MR_DT_F32) {
            mr_to_f32((float *)dst + a, src, t->dtype, len);
        } else if (t->dtype == want) {
            memcpy(dst + a * es, src, len * es); /* unaligned bf16 */
        } else {
            float tmp[4096]; /* bf16 from f32/f16 through f32 */
            mr_to_f32(tmp, src, t->dtype, len);
            mr_from_f32(dst + a * 2, tmp, want, len);
        }
    }
    return dst;
}

/* y (n, out) = x (n, in) W^T + b + sum over active unmerged adapters of x A^T B^T, with w the
 * weight_view of l. again: x is the previous linear's x, unchanged (mr_gemm_wt_again). A GEMM
 * failure is kept in c->gemm_rc (the pass reports it). */
static void linear_w(mr_ctx *c, const mr_linear *l, const void *w, const float *x, int n,
                     float *y, uint32_t mask, int again) {
    int rc = again ? mr_gemm_wt_again(c->gemm, y, x, w, n, l->in, l->out)
                   : mr_gemm_wt(c->gemm, y, x, w, n, l->in, l->out);
    if (rc && !c->gemm_rc) c->gemm_rc = rc;
    if (l->b) {
        for (int i = 0; i < n; i++) mr_add(y + (size_t)i * l->out, l->b, (size_t)l->out);
    }
    for (int a = 0; a < l->n_lora; a++) {
        const struct mr_lora_f32 *lo = &l->lora[a];
        if (!(mask >> lo->adapter & 1)) continue;
        mr_matmul_wt(c->lora_tmp, x, lo->A, n, l->in, lo->rank, 0.0f);
        mr_matmul_wt(y, c->lora_tmp, lo->B, n, lo->rank, l->out, 1.0f);
    }
}

static void linear(mr_ctx *c, const mr_linear *l, const float *x, int n, float *y,
                   uint32_t mask, int again) {
    linear_w(c, l, weight_view(c, l, 0), x, n, y, mask, again);
}

/* Prefix tokens sit at positions 0..g_len-1, a row's own tokens right after its prefix. */
static void set_positions(mr_ctx *c, int n_rows) {
    mr_prefix_positions(c->g_off, c->g_len, c->n_groups, c->off, c->len, c->pre_len, n_rows,
                        c->pos);
}

/* Width compression in place (mr_pool): means, or weights = the attention each token got from
 * its row's last token in the previous layer. Returns the new token count. */
static int compress(mr_ctx *c, int n_rows, int ratio, mr_pooling pooling) {
    /* rows' own tokens only (nq = 0): the query prefixes before pre_tok are never pooled */
    size_t d = (size_t)c->m->cfg.d_model;
    int out = mr_pool(c->x + (size_t)c->pre_tok * d, c->x, c->off, c->nq, c->np, c->ns, n_rows,
                      (int)d, ratio, pooling == MR_POOL_ATTENTION ? c->last_probs : NULL,
                      c->tmp_d, c->off, c->np);
    for (int r = 0; r < n_rows; r++) {
        c->off[r] += c->pre_tok;
        c->len[r] = c->nq[r] + c->np[r] + c->ns[r];
    }
    set_positions(c, n_rows);
    return c->pre_tok + out;
}

/* Moves the last token of every row (residual, normed input, position) to rows 0..n_rows-1
 * (over the prefixes, whose keys and values are already computed). */
static void gather_last(mr_ctx *c, int n_rows) {
    int d = c->m->cfg.d_model;
    for (int r = 0; r < n_rows; r++) {
        int t = c->off[r] + c->len[r] - 1; /* >= r: tokens only move towards the start */
        memmove(c->x + (size_t)r * d, c->x + (size_t)t * d, sizeof(float) * d);
        memmove(c->xn + (size_t)r * d, c->xn + (size_t)t * d, sizeof(float) * d);
        c->pos[r] = c->pos[t];
        c->q_off[r] = r;
        c->q_from[r] = c->len[r] - 1;
    }
}

/* Decoder layer l over n_tok tokens. At the deepest layer (last) only the rows' last tokens
 * get queries, attention output and MLP; the layout then becomes one token per row. */
static void layer_forward(mr_ctx *c, int l, int n_tok, int n_rows, int last, int want_probs,
                          uint32_t mask) {
    const mr_model *m = c->m;
    const mr_config *k = &m->cfg;
    const mr_layer *L = &m->layers[l];
    int d = k->d_model, n = last ? n_rows : n_tok;
    int window = k->sliding_window > 0 && (k->arch != MR_ARCH_GEMMA2 || l % 2 == 0)
                     ? k->sliding_window : 0;

    mr_rmsnorm(c->xn, c->x, L->attn_norm, n_tok, d, k->rms_eps, m->norm_offset);
    /* k, v and q read the same normed activations (q only the rows' last tokens at the
     * deepest layer, gathered first): converted once for the low-precision paths */
    linear(c, &L->k, c->xn, n_tok, c->k, mask, 0);
    linear(c, &L->v, c->xn, n_tok, c->v, mask, 1);
    mr_rope(c->k, c->pos, n_tok, k->n_kv_heads, k->head_dim, c->rope);
    if (last) gather_last(c, n_rows);
    linear(c, &L->q, c->xn, n, c->q, mask, !last);
    mr_rope(c->q, c->pos, n, k->n_heads, k->head_dim, c->rope);

    float scale = 1.0f / sqrtf(k->query_pre_attn_scalar > 0 ? k->query_pre_attn_scalar
                                                            : (float)k->head_dim);
    mr_attn_args a = {
        .q = c->q, .k = c->k, .v = c->v, .out = c->att, .off = c->off, .len = c->len,
        .q_off = last ? c->q_off : NULL, .q_from = last ? c->q_from : NULL, .n_rows = n_rows,
        .n_heads = k->n_heads, .n_kv = k->n_kv_heads, .head_dim = k->head_dim,
        .scale = scale, .softcap = k->attn_softcap, .window = window,
        .last_probs = want_probs ? c->last_probs : NULL, .scratch = c->attn_scratch,
        .max_len = c->max_len, .pre_off = c->pre_off, .pre_len = c->pre_len};
    mr_attention(&a);
    if (!last) { /* the prefixes' own queries, each attending within its prefix */
        mr_attn_args g = a;
        g.off = c->g_off;
        g.len = c->g_len;
        g.n_rows = c->n_groups;
        g.pre_off = g.pre_len = NULL;
        g.last_probs = NULL;
        mr_attention(&g);
    }

    linear(c, &L->o, c->att, n, c->xn, mask, 0);
    if (L->post_attn_norm)
        mr_rmsnorm(c->xn, c->xn, L->post_attn_norm, n, d, k->rms_eps, m->norm_offset);
    mr_add(c->x, c->xn, (size_t)n * d);

    mr_rmsnorm(c->xn, c->x, L->ffn_norm, n, d, k->rms_eps, m->norm_offset);
    const void *wg = weight_view(c, &L->gate, 0), *wu = weight_view(c, &L->up, 1),
               *wd = weight_view(c, &L->down, 2);
    for (int t0 = 0; t0 < n; t0 += c->ff_chunk) {
        /* the chunk's output overwrites its own input rows of xn, already consumed */
        int nc = n - t0 < c->ff_chunk ? n - t0 : c->ff_chunk;
        float *xc = c->xn + (size_t)t0 * d;
        linear_w(c, &L->gate, wg, xc, nc, c->ff_a, mask, 0);
        linear_w(c, &L->up, wu, xc, nc, c->ff_b, mask, 1);
        if (k->act == MR_ACT_GELU_TANH)
            mr_geglu_tanh(c->ff_a, c->ff_a, c->ff_b, (size_t)nc * k->d_ff);
        else
            mr_swiglu(c->ff_a, c->ff_a, c->ff_b, (size_t)nc * k->d_ff);
        linear_w(c, &L->down, wd, c->ff_a, nc, xc, mask, 0);
    }
    if (L->post_ffn_norm)
        mr_rmsnorm(c->xn, c->xn, L->post_ffn_norm, n, d, k->rms_eps, m->norm_offset);
    mr_add(c->x, c->xn, (size_t)n * d);

    if (last) {
        for (int r = 0; r < n_rows; r++) {
            c->off[r] = r;
            c->len[r] = 1;
        }
    }
}

/* Scores exit number e (layer o->exits[e]) for the n_rows surviving rows. */
static void score_exit(mr_ctx *c, int e, int n_rows, const mr_run_opts *o, float *scores,
                       int *depth) {
    const mr_model *m = c->m;
    const mr_config *k = &m->cfg;
    int d = k->d_model, layer = o->exits[e];
    int h = o->head_by_position ? e : mr_model_head_of(m, layer);
    const float *head = m->heads + (size_t)h * d;
    if (o->adapter_mask) {
        memcpy(c->head_tmp, head, sizeof(float) * d);
        for (int a = 0; a < m->n_adapters; a++)
            if (o->adapter_mask >> a & 1 && m->head_delta[a])
                mr_add(c->head_tmp, m->head_delta[a] + (size_t)h * d, (size_t)d);
        head = c->head_tmp;
    }
    for (int r = 0; r < n_rows; r++) {
        const float *xt = c->x + (size_t)(c->off[r] + c->len[r] - 1) * d;
        mr_rmsnorm(c->tmp_d, xt, m->final_norm, 1, d, k->rms_eps, m->norm_offset);
        float s = mr_dot(c->tmp_d, head, d);
        if (k->final_softcap > 0) s = k->final_softcap * tanhf(s / k->final_softcap);
        c->row_score[r] = s;
        int id = c->row_id[r];
        if (!isfinite(s) && c->bad_row < 0) c->bad_row = id, c->bad_exit = layer;
        scores[(size_t)id * o->n_exits + e] = o->sigmoid ? 1.0f / (1.0f + expf(-s)) : s;
        if (depth) depth[id] = layer;
    }
}

/* 1 when row a ranks before row b: lower group first (group may be NULL: one group), then
 * higher score (NaN lowest), then lower row_id. Row ids are distinct, so this is a strict total
 * order and any correct sort ranks the same. */
static int ranks_before(const float *score, const int32_t *row_id, const int32_t *group,
                        int32_t a, int32_t b) {
    if (group && group[row_id[a]] != group[row_id[b]])
        return group[row_id[a]] < group[row_id[b]];
    float sa = isnan(score[a]) ? -INFINITY : score[a], sb = isnan(score[b]) ? -INFINITY : score[b];
    return sa != sb ? sa > sb : row_id[a] < row_id[b];
}

/* Heapsort of order (n) by ranks_before, in place: qsort_r may malloc (glibc's merge sort does
 * past 1 KB), and the scoring pass allocates nothing. */
static void rank_rows(const float *score, const int32_t *row_id, const int32_t *group,
                      int32_t *order, int n) {
    for (int end = n, start = n / 2; end > 1;) {
        int root;
        if (start > 0) {
            root = --start;                    /* building the heap: the last-ranked on top */
        } else {
            int32_t t = order[0];              /* move the last-ranked to the end */
            order[0] = order[--end];
            order[end] = t;
            root = 0;
        }
        for (int c; (c = 2 * root + 1) < end; root = c) {
            if (c + 1 < end && ranks_before(score, row_id, group, order[c], order[c + 1])) c++;
            if (!ranks_before(score, row_id, group, order[root], order[c])) break;
            int32_t t = order[root];
            order[root] = order[c];
            order[c] = t;
        }
    }
}

void mr_prune_select(const float *score, const int32_t *row_id, const int32_t *group, int n,
                     const mr_prune *p, char *keep, int32_t *order) {
    for (int r = 0; r < n; r++) {
        order[r] = r;
        keep[r] = p->top_k == 0 && score[r] >= p->min_score;
    }
    if (p->top_k > 0) {
        rank_rows(score, row_id, group, order, n); /* each group's rows together, best first */
        for (int i = 0, taken = 0; i < n; i++, taken++) {
            if (i > 0 && group && group[row_id[order[i]]] != group[row_id[order[i - 1]]])
                taken = 0; /* the next group starts */
            if (taken < p->top_k) keep[order[i]] = 1;
        }
    }
}

/* Packs to the stream's front the query prefixes that a row kept by keep attends to; a prefix
 * whose rows were all dropped is not computed further. old (n_groups) is scratch. */
static void prune_prefixes(mr_ctx *c, int n_rows, const char *keep, int32_t *old) {
    int d = c->m->cfg.d_model;
    c->n_groups = mr_prefix_prune(c->g_off, c->g_len, c->n_groups, c->pre_off, n_rows, keep, old,
                                  &c->pre_tok);
    for (int g = 0; g < c->n_groups; g++) /* towards the start, in order: memmove is safe */
        memmove(c->x + (size_t)c->g_off[g] * d, c->x + (size_t)old[g] * d,
                sizeof(float) * c->g_len[g] * d);
}

/* Keeps the rows that pass p and packs them, and the prefixes they use, to the front; returns
 * the new row count. */
static int prune_rows(mr_ctx *c, int n_rows, int *n_tok, const mr_prune *p,
                      const int32_t *group) {
    int d = c->m->cfg.d_model;
    char *keep = (char *)c->q_from; /* free scratch: n_rows bytes */
    mr_prune_select(c->row_score, c->row_id, group, n_rows, p, keep, c->order);
    prune_prefixes(c, n_rows, keep, c->order); /* order: free again */
    int nr = 0, out = c->pre_tok;
    for (int r = 0; r < n_rows; r++) {
        if (!keep[r]) continue;
        memmove(c->x + (size_t)out * d, c->x + (size_t)c->off[r] * d,
                sizeof(float) * c->len[r] * d);
        /* pooling weights of a compression right after this exit move with their tokens */
        memmove(c->last_probs + out, c->last_probs + c->off[r], sizeof(float) * c->len[r]);
        c->off[nr] = out;
        c->len[nr] = c->len[r];
        c->nq[nr] = c->nq[r];
        c->np[nr] = c->np[r];
        c->ns[nr] = c->ns[r];
        c->row_id[nr] = c->row_id[r];
        c->pre_off[nr] = c->pre_off[r];
        c->pre_len[nr] = c->pre_len[r];
        out += c->len[r];
        nr++;
    }
    *n_tok = out;
    set_positions(c, nr);
    return nr;
}

int mr_rows_check(const mr_model *m, const mr_row *rows, int n_rows, int max_rows, int max_len,
                  int max_tokens, mr_err *err) {
    if (n_rows < 0 || n_rows > max_rows)
        return mr_err_set(err, MR_ERANGE, "%d rows exceed the context's %d", n_rows, max_rows);
    size_t total = 0;
    int vocab = m->cfg.vocab_size;
    for (int r = 0; r < n_rows; r++) {
        const mr_row *w = &rows[r];
        if (w->nq < 1 || w->ns < 1 || w->np < 0)
            return mr_err_set(err, MR_EINVAL,
                              "row %d: query and suffix segments must not be empty", r);
        int len = w->nq + w->np + w->ns;
        if (len > max_len)
            return mr_err_set(err, MR_ERANGE, "row %d: %d tokens exceed the maximum %d", r, len,
                              max_len);
        total += (size_t)len;
        const int32_t *segs[3] = {w->q, w->p, w->s};
        int lens[3] = {w->nq, w->np, w->ns};
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < lens[s]; i++)
                if (segs[s][i] < 0 || segs[s][i] >= vocab)
                    return mr_err_set(err, MR_EINVAL, "row %d: token id %d outside vocab 0..%d",
                                      r, segs[s][i], vocab - 1);
    }
    if (total > (size_t)max_tokens)
        return mr_err_set(err, MR_ERANGE, "%zu tokens exceed the context's %d", total,
                          max_tokens);
    return 0;
}

static void embed_tokens(mr_ctx *c, const int32_t *ids, int n, int t) {
    const mr_model *m = c->m;
    int d = m->cfg.d_model;
    size_t row_bytes = (size_t)d * mr_dtype_size(m->embed->dtype);
    for (int i = 0; i < n; i++, t++) {
        float *xt = c->x + (size_t)t * d;
        mr_to_f32(xt, (const char *)m->embed->data + ids[i] * row_bytes, m->embed->dtype,
                  (size_t)d);
        if (m->embed_scale != 1.0f)
            for (int j = 0; j < d; j++) xt[j] *= m->embed_scale;
    }
}

/* The stream (prefix.h): first one copy of each distinct query segment (a group; with share 0
 * one group per row), then every row's passage and suffix. */
static void embed_rows(mr_ctx *c, const mr_row *rows, int n_rows, int share) {
    int32_t *group = c->q_off, *first = c->row_id; /* scratch until layer_forward */
    int t = 0;
    c->n_groups = mr_prefix_group(rows, n_rows, share, group, first);
    for (int g = 0; g < c->n_groups; g++) {
        const mr_row *w = &rows[first[g]];
        c->g_off[g] = t;
        c->g_len[g] = w->nq;
        embed_tokens(c, w->q, w->nq, t);
        t += w->nq;
    }
    c->pre_tok = t;
    for (int r = 0; r < n_rows; r++) {
        const mr_row *w = &rows[r];
        int g = group[r];
        c->off[r] = t;
        c->len[r] = w->np + w->ns;
        c->nq[r] = 0;
        c->np[r] = w->np;
        c->ns[r] = w->ns;
        c->pre_off[r] = c->g_off[g];
        c->pre_len[r] = c->g_len[g];
        embed_tokens(c, w->p, w->np, t);
        embed_tokens(c, w->s, w->ns, t + w->np);
        t += w->np + w->ns;
    }
    for (int r = 0; r < n_rows; r++) c->row_id[r] = r;
    set_positions(c, n_rows);
}

int mr_model_score(mr_ctx *c, const mr_row *rows, int n_rows, const mr_run_opts *o,
                   float *scores, int *depth, mr_err *err) {
    int rc;
    if ((rc = mr_run_opts_check(o, c->m, err)) ||
        (rc = mr_rows_check(c->m, rows, n_rows, c->max_rows, c->max_len, c->max_tokens, err)))
        return rc;
    for (size_t i = 0; i < (size_t)n_rows * o->n_exits; i++) scores[i] = NAN;
    for (int r = 0; depth && r < n_rows; r++) depth[r] = 0;
    if (n_rows == 0) return 0;
    c->gemm_rc = 0;
    c->bad_row = c->bad_exit = -1;
    embed_rows(c, rows, n_rows, !o->no_prefix_share);
    int n_tok = c->off[n_rows - 1] + c->len[n_rows - 1];
    c->token_layers = 0;
    int deepest = o->exits[o->n_exits - 1], ci = 0, e = 0, pi = 0;
    for (int l = 0; l < deepest && n_rows > 0; l++) {
        if (l > 0 && o->stop && o->stop(o->stop_user, l)) break;
        if (ci < o->n_compress && o->compress_layers[ci] == l) {
            if (o->ratio > 1) n_tok = compress(c, n_rows, o->ratio, o->pooling);
            ci++;
        }
        int want_probs = o->pooling == MR_POOL_ATTENTION && o->ratio > 1 &&
                         ci < o->n_compress && o->compress_layers[ci] == l + 1 &&
                         l + 1 < deepest;
        int last = l == deepest - 1;
        layer_forward(c, l, n_tok, n_rows, last, want_probs, o->adapter_mask);
        c->token_layers += n_tok;
        if (last) n_tok = n_rows;
        if (e < o->n_exits && o->exits[e] == l + 1) {
            score_exit(c, e, n_rows, o, scores, depth);
            if (pi < o->n_prune && o->prune[pi].layer == l + 1)
                n_rows = prune_rows(c, n_rows, &n_tok, &o->prune[pi++], o->prune_group);
            e++;
        }
    }
    if (c->gemm_rc)
        return mr_err_set(err, c->gemm_rc, "GEMM path %s failed", mr_gemm_path_name(c->m->gemm));
    /* a NaN or infinite score would rank silently wrong: the weights (or an adapter's) overflow */
    if (c->bad_row >= 0)
        return mr_err_set(err, MR_ENUMERIC, "row %d: its score at exit %d is not finite (the "
                          "model's or an adapter's weights overflow on it)", c->bad_row,
                          c->bad_exit);
    return 0;
}

double mr_model_row_flops(const mr_model *m, const mr_run_opts *o, int nq, int np, int ns) {
    const mr_config *k = &m->cfg;
    double d = k->d_model, qd = (double)k->n_heads * k->head_dim,
           kvd = (double)k->n_kv_heads * k->head_dim;
    double per_tok_kv = 2 * d * kvd, per_tok_rest = d * qd + qd * d + 3 * d * k->d_ff;
    int deepest = o->exits[o->n_exits - 1], ci = 0;
    double macs = 0;
    for (int l = 0; l < deepest; l++) {
        if (ci < o->n_compress && o->compress_layers[ci] == l) {
            np = (np + o->ratio - 1) / o->ratio;
            ci++;
        }
        double len = nq + np + ns;
        macs += len * per_tok_kv + (l == deepest - 1 ? 1 : len) * per_tok_rest;
    }
    return 2 * macs;
}
