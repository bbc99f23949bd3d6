/* test_config.c: config.json loading, defaults, validation and the save/load round trip.
 *
 * The examples are shaped like real checkpoints' configs (Mistral-7B with rope_theta at top
 * level, a transformers-5 Qwen2 with rope_parameters and "dtype", the BGE Gemma2-9B lightweight
 * re-ranker with model_type cost_wise_gemma); bad ones check the code and that the message
 * names the file and the key. */
#define _GNU_SOURCE /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "release.h"

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(p);
}

static char g_dir[64];
static char g_path[128];

static int setup(void **state) {
    strcpy(g_dir, "/tmp/mr_cfg_test_XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    snprintf(g_path, sizeof g_path, "%s/config.json", g_dir);
    return 0;
}

static int teardown(void **state) {
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

static int load_str(mr_config *c, const char *json, mr_err *err) {
    write_text(g_path, json);
    return mr_config_load(c, g_path, err);
}

static void expect_bad(const char *json, int code, const char *key) {
    mr_config c;
    mr_err err = {0};
    int rc = load_str(&c, json, &err);
    if (rc != code || !strstr(err.msg, g_path) || (key && !strstr(err.msg, key)))
        print_error("rc %d (want %d) msg: %s\n", rc, code, err.msg);
    assert_int_equal(rc, code);
    assert_non_null(strstr(err.msg, g_path));
    if (key)
        assert_non_null(strstr(err.msg, key));
}

static const char MISTRAL_7B[] =
    "{\n  \"architectures\": [\"MistralForCausalLM\"],\n  \"bos_token_id\": 1,\n"
    "  \"eos_token_id\": 2,\n  \"hidden_act\": \"silu\",\n  \"hidden_size\": 4096,\n"
    "  \"initializer_range\": 0.02,\n  \"intermediate_size\": 14336,\n"
    "  \"max_position_embeddings\": 32768,\n  \"model_type\": \"mistral\",\n"
    "  \"num_attention_heads\": 32,\n  \"num_hidden_layers\": 32,\n"
    "  \"num_key_value_heads\": 8,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 10000.0,\n"
    "  \"sliding_window\": 4096,\n  \"tie_word_embeddings\": false,\n"
    "  \"torch_dtype\": \"bfloat16\",\n  \"transformers_version\": \"4.34.0.dev0\",\n"
    "  \"use_cache\": true,\n  \"vocab_size\": 32000\n}\n";

/* transformers 5: "dtype", rope_parameters, Qwen2 with a window that is switched off */
static const char QWEN2_TF5[] =
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"attention_dropout\":0.0,"
    "\"bos_token_id\":151643,\"dtype\":\"float16\",\"eos_token_id\":151645,"
    "\"hidden_act\":\"silu\",\"hidden_size\":896,\"initializer_range\":0.02,"
    "\"intermediate_size\":4864,\"layer_types\":[\"full_attention\",\"full_attention\"],"
    "\"max_position_embeddings\":32768,\"max_window_layers\":21,\"model_type\":\"qwen2\","
    "\"num_attention_heads\":14,\"num_hidden_layers\":24,\"num_key_value_heads\":2,"
    "\"rms_norm_eps\":1e-06,\"rope_parameters\":{\"rope_theta\":1000000.0,"
    "\"rope_type\":\"default\"},\"sliding_window\":null,\"tie_word_embeddings\":true,"
    "\"transformers_version\":\"5.0.0\",\"use_cache\":true,\"use_sliding_window\":false,"
    "\"vocab_size\":151936}";

/* BAAI/bge-reranker-v2.5-gemma2-lightweight (query_pre_attn_scalar is 256 there, the same
 * as head_dim; 224 here so the test sees the key read rather than defaulted) */
static const char GEMMA2_LIGHT[] =
    "{\"architectures\":[\"CostWiseGemmaForCausalLM\"],\"attention_bias\":false,"
    "\"attention_dropout\":0.0,\"attn_logit_softcapping\":50.0,"
    "\"auto_map\":{\"AutoConfig\":\"gemma_config.CostWiseGemmaConfig\"},"
    "\"bos_token_id\":2,\"cache_implementation\":\"hybrid\",\"eos_token_id\":1,"
    "\"final_logit_softcapping\":30.0,\"head_dim\":256,\"hidden_act\":\"gelu_pytorch_tanh\","
    "\"hidden_activation\":\"gelu_pytorch_tanh\",\"hidden_size\":3584,"
    "\"initializer_range\":0.02,\"intermediate_size\":14336,\"layer_sep\":1,"
    "\"layer_wise\":true,\"max_position_embeddings\":8192,\"model_type\":\"cost_wise_gemma\","
    "\"num_attention_heads\":16,\"num_hidden_layers\":42,\"num_key_value_heads\":8,"
    "\"pad_token_id\":0,\"query_pre_attn_scalar\":224,\"rms_norm_eps\":1e-06,"
    "\"rope_theta\":10000.0,\"sliding_window\":4096,\"start_layer\":8,"
    "\"torch_dtype\":\"float32\",\"transformers_version\":\"4.42.4\",\"use_cache\":true,"
    "\"vocab_size\":256000}";

static void test_mistral(void **state) {
    mr_config c;
    mr_err err = {0};
    assert_int_equal(load_str(&c, MISTRAL_7B, &err), 0);
    assert_int_equal(c.arch, MR_ARCH_LLAMA);
    assert_string_equal(c.model_type, "mistral");
    assert_int_equal(c.n_layers, 32);
    assert_int_equal(c.d_model, 4096);
    assert_int_equal(c.n_heads, 32);
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.d_ff, 14336);
    assert_int_equal(c.vocab_size, 32000);
    assert_int_equal(c.max_pos, 32768);
    assert_true(c.rope_theta == 10000.0f);
    assert_true(c.rms_eps == 1e-5f);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.attn_bias, 0);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.act, MR_ACT_SILU);
    assert_true(c.attn_softcap == 0 && c.final_softcap == 0 && c.query_pre_attn_scalar == 0);
    assert_int_equal(c.layer_wise, 0);
    assert_int_equal(c.layer_sep, 1);
    assert_int_equal(c.dtype, MR_DT_BF16);
}

