/* lm.h: the causal-LM pre-training objective of `mrank train --stage lm`: next-token
 * cross-entropy through the tied LM head (the embedding matrix E), on the final hidden states
 * of the training pass (tpass.h, full width, every layer).
 *
 *   logits_t = rmsnorm(h_t, final_norm) E^T        (vocab)
 *   loss     = sum_t -log softmax(logits_t)[target_t]  over tokens with a target
 *
 * The projection is the engine's mr_matmul_wt and its backward trainer/backward.c's linear
 * backward; the logits are computed in chunks of tokens, so memory is (chunk, vocab). Gemma2's
 * final logit softcap is not applied (the pre-training stage targets llama-style models). */
#ifndef MR_LM_H
#define MR_LM_H

#include <stdint.h>

#include "mr_err.h"
#include "tcache.h"
#include "tmodel.h"

/* Loss of hidden states x (n, d) against targets (n; < 0 = no target). Adds
 * wgt * dLoss/d(.) into dx (n, d), dfnorm (d) and dE (vocab, d) (any may be NULL).
 * Stores the summed loss (not weighted) in *loss and the number of targets in *n_targets
 * (either may be NULL). MR_ENOMEM for the logits' scratch, nothing accumulated then; a
 * non-finite loss is a result, not an error. */
int mr_lm_xent(const float *x, int n, const int32_t *targets, const float *fnorm,
               const float *E, int vocab, int d, float eps, float w_offset, float wgt,
               float *dx, float *dfnorm, float *dE, double *loss, int *n_targets, mr_err *err);

/* One micro-batch of n_seqs token sequences (each >= 2 tokens, at most m->max_len): forward
 * through all layers at full width, mean next-token loss over the micro-batch, backward with
 * the loss scaled by grad_scale (gradients accumulate in m->grads; full mode only).
 * *loss receives the mean loss (nats per token). */
int mr_lm_micro(mr_tmodel *m, mr_tcache *c, const int32_t *const *seqs, const int *lens,
                int n_seqs, float grad_scale, double *loss, mr_err *err);

#endif
