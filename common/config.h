/* config.h: model hyper-parameters read from a Hugging Face config.json and validated.
 *
 * Understands Mistral/Llama, Qwen2 and Gemma2 configs, including the Matryoshka / layer-wise
 * model types (cost_wise_mistral, cost_wise_gemma, layerwise minicpm-style keys layer_wise,
 * start_layer, layer_sep), rope_theta at top level or inside rope_parameters, and dtype given
 * as torch_dtype or dtype. Errors name the file and the key. Writing is used by
 * `mrank init-checkpoint` (seeded.c) and the trainer. Not a weights reader: tensor shapes are
 * checked against these numbers in model.c. */
#ifndef MR_CONFIG_H
#define MR_CONFIG_H

#include "mr_err.h"
#include "safetensors.h"

typedef enum mr_arch { MR_ARCH_LLAMA = 0, MR_ARCH_QWEN2 = 1, MR_ARCH_GEMMA2 = 2 } mr_arch;
typedef enum mr_act { MR_ACT_SILU = 0, MR_ACT_GELU_TANH = 1 } mr_act;

typedef struct mr_config {
    mr_arch arch;               /* llama covers mistral and cost_wise_mistral */
    char model_type[64];        /* as written in config.json */
    int n_layers;               /* num_hidden_layers */
    int d_model;                /* hidden_size */
    int n_heads;                /* num_attention_heads */
    int n_kv_heads;             /* num_key_value_heads (defaults to n_heads) */
    int head_dim;               /* head_dim (defaults to d_model / n_heads) */
    int d_ff;                   /* intermediate_size */
    int vocab_size;
    int max_pos;                /* max_position_embeddings */
    float rope_theta;           /* default 10000 */
    float rms_eps;              /* rms_norm_eps, default 1e-6 */
    int bos_token_id;           /* default 1 */
    int tie_word_embeddings;
    int attn_bias;              /* q/k/v have bias (qwen2: true) */
    int sliding_window;         /* 0 = none; gemma2 applies it on even layers, mistral on all */
    mr_act act;                 /* from hidden_act / hidden_activation */
    /* gemma2 only (0 = off) */
    float attn_softcap;         /* attn_logit_softcapping, 50 */
    float final_softcap;        /* final_logit_softcapping, 30 */
    float query_pre_attn_scalar;/* attention scale = 1/sqrt(this); 0 -> head_dim */
    /* layer-wise exit heads */
    int layer_wise;             /* config key layer_wise (0/1); the loader finds the exit heads
                                   lm_head.{k}.linear_head by name, whatever it says */
    int start_layer;            /* first exit layer (>= 1) */
    int layer_sep;              /* exit every layer_sep layers, default 1 */
    mr_dtype dtype;             /* torch_dtype / dtype; storage type, default f32 */
} mr_config;

/* Reads and validates DIR/config.json (path names the file itself); on error c is zeroed.
 * mr_config owns nothing, so there is no close. */
int mr_config_load(mr_config *c, const char *path, mr_err *err);
/* Validation alone (ranges, divisibility, exits); used by load and by writers. */
int mr_config_validate(const mr_config *c, const char *path, mr_err *err);
/* Writes c as an HF config.json the transformers library loads (model_type mistral, qwen2
 * or gemma2 with the extra layer-wise keys). */
int mr_config_save(const mr_config *c, const char *path, mr_err *err);

#endif
