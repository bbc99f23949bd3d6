/* model.c: loading a Matryoshka re-ranker checkpoint into an mr_model.
 *
 * Binds the HF tensor names of Mistral/Llama, Qwen2 and Gemma2 decoders plus the layer-wise
 * exit heads (lm_head.{k}.linear_head.weight) to the model's layer table, checking every shape,
 * and applies PEFT LoRA adapters in order: merged into a copy-on-write view of the mapped
 * weights (in the weights' own dtype), or kept as f32 low-rank pairs applied at run time.
 * Large matrices stay in the mapping; only norms, biases, heads and LoRA pairs become f32.
 * The forward pass is in forward.c. */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int get_tensor(mr_model *m, const char *name, int64_t d0, int64_t d1,
                      const mr_tensor **out, mr_err *err) {
    int64_t shape[2] = {d0, d1};
    int rc = mr_st_get(&m->st, name, d1 > 0 ? 2 : 1, shape, out, err);
    if (rc == MR_ENOTFOUND)
        mr_err_set(err, rc, "%s: tensor %s not found in the checkpoint", m->dir, name);
    return rc;
}

/* Loads a small tensor (norm, bias, head) as a new f32 array. */
static int get_f32(mr_model *m, const char *name, int64_t d0, int64_t d1, float **out,
                   mr_err *err) {
    const mr_tensor *t;
    int rc = get_tensor(m, name, d0, d1, &t, err);
    if (rc) return rc;
    *out = malloc(sizeof(float) * (size_t)t->numel);
    if (!*out) return mr_err_set(err, MR_ENOMEM, "out of memory loading %s", name);
    mr_to_f32(*out, t->data, t->dtype, (size_t)t->numel);
    return 0;
}

static int bind_linear(mr_model *m, mr_linear *lin, const char *prefix, const char *module,
                       int in, int out, int bias, mr_err *err) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s.weight", prefix, module);
    lin->in = in;
    lin->out = out;
    int rc = get_tensor(m, name, out, in, &lin->w, err);
    if (rc || !bias) return rc;
    snprintf(name, sizeof name, "%s.%s.bias", prefix, module);
    return get_f32(m, name, out, 0, &lin->b, err);
}

static int bind_layer(mr_model *m, int i, mr_err *err) {
    const mr_config *c = &m->cfg;
    mr_layer *L = &m->layers[i];
    char p[128], name[256];
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim, rc;
    int gemma = c->arch == MR_ARCH_GEMMA2;
    snprintf(p, sizeof p, "model.layers.%d", i);
#define NORM(field, key)                                                 \
    snprintf(name, sizeof name, "%s.%s.weight", p, key);                 \
    if ((rc = get_f32(m, name, c->d_model, 0, &L->field, err))) return rc;
    NORM(attn_norm, "input_layernorm");
    if (gemma) {
        NORM(post_attn_norm, "post_attention_layernorm");
        NORM(ffn_norm, "pre_feedforward_layernorm");
        NORM(post_ffn_norm, "post_feedforward_layernorm");
    } else {
        NORM(ffn_norm, "post_attention_layernorm");
    }
#undef NORM
    snprintf(p, sizeof p, "model.layers.%d.self_attn", i);
    if ((rc = bind_linear(m, &L->q, p, "q_proj", c->d_model, q_dim, c->attn_bias, err)) ||
        (rc = bind_linear(m, &L->k, p, "k_proj", c->d_model, kv_dim, c->attn_bias, err)) ||
        (rc = bind_linear(m, &L->v, p, "v_proj", c->d_model, kv_dim, c->attn_bias, err)) ||
        (rc = bind_linear(m, &L->o, p, "o_proj", q_dim, c->d_model, 0, err)))
        return rc;
    snprintf(p, sizeof p, "model.layers.%d.mlp", i);
    if ((rc = bind_linear(m, &L->gate, p, "gate_proj", c->d_model, c->d_ff, 0, err)) ||
        (rc = bind_linear(m, &L->up, p, "up_proj", c->d_model, c->d_ff, 0, err)) ||
        (rc = bind_linear(m, &L->down, p, "down_proj", c->d_ff, c->d_model, 0, err)))
        return rc;
    return 0;
}