static void test_qwen2_tf5(void **state) {
    mr_config c;
    mr_err err = {0};
    assert_int_equal(load_str(&c, QWEN2_TF5, &err), 0);
    assert_int_equal(c.arch, MR_ARCH_QWEN2);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.n_kv_heads, 2);
    assert_true(c.rope_theta == 1e6f);
    assert_true(c.rms_eps == 1e-6f);
    assert_int_equal(c.attn_bias, 1); /* qwen2 default */
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.bos_token_id, 151643);
    assert_int_equal(c.dtype, MR_DT_F16);
    assert_int_equal(c.act, MR_ACT_SILU);

    /* use_sliding_window gates the window; without it Qwen2's 4096 is ignored */
    assert_int_equal(load_str(&c, "{\"model_type\":\"qwen2\",\"num_hidden_layers\":2,"
                                  "\"hidden_size\":64,\"num_attention_heads\":4,"
                                  "\"intermediate_size\":128,\"vocab_size\":100,"
                                  "\"sliding_window\":4096}", &err), 0);
    assert_int_equal(c.sliding_window, 0);
    assert_true(c.rope_theta == 10000.0f); /* default */
    assert_int_equal(c.dtype, MR_DT_F32);  /* default */
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(load_str(&c, "{\"model_type\":\"qwen2\",\"num_hidden_layers\":2,"
                                  "\"hidden_size\":64,\"num_attention_heads\":4,"
                                  "\"intermediate_size\":128,\"vocab_size\":100,"
                                  "\"sliding_window\":4096,\"use_sliding_window\":true,"
                                  "\"attention_bias\":false}", &err), 0);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.attn_bias, 0);
}

