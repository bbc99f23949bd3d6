/* backward.h: the backward kernels of the trainer, one per forward op of the engine, on the
 * same packed variable-length rows as common/kernels.h (row r: tokens [off[r], off[r]+len[r])).
 *
 * Each mr_x_backward sits beside the engine's mr_x forward (common/kernels.c) and takes the
 * forward's inputs (saved by the caller) plus dy; it never recomputes anything with a second
 * copy of a forward kernel except where noted (attention recomputes its softmax from q, k, v,
 * with the same float arithmetic as mr_attention). Every backward ACCUMULATES into its
 * gradient outputs (+=); callers zero gradients once per step. Gradient pointers may be NULL
 * when that gradient is not wanted (frozen weights). Nothing here allocates.
 *
 * Also here: the few forward helpers the engine has no public kernel for (mean pooling of
 * passage groups, the exit head score, the unmerged LoRA update, the softmax cross-entropy of
 * the listwise loss); each is a composition of common/kernels.h calls or a few lines with no
 * forward counterpart in common/. Callers: trainer/tpass.c, trainer/loss.c, trainer/lm.c,
 * tests/test_train_grad.c. */
#ifndef MR_BACKWARD_H
#define MR_BACKWARD_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* ---- linear: y (n, out) = x (n, in) W^T (+ b) -- forward is mr_matmul_wt ---- */
/* dx (n, in) += dy (n, out) W; dw (out, in) += dy^T x; db (out) += sum_n dy. Any may be NULL. */
void mr_matmul_wt_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, int n, int in, int out);

/* ---- RMSNorm: y = x * rsqrt(mean(x^2) + eps) * (w + w_offset) -- forward mr_rmsnorm ---- */
/* dx (n, d) += ..., dw (d) += ...; x is the forward input. dx must not alias dy. */
void mr_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                         int n, int d, float eps, float w_offset);

/* ---- RoPE -- forward mr_rope: the backward is its inverse rotation, mr_rope_inverse
 * (common/kernels.h), in place on the gradient ---- */

/* ---- attention -- forward mr_attention ---- */
/* Floats of scratch mr_attention_backward needs: (n_threads, 2 * max_len). */
size_t mr_attention_backward_scratch(int max_len);
/* a: the forward's arguments (q after RoPE, k after RoPE, v, out = the forward output, layout,
 * scale, softcap, window; a->scratch is ignored, scratch is used instead). dout like a->out.
 * dq (like q), dk, dv (like k, v) accumulate. Parallel over (row, kv head): GQA heads sharing
 * a kv head run in one work item, so dk/dv need no atomics. */
void mr_attention_backward(const mr_attn_args *a, const float *dout, float *dq, float *dk,
                           float *dv, float *scratch);

/* ---- gated activations: out = act(gate) * up -- forward mr_swiglu / mr_geglu_tanh ---- */
/* dgate, dup (n) += ...; may not alias dout. */
void mr_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                        const float *up, size_t n);
void mr_geglu_tanh_backward(float *dgate, float *dup, const float *dout, const float *gate,
                            const float *up, size_t n);

/* ---- embedding: x[t] = scale * E[ids[t]] ---- */
/* dE (vocab, d) += scale * dx[t] at row ids[t]. Serial (ids repeat). */
void mr_embedding_backward(float *dE, const float *dx, const int32_t *ids, int n_tok, int d,
                           float scale);

/* ---- pooling of passage groups (width compression, matryoshka-method.md section 5) ---- */
/* The forward is the engine's mr_pool (kernels.h) with weights NULL (means) or given.
 * dx (n_in, d) += scatter of dy (n_out, d); layouts as given to / returned by mr_pool. With
 * weights (n_in) each token of a group gets w_t dy_g, w_t normalised exactly as mr_pool does;
 * the weights are constants (no gradient into them). */
void mr_pool_backward(float *dx, const float *dy, const int32_t *off, const int32_t *nq,
                      const int32_t *np, const int32_t *ns, int n_rows, int d, int r,
                      const float *weights, const int32_t *new_off);

/* ---- exit head: s = cap * tanh((rmsnorm(x, fnorm) . head) / cap) (cap 0 = off) ---- */
/* x (d): the residual at the row's last token; xn (d) receives the normed vector. */
float mr_exit_head(float *xn, const float *x, const float *fnorm, const float *head, int d,
                   float eps, float w_offset, float cap);
/* ds: dLoss/ds; s: the forward score. dx (d), dfnorm (d), dhead (d) accumulate (NULL ok). */
void mr_exit_head_backward(float *dx, float *dfnorm, float *dhead, float ds, float s,
                           const float *x, const float *fnorm, const float *head, int d,
                           float eps, float w_offset, float cap);

/* ---- LoRA: y (n, out) += scale * (x A^T) B^T, A (rank, in), B (out, rank) ---- */
/* t (n, rank) receives x A^T (unscaled), which the backward needs. */
void mr_lora(float *y, float *t, const float *x, const float *A, const float *B, int n, int in,
             int out, int rank, float scale);
/* dt (n, rank) is scratch. dx (n, in), dA, dB accumulate (dx may be NULL). */
void mr_lora_backward(float *dx, float *dA, float *dB, const float *dy, const float *x,
                      const float *t, const float *A, const float *B, int n, int in, int out,
                      int rank, float scale, float *dt);

/* ---- listwise softmax cross-entropy over G scores ---- */
/* Returns -sum_j target[j] log softmax(s)[j] (target: G probabilities; NULL = one-hot at 0,
 * the positive) and adds weight * (softmax(s) - target) to ds (G). */
double mr_softmax_xent(float *ds, const float *s, const float *target, int G, float weight);
/* p (G) = softmax(s) in double accumulation (teacher targets). */
void mr_softmax(float *p, const float *s, int G);

#endif
