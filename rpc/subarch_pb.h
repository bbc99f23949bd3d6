/* subarch_pb.h: the sub-architecture (common/subarch.h) to and from its wire message
 * mrank.v1.SubArch: the only place the two forms meet. The coordinator writes it into Score
 * requests and Info answers; the worker reads it from Score requests. */
#ifndef MR_SUBARCH_PB_H
#define MR_SUBARCH_PB_H

#include "mrank.pb-c.h"
#include "subarch.h"

/* A wire SubArch and the arrays it points into; valid while the source mr_subarch lives. */
typedef struct mr_subarch_pb {
    Mrank__V1__SubArch msg;
    uint32_t compress_layers[MR_MAX_COMPRESS];
    char *adapters[MR_MAX_ADAPTERS];
} mr_subarch_pb;

/* Fills pb from a (a must outlive pb->msg). Cannot fail. */
void mr_subarch_to_pb(mr_subarch_pb *pb, const mr_subarch *a);

/* Reads m (NULL: the default sub-architecture) into a. Checks only what the wire can get
 * wrong: list sizes, names and the pooling word (MR_EINVAL/MR_ERANGE, message names the
 * field); layer numbers are clamped to 100000 and checked against the model later
 * (mr_run_opts_check). */
int mr_subarch_from_pb(mr_subarch *a, const Mrank__V1__SubArch *m, mr_err *err);

#endif
