/* release.c: the released BAAI checkpoints mrank serves by name, and their seeded stand-ins
 * (see release.h).
 *
 * Facts and where they come from (also in docs/checkpoints.md):
 * - bge-reranker-v2.5-gemma2-lightweight: config.json keys and values as published at
 *   https://huggingface.co/BAAI/bge-reranker-v2.5-gemma2-lightweight/raw/559ec8e722f3b7de52930c47be788e6b97d1dfa7/config.json
 *   (also blob baaa0703b7d20d365b9137470676b2ce81110196); weights in four shards
 *   model-0000{1..4}-of-00004.safetensors (9.81 + 9.9 + 9.92 + 7.34 GB: float32, as its
 *   torch_dtype says) with model.safetensors.index.json (tree of revision bac849b81e49).
 *   No adapters: its compression ability is trained into the weights.
 * - Matroyshka-ReRanker-passage: the published config.json was not found. The text below is
 *   mistralai/Mistral-7B-v0.1's published config.json with the keys of the authors'
 *   CostWiseMistralConfig (FlagEmbedding research/Matroyshka_reranker/.../mistral_config.py:
 *   model_type cost_wise_mistral, start_layer, layer_sep, layer_wise) set as their README's
 *   training command sets them (--start_layer 4 --layer_sep 1 --layer_wise True), and the
 *   architectures entry their inference code loads (CostWiseMistralForCausalLM). The README
 *   loads the compensation adapter from <download>/compensate/layer/full; its LoRA settings
 *   come from the same command (--lora_rank 32 --lora_alpha 64, target modules q/k/v/o,
 *   gate/up/down and linear_head) and arguments.py (lora_dropout default 0.1). Shard count,
 *   storage dtype and the token-compression adapters' folder names were not found: written as
 *   two shards (as the base model ships) in the caller's dtype, vertical adapter only. */
#include "release.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "lora.h"
#include "seeded.h"
#include "tokenizer.h"

static const char GEMMA2_LIGHTWEIGHT_CONFIG[] =
    "{\n"
    "  \"_name_or_path\": \"BAAI/bge-reranker-v2.5-gemma2-lightweight\",\n"
    "  \"architectures\": [\n"
    "    \"CostWiseGemmaForCausalLM\"\n"
    "  ],\n"
    "  \"auto_map\": {\n"
    "    \"AutoConfig\": \"BAAI/bge-reranker-v2.5-gemma2-lightweight--gemma_config.CostWiseGemmaConfig\",\n"
    "    \"AutoModel\": \"BAAI/bge-reranker-v2.5-gemma2-lightweight--gemma_model.CostWiseGemmaModel\",\n"
    "    \"AutoModelForCausalLM\": \"BAAI/bge-reranker-v2.5-gemma2-lightweight--gemma_model.CostWiseGemmaForCausalLM\"\n"
    "  },\n"
    "  \"attention_bias\": false,\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"attn_logit_softcapping\": 50.0,\n"
    "  \"bos_token_id\": 2,\n"
    "  \"cache_implementation\": \"hybrid\",\n"
    "  \"eos_token_id\": 1,\n"
    "  \"final_logit_softcapping\": 30.0,\n"
    "  \"head_dim\": 256,\n"
    "  \"hidden_act\": \"gelu_pytorch_tanh\",\n"
    "  \"hidden_activation\": \"gelu_pytorch_tanh\",\n"
    "  \"hidden_size\": 3584,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 14336,\n"
    "  \"layer_sep\": 1,\n"
    "  \"layer_wise\": true,\n"
    "  \"max_position_embeddings\": 8192,\n"
    "  \"model_type\": \"cost_wise_gemma\",\n"
    "  \"num_attention_heads\": 16,\n"
    "  \"num_hidden_layers\": 42,\n"
    "  \"num_key_value_heads\": 8,\n"
    "  \"pad_token_id\": 0,\n"
    "  \"query_pre_attn_scalar\": 256,\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_theta\": 10000.0,\n"
    "  \"sliding_window\": 4096,\n"
    "  \"sliding_window_size\": 4096,\n"
    "  \"start_layer\": 8,\n"
    "  \"torch_dtype\": \"float32\",\n"
    "  \"transformers_version\": \"4.42.2\",\n"
    "  \"use_cache\": true,\n"
    "  \"vocab_size\": 256000\n"
    "}\n";

