/* admission.c: the admission queue's pure rules (see admission.h): ordering, the wait
 * estimate, refusal, displacement, sweeping and the adaptive concurrency limit. No locks, no
 * clock, no allocation: the coordinator's scheduler (sched.c) owns those. */
#include "admission.h"

#include <math.h>
#include <stddef.h>

#define EWMA_ALPHA 0.2          /* weight of one completed request in ms_per_work */
#define SLOW_RATIO 1.5          /* ms per unit this many times the recent best: saturated */
#define BEST_DRIFT 1.002        /* the best ms per unit forgets at 0.2% per completion */
#define DECREASE 0.9            /* multiplicative decrease of the limit per slow completion */
#define RELAX 0.95              /* ms per unit after a refusal for service time alone */
/* The wait estimate counts twice: an optimistic one costs a late failure (a request that waited
 * and then expired or ran out of budget), a pessimistic one only a refusal at arrival while the
 * queue still holds enough work to keep every slot busy. */
#define WAIT_SAFETY 2.0
#define LOW_SHARE 0.75          /* share of the limit tiers below the top priority may fill */

void mr_admq_init(mr_admq *q, int n_tiers, const int *priority, const double *max_queued_ms,
                  int max_items, int max_running, double safety) {
    *q = (mr_admq){0};
    q->n_tiers = n_tiers < MR_ADMQ_MAX_TIERS ? n_tiers : MR_ADMQ_MAX_TIERS;
    for (int t = 0; t < q->n_tiers; t++) {
        q->priority[t] = priority[t];
        q->max_queued_ms[t] = max_queued_ms[t];
        if (t == 0 || priority[t] > q->top_priority) q->top_priority = priority[t];
    }
    q->max_items = max_items > 0 ? max_items : 1;
    q->max_running = max_running > 0 ? max_running : 1;
    q->safety = safety >= 1 ? safety : 1;
    q->limit = q->max_running;
}

double mr_admq_service_ms(const mr_admq *q, int tier, double work, double fallback_ms) {
    return q->ms_per_work[tier] > 0 ? work * q->ms_per_work[tier] : fallback_ms;
}

double mr_admq_cheapest_ms(const mr_admq_item *it) {
    if (it->seeded) return 0;
    return it->min_service_ms > 0 && it->min_service_ms < it->service_ms ? it->min_service_ms
                                                                         : it->service_ms;
}

/* Running slots a request of priority p may fill. */
static int slots_for(const mr_admq *q, int p) {
    int lim = (int)q->limit;
    if (lim < 1) lim = 1;
    if (p < q->top_priority) lim = (int)(lim * LOW_SHARE) > 0 ? (int)(lim * LOW_SHARE) : 1;
    return lim;
}

/* 1 when queued item a starts before a request of priority p with deadline d arriving now
 * (equal deadlines: the one already queued first). */
static int ahead_of(const mr_admq *q, const mr_admq_item *a, int p, double d) {
    int pa = q->priority[a->tier];
    return pa > p || (pa == p && a->deadline_ms <= d);
}

double mr_admq_wait_ms(const mr_admq *q, int tier, double deadline_ms, double now) {
    int p = q->priority[tier];
    double ahead = 0, running_left = 0;
    int n_ahead = 0;
    for (int t = 0; t < q->n_tiers; t++)
        for (const mr_admq_item *a = q->head[t]; a; a = a->next)
            if (ahead_of(q, a, p, deadline_ms)) {
                ahead += a->service_ms;
                n_ahead++;
            }
    if (q->n_running + n_ahead < slots_for(q, p)) return 0;
    for (const mr_admq_item *a = q->running; a; a = a->next) {
        double left = a->service_ms - (now - a->start_ms);
        running_left += left > 0 ? left : 0;
    }
    return (ahead + running_left) / slots_for(q, p);
}

static void unlink_queued(mr_admq *q, mr_admq_item *it) {
    for (mr_admq_item **pp = &q->head[it->tier]; *pp; pp = &(*pp)->next)
        if (*pp == it) {
            *pp = it->next;
            it->next = NULL;
            q->n_queued[it->tier]--;
            q->queued_ms[it->tier] -= it->service_ms;
            if (q->n_queued[it->tier] == 0) q->queued_ms[it->tier] = 0;   /* no float drift */
            q->n_items--;
            return;
        }
}

/* The least urgent queued item of a priority below p (lowest priority, then latest deadline,
 * then latest arrival), or NULL. */
static mr_admq_item *victim(const mr_admq *q, int p) {
    mr_admq_item *v = NULL;
    for (int t = 0; t < q->n_tiers; t++)
        for (mr_admq_item *a = q->head[t]; a; a = a->next) {
            if (q->priority[t] >= p) continue;
            if (!v || q->priority[t] < q->priority[v->tier] ||
                (q->priority[t] == q->priority[v->tier] &&
                 (a->deadline_ms > v->deadline_ms ||
                  (a->deadline_ms == v->deadline_ms && a->seq > v->seq))))
                v = a;
        }
    return v;
}