static int bind_heads(mr_model *m, mr_err *err) {
    const mr_config *c = &m->cfg;
    char name[128];
    int n = 0;
    for (;; n++) {
        snprintf(name, sizeof name, "lm_head.%d.linear_head.weight", n);
        if (!mr_st_find(&m->st, name)) break;
    }
    if (n == 0)
        return mr_err_set(err, MR_EFORMAT,
                          "%s: no exit heads (lm_head.0.linear_head.weight): not a layer-wise "
                          "re-ranker checkpoint", m->dir);
    /* heads are numbered without gaps: one past a gap would be silently dropped, and the model
     * served shallower than its checkpoint */
    for (size_t i = 0; i < m->st.n_tensors; i++) {
        int k, used = 0;
        if (sscanf(m->st.tensors[i].name, "lm_head.%d.%n", &k, &used) == 1 && used && k >= n)
            return mr_err_set(err, MR_EFORMAT,
                              "%s: tensor %s: exit head %d is present but head %d is missing "
                              "(heads are lm_head.0.. without gaps)", m->dir,
                              m->st.tensors[i].name, k, n);
    }
    if (n > MR_MAX_EXITS)
        return mr_err_set(err, MR_EFORMAT, "%s: %d exit heads, at most %d", m->dir, n,
                          MR_MAX_EXITS);
    if (c->start_layer + (int64_t)(n - 1) * c->layer_sep > c->n_layers)
        return mr_err_set(err, MR_EFORMAT,
                          "%s: %d exit heads from start_layer %d every %d layers exceed "
                          "num_hidden_layers %d", m->dir, n, c->start_layer, c->layer_sep,
                          c->n_layers);
    m->n_heads_exit = n;
    m->heads = malloc(sizeof(float) * (size_t)n * c->d_model);
    if (!m->heads) return mr_err_set(err, MR_ENOMEM, "out of memory for exit heads");
    for (int k = 0; k < n; k++) {
        const mr_tensor *t;
        snprintf(name, sizeof name, "lm_head.%d.linear_head.weight", k);
        int rc = get_tensor(m, name, 1, c->d_model, &t, err);
        if (rc) return rc;
        mr_to_f32(m->heads + (size_t)k * c->d_model, t->data, t->dtype, (size_t)c->d_model);
    }
    return 0;
}

int mr_model_exit_layer(const mr_model *m, int k) {
    return m->cfg.start_layer + k * m->cfg.layer_sep;
}

int mr_model_head_of(const mr_model *m, int layer) {
    int rel = layer - m->cfg.start_layer;
    if (rel < 0 || rel % m->cfg.layer_sep) return -1;
    int k = rel / m->cfg.layer_sep;
    return k < m->n_heads_exit ? k : -1;
}

/* Whether x is finite and within the range of dtype dt (f16 stops at 65504). */
static int fits(mr_dtype dt, float x) {
    return isfinite(x) && (dt != MR_DT_F16 || fabsf(x) <= 65504.0f);
}

/* The refusal of an adapter whose update makes a weight of the matrix named what non-finite
 * or out of dt's range (a NaN or infinity would reach every score). */
static int out_of_range(const mr_adapter *ad, const char *what, mr_dtype dt, mr_err *err) {
    return mr_err_set(err, MR_EFORMAT, "%s: applied to %s it gives a weight that is not a "
                      "finite %s (lora_alpha or the LoRA values are out of range)", ad->path,
                      what, mr_dtype_name(dt));
}

/* W (out, in) += scale * B (out, r) . A (r, in), in W's own dtype, a block of rows at a time. */
static int merge_pair(mr_model *m, const mr_adapter *ad, const mr_tensor *w, const mr_tensor *A,
                      const mr_tensor *B, mr_err *err) {
    float scale = ad->scale;
    int out = (int)w->shape[0], in = (int)w->shape[1], r = (int)A->shape[0];
    enum { BLOCK = 64 };
    float *a = malloc(sizeof(float) * (size_t)r * in);
    float *b = malloc(sizeof(float) * (size_t)BLOCK * r);
    float *wb = malloc(sizeof(float) * (size_t)BLOCK * in);
    int rc = 0;
    if (!a || !b || !wb) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory merging an adapter into %s", w->name);
        goto done;
    }
    if ((rc = mr_st_make_writable(&m->st, w, err))) goto done;
    mr_to_f32(a, A->data, A->dtype, (size_t)r * in);
    size_t esz = mr_dtype_size(w->dtype);
    for (int r0 = 0; r0 < out; r0 += BLOCK) {
        int nr = out - r0 < BLOCK ? out - r0 : BLOCK;
        char *wrow = (char *)w->data + (size_t)r0 * in * esz;
        mr_to_f32(b, (const char *)B->data + (size_t)r0 * r * mr_dtype_size(B->dtype),
                  B->dtype, (size_t)nr * r);
        mr_to_f32(wb, wrow, w->dtype, (size_t)nr * in);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, in, r, scale, b, r, a, in,
                    1.0f, wb, in);
        for (size_t i = 0; i < (size_t)nr * in; i++)
            if (!fits(w->dtype, wb[i])) {
                rc = out_of_range(ad, w->name, w->dtype, err);
                goto done;
            }
        mr_from_f32(wrow, wb, w->dtype, (size_t)nr * in);
    }