static const char MATROYSHKA_PASSAGE_CONFIG[] =
    "{\n"
    "  \"architectures\": [\n"
    "    \"CostWiseMistralForCausalLM\"\n"
    "  ],\n"
    "  \"bos_token_id\": 1,\n"
    "  \"eos_token_id\": 2,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 4096,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 14336,\n"
    "  \"layer_sep\": 1,\n"
    "  \"layer_wise\": true,\n"
    "  \"max_position_embeddings\": 32768,\n"
    "  \"model_type\": \"cost_wise_mistral\",\n"
    "  \"num_attention_heads\": 32,\n"
    "  \"num_hidden_layers\": 32,\n"
    "  \"num_key_value_heads\": 8,\n"
    "  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_theta\": 10000.0,\n"
    "  \"sliding_window\": 4096,\n"
    "  \"start_layer\": 4,\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.34.0.dev0\",\n"
    "  \"use_cache\": true,\n"
    "  \"vocab_size\": 32000\n"
    "}\n";

static const mr_release releases[] = {
    {.name = "bge-reranker-v2.5-gemma2-lightweight",
     .repo = "BAAI/bge-reranker-v2.5-gemma2-lightweight",
     .config_json = GEMMA2_LIGHTWEIGHT_CONFIG,
     .config_source = "https://huggingface.co/BAAI/bge-reranker-v2.5-gemma2-lightweight/raw/"
                      "559ec8e722f3b7de52930c47be788e6b97d1dfa7/config.json",
     .config_published = 1, .dtype = MR_DT_F32, .shards = 4,
     .tokenizer = "third_party/tokenizers/gemma3/tokenizer.json",
     .tokenizer_note = "tokenizer.json is Gemma 3's (262144 ids), a stand-in for the release's "
                       "Gemma 2 tokenizer (256000 ids): the same text gets other ids than with "
                       "the release's file, and an id >= 256000 is refused when scoring"},
    {.name = "matroyshka-reranker-passage",
     .repo = "BAAI/Matroyshka-ReRanker-passage",
     .config_json = MATROYSHKA_PASSAGE_CONFIG,
     .config_source = "reconstructed: mistralai/Mistral-7B-v0.1 config.json with the "
                      "CostWiseMistralConfig keys of FlagEmbedding research/Matroyshka_reranker "
                      "(the release's own config.json was not found)",
     .config_published = 0, .dtype = MR_DT_BF16, .shards = 0,
     .tokenizer = "third_party/tokenizers/llama2/tokenizer.json",
     .tokenizer_note = "tokenizer.json is Llama 2's (32000 ids), a stand-in for Mistral's "
                       "(also 32000 ids and SentencePiece BPE with byte fallback, but another "
                       "vocabulary: the same text gets other ids than with the release's file)",
     .n_adapters = 1,
     .adapters = {{.name = "vert", .subdir = "compensate/layer/full", .rank = 32, .alpha = 64,
                   .dropout = 0.1f}}},
};

const mr_release *mr_release_find(const char *name) {
    for (size_t i = 0; name && i < sizeof releases / sizeof releases[0]; i++)
        if (strcmp(releases[i].name, name) == 0) return &releases[i];
    return NULL;
}

const char *mr_release_names(void) {
    return "bge-reranker-v2.5-gemma2-lightweight|matroyshka-reranker-passage";
}

/* mkdir -p for a path inside dir. */
static int make_dirs(const char *path, mr_err *err) {
    char buf[1100];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p != '/' && *p) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return mr_err_errno(err, "mkdir %s", buf);
        if (!(*p = c)) return 0;
    }
}

static int write_config(const mr_release *r, const char *path, mr_err *err) {
    FILE *f = fopen(path, "wb");
    int ok = f && fputs(r->config_json, f) >= 0;
    if (!f || fclose(f) || !ok) return mr_err_errno(err, "write %s", path);
    return 0;
}

/* The tokenizer's BOS must be the config's, or every row would start with a wrong id. */
static int check_tokenizer(const mr_config *c, const char *path, int32_t *n_ids, mr_err *err) {
    mr_tokenizer *tok = NULL;
    int rc = mr_tokenizer_new(&tok, path, err);
    if (rc) return rc;
    int32_t bos = mr_tokenizer_token_id(tok, c->arch == MR_ARCH_GEMMA2 ? "<bos>" : "<s>");
    *n_ids = mr_tokenizer_vocab_size(tok);
    mr_tokenizer_free(tok);
    if (bos != c->bos_token_id)
        return mr_err_set(err, MR_EINVAL, "%s: BOS token has id %d, the release's config.json "
                          "says bos_token_id %d", path, bos, c->bos_token_id);
    return 0;
}

/* Seeded PEFT adapter for every target module of c: q/k/v/o and gate/up/down of every layer
 * and each exit head's linear_head. A and B are non-zero (a trained compensation adapter is),
 * sized so that scale * B A x is a few percent of W x. */
