/* tmodel.c: the training model's parameters (see tmodel.h): the tensor table in arena order,
 * the views carved from it, loading a checkpoint into f32 with the PEFT LoRA init, and writing
 * the trainable tensors (safetensors) or a PEFT adapter folder.
 *
 * The table is built once per load: every tensor gets a name, a shape and an offset in one
 * parameter arena (base tensors, then LoRA pairs); mr_tweights views are pointers into that
 * arena or into the gradient arena, which starts at the first trainable tensor. Not here: any
 * computation on the parameters (tpass.c, loss.c, adamw.c). */
#include "tmodel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lora.h"
#include "prng.h"
#include "safetensors.h"

static const char *const LIN_NAME[MR_N_LIN] = {"self_attn.q_proj", "self_attn.k_proj",
                                               "self_attn.v_proj", "self_attn.o_proj",
                                               "mlp.gate_proj",    "mlp.up_proj",
                                               "mlp.down_proj"};

void mr__lin_dims(const mr_config *c, int j, int *in, int *out) {
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    static const int is_kv[MR_N_LIN] = {0, 1, 1, 0, 0, 0, 0};
    *in = j == MR_LO ? qd : j == MR_LDOWN ? c->d_ff : d;
    *out = j == MR_LQ ? qd : is_kv[j] ? kvd : j == MR_LO || j == MR_LDOWN ? d : c->d_ff;
}

static float urand(uint64_t *s) { /* [-1, 1) */
    return (float)(mr_prng_unit(s) * 2.0 - 1.0);
}

/* The tensor table: name, shape and arena offset of every tensor, in arena order. */
typedef struct table {
    mr_tparam *t;
    int n, cap;
    size_t off;
} table;

/* Appends one tensor; MR_ENOMEM (the table unchanged) when it cannot grow. */
static int table_add(table *tb, const char *name, int64_t d0, int64_t d1, int trainable,
                     mr_err *err) {
    if (tb->n == tb->cap) {
        int cap = tb->cap ? 2 * tb->cap : 64;
        mr_tparam *t = realloc(tb->t, sizeof *t * (size_t)cap);
        if (!t) return mr_err_set(err, MR_ENOMEM, "out of memory for the tensor table");
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

/* Adds every tensor in arena order (base, then LoRA) and sets m->train_off; MR_ENOMEM when the
 * table cannot grow (tb->t then holds what was added, for the caller to free). */
static int build_table(mr_tmodel *m, table *tb, mr_err *err) {
    const mr_config *c = &m->cfg;
    int d = c->d_model, gem = c->arch == MR_ARCH_GEMMA2, full = m->mode == MR_TRAIN_FULL;
    char nm[160];
    int rc = table_add(tb, "model.embed_tokens.weight", c->vocab_size, d, full, err);
    for (int i = 0; i < c->n_layers && !rc; i++) {
        const char *norms[4] = {"input_layernorm", gem ? "post_attention_layernorm" : NULL,
                                gem ? "pre_feedforward_layernorm" : "post_attention_layernorm",
                                gem ? "post_feedforward_layernorm" : NULL};
        for (int k = 0; k < 4 && !rc; k++) {
            if (!norms[k]) continue;
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", i, norms[k]);
            rc = table_add(tb, nm, d, 0, full, err);
        }
        for (int j = 0; j < MR_N_LIN && !rc; j++) {
            int in, out;
            mr__lin_dims(c, j, &in, &out);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", i, LIN_NAME[j]);
            rc = table_add(tb, nm, out, in, full, err);
            if (!rc && c->attn_bias && j <= MR_LV) {
                snprintf(nm, sizeof nm, "model.layers.%d.%s.bias", i, LIN_NAME[j]);
                rc = table_add(tb, nm, out, 0, full, err);
            }
        }
    }
    if (!rc) rc = table_add(tb, "model.norm.weight", d, 0, full, err);
    for (int k = 0; k < m->n_exits && !rc; k++) {
        snprintf(nm, sizeof nm, "lm_head.%d.linear_head.weight", k);
        rc = table_add(tb, nm, 1, d, full, err);
    }
    m->train_off = full ? 0 : tb->off;
    if (full) return rc;
    for (int i = 0; i < c->n_layers && !rc; i++)
        for (int j = 0; j < MR_N_LIN && !rc; j++) {
            int in, out;
            mr__lin_dims(c, j, &in, &out);
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.lora_A.weight", i,
                     LIN_NAME[j]);
            rc = table_add(tb, nm, m->rank, in, 1, err);
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.lora_B.weight", i,
                     LIN_NAME[j]);
            if (!rc) rc = table_add(tb, nm, out, m->rank, 1, err);
        }
    for (int k = 0; k < m->n_exits && !rc; k++) {
        snprintf(nm, sizeof nm, "base_model.model.lm_head.%d.linear_head.lora_A.weight", k);
        rc = table_add(tb, nm, m->rank, d, 1, err);
    }
    for (int k = 0; k < m->n_exits && !rc; k++) {
        snprintf(nm, sizeof nm, "base_model.model.lm_head.%d.linear_head.lora_B.weight", k);
        rc = table_add(tb, nm, 1, m->rank, 1, err);
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
    if ((rc = build_table(m, &tb, err))) {
        free(tb.t);
        mr_model_close(&em);
        return rc;
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
        rc = mr_err_set(err, MR_ENOMEM, "out of memory for %zu parameters", m->n_params);
        mr_model_close(&em);
        mr_tmodel_close(m);
        return rc;
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
    if (!m) return;
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
        mr_st_writer_free(w);
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
            mr__lin_dims(c, j, &a, &b);
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