done:
    free(a);
    free(b);
    free(wb);
    return rc;
}

/* Keeps an unmerged pair as f32, A pre-multiplied by the adapter's scale. */
static int keep_pair(mr_linear *lin, int idx, const mr_adapter *ad, const mr_tensor *A,
                     const mr_tensor *B, mr_err *err) {
    if (lin->n_lora >= MR_MAX_ADAPTERS)
        return mr_err_set(err, MR_ERANGE, "more than %d adapters on %s", MR_MAX_ADAPTERS,
                          lin->w->name);
    struct mr_lora_f32 *l = &lin->lora[lin->n_lora];
    l->adapter = idx;
    l->rank = (int)A->shape[0];
    l->scale = ad->scale;
    l->A = malloc(sizeof(float) * (size_t)A->numel);
    l->B = malloc(sizeof(float) * (size_t)B->numel);
    if (!l->A || !l->B) {
        free(l->A);
        free(l->B);
        l->A = l->B = NULL;
        return mr_err_set(err, MR_ENOMEM, "out of memory for adapter %s", ad->path);
    }
    mr_to_f32(l->A, A->data, A->dtype, (size_t)A->numel);
    mr_to_f32(l->B, B->data, B->dtype, (size_t)B->numel);
    lin->n_lora++;   /* owned now: the model's close frees A and B */
    for (int64_t i = 0; i < A->numel; i++)
        if (!isfinite(l->A[i] *= ad->scale)) return out_of_range(ad, lin->w->name, MR_DT_F32, err);
    return 0;
}

/* Head k's update scale * B (1, r) . A (r, d) added to dst (d); MR_ENOMEM (dst unchanged) when
 * the row buffer cannot be allocated. */
static int head_delta(float *dst, const mr_tensor *A, const mr_tensor *B, float scale, int d,
                      mr_err *err) {
    int r = (int)A->shape[0];
    float *a = malloc(sizeof(float) * (size_t)d), bj;
    if (!a)
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory applying tensor '%s'", A->file,
                          A->name);
    for (int j = 0; j < r; j++) {
        mr_to_f32(&bj, (const char *)B->data + (size_t)j * mr_dtype_size(B->dtype), B->dtype, 1);
        mr_to_f32(a, (const char *)A->data + (size_t)j * d * mr_dtype_size(A->dtype), A->dtype,
                  (size_t)d);
        for (int i = 0; i < d; i++) dst[i] += scale * bj * a[i];
    }
    free(a);
    for (int i = 0; i < d; i++)
        if (!isfinite(dst[i]))
            return mr_err_set(err, MR_EFORMAT, "%s: tensor '%s': the exit head's update is not "
                              "finite (lora_alpha or the LoRA values are out of range)", A->file,
                              A->name);
    return 0;
}

static int apply_adapter(mr_model *m, int idx, int merge, mr_err *err) {
    const mr_adapter *ad = &m->adapters[idx];
    const mr_config *c = &m->cfg;
    static const char *const mods[7] = {"self_attn.q_proj", "self_attn.k_proj",
                                        "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj", "mlp.down_proj"};
    size_t used = 0;
    char name[160];
    int rc;
    for (int i = 0; i < c->n_layers; i++) {
        mr_layer *L = &m->layers[i];
        mr_linear *lins[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) {
            const mr_tensor *A, *B;
            snprintf(name, sizeof name, "model.layers.%d.%s", i, mods[j]);
            if ((rc = mr_adapter_find(ad, name, lins[j]->in, lins[j]->out, &A, &B, err)))
                return rc;
            if (!A) continue;
            used++;
            rc = merge ? merge_pair(m, ad, lins[j]->w, A, B, err)
                       : keep_pair(lins[j], idx, ad, A, B, err);
            if (rc) return rc;
        }
    }
    for (int k = 0; k < m->n_heads_exit; k++) {
        const mr_tensor *A, *B;
        snprintf(name, sizeof name, "lm_head.%d.linear_head", k);
        if ((rc = mr_adapter_find(ad, name, c->d_model, 1, &A, &B, err))) return rc;
        if (!A) continue;
        used++;
        float *dst = m->heads;
        if (!merge) {
            if (!m->head_delta[idx] &&
                !(m->head_delta[idx] = calloc((size_t)m->n_heads_exit * c->d_model, 4)))
                return mr_err_set(err, MR_ENOMEM, "out of memory for adapter %s", ad->path);
            dst = m->head_delta[idx];
        }
        if ((rc = head_delta(dst + (size_t)k * c->d_model, A, B, ad->scale, c->d_model, err)))
            return rc;
    }
    if (used != mr_adapter_count(ad))
        return mr_err_set(err, MR_EFORMAT,
                          "%s: %zu of its %zu LoRA modules match no module of the model in %s",
                          ad->path, mr_adapter_count(ad) - used, mr_adapter_count(ad), m->dir);
    return 0;
}

