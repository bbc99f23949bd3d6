/* train_model.c: training-mode model, forward with activation cache, cascaded
 * self-distillation loss, backward and AdamW (see train_model.h for the contract).
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
 * the same mr_lora / mr_lora_backward on it; the keep bits are a hash of the element's
 * counter (drop_f), regenerated in the backward instead of stored. On the exit heads, where
 * only the last token of a row is scored, the dropped LoRA term is folded into a per-row head,
 * head + mask * scale B A, that mr_exit_head and its backward take as the head. */
#include "train_model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "kernels.h"
#include "lora.h"

/* ============================== parameters ============================== */

static const char *const LIN_NAME[MR_N_LIN] = {"self_attn.q_proj", "self_attn.k_proj",
                                               "self_attn.v_proj", "self_attn.o_proj",
                                               "mlp.gate_proj",    "mlp.up_proj",
                                               "mlp.down_proj"};

static void lin_dims(const mr_config *c, int j, int *in, int *out) {
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    static const int is_kv[MR_N_LIN] = {0, 1, 1, 0, 0, 0, 0};
    *in = j == MR_LO ? qd : j == MR_LDOWN ? c->d_ff : d;
    *out = j == MR_LQ ? qd : is_kv[j] ? kvd : j == MR_LO || j == MR_LDOWN ? d : c->d_ff;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float urand(uint64_t *s) { /* [-1, 1) */
    return (float)((double)(splitmix(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ---- LoRA dropout: keep bits from a counter-based hash (splitmix64 at state z) ---- */

static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Key of one forward pass: (seed, caller's step counter, pass: 0 student, 1 teacher). */
static uint64_t pass_key(const mr_tmodel *m, int pass) {
    return mix64(mix64(mix64(m->drop_seed ^ 0xd40b0c7ull) ^ m->drop_step) ^ (uint64_t)pass);
}

/* Key of one LoRA input of the pass: unit = layer (decoder linears, j = MR_LQ..MR_LDOWN) or
 * DROP_HEAD + exit (heads, j = 0). */
enum { DROP_HEAD = 1 << 20 };
static uint64_t unit_key(uint64_t pass, int unit, int j) {
    return mix64(pass ^ mix64(((uint64_t)unit << 8) + (uint64_t)j));
}

/* Factor of element i under key: 0 (dropped, hash below thr = p 2^53) or keep = 1/(1-p). */
static inline float drop_f(uint64_t key, size_t i, uint64_t thr, float keep) {
    return (mix64(key + (uint64_t)i * 0x9e3779b97f4a7c15ull) >> 11) >= thr ? keep : 0.0f;
}

static uint64_t drop_thr(float p) { return (uint64_t)((double)p * 9007199254740992.0); }

/* xd (n) = x * mask / (1 - p) under key. */
static void drop_copy(float *xd, const float *x, size_t n, uint64_t key, float p) {
    uint64_t thr = drop_thr(p);
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) xd[i] = x[i] * drop_f(key, i, thr, keep);
}

/* dx (n) += dxd * mask / (1 - p) under key: the gradient through the dropout. */
static void drop_add(float *dx, const float *dxd, size_t n, uint64_t key, float p) {
    uint64_t thr = drop_thr(p);
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dx[i] += dxd[i] * drop_f(key, i, thr, keep);
}

/* The tensor table: a name, a shape and where each view's pointer goes. Built twice: once to
 * count (ptrs NULL), once to carve. */
typedef struct table {
    mr_tparam *t;
    int n, cap;
    size_t off;
} table;

static int table_add(table *tb, const char *name, int64_t d0, int64_t d1, int trainable) {
    if (tb->n == tb->cap) {
        int cap = tb->cap ? 2 * tb->cap : 64;
        mr_tparam *t = realloc(tb->t, sizeof *t * (size_t)cap);
        if (!t) return -1;
        tb->t = t;
        tb->cap = cap;
    }
    mr_tparam *p = &tb->t[tb->n++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = d1 > 0 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1 > 0 ? d1 : 0;
    p->off = tb->off;
    p->trainable = trainable;
    tb->off += (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    return 0;
}

/* Adds every tensor in arena order (base, then LoRA) and sets pointers of view v (base
 * pointer arena, or NULL while counting) for tensors with off >= min_off (grads view). */
static int build_table(mr_tmodel *m, table *tb) {
    const mr_config *c = &m->cfg;
    int d = c->d_model, gem = c->arch == MR_ARCH_GEMMA2, full = m->mode == MR_TRAIN_FULL;
    char nm[160];
    int rc = table_add(tb, "model.embed_tokens.weight", c->vocab_size, d, full);
    for (int i = 0; i < c->n_layers && !rc; i++) {
        const char *norms[4] = {"input_layernorm", gem ? "post_attention_layernorm" : NULL,
                                gem ? "pre_feedforward_layernorm" : "post_attention_layernorm",
                                gem ? "post_feedforward_layernorm" : NULL};
        for (int k = 0; k < 4 && !rc; k++) {
            if (!norms[k]) continue;
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", i, norms[k]);
            rc = table_add(tb, nm, d, 0, full);
        }
        for (int j = 0; j < MR_N_LIN && !rc; j++) {
            int in, out;
            lin_dims(c, j, &in, &out);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", i, LIN_NAME[j]);
            rc = table_add(tb, nm, out, in, full);
            if (!rc && c->attn_bias && j <= MR_LV) {
                snprintf(nm, sizeof nm, "model.layers.%d.%s.bias", i, LIN_NAME[j]);
                rc = table_add(tb, nm, out, 0, full);
            }
        }
    }
    if (!rc) rc = table_add(tb, "model.norm.weight", d, 0, full);
    for (int k = 0; k < m->n_exits && !rc; k++) {
        snprintf(nm, sizeof nm, "lm_head.%d.linear_head.weight", k);
        rc = table_add(tb, nm, 1, d, full);
    }
    m->train_off = full ? 0 : tb->off;
    if (full) return rc;
    for (int i = 0; i < c->n_layers && !rc; i++)
        for (int j = 0; j < MR_N_LIN && !rc; j++) {
            int in, out;
            lin_dims(c, j, &in, &out);
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.lora_A.weight", i,
                     LIN_NAME[j]);
            rc = table_add(tb, nm, m->rank, in, 1);
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.lora_B.weight", i,
                     LIN_NAME[j]);
            if (!rc) rc = table_add(tb, nm, out, m->rank, 1);
        }
    for (int k = 0; k < m->n_exits && !rc; k++) {
        snprintf(nm, sizeof nm, "base_model.model.lm_head.%d.linear_head.lora_A.weight", k);
        rc = table_add(tb, nm, m->rank, d, 1);
    }
    for (int k = 0; k < m->n_exits && !rc; k++) {
        snprintf(nm, sizeof nm, "base_model.model.lm_head.%d.linear_head.lora_B.weight", k);
        rc = table_add(tb, nm, 1, m->rank, 1);
    }
    return rc;
}

/* Points view v at arena base (grads: only trainable tensors, arena starts at train_off). */
static void carve(const mr_tmodel *m, float *base, size_t base_off, mr_tweights *v) {
    const mr_config *c = &m->cfg;
    int gem = c->arch == MR_ARCH_GEMMA2;
    int t = 0;
#define NEXT() (m->tensors[t].off >= base_off ? base + (m->tensors[t++].off - base_off) \
                                              : (t++, (float *)NULL))
    v->embed = NEXT();
    for (int i = 0; i < c->n_layers; i++) {
        mr_tlayer_w *L = &v->layers[i];
        L->attn_norm = NEXT();
        L->post_attn_norm = gem ? NEXT() : NULL;
        L->ffn_norm = NEXT();
        L->post_ffn_norm = gem ? NEXT() : NULL;
        for (int j = 0; j < MR_N_LIN; j++) {
            L->w[j] = NEXT();
            if (j <= MR_LV) L->b[j] = c->attn_bias ? NEXT() : NULL;
        }
    }
    v->final_norm = NEXT();
    v->heads = NEXT();
    t += m->n_exits - 1;
    if (m->mode == MR_TRAIN_LORA) {
        for (int i = 0; i < c->n_layers; i++)
            for (int j = 0; j < MR_N_LIN; j++) {
                v->layers[i].A[j] = NEXT();
                v->layers[i].B[j] = NEXT();
            }
        v->head_A = NEXT();
        t += m->n_exits - 1;
        v->head_B = NEXT();
    }
#undef NEXT
}

int mr_tmodel_load(mr_tmodel *m, const char *dir, const mr_tmodel_opts *o, mr_err *err) {
    memset(m, 0, sizeof *m);
    if (!(o->lora_dropout >= 0.0f && o->lora_dropout < 1.0f))
        return mr_err_set(err, MR_EINVAL, "lora_dropout %g: must be in [0, 1)", o->lora_dropout);
    mr_model em;
    int rc = mr_model_load(&em, dir, NULL, err);
    if (rc) return rc;
    const mr_config *c = &em.cfg;
    m->cfg = *c;
    m->mode = o->mode;
    m->rank = o->lora_rank > 0 ? o->lora_rank : 32;
    m->lora_scale = (o->lora_alpha > 0 ? o->lora_alpha : 64.0f) / (float)m->rank;
    m->lora_dropout = o->lora_dropout;
    m->drop_seed = o->seed;
    m->norm_offset = em.norm_offset;
    m->embed_scale = em.embed_scale;
    m->n_exits = em.n_heads_exit;
    for (int k = 0; k < m->n_exits; k++) m->exit_layer[k] = mr_model_exit_layer(&em, k);
    m->max_len = o->max_len > 1 ? o->max_len : 512;
    table tb = {0};
    if (build_table(m, &tb)) {
        free(tb.t);
        mr_model_close(&em);
        return mr_err_set(err, MR_ENOMEM, "out of memory for the tensor table");
    }
    m->tensors = tb.t;
    m->n_tensors = tb.n;
    m->n_params = tb.off;
    m->n_train = m->n_params - m->train_off;
    m->params = malloc(sizeof(float) * m->n_params);
    m->grads = calloc(m->n_train ? m->n_train : 1, sizeof(float));
    m->w.layers = calloc((size_t)c->n_layers, sizeof(mr_tlayer_w));
    m->g.layers = calloc((size_t)c->n_layers, sizeof(mr_tlayer_w));
    m->rope = malloc(sizeof(float) * (size_t)m->max_len * c->head_dim);
    if (!m->params || !m->grads || !m->w.layers || !m->g.layers || !m->rope) {
        mr_model_close(&em);
        mr_tmodel_close(m);
        return mr_err_set(err, MR_ENOMEM, "out of memory for %zu parameters", m->n_params);
    }
    carve(m, m->params, 0, &m->w);
    carve(m, m->grads, m->train_off, &m->g);
    mr_rope_table(m->rope, m->max_len, c->head_dim, c->rope_theta);

    /* copy the checkpoint into f32 */
    int d = c->d_model;
    mr_to_f32(m->w.embed, em.embed->data, em.embed->dtype, (size_t)em.embed->numel);
    for (int i = 0; i < c->n_layers; i++) {
        const mr_layer *E = &em.layers[i];
        mr_tlayer_w *L = &m->w.layers[i];
        memcpy(L->attn_norm, E->attn_norm, sizeof(float) * d);
        memcpy(L->ffn_norm, E->ffn_norm, sizeof(float) * d);
        if (L->post_attn_norm) memcpy(L->post_attn_norm, E->post_attn_norm, sizeof(float) * d);
        if (L->post_ffn_norm) memcpy(L->post_ffn_norm, E->post_ffn_norm, sizeof(float) * d);
        const mr_linear *lins[MR_N_LIN] = {&E->q, &E->k, &E->v, &E->o, &E->gate, &E->up, &E->down};
        for (int j = 0; j < MR_N_LIN; j++) {
            mr_to_f32(L->w[j], lins[j]->w->data, lins[j]->w->dtype, (size_t)lins[j]->w->numel);
            if (j <= MR_LV && L->b[j])
                memcpy(L->b[j], lins[j]->b, sizeof(float) * (size_t)lins[j]->out);
        }
    }
    memcpy(m->w.final_norm, em.final_norm, sizeof(float) * d);
    memcpy(m->w.heads, em.heads, sizeof(float) * (size_t)m->n_exits * d);
    mr_model_close(&em);

    if (m->mode == MR_TRAIN_LORA) { /* PEFT init: A kaiming-uniform(a = sqrt 5), B zero */
        uint64_t s = o->seed ^ 0x5eedull;
        for (int t = 0; t < m->n_tensors; t++) {
            const mr_tparam *p = &m->tensors[t];
            if (!p->trainable) continue;
            size_t n = (size_t)p->shape[0] * p->shape[1];
            float *x = m->params + p->off;
            int is_a = strstr(p->name, "lora_A") != NULL;
            float bound = is_a ? 1.0f / sqrtf((float)p->shape[1]) : o->lora_b_std;
            for (size_t i = 0; i < n; i++) x[i] = bound * urand(&s);
        }
    }
    return 0;
}

void mr_tmodel_close(mr_tmodel *m) {
    free(m->tensors);
    free(m->params);
    free(m->grads);
    free(m->w.layers);
    free(m->g.layers);
    free(m->rope);
    memset(m, 0, sizeof *m);
}

void mr_tmodel_zero_grad(mr_tmodel *m) { memset(m->grads, 0, sizeof(float) * m->n_train); }

int mr_tmodel_save_trainable(const mr_tmodel *m, const char *path, int grads, mr_err *err) {
    mr_st_writer *w;
    int rc = mr_st_writer_new(&w, path, err);
    if (rc) return rc;
    for (int t = 0; t < m->n_tensors && !rc; t++)
        if (m->tensors[t].trainable)
            rc = mr_st_writer_declare(w, m->tensors[t].name, MR_DT_F32, m->tensors[t].ndim,
                                      m->tensors[t].shape, err);
    for (int t = 0; t < m->n_tensors && !rc; t++) {
        const mr_tparam *p = &m->tensors[t];
        if (!p->trainable) continue;
        size_t n = (size_t)p->shape[0] * (p->ndim == 2 ? (size_t)p->shape[1] : 1);
        const float *x = grads ? m->grads + (p->off - m->train_off) : m->params + p->off;
        rc = mr_st_writer_put(w, x, n, err);
    }
    if (rc) {
        mr_st_writer_finish(w, NULL);
        return rc;
    }
    return mr_st_writer_finish(w, err);
}

int mr_tmodel_save_adapter(const mr_tmodel *m, const char *dir, mr_err *err) {
    if (m->mode != MR_TRAIN_LORA)
        return mr_err_set(err, MR_ESTATE, "save adapter: the model is not in LoRA mode");
    const mr_config *c = &m->cfg;
    int n = c->n_layers * MR_N_LIN + m->n_exits, k = 0;
    char (*names)[128] = malloc(sizeof *names * (size_t)n);
    const char **mods = malloc(sizeof *mods * (size_t)n);
    int64_t *in = malloc(sizeof *in * (size_t)n), *out = malloc(sizeof *out * (size_t)n);
    const float **A = malloc(sizeof *A * (size_t)n), **B = malloc(sizeof *B * (size_t)n);
    int rc = 0;
    if (!names || !mods || !in || !out || !A || !B) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < c->n_layers; i++)
        for (int j = 0; j < MR_N_LIN; j++, k++) {
            int a, b;
            lin_dims(c, j, &a, &b);
            snprintf(names[k], sizeof names[k], "model.layers.%d.%s", i, LIN_NAME[j]);
            in[k] = a, out[k] = b;
            A[k] = m->w.layers[i].A[j], B[k] = m->w.layers[i].B[j];
        }
    for (int e = 0; e < m->n_exits; e++, k++) {
        snprintf(names[k], sizeof names[k], "lm_head.%d.linear_head", e);
        in[k] = c->d_model, out[k] = 1;
        A[k] = m->w.head_A + (size_t)e * m->rank * c->d_model;
        B[k] = m->w.head_B + (size_t)e * m->rank;
    }
    for (int i = 0; i < n; i++) mods[i] = names[i];
    rc = mr_adapter_save(dir, m->rank, m->lora_scale * (float)m->rank, m->lora_dropout, n,
                         mods, in, out, A, B, MR_DT_F32, err);
done:
    free(names), free(mods), free(in), free(out), free(A), free(B);
    return rc;
}

/* ============================== width and anchors ============================== */

static int deepest(const mr_tmodel *m) { return m->exit_layer[m->n_exits - 1]; }

void mr_twidth_sample(mr_twidth *w, const mr_tmodel *m, int step, uint64_t *rng) {
    static const int ratios[4] = {1, 2, 4, 8};
    int D = deepest(m);
    if (step <= 0) step = D / 8 > 1 ? D / 8 : 1;
    memset(w, 0, sizeof *w);
    w->ratio = ratios[splitmix(rng) & 3];
    for (int l = step; l <= D - step && w->n_compress < MR_MAX_COMPRESS; l += step)
        if (splitmix(rng) & 1) w->compress_layers[w->n_compress++] = l;
}

int mr_cascade_anchor(const mr_tmodel *m, const mr_loss_opts *o, int l) {
    int D = deepest(m);
    int k = o->cascade_step > 0 ? o->cascade_step : (D / 4 > 1 ? D / 4 : 1);
    int a = k * ((l + 1 + k - 1) / k);
    if (a > D || l >= D) a = D;
    for (int e = 0; e < m->n_exits; e++) /* round up to an exit layer */
        if (m->exit_layer[e] >= a) return m->exit_layer[e];
    return D;
}

/* ============================== activation cache ============================== */

typedef struct lcache {
    int n;                       /* tokens at this layer's input */
    int compressed;              /* input pooled from res (layout of the previous layer) */
    int32_t *off, *len, *nq, *np, *ns, *pos; /* (n_rows) x5, (n) */
    float *res;                  /* (n_prev, d) residual entering, before compression */
    float *pw;                   /* (n_prev) attention pooling weights (last_probs of layer
                                    l-1), or NULL: mean pooling / not compressed */
    float *in;                   /* (n, d) layer input (== res when not compressed) */
    float *xn1, *ao, *h, *xn2, *fo; /* (n, d) */
    float *q, *att;              /* (n, nh*hd) */
    float *k, *v;                /* (n, nkv*hd) */
    float *gate, *up, *act;      /* (n, dff) */
    float *lt[MR_N_LIN];         /* (n, rank) x A^T, LoRA mode */
} lcache;

struct mr_tcache {
    int n_rows, n_layers;        /* rows and layers of the cached pass */
    int ratio;                   /* compression ratio of the cached pass */
    int freeze_pw;               /* tests: keep the cached attention pooling weights */
    lcache *L;                   /* (n_layers) */
    int32_t *off0, *len0, *nq0, *np0, *ns0; /* (n_rows) layout of the embeddings */
    int32_t *ids;                /* (n_0) */
    float *out;                  /* (n_last, d) residual after the last layer */
    float *scores;               /* (n_exits, n_rows) */
    float *heads_eff;            /* (n_exits, d) head + LoRA delta */
    float drop_p;                /* LoRA dropout of the cached pass (0: none) */
    uint64_t drop_key;           /* its pass key */
    float *xdrop, *dxdrop;       /* (n_max, max in) dropped LoRA input and its gradient */
    float *hdelta, *dhdelta;     /* (n_exits, d) scale B A of the heads and its gradient */
    float *hrow;                 /* (2 d) one row's dropped head and its gradient */
    /* backward scratch */
    float *dres, *din, *dn, *dq, *dk, *dv, *datt, *dgate, *dup, *dact, *dt;
    float *dheads;               /* (n_exits, d) */
    float *attn_scratch, *attn_bscratch;
    float *fbuf;
    size_t fcap;
    int32_t *ibuf;
    size_t icap;
    size_t lcap;
};

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

/* Tokens per layer under w, then one float and one int arena carved in order. */
static int cache_prepare(mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                         const mr_twidth *w, int D, mr_err *err) {
    const mr_config *k = &m->cfg;
    size_t d = (size_t)k->d_model, qd = (size_t)k->n_heads * k->head_dim,
           kvd = (size_t)k->n_kv_heads * k->head_dim, ff = (size_t)k->d_ff;
    size_t rk = m->mode == MR_TRAIN_LORA ? (size_t)m->rank : 0;
    size_t din = d > qd ? d : qd; /* widest LoRA input (dropout scratch) */
    din = rk && m->lora_dropout > 0.0f ? (din > ff ? din : ff) : 0;
    if ((size_t)D > c->lcap) {
        lcache *L = realloc(c->L, sizeof *L * (size_t)D);
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
        lcache *L = &c->L[l];
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

/* ============================== forward ============================== */

/* y (n, out) = x W^T + b + scale (drop(x) A^T) B^T; drop(x) = x without LoRA dropout. */
static void lin_fwd(const mr_tmodel *m, mr_tcache *c, int l, int j, const float *x, int n,
                    float *y, float *lt) {
    const mr_tlayer_w *L = &m->w.layers[l];
    int in, out;
    lin_dims(&m->cfg, j, &in, &out);
    mr_matmul_wt(y, x, L->w[j], n, in, out, 0.0f);
    if (j <= MR_LV && L->b[j])
        for (int i = 0; i < n; i++) mr_add(y + (size_t)i * out, L->b[j], (size_t)out);
    if (m->mode != MR_TRAIN_LORA) return;
    if (c->drop_p > 0.0f) {
        drop_copy(c->xdrop, x, (size_t)n * in, unit_key(c->drop_key, l, j), c->drop_p);
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
    lin_dims(&m->cfg, j, &in, &out);
    mr_matmul_wt_backward(dx, G->w[j], j <= MR_LV ? G->b[j] : NULL, dy, x, L->w[j], n, in, out);
    if (m->mode != MR_TRAIN_LORA) return;
    if (c->drop_p > 0.0f) { /* A, B see the dropped x; dx gets the LoRA part through the mask */
        size_t ni = (size_t)n * in;
        uint64_t key = unit_key(c->drop_key, l, j);
        drop_copy(c->xdrop, x, ni, key, c->drop_p);
        memset(c->dxdrop, 0, sizeof(float) * ni);
        mr_lora_backward(c->dxdrop, G->A[j], G->B[j], dy, c->xdrop, lt, L->A[j], L->B[j], n, in,
                         out, m->rank, m->lora_scale, c->dt);
        drop_add(dx, c->dxdrop, ni, key, c->drop_p);
        return;
    }
    mr_lora_backward(dx, G->A[j], G->B[j], dy, x, lt, L->A[j], L->B[j], n, in, out, m->rank,
                     m->lora_scale, c->dt);
}

static int layer_window(const mr_config *k, int l) {
    return k->sliding_window > 0 && (k->arch != MR_ARCH_GEMMA2 || l % 2 == 0) ? k->sliding_window
                                                                              : 0;
}

static mr_attn_args attn_args(const mr_tmodel *m, mr_tcache *c, lcache *L, int l, int n_rows) {
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
    lcache *L = &c->L[l];
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

static int check_width(const mr_tmodel *m, const mr_twidth *w, mr_err *err) {
    if (w->ratio != 1 && w->ratio != 2 && w->ratio != 4 && w->ratio != 8)
        return mr_err_set(err, MR_EINVAL, "compress ratio must be 1, 2, 4 or 8, not %d",
                          w->ratio);
    if (w->n_compress < 0 || w->n_compress > MR_MAX_COMPRESS)
        return mr_err_set(err, MR_EINVAL, "compress layers: at most %d", MR_MAX_COMPRESS);
    if (w->pooling != MR_POOL_MEAN && w->pooling != MR_POOL_ATTENTION)
        return mr_err_set(err, MR_EINVAL, "unknown pooling %d", (int)w->pooling);
    for (int i = 0; i < w->n_compress; i++) {
        int l = w->compress_layers[i];
        if (l < 0 || l >= m->cfg.n_layers || (i > 0 && l <= w->compress_layers[i - 1]))
            return mr_err_set(err, MR_EINVAL, "compress layers must be increasing in 0..%d",
                              m->cfg.n_layers - 1);
        if (w->pooling == MR_POOL_ATTENTION && l == 0 && w->ratio > 1)
            return mr_err_set(err, MR_EINVAL,
                              "attention pooling needs a previous layer: compress layer 0 "
                              "only works with mean pooling");
    }
    return 0;
}

/* LoRA dropout on head e's input at row r: out (d) = head + mask * scale B A, so that
 * xn . out = xn . head + drop(xn) . (scale B A). */
static const float *head_row(const mr_tmodel *m, const mr_tcache *c, int e, int r, float *out) {
    int d = m->cfg.d_model;
    uint64_t key = unit_key(c->drop_key, DROP_HEAD + e, 0), thr = drop_thr(c->drop_p);
    float keep = 1.0f / (1.0f - c->drop_p);
    const float *h = m->w.heads + (size_t)e * d, *dl = c->hdelta + (size_t)e * d;
    for (int j = 0; j < d; j++) out[j] = h[j] + dl[j] * drop_f(key, (size_t)r * d + j, thr, keep);
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

/* mr_tmodel_forward with the dropout masks of pass (0 student, 1 teacher). */
static int forward_pass(mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                        const mr_twidth *w, float *scores, int pass, mr_err *err) {
    const mr_config *k = &m->cfg;
    int rc, D = deepest(m), d = k->d_model;
    if ((rc = check_rows(m, rows, n_rows, err)) || (rc = check_width(m, w, err)) ||
        (rc = cache_prepare(m, c, rows, n_rows, w, D, err)))
        return rc;
    c->drop_p = m->mode == MR_TRAIN_LORA && m->lora_dropout > 0.0f ? m->lora_dropout : 0.0f;
    c->drop_key = pass_key(m, pass);
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
        lcache *L = &c->L[l];
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
        while (ei < m->n_exits && m->exit_layer[ei] == l + 1) score_exit(m, c, ei++, out, poff, plen);
    }
    if (scores) memcpy(scores, c->scores, sizeof(float) * (size_t)m->n_exits * n_rows);
    return 0;
}

int mr_tmodel_forward(mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                      const mr_twidth *w, float *scores, mr_err *err) {
    return forward_pass(m, c, rows, n_rows, w, scores, 0, err);
}

/* ============================== backward ============================== */

/* dout (n, d): gradient of layer l's output; adds the gradient of its input into din. */
static void layer_bwd(mr_tmodel *m, mr_tcache *c, int l, const float *dout, float *din) {
    const mr_config *k = &m->cfg;
    const mr_tlayer_w *W = &m->w.layers[l];
    mr_tlayer_w *G = &m->g.layers[l];
    lcache *L = &c->L[l];
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
    mr_rope_backward(c->dq, L->pos, n, k->n_heads, k->head_dim, m->rope);
    mr_rope_backward(c->dk, L->pos, n, k->n_kv_heads, k->head_dim, m->rope);
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
            uint64_t key = unit_key(c->drop_key, DROP_HEAD + e, 0), thr = drop_thr(c->drop_p);
            float keep = 1.0f / (1.0f - c->drop_p), *dl = c->dhdelta + (size_t)e * d;
            for (int j = 0; j < d; j++) dl[j] += dh[j] * drop_f(key, (size_t)r * d + j, thr, keep);
            continue;
        }
        mr_exit_head_backward(dres + t, m->g.final_norm, c->dheads + (size_t)e * d, ds,
                              c->scores[(size_t)e * c->n_rows + r], res + t, m->w.final_norm,
                              c->heads_eff + (size_t)e * d, d, k->rms_eps, m->norm_offset,
                              k->final_softcap);
    }
}

const float *mr_tcache_final(const mr_tcache *c, int *n, const int32_t **off,
                             const int32_t **len) {
    const lcache *L = &c->L[c->n_layers - 1];
    if (n) *n = L->n;
    if (off) *off = L->off;
    if (len) *len = L->len;
    return c->out;
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
        lcache *L = &c->L[l];
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

/* ============================== loss ============================== */

static int exit_index(const mr_tmodel *m, int layer) {
    for (int e = 0; e < m->n_exits; e++)
        if (m->exit_layer[e] == layer) return e;
    return -1;
}

static int full_width(const mr_tmodel *m, const mr_twidth *w) {
    if (w->ratio == 1) return 1;
    for (int i = 0; i < w->n_compress; i++)
        if (w->compress_layers[i] < deepest(m)) return 0;
    return 1;
}

int mr_train_micro(mr_tmodel *m, mr_tcache *c, const mr_tbatch *b, const mr_twidth *w,
                   const mr_loss_opts *o, float grad_scale, mr_tloss *loss, mr_err *err) {
    int G = b->G, B = b->n_groups, n_rows = G * B, E = m->n_exits, D = deepest(m), rc = 0;
    if (G < 2 || B < 1)
        return mr_err_set(err, MR_EINVAL, "batch: need groups of at least 2 candidates");
    size_t ns = (size_t)E * n_rows;
    float *scores = malloc(sizeof(float) * ns), *teach = malloc(sizeof(float) * ns);
    float *ds = calloc(ns, sizeof(float)), *tp = malloc(sizeof(float) * 2 * (size_t)G);
    if (!scores || !teach || !ds || !tp) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        goto done;
    }
    int cascade = o && o->cascade, full = full_width(m, w);
    float cw = o && o->cascade_weight > 0.0f ? o->cascade_weight : 1.0f;
    if (cascade && !full) {
        mr_twidth fw = {.ratio = 1};
        if ((rc = forward_pass(m, c, b->rows, n_rows, &fw, teach, 1, err))) goto done;
    }
    if ((rc = mr_tmodel_forward(m, c, b->rows, n_rows, w, scores, err))) goto done;
    if (cascade && full) memcpy(teach, scores, sizeof(float) * ns); /* detached copy */
    mr_tloss L = {0};
    float wgt = grad_scale / (float)B;
    for (int g = 0; g < B; g++) {
        if (b->teacher) mr_softmax(tp, b->teacher + (size_t)g * G, G);
        for (int e = 0; e < E; e++) {
            if (o && o->deepest_only && m->exit_layer[e] < D) continue;
            size_t at = (size_t)e * n_rows + (size_t)g * G;
            L.ce += mr_softmax_xent(ds + at, scores + at, NULL, G, wgt);
            if (b->teacher) L.ext += mr_softmax_xent(ds + at, scores + at, tp, G, wgt);
        }
        if (!cascade) continue;
        for (int e = 0; e < E; e++) {
            if (m->exit_layer[e] >= D) continue;
            int a = exit_index(m, mr_cascade_anchor(m, o, m->exit_layer[e]));
            float *ttp = tp + G; /* tp[0..G) holds the external teacher's targets */
            mr_softmax(ttp, teach + (size_t)a * n_rows + (size_t)g * G, G);
            size_t at = (size_t)e * n_rows + (size_t)g * G;
            L.cascade += mr_softmax_xent(ds + at, scores + at, ttp, G, wgt * cw);
        }
    }
    L.ce /= B, L.ext /= B, L.cascade /= B;
    L.total = L.ce + L.ext + cw * L.cascade;
    if (loss) *loss = L;
    mr_tmodel_backward(m, c, ds);
done:
    free(scores), free(teach), free(ds), free(tp);
    return rc;
}

/* ============================== AdamW ============================== */

int mr_adamw_init(mr_adamw *a, size_t n, float lr, int warmup_steps, int total_steps,
                  float weight_decay, mr_err *err) {
    memset(a, 0, sizeof *a);
    a->lr = lr, a->beta1 = 0.9f, a->beta2 = 0.999f, a->eps = 1e-8f;
    a->weight_decay = weight_decay, a->clip = 0.0f;
    a->warmup_steps = warmup_steps, a->total_steps = total_steps, a->n = n;
    if (!(a->m = calloc(2 * (n ? n : 1), sizeof(float))))
        return mr_err_set(err, MR_ENOMEM, "out of memory for optimizer state (%zu)", n);
    a->v = a->m + n;
    return 0;
}

void mr_adamw_close(mr_adamw *a) {
    free(a->m);
    memset(a, 0, sizeof *a);
}

float mr_adamw_lr(const mr_adamw *a, int step) {
    if (a->warmup_steps > 0 && step <= a->warmup_steps)
        return a->lr * (float)step / (float)a->warmup_steps;
    if (a->total_steps <= a->warmup_steps) return a->lr;
    float f = (float)(a->total_steps - step) / (float)(a->total_steps - a->warmup_steps);
    return a->lr * (f > 0.0f ? f : 0.0f);
}

double mr_adamw_step(mr_adamw *a, float *params, const float *grads) {
    a->step++;
    double nrm = 0.0;
    for (size_t i = 0; i < a->n; i++) nrm += (double)grads[i] * grads[i];
    nrm = sqrt(nrm);
    float gs = a->clip > 0.0f && nrm > a->clip ? (float)(a->clip / nrm) : 1.0f;
    float lr = mr_adamw_lr(a, a->step);
    float bc1 = 1.0f - powf(a->beta1, (float)a->step), bc2 = 1.0f - powf(a->beta2, (float)a->step);
    for (size_t i = 0; i < a->n; i++) {
        float g = grads[i] * gs;
        a->m[i] = a->beta1 * a->m[i] + (1.0f - a->beta1) * g;
        a->v[i] = a->beta2 * a->v[i] + (1.0f - a->beta2) * g * g;
        params[i] -= lr * a->weight_decay * params[i];
        params[i] -= lr * (a->m[i] / bc1) / (sqrtf(a->v[i] / bc2) + a->eps);
    }
    return nrm;
}
