/* loss.c: the re-ranking loss of cascaded self-distillation and one micro-batch of it (see
 * loss.h): the teacher pass, the student pass, the listwise, external-teacher and cascade
 * terms per query group, and the backward of their sum. Not here: the passes themselves
 * (tpass.c), the LM objective (lm.c). */
#include "loss.h"

#include <stdlib.h>
#include <string.h>

#include "backward.h"
#include "kernels.h"
#include "tpass.h"

int mr_tloss_anchor(const mr_tmodel *m, const mr_loss_opts *o, int l) {
    int D = mr_tmodel_deepest(m);
    int k = o->cascade_step > 0 ? o->cascade_step : (D / 4 > 1 ? D / 4 : 1);
    if (k > D) k = D; /* same anchors (every a(l) is D), and k (l + 1 + k - 1) cannot overflow */
    int a = k * ((l + 1 + k - 1) / k);
    if (a > D || l >= D) a = D;
    for (int e = 0; e < m->n_exits; e++) /* round up to an exit layer */
        if (m->exit_layer[e] >= a) return m->exit_layer[e];
    return D;
}

/* Index of the exit head at layer, -1 when no head sits there (not an error: callers pass
 * layers that mr_tloss_anchor returned, which are always exit layers). */
static int exit_index(const mr_tmodel *m, int layer) {
    for (int e = 0; e < m->n_exits; e++)
        if (m->exit_layer[e] == layer) return e;
    return -1;
}

static int full_width(const mr_tmodel *m, const mr_twidth *w) {
    if (w->ratio == 1) return 1;
    for (int i = 0; i < w->n_compress; i++)
        if (w->compress_layers[i] < mr_tmodel_deepest(m)) return 0;
    return 1;
}

int mr_train_micro(mr_tmodel *m, mr_tcache *c, const mr_tbatch *b, const mr_twidth *w,
                   const mr_loss_opts *o, float grad_scale, mr_tloss *loss, mr_err *err) {
    int G = b->G, B = b->n_groups, n_rows = G * B, E = m->n_exits, D = mr_tmodel_deepest(m), rc = 0;
    if (G < 2 || B < 1)
        return mr_err_set(err, MR_EINVAL, "batch: need groups of at least 2 candidates");
    size_t ns = (size_t)E * n_rows;
    float *scores = malloc(sizeof(float) * ns), *teach = malloc(sizeof(float) * ns);
    float *ds = calloc(ns, sizeof(float)), *tp = malloc(sizeof(float) * 2 * (size_t)G);
    if (!scores || !teach || !ds || !tp) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        goto done;
    }
    int cascade = o && o->cascade, full = full_width(m, w);
    float cw = o && o->cascade_weight > 0.0f ? o->cascade_weight : 1.0f;
    if (cascade && !full) {
        mr_twidth fw = {.ratio = 1};
        if ((rc = mr__tmodel_forward_pass(m, c, b->rows, n_rows, &fw, teach, 1, err))) goto done;
    }
    if ((rc = mr_tmodel_forward(m, c, b->rows, n_rows, w, scores, err))) goto done;
    if (cascade && full) memcpy(teach, scores, sizeof(float) * ns); /* detached copy */
    mr_tloss L = {0};
    float wgt = grad_scale / (float)B;
    for (int g = 0; g < B; g++) {
        if (b->teacher) mr_softmax(tp, b->teacher + (size_t)g * G, G);
        for (int e = 0; e < E; e++) {
            if (o && o->deepest_only && m->exit_layer[e] < D) continue;
            size_t at = (size_t)e * n_rows + (size_t)g * G;
            L.ce += mr_softmax_xent(ds + at, scores + at, NULL, G, wgt);
            if (b->teacher) L.ext += mr_softmax_xent(ds + at, scores + at, tp, G, wgt);
        }
        if (!cascade) continue;
        for (int e = 0; e < E; e++) {
            if (m->exit_layer[e] >= D) continue;
            int a = exit_index(m, mr_tloss_anchor(m, o, m->exit_layer[e]));
            float *ttp = tp + G; /* tp[0..G) holds the external teacher's targets */
            mr_softmax(ttp, teach + (size_t)a * n_rows + (size_t)g * G, G);
            size_t at = (size_t)e * n_rows + (size_t)g * G;
            L.cascade += mr_softmax_xent(ds + at, scores + at, ttp, G, wgt * cw);
        }
    }
    L.ce /= B, L.ext /= B, L.cascade /= B;
    L.total = L.ce + L.ext + cw * L.cascade;
    if (loss) *loss = L;
    mr_tmodel_backward(m, c, ds);
done:
    free(scores), free(teach), free(ds), free(tp);
    return rc;
}