static int write_adapter(const mr_config *c, const mr_release_adapter *ad, const char *dir,
                         uint64_t seed, mr_dtype dt, mr_err *err) {
    int64_t d = c->d_model, q = (int64_t)c->n_heads * c->head_dim,
            kv = (int64_t)c->n_kv_heads * c->head_dim, ff = c->d_ff;
    static const char *const proj[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                       "mlp.down_proj"};
    const int64_t pin[] = {d, d, d, q, d, d, ff}, pout[] = {q, kv, kv, d, ff, ff, d};
    int n_heads = (c->n_layers - c->start_layer) / c->layer_sep + 1;
    int n = c->n_layers * 7 + n_heads, rc = 0;
    char **names = calloc((size_t)n, sizeof *names);
    float **A = calloc((size_t)n, sizeof *A), **B = calloc((size_t)n, sizeof *B);
    int64_t *in = calloc((size_t)n, sizeof *in), *out = calloc((size_t)n, sizeof *out);
    char tname[200];
    if (!names || !A || !B || !in || !out) rc = MR_ENOMEM;
    for (int i = 0; i < n && !rc; i++) {
        names[i] = malloc(64);
        if (!names[i]) { rc = MR_ENOMEM; break; }
        if (i < c->n_layers * 7) {
            snprintf(names[i], 64, "model.layers.%d.%s", i / 7, proj[i % 7]);
            in[i] = pin[i % 7];
            out[i] = pout[i % 7];
        } else {
            snprintf(names[i], 64, "lm_head.%d.linear_head", i - c->n_layers * 7);
            in[i] = d;
            out[i] = 1;
        }
        A[i] = malloc(sizeof(float) * (size_t)(ad->rank * in[i]));
        B[i] = malloc(sizeof(float) * (size_t)(out[i] * ad->rank));
        if (!A[i] || !B[i]) { rc = MR_ENOMEM; break; }
        snprintf(tname, sizeof tname, "%s/%s.lora_A", ad->subdir, names[i]);
        mr_seeded_fill(A[i], (size_t)(ad->rank * in[i]), seed, tname, 0, 0.01f);
        snprintf(tname, sizeof tname, "%s/%s.lora_B", ad->subdir, names[i]);
        mr_seeded_fill(B[i], (size_t)(out[i] * ad->rank), seed, tname, 0, 0.01f);
    }
    if (rc)
        rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory for the adapter", dir);
    else
        rc = mr_adapter_save(dir, ad->rank, ad->alpha, ad->dropout, n,
                             (const char *const *)names, in, out, (const float *const *)A,
                             (const float *const *)B, dt, err);
    for (int i = 0; names && A && B && i < n; i++) {
        free(names[i]);
        free(A[i]);
        free(B[i]);
    }
    free(names);
    free(A);
    free(B);
    free(in);
    free(out);
    return rc;
}

int mr_release_write(const mr_release *r, const char *dir, const char *tokenizer_json,
                     uint64_t seed, mr_dtype dt, int shards, mr_err *err) {
    char path[1100], note[1024];
    mr_config c;
    int32_t n_ids = 0;
    int rc;
    if (strlen(dir) > 900) return mr_err_set(err, MR_EINVAL, "--out: path too long");
    if ((rc = make_dirs(dir, err))) return rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    /* the config is loaded back with the engine's own reader: the shapes of the weights come
     * from what a user's download would say */
    if ((rc = write_config(r, path, err)) || (rc = mr_config_load(&c, path, err)) ||
        (rc = check_tokenizer(&c, tokenizer_json, &n_ids, err)))
        return rc;
    c.dtype = dt;
    if (shards <= 0) shards = r->shards > 0 ? r->shards : 2;
    int len = snprintf(note, sizeof note,
                       "release stand-in: %s (%s)\nconfig.json: %s\nweights: stored as %s in "
                       "%d file(s); the release stores %s%s\n%s%s\n",
                       r->repo, r->name, r->config_source, mr_dtype_name(dt), shards,
                       r->shards ? mr_dtype_name(r->dtype) : "(dtype not found)",
                       r->shards ? "" : ", shard count not found", r->tokenizer_note,
                       n_ids > c.vocab_size ? " (this tokenizer has ids beyond vocab_size)" : "");
    for (int i = 0; i < r->n_adapters && len > 0 && (size_t)len < sizeof note; i++)
        len += snprintf(note + len, sizeof note - (size_t)len,
                        "adapter %s: %s, seeded (r %d, alpha %g)\n", r->adapters[i].name,
                        r->adapters[i].subdir, r->adapters[i].rank, r->adapters[i].alpha);
    if ((rc = mr_seeded_mark(dir, seed, note, err)) ||
        (rc = mr_seeded_write_weights(&c, dir, seed, shards, err)))
        return rc;
    for (int i = 0; i < r->n_adapters && !rc; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, r->adapters[i].subdir);
        if (!(rc = make_dirs(path, err)))
            rc = write_adapter(&c, &r->adapters[i], path, seed, dt, err);
    }
    return rc;
}
