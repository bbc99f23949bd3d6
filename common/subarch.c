/* subarch.c: the sub-architecture type, its pooling names, its run options and its cost (see
 * subarch.h). */
#include "subarch.h"

#include <stdio.h>
#include <string.h>

void mr_subarch_default(mr_subarch *a) {
    memset(a, 0, sizeof *a);
    a->ratio = 1;
    a->pooling = MR_POOL_MEAN;
}

int mr_pooling_parse(const char *s, mr_pooling *out, mr_err *err) {
    if (!s || !*s || !strcmp(s, "mean")) *out = MR_POOL_MEAN;
    else if (!strcmp(s, "attention")) *out = MR_POOL_ATTENTION;
    else return mr_err_set(err, MR_EINVAL, "pooling '%.64s' is not mean or attention", s);
    return 0;
}

const char *mr_pooling_name(mr_pooling p) { return p == MR_POOL_ATTENTION ? "attention" : "mean"; }

int mr_subarch_to_run_opts(const mr_subarch *a, const mr_model *m, const char *const *names,
                           int n_names, mr_run_opts *o, mr_err *err) {
    mr_run_opts_init(o, m);
    if (a->depth) o->exits[0] = a->depth;
    o->ratio = a->ratio;
    if (a->n_compress < 0 || a->n_compress > MR_MAX_COMPRESS)
        return mr_err_set(err, MR_EINVAL, "compress layers: at most %d", MR_MAX_COMPRESS);
    o->n_compress = a->n_compress;
    memcpy(o->compress_layers, a->compress_layers,
           (size_t)a->n_compress * sizeof o->compress_layers[0]);
    o->pooling = a->pooling;
    if (!names) return 0;
    o->adapter_mask = 0;
    for (int i = 0; i < a->n_adapters; i++) {
        int found = -1;
        for (int k = 0; k < n_names && k < MR_MAX_ADAPTERS; k++)
            if (!strcmp(a->adapters[i], names[k])) found = k;
        if (found < 0) {
            char have[256] = "";
            size_t n = 0;
            for (int k = 0; k < n_names && n < sizeof have; k++)
                n += (size_t)snprintf(have + n, sizeof have - n, " %s", names[k]);
            return mr_err_set(err, MR_EINVAL, "unknown adapter '%.64s' (have:%s)", a->adapters[i],
                              n_names ? have : " none");
        }
        o->adapter_mask |= 1u << found;
    }
    return 0;
}

double mr_subarch_token_layers(const mr_subarch *a, int n_fixed, int n_passage) {
    double total = 0;
    long p = n_passage;
    int ci = 0;
    for (int l = 0; l < a->depth; l++) {
        while (a->ratio > 1 && ci < a->n_compress && a->compress_layers[ci] <= l) {
            if (a->compress_layers[ci] == l) p = (p + a->ratio - 1) / a->ratio;
            ci++;
        }
        total += (double)(n_fixed + p);
    }
    return total;
}
