/* config.c: reads, validates and writes Hugging Face config.json files.
 *
 * Reading maps the many spellings found in the wild (model_type or architectures, rope_theta at
 * top level or in rope_parameters, torch_dtype or dtype, hidden_act or hidden_activation, null
 * for "absent") onto mr_config, applying each architecture's transformers defaults. Every key
 * of the wrong type is an error naming the file and key rather than a silent default, and
 * mr_config_validate bounds every size so a hostile config cannot make the loader allocate
 * absurd amounts of memory. Writing produces a config the transformers library loads with its
 * native Mistral/Qwen2/Gemma2 classes, plus our layer-wise keys. */
#include "config.h"

#include "json.h"
#include "textfile.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_BYTES (16u * 1024 * 1024)
#define CFG_MAX_LAYERS 1024
#define CFG_MAX_HIDDEN 65536
#define CFG_MAX_HEADS 1024
#define CFG_MAX_HEAD_DIM 1024
#define CFG_MAX_FF (1 << 20)
#define CFG_MAX_VOCAB (4 << 20)
#define CFG_MAX_POS (1 << 24)

/* ------------------------------------------------------------------------------------------ */
/* typed key access: absent and null give the default, a wrong type is an error               */

typedef struct cfg_ctx {
    const cJSON *root;
    const char *path;
    mr_err *err;
} cfg_ctx;

