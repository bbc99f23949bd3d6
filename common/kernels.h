/* kernels.h: the fp32 CPU kernels of the forward pass, on packed variable-length rows.
 *
 * Activations are packed: row r occupies tokens [off[r], off[r] + len[r]) of a (n_tok, dim)
 * row-major buffer; there is no padding. mr_matmul_wt is OpenBLAS (LoRA, the trainer, the
 * openblas-f32 path; the layers' GEMMs go through gemm.h's chosen path); everything else is
 * plain C the compiler vectorises, parallel over tokens or (row, head) with OpenMP.
 * Each kernel reads and writes caller-owned buffers and allocates nothing. Forward only: the
 * matching backward kernels are in trainer/backward.c, the GPU ones in common/cuda/. */
#ifndef MR_KERNELS_H
#define MR_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* y (n, out) = x (n, in) . W^T, W (out, in) row-major f32; beta 0 overwrites, 1 accumulates. */
void mr_matmul_wt(float *y, const float *x, const float *w, int n, int in, int out, float beta);

/* y (n, d) = x * rsqrt(mean(x^2) + eps) * (w + w_offset); w_offset is 1 for Gemma's (1+w). */
void mr_rmsnorm(float *y, const float *x, const float *w, int n, int d, float eps, float w_offset);

/* RoPE (rotate-half convention) in place on x (n_tok, n_heads * head_dim); pos (n_tok) gives
 * each token's position; cos_sin (max_pos, head_dim/2, 2) from mr_rope_table. */
void mr_rope(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
             const float *cos_sin);
/* The inverse rotation, in place: RoPE's backward (trainer/tpass.c) on a gradient. */
void mr_rope_inverse(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
                     const float *cos_sin);
void mr_rope_table(float *cos_sin, int max_pos, int head_dim, double theta);

/* Attention arguments, packed rows (see top). */
typedef struct mr_attn_args {
    const float *q;        /* (n_q, n_heads * head_dim), queries, RoPE applied */
    const float *k, *v;    /* (n_tok, n_kv * head_dim) */
    float *out;            /* (n_q, n_heads * head_dim) */
    const int32_t *off;    /* (n_rows) first token of each row in k/v */
    const int32_t *len;    /* (n_rows) tokens per row */
    const int32_t *q_off;  /* (n_rows) first query of each row in q/out; NULL = off */
    const int32_t *q_from; /* (n_rows) position in the row of the first query; NULL = 0
                              (n queries per row = len - q_from) */
    const int32_t *pre_off, *pre_len; /* (n_rows) NULL = none; else row r's keys are first the
                              pre_len[r] tokens of a shared prefix at pre_off[r] in k/v, then its
                              own len[r] tokens: its token i sits at position pre_len[r] + i.
                              last_probs covers the row's own tokens only */
    int n_rows, n_heads, n_kv, head_dim;
    float scale;           /* logit scale, 1/sqrt(head_dim) or 1/sqrt(query_pre_attn_scalar) */
    float softcap;         /* 0 = off; else logits = softcap * tanh(logits / softcap) */
    int window;            /* 0 = off; else keys with q_pos - k_pos >= window are masked */
    float *last_probs;     /* optional (n_tok): attention of each row's last query to each of
                              its keys, summed over heads (for attention-weighted pooling) */
    float *scratch;        /* mr_attention_scratch(max_len, head_dim) floats */
    int max_len;           /* longest row, shared prefix included */
} mr_attn_args;
void mr_attention(const mr_attn_args *a);
/* Floats of scratch mr_attention needs for rows of up to max_len tokens (all threads). */
size_t mr_attention_scratch(int max_len, int head_dim);

/* Width compression (matryoshka-method.md section 5): each row's passage tokens pooled in
 * consecutive groups of r. Rows in: off/nq/np/ns (n_rows), tokens [query nq | passage np |
 * suffix ns] of x (n_in, d). Out: rows packed from 0 in the same order into y as
 * [query | ceil(np/r) group vectors | suffix]; new_off/new_np (n_rows, may alias off/np) receive
 * the layout. weights (n_in) NULL = plain means; else a group's vector is sum w_t x_t / sum w_t
 * (the mean when its weights sum to 0). y may equal x (tokens only move towards the start) when
 * tmp (d) is given; tmp may be NULL when y does not alias x. Returns the number of tokens out. */
int mr_pool(float *y, const float *x, const int32_t *off, const int32_t *nq, const int32_t *np,
            const int32_t *ns, int n_rows, int d, int r, const float *weights, float *tmp,
            int32_t *new_off, int32_t *new_np);

/* out (n, d) = act(gate) * up, act = SiLU or tanh-approximated GELU. May alias gate. */
void mr_swiglu(float *out, const float *gate, const float *up, size_t n);
void mr_geglu_tanh(float *out, const float *gate, const float *up, size_t n);

/* x (n, d) += y (n, d) */
void mr_add(float *x, const float *y, size_t n);

/* Dot product of two length-d vectors in double accumulation. */
float mr_dot(const float *a, const float *b, int d);

#endif