static int load_tokenizer(mr_model *m, mr_err *err) {
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", m->dir);
    if (access(path, R_OK) != 0) return 0;
    return mr_tokenizer_new(&m->tok, path, err);
}

int mr_model_load(mr_model *m, const char *dir, const mr_model_opts *opts, mr_err *err) {
    memset(m, 0, sizeof *m);
    char path[600];
    int rc;
    if (strlen(dir) >= sizeof m->dir)
        return mr_err_set(err, MR_EINVAL, "model path too long: %s", dir);
    strcpy(m->dir, dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = mr_config_load(&m->cfg, path, err)) || (rc = mr_st_load_dir(&m->st, dir, err)))
        goto fail;
    const mr_config *c = &m->cfg;
    if ((rc = get_tensor(m, "model.embed_tokens.weight", c->vocab_size, c->d_model, &m->embed,
                         err)) ||
        (rc = get_f32(m, "model.norm.weight", c->d_model, 0, &m->final_norm, err)))
        goto fail;
    m->norm_offset = c->arch == MR_ARCH_GEMMA2 ? 1.0f : 0.0f;
    m->embed_scale = 1.0f;
    if (c->arch == MR_ARCH_GEMMA2) {
        /* transformers multiplies by sqrt(hidden) cast to the model dtype of config.json
         * (60.0 in bf16 for hidden 3584); the trained weights expect that value. */
        float s = sqrtf((float)c->d_model);
        uint16_t h;
        if (c->dtype != MR_DT_F32) {
            mr_from_f32(&h, &s, c->dtype, 1);
            mr_to_f32(&s, &h, c->dtype, 1);
        }
        m->embed_scale = s;
    }
    if (!(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers))) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->n_layers; i++)
        if ((rc = bind_layer(m, i, err))) goto fail;
    if ((rc = bind_heads(m, err)) || (rc = load_tokenizer(m, err))) goto fail;
    int all_bf16 = 1;
    for (int i = 0; i < c->n_layers; i++) {
        const mr_layer *L = &m->layers[i];
        const mr_linear *lins[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) all_bf16 &= lins[j]->w->dtype == MR_DT_BF16;
    }
    if ((rc = mr_gemm_resolve(opts ? opts->gemm : NULL, all_bf16, &m->gemm, err))) goto fail;
    snprintf(path, sizeof path, "%s/SEEDED", dir);
    m->untrained = access(path, F_OK) == 0;
    int n_ad = opts ? opts->n_adapters : 0;
    if (n_ad > MR_MAX_ADAPTERS) {
        rc = mr_err_set(err, MR_ERANGE, "at most %d adapters", MR_MAX_ADAPTERS);
        goto fail;
    }
    m->merged = opts ? opts->merge : 0;
    for (int i = 0; i < n_ad; i++) {
        if ((rc = mr_adapter_load(&m->adapters[i], opts->adapters[i], err))) goto fail;
        m->n_adapters++;
        if ((rc = apply_adapter(m, i, m->merged, err))) goto fail;
    }
    if (m->gemm == MR_GEMM_ONEDNN_INT8) /* after merging: the merged weights are quantized */
        for (int i = 0; i < c->n_layers; i++) {
            mr_layer *L = &m->layers[i];
            mr_linear *lins[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
            for (int j = 0; j < 7; j++)
                if ((rc = mr_gemm_q8_new(&lins[j]->q8, lins[j]->w, err))) goto fail;
        }
    return 0;
fail:
    mr_model_close(m);
    return rc;
}

static void linear_close(mr_linear *l) {
    free(l->b);
    mr_gemm_q8_free(&l->q8);
    for (int i = 0; i < l->n_lora; i++) {
        free(l->lora[i].A);
        free(l->lora[i].B);
    }
}

void mr_model_close(mr_model *m) {
    if (m->layers) {
        for (int i = 0; i < m->cfg.n_layers; i++) {
            mr_layer *L = &m->layers[i];
            free(L->attn_norm);
            free(L->post_attn_norm);
            free(L->ffn_norm);
            free(L->post_ffn_norm);
            mr_linear *lins[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
            for (int j = 0; j < 7; j++) linear_close(lins[j]);
        }
        free(m->layers);
    }
    for (int i = 0; i < MR_MAX_ADAPTERS; i++) free(m->head_delta[i]);
    for (int i = 0; i < m->n_adapters; i++) mr_adapter_close(&m->adapters[i]);
    free(m->heads);
    free(m->final_norm);
    mr_tokenizer_free(m->tok);
    mr_st_close(&m->st);
    memset(m, 0, sizeof *m);
}