static void test_gemma2_lightweight(void **state) {
    mr_config c;
    mr_err err = {0};
    assert_int_equal(load_str(&c, GEMMA2_LIGHT, &err), 0);
    assert_int_equal(c.arch, MR_ARCH_GEMMA2);
    assert_string_equal(c.model_type, "cost_wise_gemma");
    assert_int_equal(c.n_layers, 42);
    assert_int_equal(c.d_model, 3584);
    assert_int_equal(c.head_dim, 256); /* != hidden / heads = 224 */
    assert_int_equal(c.bos_token_id, 2);
    assert_int_equal(c.tie_word_embeddings, 1); /* gemma2 default */
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.act, MR_ACT_GELU_TANH);
    assert_true(c.attn_softcap == 50.0f);
    assert_true(c.final_softcap == 30.0f);
    assert_true(c.query_pre_attn_scalar == 224.0f);
    assert_int_equal(c.layer_wise, 1);
    assert_int_equal(c.start_layer, 8);
    assert_int_equal(c.layer_sep, 1);
    assert_int_equal(c.dtype, MR_DT_F32);
}

/* The config texts `init-checkpoint --release` writes read as the releases' shapes (facts from
 * their model cards and configs; docs/checkpoints.md), every published key included. */
static void test_release_configs(void **state) {
    mr_config c;
    mr_err err = {0};
    const mr_release *g = mr_release_find("bge-reranker-v2.5-gemma2-lightweight"),
                     *m = mr_release_find("matroyshka-reranker-passage");
    assert_non_null(g);
    assert_non_null(m);
    assert_null(mr_release_find("Matroyshka-ReRanker-passage"));
    assert_null(mr_release_find(NULL));
    assert_int_equal(load_str(&c, g->config_json, &err), 0);
    assert_string_equal(c.model_type, "cost_wise_gemma");
    assert_int_equal(c.arch, MR_ARCH_GEMMA2);
    assert_true(c.n_layers == 42 && c.d_model == 3584 && c.head_dim == 256 && c.d_ff == 14336);
    assert_true(c.n_heads == 16 && c.n_kv_heads == 8 && c.vocab_size == 256000);
    assert_true(c.start_layer == 8 && c.layer_sep == 1 && c.layer_wise == 1);
    assert_true(c.query_pre_attn_scalar == 256.0f && c.tie_word_embeddings == 1);
    assert_int_equal(c.dtype, MR_DT_F32); /* the release is stored in float32 */
    assert_int_equal(g->shards, 4);
    assert_int_equal(g->n_adapters, 0);
    cJSON *j = cJSON_Parse(g->config_json);
    assert_non_null(j);
    assert_int_equal(cJSON_GetArraySize(j), 34); /* every published key, no more */
    cJSON_Delete(j);
    assert_int_equal(load_str(&c, m->config_json, &err), 0);
    assert_string_equal(c.model_type, "cost_wise_mistral");
    assert_int_equal(c.arch, MR_ARCH_LLAMA);
    assert_true(c.n_layers == 32 && c.d_model == 4096 && c.n_kv_heads == 8 && c.vocab_size == 32000);
    assert_true(c.start_layer == 4 && c.layer_sep == 1 && c.layer_wise == 1);
    assert_int_equal(m->n_adapters, 1);
    assert_string_equal(m->adapters[0].subdir, "compensate/layer/full");
    assert_true(m->adapters[0].rank == 32 && m->adapters[0].alpha == 64.0f);
}

static void test_gemma2_defaults(void **state) {
    mr_config c;
    mr_err err = {0};
    assert_int_equal(load_str(&c, "{\"model_type\":\"gemma2\",\"num_hidden_layers\":4,"
                                  "\"hidden_size\":128,\"num_attention_heads\":4,"
                                  "\"num_key_value_heads\":2,\"intermediate_size\":256,"
                                  "\"vocab_size\":1000,\"head_dim\":null}", &err), 0);
    assert_int_equal(c.head_dim, 32);
    assert_true(c.attn_softcap == 50.0f && c.final_softcap == 30.0f);
    assert_true(c.query_pre_attn_scalar == 32.0f);
    assert_int_equal(c.act, MR_ACT_GELU_TANH);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.sliding_window, 4096);
    /* explicit nulls switch soft-capping and the window off */
    assert_int_equal(load_str(&c, "{\"model_type\":\"gemma2\",\"num_hidden_layers\":4,"
                                  "\"hidden_size\":128,\"num_attention_heads\":4,"
                                  "\"intermediate_size\":256,\"vocab_size\":1000,"
                                  "\"attn_logit_softcapping\":null,\"sliding_window\":null,"
                                  "\"final_logit_softcapping\":null,\"hidden_act\":\"gelu\"}",
                          &err), 0);
    assert_true(c.attn_softcap == 0 && c.final_softcap == 0);
    assert_int_equal(c.sliding_window, 0);
}

