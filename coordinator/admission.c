/* admission.c: admission of requests by tier priority (see coord_internal.h). The most
 * important tiers may fill every one of the config's max_inflight slots, the others 3/4 of
 * them, so a burst of low-priority work leaves room for the high-priority tier. */
#include "coord_internal.h"

int mr__admit(mr_coord *c, int tier) {
    int limit = c->cfg.max_inflight;
    if (c->cfg.tiers[tier].priority < c->max_priority)
        limit = limit * 3 / 4 > 0 ? limit * 3 / 4 : 1;
    pthread_mutex_lock(&c->mu);
    int ok = c->inflight < limit;
    if (ok) c->inflight++;
    pthread_mutex_unlock(&c->mu);
    if (ok) mr_coord_metrics_inflight(c->metrics, 1);
    return ok;
}

void mr__release(mr_coord *c) {
    pthread_mutex_lock(&c->mu);
    c->inflight--;
    pthread_mutex_unlock(&c->mu);
    mr_coord_metrics_inflight(c->metrics, -1);
}