mr_admq_verdict mr_admq_offer(mr_admq *q, mr_admq_item *it, double now, mr_admq_item **displaced,
                              int cap, int *n_displaced, double *retry_ms) {
    *n_displaced = 0;
    int t = it->tier, p = q->priority[t];
    double wait = mr_admq_wait_ms(q, t, it->deadline_ms, now);
    *retry_ms = wait > 1 ? wait : 1;
    if (q->n_queued[t] > 0 && q->queued_ms[t] + it->service_ms > q->max_queued_ms[t])
        return MR_ADMQ_FULL;
    /* before the tier's first completion the service estimate is only a seed: refuse for the
     * wait alone (stage planning at run time still fails what does not fit) */
    it->seeded = !(q->ms_per_work[t] > 0);
    double svc = mr_admq_cheapest_ms(it);
    double idle = fmin(svc, it->work * q->best_ms_per_work[t]);   /* at the best speed seen */
    int alone = now + svc * q->safety > it->deadline_ms;
    /* refused for its own service time alone: nothing would ever run to correct an estimate
     * inflated by a burst, so each such refusal relaxes it one step */
    if (alone) q->ms_per_work[t] *= RELAX;
    if (now + idle * q->safety > it->deadline_ms) return MR_ADMQ_TOO_SLOW;
    if (alone || now + wait * WAIT_SAFETY + svc * q->safety > it->deadline_ms)
        return MR_ADMQ_NO_TIME;
    if (q->n_items >= q->max_items) {   /* one out, one in: n_items never exceeds the bound */
        mr_admq_item *v = cap > 0 ? victim(q, p) : NULL;
        if (!v) return MR_ADMQ_FULL;
        unlink_queued(q, v);
        displaced[(*n_displaced)++] = v;
    }
    it->seq = q->seq++;
    it->enq_ms = now;
    mr_admq_item **pp = &q->head[t];
    while (*pp && (*pp)->deadline_ms <= it->deadline_ms) pp = &(*pp)->next;
    it->next = *pp;
    *pp = it;
    q->n_queued[t]++;
    q->queued_ms[t] += it->service_ms;
    q->n_items++;
    return MR_ADMQ_QUEUED;
}

mr_admq_item *mr_admq_next(mr_admq *q, double now) {
    mr_admq_item *best = NULL;
    for (int t = 0; t < q->n_tiers; t++) {
        mr_admq_item *a = q->head[t];
        if (!a) continue;
        if (!best || q->priority[t] > q->priority[best->tier] ||
            (q->priority[t] == q->priority[best->tier] &&
             (a->deadline_ms < best->deadline_ms ||
              (a->deadline_ms == best->deadline_ms && a->seq < best->seq))))
            best = a;
    }
    if (!best || q->n_running >= slots_for(q, q->priority[best->tier])) return NULL;
    unlink_queued(q, best);
    best->start_ms = now;
    best->next = q->running;
    q->running = best;
    q->n_running++;
    return best;
}

mr_admq_item *mr_admq_sweep(mr_admq *q, double now, int (*gone)(void *user, void *ctx),
                            void *ctx) {
    for (int t = 0; t < q->n_tiers; t++)
        for (mr_admq_item *a = q->head[t]; a; a = a->next)
            if (now + mr_admq_cheapest_ms(a) > a->deadline_ms || (gone && gone(a->user, ctx))) {
                unlink_queued(q, a);
                return a;
            }
    return NULL;
}

double mr_admq_next_expiry(const mr_admq *q) {
    double e = INFINITY;
    for (int t = 0; t < q->n_tiers; t++)
        for (const mr_admq_item *a = q->head[t]; a; a = a->next)
            e = fmin(e, a->deadline_ms - mr_admq_cheapest_ms(a));
    return e;
}

void mr_admq_done(mr_admq *q, mr_admq_item *it, double service_ms) {
    for (mr_admq_item **pp = &q->running; *pp; pp = &(*pp)->next)
        if (*pp == it) {
            *pp = it->next;
            it->next = NULL;
            q->n_running--;
            break;
        }
    if (!(it->work > 0) || !(service_ms >= 0) || !isfinite(service_ms)) return;
    double x = service_ms / it->work, *ewma = &q->ms_per_work[it->tier],
           *best = &q->best_ms_per_work[it->tier];
    *ewma = *ewma > 0 ? (1 - EWMA_ALPHA) * *ewma + EWMA_ALPHA * x : x;
    *best = *best > 0 ? *best * BEST_DRIFT : x;
    if (x < *best) *best = x;
    int demand = q->n_items > 0;
    if (x > SLOW_RATIO * *best) {
        q->limit *= DECREASE;
        if (q->limit < 1) q->limit = 1;
    } else if (demand) {
        q->limit += 1 / q->limit;
        if (q->limit > q->max_running) q->limit = q->max_running;
    }
}