static void test_architectures_fallback(void **state) {
    mr_config c;
    mr_err err = {0};
    assert_int_equal(load_str(&c, "{\"architectures\":[\"Qwen2ForCausalLM\"],"
                                  "\"num_hidden_layers\":2,\"hidden_size\":64,"
                                  "\"num_attention_heads\":4,\"intermediate_size\":128,"
                                  "\"vocab_size\":100}", &err), 0);
    assert_int_equal(c.arch, MR_ARCH_QWEN2);
    assert_int_equal(c.attn_bias, 1);
    assert_int_equal(load_str(&c, "{\"model_type\":\"llama\",\"num_hidden_layers\":2,"
                                  "\"hidden_size\":64,\"num_attention_heads\":4,"
                                  "\"intermediate_size\":128,\"vocab_size\":100,"
                                  "\"attention_bias\":true}", &err), 0);
    assert_int_equal(c.arch, MR_ARCH_LLAMA);
    assert_int_equal(c.attn_bias, 1);
    assert_int_equal(c.sliding_window, 0); /* llama has none */
    assert_int_equal(c.max_pos, 4096);
}

static void test_unsupported(void **state) {
    /* BAAI/bge-reranker-v2-minicpm-layerwise */
    expect_bad("{\"architectures\":[\"LayerWiseMiniCPMForCausalLM\"],\"model_type\":\"minicpm\","
               "\"num_hidden_layers\":40,\"hidden_size\":2304,\"num_attention_heads\":36,"
               "\"intermediate_size\":5760,\"vocab_size\":122753,\"start_layer\":8}",
               MR_EUNSUPPORTED, "LayerWiseMiniCPMForCausalLM");
    expect_bad("{\"num_hidden_layers\":2}", MR_EUNSUPPORTED, "model_type");
    expect_bad("{\"model_type\":\"mistral\",\"num_hidden_layers\":2,\"hidden_size\":64,"
               "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100,"
               "\"hidden_act\":\"relu\"}", MR_EUNSUPPORTED, "hidden_act");
    expect_bad("{\"model_type\":\"mistral\",\"num_hidden_layers\":2,\"hidden_size\":64,"
               "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100,"
               "\"torch_dtype\":\"float64\"}", MR_EUNSUPPORTED, "torch_dtype");
    expect_bad("{\"model_type\":\"llama\",\"num_hidden_layers\":2,\"hidden_size\":64,"
               "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100,"
               "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}}",
               MR_EUNSUPPORTED, "rope_scaling");
}

#define BASE "\"model_type\":\"mistral\",\"num_hidden_layers\":4,\"hidden_size\":64,"   \
             "\"intermediate_size\":128,\"vocab_size\":100"

