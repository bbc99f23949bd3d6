/* subarch_pb.c: mr_subarch <-> mrank.v1.SubArch (see subarch_pb.h). */
#include "subarch_pb.h"

#include <string.h>

#define MAX_LAYER 100000u       /* far above any model; keeps layer numbers inside int */

void mr_subarch_to_pb(mr_subarch_pb *pb, const mr_subarch *a) {
    mrank__v1__sub_arch__init(&pb->msg);
    pb->msg.depth = (uint32_t)a->depth;
    pb->msg.compress_ratio = (uint32_t)a->ratio;
    for (int i = 0; i < a->n_compress; i++)
        pb->compress_layers[i] = (uint32_t)a->compress_layers[i];
    pb->msg.n_compress_layers = (size_t)a->n_compress;
    pb->msg.compress_layers = pb->compress_layers;
    pb->msg.pooling = (char *)mr_pooling_name(a->pooling);
    for (int i = 0; i < a->n_adapters; i++) pb->adapters[i] = (char *)a->adapters[i];
    pb->msg.n_adapters = (size_t)a->n_adapters;
    pb->msg.adapters = pb->adapters;
}

static int clamp_layer(uint32_t l) { return (int)(l > MAX_LAYER ? MAX_LAYER : l); }

int mr_subarch_from_pb(mr_subarch *a, const Mrank__V1__SubArch *m, mr_err *err) {
    mr_subarch_default(a);
    if (!m) return 0;
    a->depth = clamp_layer(m->depth);
    if (m->compress_ratio > 64)   /* refused by its own value, not a clamped one */
        return mr_err_set(err, MR_EINVAL, "compress_ratio %u is not 1, 2, 4 or 8",
                          m->compress_ratio);
    a->ratio = m->compress_ratio ? (int)m->compress_ratio : 1;
    if (m->n_compress_layers > MR_MAX_COMPRESS)
        return mr_err_set(err, MR_ERANGE, "more than %d compress_layers", MR_MAX_COMPRESS);
    for (size_t i = 0; i < m->n_compress_layers; i++)
        a->compress_layers[a->n_compress++] = clamp_layer(m->compress_layers[i]);
    int rc = mr_pooling_parse(m->pooling, &a->pooling, err);
    if (rc) return rc;
    if (m->n_adapters > MR_MAX_ADAPTERS)
        return mr_err_set(err, MR_ERANGE, "more than %d adapters", MR_MAX_ADAPTERS);
    for (size_t i = 0; i < m->n_adapters; i++) {
        const char *name = m->adapters[i];
        if (!name || !*name || strlen(name) >= MR_SUBARCH_NAME)
            return mr_err_set(err, MR_EINVAL, "adapters[%zu]: empty or longer than %d bytes", i,
                              MR_SUBARCH_NAME - 1);
        memcpy(a->adapters[a->n_adapters++], name, strlen(name) + 1);
    }
    return 0;
}
