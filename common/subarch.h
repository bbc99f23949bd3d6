/* subarch.h: a sub-architecture of one checkpoint: the depth and width a caller picks, plus
 * the named LoRA adapters it runs with (spec sections 4 and 5).
 *
 * This is the one form of the concept. The coordinator's stages hold one (coord_config.h), the
 * worker reads one from each Score request, `mrank score` and `mrank eval` fill one from their
 * flags; rpc/subarch_pb.h converts it to and from the wire message mrank.v1.SubArch. It becomes
 * engine run options (model.h, mr_run_opts) in one place, mr_subarch_to_run_opts, and its cost
 * in token-layers is computed in one place, mr_subarch_token_layers. Plain data, no I/O. */
#ifndef MR_SUBARCH_H
#define MR_SUBARCH_H

#include "model.h"
#include "mr_err.h"

#define MR_SUBARCH_NAME 64      /* adapter names, NUL included */

typedef struct mr_subarch {
    int depth;                           /* exit layer; 0 = the model's deepest exit */
    int ratio;                           /* passage tokens pooled in groups of 1, 2, 4 or 8 */
    int n_compress;
    int compress_layers[MR_MAX_COMPRESS]; /* strictly increasing; pooling happens before each */
    mr_pooling pooling;
    int n_adapters;
    char adapters[MR_MAX_ADAPTERS][MR_SUBARCH_NAME]; /* unmerged adapters applied, by name */
} mr_subarch;

/* The full model: deepest exit, ratio 1, mean pooling, no adapters. */
void mr_subarch_default(mr_subarch *a);

/* "mean" / "attention" <-> mr_pooling. parse returns MR_EINVAL (message names the value) for
 * anything else; "" means mean. */
int mr_pooling_parse(const char *s, mr_pooling *out, mr_err *err);
const char *mr_pooling_name(mr_pooling p);

/* Fills o for a on model m: one exit (a->depth, or the deepest exit when 0), the width
 * schedule, pooling, and the adapter mask. With names (n_names entries, adapter i of the model
 * is names[i]) the mask holds exactly a's adapters, and an unknown name is MR_EINVAL
 * ("unknown adapter 'x' (have: a b)"); with names NULL the mask keeps every unmerged adapter
 * of the model (mr_run_opts_init). o is not checked against m: the caller may add exits or
 * prune steps, then calls mr_run_opts_check once. */
int mr_subarch_to_run_opts(const mr_subarch *a, const mr_model *m, const char *const *names,
                           int n_names, mr_run_opts *o, mr_err *err);

/* Token-layers of one row under a: the sum over executed layers l < depth of the row's width
 * at l, where n_fixed tokens (query and suffix) never shrink and n_passage is pooled by ratio
 * (ceil) at every compress layer <= l. Proportional to the row's linear-layer FLOPs; the
 * coordinator's cost model counts in it. a->depth must be > 0. */
double mr_subarch_token_layers(const mr_subarch *a, int n_fixed, int n_passage);

#endif