static void test_bad_values(void **state) {
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"num_key_value_heads\":3}", MR_ERANGE,
               "num_key_value_heads");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"num_key_value_heads\":8}", MR_ERANGE,
               "num_key_value_heads");
    expect_bad("{" BASE ",\"num_attention_heads\":6}", MR_EFORMAT, "hidden_size");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"start_layer\":0}", MR_ERANGE,
               "start_layer");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"start_layer\":5}", MR_ERANGE,
               "start_layer");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"layer_sep\":0}", MR_ERANGE, "layer_sep");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"rms_norm_eps\":-1}", MR_ERANGE,
               "rms_norm_eps");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"bos_token_id\":100}", MR_ERANGE,
               "bos_token_id");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"layer_wise\":1}", MR_EFORMAT,
               "layer_wise");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"rope_parameters\":[]}", MR_EFORMAT,
               "rope_parameters");
    expect_bad("{" BASE ",\"num_attention_heads\":\"4\"}", MR_EFORMAT, "num_attention_heads");
    expect_bad("{" BASE ",\"num_attention_heads\":4.5}", MR_EFORMAT, "num_attention_heads");
    expect_bad("{" BASE ",\"num_attention_heads\":1e300}", MR_EFORMAT, "num_attention_heads");
    expect_bad("{" BASE ",\"num_attention_heads\":0}", MR_EFORMAT, "hidden_size");
    /* hostile sizes are refused before anyone allocates them */
    expect_bad("{\"model_type\":\"mistral\",\"num_hidden_layers\":100000,\"hidden_size\":64,"
               "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100}",
               MR_ERANGE, "num_hidden_layers");
    expect_bad("{\"model_type\":\"mistral\",\"num_hidden_layers\":4,\"hidden_size\":1048576,"
               "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100}",
               MR_ERANGE, "hidden_size");
    expect_bad("{\"model_type\":\"mistral\",\"num_hidden_layers\":4,\"hidden_size\":64,"
               "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":1000000000}",
               MR_ERANGE, "vocab_size");
    expect_bad("{\"model_type\":\"mistral\",\"num_hidden_layers\":4,\"hidden_size\":64,"
               "\"num_attention_heads\":4,\"intermediate_size\":-5,\"vocab_size\":100}",
               MR_ERANGE, "intermediate_size");
    expect_bad("{\"model_type\":\"mistral\",\"num_hidden_layers\":4,\"hidden_size\":64,"
               "\"num_attention_heads\":4,\"head_dim\":4096,\"intermediate_size\":8,"
               "\"vocab_size\":100}", MR_ERANGE, "head_dim");
    expect_bad("{\"model_type\":\"mistral\",\"num_hidden_layers\":4,\"hidden_size\":28,"
               "\"num_attention_heads\":4,\"intermediate_size\":8,\"vocab_size\":100}",
               MR_EINVAL, "odd");
    expect_bad("{\"model_type\":\"mistral\",\"hidden_size\":64,\"num_attention_heads\":4,"
               "\"intermediate_size\":128,\"vocab_size\":100}", MR_EFORMAT, "num_hidden_layers");
    expect_bad("{\"model_type\":\"mistral\",", MR_EFORMAT, NULL);
    expect_bad("[]", MR_EFORMAT, NULL);
    expect_bad("", MR_EFORMAT, NULL);
    /* cJSON_Parse read the first value and stopped: a second one was ignored */
    expect_bad("{" BASE ",\"num_attention_heads\":4}\n{\"num_hidden_layers\":2}", MR_EFORMAT,
               "line 2: text after the JSON value");
    expect_bad("{" BASE ",\"num_attention_heads\":4,\"model_type\":\"mis\\u0000tral\"}",
               MR_EFORMAT, "a NUL character");

    mr_config c;
    mr_err err = {0};
    assert_int_equal(mr_config_load(&c, "/nonexistent/config.json", &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/config.json"));
}

static void assert_config_equal(const mr_config *a, const mr_config *b) {
    assert_int_equal(a->arch, b->arch);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->d_model, b->d_model);
    assert_int_equal(a->n_heads, b->n_heads);
    assert_int_equal(a->n_kv_heads, b->n_kv_heads);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->d_ff, b->d_ff);
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->max_pos, b->max_pos);
    assert_true(a->rope_theta == b->rope_theta);
    assert_true(a->rms_eps == b->rms_eps);
    assert_int_equal(a->bos_token_id, b->bos_token_id);
    assert_int_equal(a->tie_word_embeddings, b->tie_word_embeddings);
    assert_int_equal(a->attn_bias, b->attn_bias);
    assert_int_equal(a->sliding_window, b->sliding_window);
    assert_int_equal(a->act, b->act);
    assert_true(a->attn_softcap == b->attn_softcap);
    assert_true(a->final_softcap == b->final_softcap);
    assert_true(a->query_pre_attn_scalar == b->query_pre_attn_scalar);
    assert_int_equal(a->layer_wise, b->layer_wise);
    assert_int_equal(a->start_layer, b->start_layer);
    assert_int_equal(a->layer_sep, b->layer_sep);
    assert_int_equal(a->dtype, b->dtype);
}

