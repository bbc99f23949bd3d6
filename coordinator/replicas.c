/* replicas.c: what the coordinator knows of each replica of a pool, and how it picks one (see
 * coord_internal.h). A replica that refused a call with RESOURCE_EXHAUSTED counts as full for
 * FULL_MS (load, not a fault); timeouts and errors feed its outlier state (cascade.h), which
 * ejects it (down_until) after consecutive failures or one severe one; an answer resets that.
 * The pick goes round-robin over replicas neither ejected nor full, then full ones, then the
 * ejected one whose ejection ends first. The prober (probe.c) ends an ejection when the
 * replica answers Worker Info and a small Score call. All state is under mr_coord.mu. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>

#include "coord_internal.h"
#include "log.h"

#define FULL_MS 200.0           /* a replica that refused (RESOURCE_EXHAUSTED) counts as full */

mr_call_failure mr__call_failure(grpc_status_code st) {
    switch (st) {
    case GRPC_STATUS_UNAVAILABLE: return MR_FAIL_UNAVAILABLE;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return MR_FAIL_TIMEOUT;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return MR_FAIL_EXHAUSTED;
    case GRPC_STATUS_CANCELLED:
    case GRPC_STATUS_UNKNOWN:
    case GRPC_STATUS_ABORTED: return MR_FAIL_TRANSIENT;
    default: return MR_FAIL_FATAL;
    }
}

int mr__replica_pick(mr_coord *c, int p, int avoid) {
    mr__pool *pr = &c->pools[p];
    if (pr->n_ep == 1) return 0;
    unsigned base = atomic_fetch_add(&pr->rr, 1);
    double t = mr__now_ms(), soon = INFINITY;
    int free_e = -1, full_e = -1, soon_e = -1;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < pr->n_ep && free_e < 0; i++) {
        int e = (int)((base + (unsigned)i) % (unsigned)pr->n_ep);
        const mr__endpoint *ep = &pr->ep[e];
        if (e == avoid) continue;
        if (ep->down_until > t) {
            if (ep->down_until < soon) soon = ep->down_until, soon_e = e;
        } else if (ep->full_until > t) {
            if (full_e < 0) full_e = e;
        } else {
            free_e = e;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (free_e >= 0) return free_e;
    if (full_e >= 0) return full_e;
    return soon_e >= 0 ? soon_e : (avoid >= 0 ? avoid : 0);
}

int mr__replica_n_free(mr_coord *c, int p, int except, double now) {
    const mr__pool *pr = &c->pools[p];
    int n = 0;
    for (int e = 0; !*c->cfg.pools[p].dns && e < pr->n_ep; e++)
        n += e != except && pr->ep[e].down_until <= now && pr->ep[e].full_until <= now;
    return n;
}

void mr__replica_failed(mr_coord *c, int p, int e, grpc_status_code st, double wall_ms,
                        double est_ms) {
    mr__pool *pr = &c->pools[p];
    mr__endpoint *ep = &pr->ep[e];
    mr_call_failure f = mr__call_failure(st);
    double now = mr__now_ms(), eject = 0;
    pthread_mutex_lock(&c->mu);
    if (f == MR_FAIL_EXHAUSTED) {
        ep->full_until = now + FULL_MS;
    } else if (f == MR_FAIL_UNAVAILABLE || f == MR_FAIL_TIMEOUT ||
               (f == MR_FAIL_TRANSIENT && st != GRPC_STATUS_CANCELLED)) {
        int severe = f == MR_FAIL_UNAVAILABLE ||
                     (f == MR_FAIL_TIMEOUT && wall_ms >= MR_ATTEMPT_EST_FACTOR * est_ms);
        int n_ejected = 0;
        for (int i = 0; i < pr->n_ep; i++) n_ejected += i != e && pr->ep[i].down_until > now;
        eject = mr_outlier_failure(&ep->outlier, severe, pr->n_ep, n_ejected);
        if (eject > 0 && ep->down_until < now + eject) ep->down_until = now + eject;
    }
    pthread_mutex_unlock(&c->mu);
    if (eject <= 0) return;
    mr_coord_metrics_ejection(c->metrics, p);
    mr_log(MR_LOG_WARN, "replica_ejected", "replica %s of pool '%s' ejected for %.0f ms (status %d "
            "after %.0f ms)\n", ep->target, c->cfg.pools[p].name, eject, (int)st, wall_ms);
}

void mr__replica_answered(mr_coord *c, int p, int e) {
    pthread_mutex_lock(&c->mu);
    mr_outlier_success(&c->pools[p].ep[e].outlier);
    pthread_mutex_unlock(&c->mu);
}
