/* loss.h: the re-ranking loss of cascaded self-distillation (matryoshka-method.md section 6)
 * and one training micro-batch of it: per query group of G candidates (positive first), the
 * listwise softmax cross-entropy at every exit, optionally against an external teacher's
 * scores, plus the cascade term that distils each exit towards the full-width scores of its
 * anchor exit; then the backward of the total.
 *
 * Not here: the passes it runs (tpass.h), the width sampling of section 6 (twidth.h), the LM
 * objective of the pre-training stage (lm.h), the optimizer (adamw.h). Callers:
 * cli/cmd_train.c, tests/test_train_model.c. */
#ifndef MR_LOSS_H
#define MR_LOSS_H

#include "model.h"
#include "mr_err.h"
#include "tcache.h"
#include "tmodel.h"
#include "twidth.h"

/* A micro-batch: n_groups queries of G candidates each, rows [g*G, (g+1)*G), positive first. */
typedef struct mr_tbatch {
    const mr_row *rows;     /* (n_groups * G) */
    int n_groups, G;
    const float *teacher;   /* (n_groups * G) external teacher scores, or NULL */
} mr_tbatch;

typedef struct mr_loss_opts {
    int cascade;            /* 1: cascade term from a full-width teacher pass */
    int cascade_step;       /* anchor spacing k: a(l) = min(D, k ceil((l+1)/k)), rounded up to
                               an exit layer; 0 -> max(1, D/4) (8 for 32 layers, as the paper) */
    int deepest_only;       /* 1: listwise and teacher terms at the deepest exit only (the
                               full-depth baseline of the ablation; other heads get no gradient) */
    float cascade_weight;   /* weight of the cascade term in the total (the spec: 1); 0 -> 1 */
} mr_loss_opts;

/* Anchor exit layer a(l) of exit layer l (l < D) under o; D for l = D. */
int mr_tloss_anchor(const mr_tmodel *m, const mr_loss_opts *o, int l);

typedef struct mr_tloss {
    double total;           /* all terms (the cascade one weighted), averaged over queries */
    double ce, ext, cascade;/* the three parts (sums over exits, averaged over queries) */
} mr_tloss;

/* One micro-batch: teacher pass at full width (when o->cascade and w is not full width; at
 * full width the student's own scores, detached, are the teacher), student pass at width w,
 * loss, backward with the loss multiplied by grad_scale (1 / accumulation steps). With LoRA
 * dropout the teacher pass draws its own masks (pass 1), as a train-mode forward would. o and
 * loss may be NULL. A non-finite loss is reported in *loss, not as an error. */
int mr_train_micro(mr_tmodel *m, mr_tcache *c, const mr_tbatch *b, const mr_twidth *w,
                   const mr_loss_opts *o, float grad_scale, mr_tloss *loss, mr_err *err);

#endif
