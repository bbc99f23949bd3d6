/* fuzz_cluster_config.c: libFuzzer target for the coordinator's cluster config
 * (coordinator/coord_config.c, mr_coord_config_parse), the whole file rather than the one
 * section fuzz_security_config.c splices in.
 *
 * The input (made a C string: the parser takes one) is parsed as "cluster.json". A refusal must
 * fill the error with a code and a message naming "cluster.json"; an accepted config must hold
 * what its readers index without checking: counts within their MR_CC_MAX_* bounds, every
 * name non-empty, NUL-terminated and found again at its own index, every stage's pool and
 * every profile's and tier's index in range, a neural stage's compress layers strictly
 * increasing inside [0, depth), fusion positions inside the profile; then it is freed (plain
 * heap data, no owned pointers). Paths in the config (lexicon, security files) are checked for
 * readability against the working directory: scripts/fuzz.sh runs from the repository root,
 * where the seeds' models/mrank-tiny/lexicon.txt is found. Must never crash, leak or read out
 * of bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_config.h"

#define NAME "cluster.json"

static void fail(const char *what, int i) {
    fprintf(stderr, "fuzz_cluster_config: accepted config: %s (entry %d)\n", what, i);
    abort();
}

/* name is NUL-terminated in its MR_CC_NAME bytes, non-empty and found at index i by find. */
static void check_name(const mr_coord_config *c, const char *name, int i,
                       int (*find)(const mr_coord_config *, const char *)) {
    if (!memchr(name, 0, MR_CC_NAME) || !*name) fail("a name is empty or unterminated", i);
    if (find(c, name) != i) fail("a name is not found at its own index", i);
}

static void check_config(const mr_coord_config *c) {
    if (c->n_pools < 1 || c->n_pools > MR_CC_MAX_POOLS || c->n_stages < 1 ||
        c->n_stages > MR_CC_MAX_STAGES || c->n_profiles < 1 ||
        c->n_profiles > MR_CC_MAX_PROFILES || c->n_tiers < 1 || c->n_tiers > MR_CC_MAX_TIERS)
        fail("a count outside its bounds", -1);
    if (c->default_tier < 0 || c->default_tier >= c->n_tiers) fail("default_tier", -1);
    for (int i = 0; i < c->n_pools; i++) {
        const mr_cc_pool *p = &c->pools[i];
        check_name(c, p->name, i, mr_coord_config_pool);
        if (p->n_addrs < 0 || p->n_addrs > MR_CC_MAX_ADDRS || (p->n_addrs == 0) != (*p->dns != 0))
            fail("a pool needs addresses or dns, not both", i);
        if (p->n_adapters < 0 || p->n_adapters > MR_CC_MAX_ADAPTERS) fail("adapters", i);
    }
    for (int i = 0; i < c->n_stages; i++) {
        const mr_cc_stage *s = &c->stages[i];
        check_name(c, s->name, i, mr_coord_config_stage);
        if (s->kind == MR_CC_LEXICAL) {
            if (s->pool != -1) fail("a lexical stage with a pool", i);
            continue;
        }
        const mr_subarch *a = &s->arch;
        if (s->kind != MR_CC_NEURAL || s->pool < 0 || s->pool >= c->n_pools || a->depth < 1 ||
            a->n_compress < 0 || a->n_compress > MR_MAX_COMPRESS || a->n_adapters < 0 ||
            a->n_adapters > MR_MAX_ADAPTERS)
            fail("a neural stage's pool, depth or counts", i);
        for (int k = 0; k < a->n_compress; k++)
            if (a->compress_layers[k] < 0 || a->compress_layers[k] >= a->depth ||
                (k && a->compress_layers[k] <= a->compress_layers[k - 1]))
                fail("compress layers", i);
    }
    for (int i = 0; i < c->n_profiles; i++) {
        const mr_cc_profile *p = &c->profiles[i];
        check_name(c, p->name, i, mr_coord_config_profile);
        if (p->n_stages < 1 || p->n_stages > MR_CC_MAX_STAGES) fail("profile stages", i);
        for (int k = 0; k < p->n_stages; k++)
            if (p->stages[k].stage < 0 || p->stages[k].stage >= c->n_stages)
                fail("a profile stage's index", i);
        if (p->fusion.n < 0 || p->fusion.n > MR_FUSION_MAX) fail("fused stages", i);
        for (int k = 0; k < p->fusion.n; k++)
            if (p->fusion.pos[k] < 0 || p->fusion.pos[k] >= p->n_stages)
                fail("a fusion position", i);
    }
    for (int i = 0; i < c->n_tiers; i++) {
        check_name(c, c->tiers[i].name, i, mr_coord_config_tier);
        if (c->tiers[i].profile < 0 || c->tiers[i].profile >= c->n_profiles) fail("tier", i);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    mr_coord_config *c = malloc(sizeof *c);   /* ~300 KB: never on the stack */
    if (!text || !c) abort();
    memcpy(text, data, size);
    text[size] = 0;
    mr_err err = {0};
    if (mr_coord_config_parse(c, NAME, text, &err)) {
        if (err.code == 0 || !strstr(err.msg, NAME)) {
            fprintf(stderr, "fuzz_cluster_config: refusal without the name: '%s'\n", err.msg);
            abort();
        }
    } else {
        check_config(c);
    }
    free(c);
    free(text);
    return 0;
}