static cJSON *read_json(const char *path) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    assert_non_null(j);
    return j;
}

static const char *jstr(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

static void roundtrip(const char *json, const char *type, const char *cls) {
    mr_config a, b;
    mr_err err = {0};
    char out[160];
    snprintf(out, sizeof out, "%s/saved.json", g_dir);
    assert_int_equal(load_str(&a, json, &err), 0);
    assert_int_equal(mr_config_save(&a, out, &err), 0);
    assert_int_equal(mr_config_load(&b, out, &err), 0);
    assert_config_equal(&a, &b);
    assert_string_equal(b.model_type, type);
    cJSON *j = read_json(out);
    assert_string_equal(jstr(j, "model_type"), type);
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "architectures"), 0)->valuestring,
                        cls);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "use_cache")));
    assert_string_equal(jstr(j, "torch_dtype"), jstr(j, "dtype"));
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "rope_theta")));
    assert_true(cJSON_IsBool(cJSON_GetObjectItem(j, "layer_wise")));
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "start_layer")));
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "layer_sep")));
    cJSON_Delete(j);
}

static void test_roundtrip(void **state) {
    roundtrip(MISTRAL_7B, "mistral", "MistralForCausalLM");
    roundtrip(QWEN2_TF5, "qwen2", "Qwen2ForCausalLM");
    roundtrip(GEMMA2_LIGHT, "gemma2", "Gemma2ForCausalLM");
    /* qwen2 with a live window, llama with bias */
    roundtrip("{\"model_type\":\"qwen2\",\"num_hidden_layers\":2,\"hidden_size\":64,"
              "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100,"
              "\"sliding_window\":512,\"use_sliding_window\":true,\"rms_norm_eps\":1e-5}",
              "qwen2", "Qwen2ForCausalLM");
    roundtrip("{\"model_type\":\"llama\",\"num_hidden_layers\":2,\"hidden_size\":64,"
              "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100,"
              "\"attention_bias\":true,\"rope_theta\":500000.0}", "llama", "LlamaForCausalLM");

    /* the gemma2 file has the keys transformers' Gemma2Config reads */
    char out[160];
    snprintf(out, sizeof out, "%s/saved.json", g_dir);
    cJSON *j = read_json(out);
    cJSON_Delete(j);
    mr_config c;
    mr_err err = {0};
    assert_int_equal(load_str(&c, GEMMA2_LIGHT, &err), 0);
    assert_int_equal(mr_config_save(&c, out, &err), 0);
    j = read_json(out);
    assert_string_equal(jstr(j, "hidden_activation"), "gelu_pytorch_tanh");
    assert_int_equal(cJSON_GetObjectItem(j, "query_pre_attn_scalar")->valueint, 224);
    assert_int_equal(cJSON_GetObjectItem(j, "head_dim")->valueint, 256);
    assert_true(cJSON_GetObjectItem(j, "rms_norm_eps")->valuedouble == 1e-6);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "layer_wise")));
    cJSON_Delete(j);

    /* soft-capping off is written as null (transformers tests "is not None") */
    c.attn_softcap = 0;
    assert_int_equal(mr_config_save(&c, out, &err), 0);
    j = read_json(out);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "attn_logit_softcapping")));
    cJSON_Delete(j);
    mr_config d;
    assert_int_equal(mr_config_load(&d, out, &err), 0);
    assert_config_equal(&c, &d);

    /* save validates */
    c.n_kv_heads = 5;
    assert_int_equal(mr_config_save(&c, out, &err), MR_ERANGE);
    assert_non_null(strstr(err.msg, "num_key_value_heads"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mistral, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qwen2_tf5, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gemma2_lightweight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_configs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gemma2_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_architectures_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsupported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