static const cJSON *cfg_item(const cfg_ctx *x, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(x->root, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static int cfg_int(const cfg_ctx *x, const char *key, int def, int *out) {
    const cJSON *v = cfg_item(x, key);
    if (!v) {
        *out = def;
        return 0;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= INT_MIN && d <= INT_MAX) || d != floor(d))
        return mr_err_set(x->err, MR_EFORMAT, "%s: key '%s': expected an integer", x->path, key);
    *out = (int)d;
    return 0;
}

static int cfg_float(const cfg_ctx *x, const char *key, float def, float *out) {
    const cJSON *v = cfg_item(x, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite((float)v->valuedouble))
        return mr_err_set(x->err, MR_EFORMAT, "%s: key '%s': expected a finite number", x->path,
                          key);
    *out = (float)v->valuedouble;
    return 0;
}

static int cfg_bool(const cfg_ctx *x, const char *key, int def, int *out) {
    const cJSON *v = cfg_item(x, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return mr_err_set(x->err, MR_EFORMAT, "%s: key '%s': expected true or false", x->path,
                          key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* *out is NULL when absent or null. */
static int cfg_str(const cfg_ctx *x, const char *key, const char **out) {
    const cJSON *v = cfg_item(x, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!cJSON_IsString(v))
        return mr_err_set(x->err, MR_EFORMAT, "%s: key '%s': expected a string", x->path, key);
    *out = v->valuestring;
    return 0;
}

/* Two spellings of one string key, the first present wins: *key is the spelling read (the
 * second when both are absent, *out NULL then), for messages. */
static int cfg_str_either(const cfg_ctx *x, const char *first, const char *second,
                          const char **key, const char **out) {
    int rc = cfg_str(x, *key = first, out);
    if (!rc && !*out)
        rc = cfg_str(x, *key = second, out);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* architecture, activation, dtype                                                            */

/* The architectures we load, by config.json model_type and by transformers class name. */
static const struct arch_name {
    const char *model_type, *cls;
    mr_arch arch;
} known_archs[] = {
    {"mistral", "MistralForCausalLM", MR_ARCH_LLAMA},
    {"llama", "LlamaForCausalLM", MR_ARCH_LLAMA},
    {"cost_wise_mistral", "CostWiseMistralForCausalLM", MR_ARCH_LLAMA},
    {"qwen2", "Qwen2ForCausalLM", MR_ARCH_QWEN2},
    {"gemma2", "Gemma2ForCausalLM", MR_ARCH_GEMMA2},
    {"cost_wise_gemma", "CostWiseGemmaForCausalLM", MR_ARCH_GEMMA2},
};

/* A lookup, not an error: 0 and *out set when s (a model_type, or a class name when by_class)
 * is known, -1 when s is NULL or unknown; parse_arch reports. */
static int arch_lookup(const char *s, int by_class, mr_arch *out) {
    for (size_t i = 0; s && i < sizeof known_archs / sizeof known_archs[0]; i++) {
        const struct arch_name *a = &known_archs[i];
        if (strcmp(s, by_class ? a->cls : a->model_type) == 0) {
            *out = a->arch;
            return 0;
        }
    }
    return -1;
}

/* model_type decides; architectures[] is the fallback for configs without a known type. */
static int parse_arch(const cfg_ctx *x, mr_config *c) {
    const char *mt;
    int rc = cfg_str(x, "model_type", &mt);
    if (rc)
        return rc;
    snprintf(c->model_type, sizeof c->model_type, "%s", mt ? mt : "");
    if (arch_lookup(mt, 0, &c->arch) == 0)
        return 0;
    const cJSON *archs = cfg_item(x, "architectures");
    const char *first = "";
    for (const cJSON *a = cJSON_IsArray(archs) ? archs->child : NULL; a; a = a->next) {
        if (!cJSON_IsString(a))
            continue;
        if (!first[0])
            first = a->valuestring;
        if (arch_lookup(a->valuestring, 1, &c->arch) == 0)
            return 0;
    }
    return mr_err_set(x->err, MR_EUNSUPPORTED,
                      "%s: model_type '%.40s' / architectures '%.60s' not supported (expected "
                      "mistral, llama, qwen2, gemma2, cost_wise_mistral or cost_wise_gemma)",
                      x->path, mt ? mt : "", first);
}

static int parse_act(const cfg_ctx *x, mr_config *c) {
    const char *key, *s;
    int rc = cfg_str_either(x, "hidden_activation", "hidden_act", &key, &s);
    if (rc)
        return rc;
    if (!s)
        s = c->arch == MR_ARCH_GEMMA2 ? "gelu_pytorch_tanh" : "silu";
    if (strcmp(s, "silu") == 0 || strcmp(s, "swish") == 0)
        c->act = MR_ACT_SILU;
    /* Gemma configs say "gelu" but were trained with the tanh approximation */
    else if (!strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_tanh") || !strcmp(s, "gelu"))
        c->act = MR_ACT_GELU_TANH;
    else
        return mr_err_set(x->err, MR_EUNSUPPORTED, "%s: key '%s': activation '%.40s' not "
                          "supported (expected silu or gelu_pytorch_tanh)", x->path, key, s);
    return 0;
}

/* transformers 5 writes "dtype", older versions "torch_dtype"; the newer key wins. */
static int parse_dtype_key(const cfg_ctx *x, mr_config *c) {
    const char *key, *s;
    int rc = cfg_str_either(x, "dtype", "torch_dtype", &key, &s);
    if (rc)
        return rc;
    c->dtype = MR_DT_F32;
    int known = !s || !strcmp(s, "float32") || !strcmp(s, "bfloat16") || !strcmp(s, "float16");
    if (s && known)
        mr_dtype_parse(s, &c->dtype);
    if (!known)
        return mr_err_set(x->err, MR_EUNSUPPORTED, "%s: key '%s': dtype '%.32s' not supported "
                          "(expected float32, bfloat16 or float16)", x->path, key, s);
    return 0;
}

static int parse_rope_theta(const cfg_ctx *x, mr_config *c) {
    if (cfg_item(x, "rope_theta"))
        return cfg_float(x, "rope_theta", 10000.f, &c->rope_theta);
    const cJSON *rp = cfg_item(x, "rope_parameters");
    if (!rp) {
        c->rope_theta = 10000.f;
        return 0;
    }
    if (!cJSON_IsObject(rp))
        return mr_err_set(x->err, MR_EFORMAT, "%s: key 'rope_parameters': expected an object",
                          x->path);
    /* per-layer-type form: {"full_attention": {...}, "sliding_attention": {...}} */
    const cJSON *full = cJSON_GetObjectItemCaseSensitive(rp, "full_attention");
    if (cJSON_IsObject(full))
        rp = full;
    const char *type = NULL;
    cfg_ctx sub = {rp, x->path, x->err};
    int rc = cfg_str(&sub, "rope_type", &type);
    if (rc)
        return rc;
    if (type && strcmp(type, "default"))
        return mr_err_set(x->err, MR_EUNSUPPORTED, "%s: key 'rope_parameters.rope_type': "
                          "'%.32s' not supported (expected default)", x->path, type);
    return cfg_float(&sub, "rope_theta", 10000.f, &c->rope_theta);
}

/* Older configs write "rope_scaling": null; anything else would silently change positions. */
static int check_rope_scaling(const cfg_ctx *x) {
    const cJSON *rs = cfg_item(x, "rope_scaling");
    if (!rs)
        return 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t)
        t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (cJSON_IsString(t) && strcmp(t->valuestring, "default") == 0)
        return 0;
    return mr_err_set(x->err, MR_EUNSUPPORTED, "%s: key 'rope_scaling': only null or default "
                      "is supported", x->path);
}

/* ------------------------------------------------------------------------------------------ */
/* loading                                                                                    */

static int parse_sizes(const cfg_ctx *x, mr_config *c) {
    int rc;
    if ((rc = cfg_int(x, "num_hidden_layers", 0, &c->n_layers)) ||
        (rc = cfg_int(x, "hidden_size", 0, &c->d_model)) ||
        (rc = cfg_int(x, "num_attention_heads", 0, &c->n_heads)) ||
        (rc = cfg_int(x, "num_key_value_heads", c->n_heads, &c->n_kv_heads)) ||
        (rc = cfg_int(x, "intermediate_size", 0, &c->d_ff)) ||
        (rc = cfg_int(x, "vocab_size", 0, &c->vocab_size)) ||
        (rc = cfg_int(x, "max_position_embeddings", 0, &c->max_pos)))
        return rc;
    static const char *const required[] = {"num_hidden_layers", "hidden_size",
                                           "num_attention_heads", "intermediate_size",
                                           "vocab_size"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!cfg_item(x, required[i]))
            return mr_err_set(x->err, MR_EFORMAT, "%s: key '%s' missing", x->path, required[i]);
    if (c->max_pos == 0)
        c->max_pos = 4096; /* rare, only limits prompt length */
    if (cfg_item(x, "head_dim"))
        return cfg_int(x, "head_dim", 0, &c->head_dim);
    if (c->n_heads <= 0 || c->d_model % c->n_heads)
        return mr_err_set(x->err, MR_EFORMAT, "%s: key 'hidden_size' %d not divisible by "
                          "'num_attention_heads' %d and no head_dim", x->path, c->d_model,
                          c->n_heads);
    c->head_dim = c->d_model / c->n_heads;
    return 0;
}

static int parse_attention(const cfg_ctx *x, mr_config *c) {
    int gemma = c->arch == MR_ARCH_GEMMA2, qwen = c->arch == MR_ARCH_QWEN2;
    /* MistralConfig and Gemma2Config default to a 4096 window when the key is missing; an
     * explicit null means none */
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(x->root, "sliding_window");
    int sw_def = !sw && (gemma || strcmp(c->model_type, "mistral") == 0) ? 4096 : 0;
    int use_sw = 1, rc;
    if ((rc = cfg_bool(x, "tie_word_embeddings", gemma, &c->tie_word_embeddings)) ||
        (rc = cfg_bool(x, "attention_bias", qwen, &c->attn_bias)) ||
        (rc = cfg_bool(x, "use_sliding_window", 0, &use_sw)) ||
        (rc = cfg_int(x, "sliding_window", sw_def, &c->sliding_window)))
        return rc;
    /* Qwen2 configs carry sliding_window 4096/131072 even when it is switched off */
    if (qwen && !use_sw)
        c->sliding_window = 0;
    if (!gemma)
        return 0;
    if ((rc = cfg_float(x, "attn_logit_softcapping", 50.f, &c->attn_softcap)) ||
        (rc = cfg_float(x, "final_logit_softcapping", 30.f, &c->final_softcap)) ||
        (rc = cfg_float(x, "query_pre_attn_scalar", (float)c->head_dim,
                        &c->query_pre_attn_scalar)))
        return rc;
    /* an explicit null means "off", which the float reader cannot tell from "absent" */
    if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(x->root, "attn_logit_softcapping")))
        c->attn_softcap = 0;
    if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(x->root, "final_logit_softcapping")))
        c->final_softcap = 0;
    return 0;
}

static int parse_all(const cfg_ctx *x, mr_config *c) {
    int rc;
    if ((rc = parse_arch(x, c)) || (rc = parse_sizes(x, c)) || (rc = parse_rope_theta(x, c)) ||
        (rc = check_rope_scaling(x)) || (rc = cfg_float(x, "rms_norm_eps", 1e-6f, &c->rms_eps)) ||
        (rc = cfg_int(x, "bos_token_id", 1, &c->bos_token_id)) ||
        (rc = parse_attention(x, c)) || (rc = parse_act(x, c)) ||
        (rc = parse_dtype_key(x, c)) || (rc = cfg_bool(x, "layer_wise", 0, &c->layer_wise)) ||
        (rc = cfg_int(x, "start_layer", 1, &c->start_layer)) ||
        (rc = cfg_int(x, "layer_sep", 1, &c->layer_sep)))
        return rc;
    return 0;
}

int mr_config_load(mr_config *c, const char *path, mr_err *err) {
    memset(c, 0, sizeof *c);
    char *text = NULL;
    size_t len;
    int rc = mr__read_text(path, CFG_MAX_BYTES, &text, &len, err);
    if (rc)
        return rc;
    cJSON *root = NULL;
    if (!(root = mr__json_parse(text, len, path, err))) {
        rc = MR_EFORMAT;
        goto cleanup;
    }
    if (!cJSON_IsObject(root)) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: not a JSON object", path);
        goto cleanup;
    }
    cfg_ctx x = {root, path, err};
    if (!(rc = parse_all(&x, c)))
        rc = mr_config_validate(c, path, err);
cleanup:
    cJSON_Delete(root);
    free(text);
    if (rc)
        memset(c, 0, sizeof *c);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* validation                                                                                 */

static int check_range(const char *path, const char *key, long long v, long long lo,
                       long long hi, mr_err *err) {
    if (v < lo || v > hi)
        return mr_err_set(err, MR_ERANGE, "%s: key '%s': %lld outside [%lld, %lld]", path, key,
                          v, lo, hi);
    return 0;
}

static int check_sizes(const mr_config *c, const char *path, mr_err *err) {
    int rc;
    if ((rc = check_range(path, "num_hidden_layers", c->n_layers, 1, CFG_MAX_LAYERS, err)) ||
        (rc = check_range(path, "hidden_size", c->d_model, 1, CFG_MAX_HIDDEN, err)) ||
        (rc = check_range(path, "num_attention_heads", c->n_heads, 1, CFG_MAX_HEADS, err)) ||
        (rc = check_range(path, "num_key_value_heads", c->n_kv_heads, 1, c->n_heads, err)) ||
        (rc = check_range(path, "head_dim", c->head_dim, 1, CFG_MAX_HEAD_DIM, err)) ||
        (rc = check_range(path, "intermediate_size", c->d_ff, 1, CFG_MAX_FF, err)) ||
        (rc = check_range(path, "vocab_size", c->vocab_size, 1, CFG_MAX_VOCAB, err)) ||
        (rc = check_range(path, "max_position_embeddings", c->max_pos, 1, CFG_MAX_POS, err)) ||
        (rc = check_range(path, "bos_token_id", c->bos_token_id, 0, c->vocab_size - 1, err)) ||
        (rc = check_range(path, "sliding_window", c->sliding_window, 0, CFG_MAX_POS, err)))
        return rc;
    if (c->n_heads % c->n_kv_heads)
        return mr_err_set(err, MR_ERANGE, "%s: key 'num_attention_heads' %d not divisible by "
                          "'num_key_value_heads' %d", path, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2)   /* RoPE rotates pairs (i, i + head_dim/2) */
        return mr_err_set(err, MR_EINVAL, "%s: key 'head_dim': %d is odd; rotary embeddings need "
                          "an even head dimension", path, c->head_dim);
    /* q_proj is (heads*head_dim, hidden): bound it like hidden_size */
    if ((long long)c->n_heads * c->head_dim > CFG_MAX_HIDDEN)
        return mr_err_set(err, MR_ERANGE, "%s: key 'head_dim': %d x %d heads exceeds %d", path,
                          c->head_dim, c->n_heads, CFG_MAX_HIDDEN);
    return 0;
}

static int check_float(const char *path, const char *key, float v, float lo, float hi,
                       mr_err *err) {
    if (!(v >= lo && v <= hi))
        return mr_err_set(err, MR_ERANGE, "%s: key '%s': %g outside [%g, %g]", path, key, v, lo,
                          hi);
    return 0;
}

static int check_enums(const mr_config *c, const char *path, mr_err *err) {
    if (c->arch != MR_ARCH_LLAMA && c->arch != MR_ARCH_QWEN2 && c->arch != MR_ARCH_GEMMA2)
        return mr_err_set(err, MR_EINVAL, "%s: key 'model_type': bad architecture %d", path,
                          (int)c->arch);
    if (c->act != MR_ACT_SILU && c->act != MR_ACT_GELU_TANH)
        return mr_err_set(err, MR_EINVAL, "%s: key 'hidden_act': bad activation %d", path,
                          (int)c->act);
    if (mr_dtype_size(c->dtype) == 0)
        return mr_err_set(err, MR_EINVAL, "%s: key 'torch_dtype': bad dtype %d", path,
                          (int)c->dtype);
    return 0;
}

int mr_config_validate(const mr_config *c, const char *path, mr_err *err) {
    int rc;
    if (!path)
        path = "config";
    if ((rc = check_enums(c, path, err)) || (rc = check_sizes(c, path, err)) ||
        (rc = check_float(path, "rope_theta", c->rope_theta, 1e-3f, 1e12f, err)) ||
        (rc = check_float(path, "rms_norm_eps", c->rms_eps, 1e-12f, 0.1f, err)) ||
        (rc = check_float(path, "attn_logit_softcapping", c->attn_softcap, 0, 1e6f, err)) ||
        (rc = check_float(path, "final_logit_softcapping", c->final_softcap, 0, 1e6f, err)) ||
        (rc = check_float(path, "query_pre_attn_scalar", c->query_pre_attn_scalar, 0, 1e9f,
                          err)) ||
        (rc = check_range(path, "start_layer", c->start_layer, 1, c->n_layers, err)) ||
        (rc = check_range(path, "layer_sep", c->layer_sep, 1, c->n_layers, err)) ||
        (rc = check_range(path, "layer_wise", c->layer_wise, 0, 1, err)))
        return rc;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* saving                                                                                     */

/* The add_* helpers return 0, or MR_ENOMEM when cJSON cannot allocate the item; config_json
 * turns any failure into NULL, which mr_config_save reports. */
static int added(const cJSON *item) {
    return item ? 0 : MR_ENOMEM;
}

/* Shortest decimal that reads back as the same float, so 1e-6f is written 1e-06 rather than
 * 9.99999997e-07 and the round trip stays exact. Whole numbers get ".0": transformers 5 checks
 * float fields strictly (a gemma2 "final_logit_softcapping": 30 is refused). */
static int add_float(cJSON *o, const char *key, float v) {
    char num[40];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(num, sizeof num, "%.*g", prec, (double)v);
        if (strtof(num, NULL) == v)
            break;
    }
    if (!strpbrk(num, ".eE")) strcat(num, ".0");
    return added(cJSON_AddRawToObject(o, key, num));
}

/* transformers tests soft-capping with "is not None": 0 must be written as null, not 0. */
static int add_cap(cJSON *o, const char *key, float v) {
    return v > 0 ? add_float(o, key, v) : added(cJSON_AddNullToObject(o, key));
}

static int add_int(cJSON *o, const char *key, int v) {
    return added(cJSON_AddNumberToObject(o, key, v));
}

static int add_bool(cJSON *o, const char *key, int v) {
    return added(cJSON_AddBoolToObject(o, key, v != 0));
}

static int add_str(cJSON *o, const char *key, const char *v) {
    return added(cJSON_AddStringToObject(o, key, v));
}

static int add_window(cJSON *o, int w) {
    return added(w ? cJSON_AddNumberToObject(o, "sliding_window", w)
                   : cJSON_AddNullToObject(o, "sliding_window"));
}

static const char *dtype_torch_name(mr_dtype dt) {
    return dt == MR_DT_BF16 ? "bfloat16" : dt == MR_DT_F16 ? "float16" : "float32";
}

/* A field released configs write as an int when whole (Gemma2's query_pre_attn_scalar: 256) */
static int add_int_or_float(cJSON *o, const char *key, float v) {
    return v == (float)(int)v ? add_int(o, key, (int)v) : add_float(o, key, v);
}

/* Keys only one architecture's transformers class reads; 0 or MR_ENOMEM (c->arch was
 * validated by mr_config_save). */
static int add_arch_keys(cJSON *o, const mr_config *c) {
    const char *act = c->act == MR_ACT_SILU ? "silu" : "gelu_pytorch_tanh";
    /* transformers' Gemma2 needs a window (its layers alternate); a window of max_pos is
     * the same as none, and reads back as such in effect */
    int w = c->sliding_window || c->arch != MR_ARCH_GEMMA2 ? c->sliding_window : c->max_pos;
    int bad = add_str(o, "hidden_act", act) || add_window(o, w);
    switch (c->arch) {
    case MR_ARCH_LLAMA:
        bad = bad || add_bool(o, "attention_bias", c->attn_bias);
        break;
    case MR_ARCH_QWEN2:
        bad = bad || add_bool(o, "use_sliding_window", c->sliding_window > 0) ||
              add_bool(o, "attention_bias", c->attn_bias);
        break;
    case MR_ARCH_GEMMA2:
        bad = bad || add_str(o, "hidden_activation", act) ||
              add_bool(o, "attention_bias", c->attn_bias) ||
              add_cap(o, "attn_logit_softcapping", c->attn_softcap) ||
              add_cap(o, "final_logit_softcapping", c->final_softcap) ||
              add_int_or_float(o, "query_pre_attn_scalar",
                               c->query_pre_attn_scalar > 0 ? c->query_pre_attn_scalar
                                                            : (float)c->head_dim);
        break;
    }
    return bad ? MR_ENOMEM : 0;
}

/* MistralConfig has no attention_bias: a llama-family model with q/k/v bias is saved as llama,
 * which in turn has no sliding window. */
static int arch_names(const mr_config *c, const char **type, const char **cls,
                      const char *path, mr_err *err) {
    switch (c->arch) {
    case MR_ARCH_LLAMA:
        if (c->attn_bias && c->sliding_window)
            return mr_err_set(err, MR_EUNSUPPORTED, "%s: attention_bias with sliding_window "
                              "has no transformers class", path);
        *type = c->attn_bias ? "llama" : "mistral";
        *cls = c->attn_bias ? "LlamaForCausalLM" : "MistralForCausalLM";
        return 0;
    case MR_ARCH_QWEN2: *type = "qwen2"; *cls = "Qwen2ForCausalLM"; return 0;
    case MR_ARCH_GEMMA2: *type = "gemma2"; *cls = "Gemma2ForCausalLM"; return 0;
    }
    return mr_err_set(err, MR_EINVAL, "%s: bad architecture", path);
}

static cJSON *config_json(const mr_config *c, const char *type, const char *cls) {
    cJSON *o = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(o, "architectures");
    cJSON *name = cJSON_CreateString(cls);
    if (!archs || !name || !cJSON_AddItemToArray(archs, name)) {
        cJSON_Delete(name);
        cJSON_Delete(o);
        return NULL;
    }
    const char *dt = dtype_torch_name(c->dtype);
    int bad = add_str(o, "model_type", type) || add_int(o, "num_hidden_layers", c->n_layers) ||
              add_int(o, "hidden_size", c->d_model) ||
              add_int(o, "num_attention_heads", c->n_heads) ||
              add_int(o, "num_key_value_heads", c->n_kv_heads) ||
              add_int(o, "head_dim", c->head_dim) || add_int(o, "intermediate_size", c->d_ff) ||
              add_int(o, "vocab_size", c->vocab_size) ||
              add_int(o, "max_position_embeddings", c->max_pos) ||
              add_float(o, "rope_theta", c->rope_theta) ||
              add_float(o, "rms_norm_eps", c->rms_eps) ||
              add_int(o, "bos_token_id", c->bos_token_id) ||
              add_bool(o, "tie_word_embeddings", c->tie_word_embeddings) ||
              add_arch_keys(o, c) || add_bool(o, "layer_wise", c->layer_wise) ||
              add_int(o, "start_layer", c->start_layer) ||
              add_int(o, "layer_sep", c->layer_sep) || add_str(o, "torch_dtype", dt) ||
              add_str(o, "dtype", dt) || add_bool(o, "use_cache", 0);
    if (bad) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static int write_text(const char *path, const char *text, mr_err *err) {
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return mr_err_errno(err, "create %s", path);
    size_t len = strlen(text);
    int ok = fwrite(text, 1, len, fp) == len && fputc('\n', fp) != EOF;
    if (fclose(fp) != 0 || !ok)
        return mr_err_errno(err, "write %s", path);
    return 0;
}

int mr_config_save(const mr_config *c, const char *path, mr_err *err) {
    const char *type = NULL, *cls = NULL;
    int rc = mr_config_validate(c, path, err);
    if (rc || (rc = arch_names(c, &type, &cls, path, err)))
        return rc;
    cJSON *o = config_json(c, type, cls);
    char *text = o ? cJSON_Print(o) : NULL;
    rc = text ? write_text(path, text, err) : mr_err_set(err, MR_ENOMEM, "%s: out of memory",
                                                          path);
    free(text);
    cJSON_Delete(o);
    return rc;
}
