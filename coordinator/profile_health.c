/* profile_health.c: health per cascade profile (see coord_internal.h).
 *
 * Each profile has a grpc.health.v1 service name "profile/<name>": SERVING while the
 * coordinator can answer a request of that profile within some tier: its first stage's pool
 * has a live replica (answered Worker Info and warm-up, not marked down by a failed call), and
 * either every later stage's pool has one too or some tier allows degraded answers (the
 * ranking of the stages that can run). The gauge mrank_coord_profile_impaired{profile} is 1
 * while any of its stages' pools has no live replica (answers are degraded or refused). The
 * scheduler's sweeper thread refreshes both every 250 ms. "" and mrank.v1.Ranker stay
 * the prober's (probe.c): SERVING once every pool answered. */
#include <stdio.h>

#include "coord_internal.h"

#define PREFIX "profile/"

/* Under c->mu. */
static int pool_live(const mr_coord *c, int p, double now) {
    const mr__pool *pr = &c->pools[p];
    for (int e = 0; e < pr->n_ep; e++)
        if (pr->ep[e].info_ok && pr->ep[e].warmed && pr->ep[e].down_until <= now) return 1;
    return 0;
}

static void set(mr_coord *c, int profile, int serving) {
    char name[MR_CC_NAME + sizeof PREFIX];
    snprintf(name, sizeof name, PREFIX "%s", c->cfg.profiles[profile].name);
    mr_rpc_server_set_health(c->srv, name, serving);
}

void mr__profile_health_init(mr_coord *c) {
    for (int p = 0; p < c->cfg.n_profiles; p++) {
        set(c, p, 0);
        mr_coord_metrics_profile_impaired(c->metrics, p, 1);
    }
}

void mr__profile_health_update(mr_coord *c) {
    int degraded_ok = 0;
    for (int t = 0; t < c->cfg.n_tiers; t++) degraded_ok |= c->cfg.tiers[t].allow_degraded;
    int first[MR_CC_MAX_PROFILES], all[MR_CC_MAX_PROFILES];
    double now = mr__now_ms();
    pthread_mutex_lock(&c->mu);
    for (int p = 0; p < c->cfg.n_profiles; p++) {
        const mr_cc_profile *pr = &c->cfg.profiles[p];
        all[p] = 1;
        for (int s = 0; s < pr->n_stages; s++) {
            int pool = c->cfg.stages[pr->stages[s].stage].pool;   /* -1: lexical, local */
            int live = pool < 0 || pool_live(c, pool, now);
            if (s == 0) first[p] = live;
            all[p] &= live;
        }
    }
    pthread_mutex_unlock(&c->mu);
    for (int p = 0; p < c->cfg.n_profiles; p++) {
        set(c, p, first[p] && (all[p] || degraded_ok));
        mr_coord_metrics_profile_impaired(c->metrics, p, !all[p]);
    }
}
