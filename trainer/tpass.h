/* tpass.h: the training pass of the re-ranker: a forward over packed rows that caches every
 * activation the backward needs (tcache.h), all exits scored in one pass at any width
 * (twidth.h), and its backward, which accumulates into the model's gradients (tmodel.h).
 *
 * The forward calls the engine's kernels (common/kernels.h) on the same packed layout as
 * common/forward.c; the backward calls trainer/backward.h. In LoRA mode with lora_dropout > 0
 * the LoRA inputs are dropped with the masks of dropout.h. Attention pooling's weights are
 * taken from the forward's own attention call of the previous layer, as in the engine; the
 * backward treats them as constants (stop-gradient through the attention that produced them):
 * it scatters weight * upstream to the pooled tokens (mr_pool_backward) and sends nothing into
 * the previous layer's queries and keys through the weights.
 *
 * Not here: the losses that turn scores into dscores (loss.h for re-ranking, lm.h for the LM
 * objective), the derivative through the attention pooling weights (stop-gradient, above). */
#ifndef MR_TPASS_H
#define MR_TPASS_H

#include <stdint.h>

#include "model.h"
#include "mr_err.h"
#include "tcache.h"
#include "tmodel.h"
#include "twidth.h"

/* Training-mode forward: scores (n_exits, n_rows) raw exit scores (after the final softcap),
 * activations cached in c for mr_tmodel_backward; scores may be NULL. Rows are checked like
 * mr_model_score. In LoRA mode with lora_dropout > 0 the LoRA inputs are dropped with the
 * masks of (drop_seed, drop_step, pass 0); the backward reuses the masks of the cached pass. */
int mr_tmodel_forward(mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                      const mr_twidth *w, float *scores, mr_err *err);
/* Backward of the last forward given dscores (n_exits, n_rows); accumulates into m->grads. */
void mr_tmodel_backward(mr_tmodel *m, mr_tcache *c, const float *dscores);
/* Same, plus dfinal (n, d): a gradient on the residual after the deepest exit layer (the
 * layout of mr_tcache_final), e.g. from the LM objective (trainer/lm.h). dscores or dfinal
 * may be NULL. */
void mr_tmodel_backward_ex(mr_tmodel *m, mr_tcache *c, const float *dscores,
                           const float *dfinal);

/* trainer-internal: mr_tmodel_forward with the dropout masks of pass (0 student, 1 teacher);
 * loss.c runs the cascade's teacher as pass 1. */
int mr__tmodel_forward_pass(mr_tmodel *m, mr_tcache *c, const mr_row *rows, int n_rows,
                            const mr_twidth *w, float *scores, int pass, mr_err *err);

#endif
