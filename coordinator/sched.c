/* sched.c: the coordinator's request scheduler (see coord_internal.h): admission at arrival
 * and the executor threads that run admitted requests.
 *
 * A Rerank is offered here on the rpc layer's completion-queue thread the moment it arrived
 * (rerank.c parses it there): the admission queue (admission.h, pure rules) queues it with its
 * deadline charged from arrival, or it is refused at once with RESOURCE_EXHAUSTED and a
 * "retry-after-ms" trailer; a high-priority arrival may displace queued lower-priority work,
 * which is refused the same way. Executor threads, max_inflight of them, start queued
 * requests in priority order while the adaptive concurrency limit allows, so every admitted
 * request has a thread the moment it may start and no queue hides anywhere else. A sweeper
 * thread removes queued requests whose client went away or whose deadline can no longer be
 * met (polling every SWEEP_MS for cancellations, waking at the next expiry otherwise); it also
 * refreshes the per-profile health (profile_health.c) every HEALTH_MS.
 *
 * Locking: sched->mu guards the queue; it is never held while a call is failed or run, and
 * never together with mr_coord.mu; the metrics lock (a leaf) may be taken under it. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coord_internal.h"

#define SWEEP_MS 10             /* cancellation polling period of queued requests */
#define MAX_QUEUED 4096         /* bound of the whole queue (requests) */
#define UNBUDGETED_MS 30000.0   /* queued ms per slot of a tier without a budget */
#define HEALTH_MS 250           /* profile health refresh period (profile_health.c) */

struct mr__sched {
    mr_coord *co;
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* executors: something queued, a slot freed, or stopping */
    pthread_cond_t sweep_cv;    /* sweeper: stopping */
    mr_admq q;
    int stopping;
    int n_exec;
    pthread_t *exec;
    pthread_t sweeper;
    int sweeper_started;
};

static void abs_ms(struct timespec *ts, double ms_from_now) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    if (ms_from_now < 0) ms_from_now = 0;
    long long ns = (long long)(ms_from_now * 1e6) + ts->tv_nsec;
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

/* Queue gauges of every tier and the limit; under s->mu (the metrics lock is a leaf). */
static void publish(struct mr__sched *s) {
    for (int t = 0; t < s->q.n_tiers; t++)
        mr_coord_metrics_queue(s->co->metrics, t, s->q.n_queued[t], s->q.queued_ms[t]);
    mr_coord_metrics_limit(s->co->metrics, s->q.limit);
}

static void req_free(mr__req *r) {
    mr__req_close(r);
    free(r);
}

/* An admitted request (counted in mrank_coord_inflight_requests from its admission) leaves. */
static void admitted_free(mr__req *r) {
    mr_coord_metrics_inflight(r->co->metrics, -1);
    req_free(r);
}

/* Fails r (see mr__rerank_refuse), or answers it from its pool-free stages where its tier
 * allows (mr__rerank_serve_pool_free); the caller frees it. */
static void refuse(mr__req *r, mr_refusal why, double retry_ms) {
    mr_coord *c = r->co;
    if (why != MR_REFUSE_CANCELLED && why != MR_REFUSE_STOPPING && mr__rerank_serve_pool_free(r)) {
        mr_coord_metrics_refusal(c->metrics, r->tier, why, 1);
        return;
    }
    char msg[300];
    grpc_status_code code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    double waited = mr__now_ms() - r->t0;
    const char *tn = c->cfg.tiers[r->tier].name;
    switch (why) {
    case MR_REFUSE_NO_TIME:
        snprintf(msg, sizeof msg, "coordinator overloaded: tier '%s' cannot finish within its "
                 "budget (about %.0f ms of queue ahead, %.0f ms of service)", tn, retry_ms,
                 mr_admq_cheapest_ms(&r->qi));
        break;
    case MR_REFUSE_TOO_SHORT:
        code = GRPC_STATUS_DEADLINE_EXCEEDED;
        snprintf(msg, sizeof msg, "tier '%s' needs about %.1f ms even on an idle cluster, "
                 "%.1f ms of the budget left", tn, mr_admq_cheapest_ms(&r->qi),
                 fmax(r->qi.deadline_ms - mr__now_ms(), 0));
        retry_ms = 0;
        break;
    case MR_REFUSE_FULL:
        snprintf(msg, sizeof msg, "coordinator overloaded: the queue of tier '%s' is full", tn);
        break;
    case MR_REFUSE_DISPLACED:
        snprintf(msg, sizeof msg, "coordinator overloaded: tier '%s' request shed for a "
                 "higher-priority one after %.0f ms queued", tn, waited);
        break;
    case MR_REFUSE_EXPIRED:
        snprintf(msg, sizeof msg, "coordinator overloaded: tier '%s' request waited %.0f ms "
                 "and can no longer finish within its budget", tn, waited);
        break;
    case MR_REFUSE_CANCELLED:
        code = GRPC_STATUS_CANCELLED;
        snprintf(msg, sizeof msg, "cancelled by the client while queued");
        retry_ms = 0;
        break;
    default:
        code = GRPC_STATUS_UNAVAILABLE;
        snprintf(msg, sizeof msg, "coordinator shutting down");
        retry_ms = 0;
        break;
    }
    mr_coord_metrics_refusal(c->metrics, r->tier, why, 0);
    mr__rerank_refuse(r, code, msg, retry_ms);
}

static int call_gone(void *user, void *ctx) {
    (void)ctx;
    const mr__sink *s = &((mr__req *)user)->sink;
    return s->ops->cancelled(s->ctx);
}

static void *exec_main(void *arg) {
    struct mr__sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        mr_admq_item *it = NULL;
        while (!s->stopping && !(it = mr_admq_next(&s->q, mr__now_ms())))
            pthread_cond_wait(&s->cv, &s->mu);
        if (!it) break;
        publish(s);
        pthread_mutex_unlock(&s->mu);
        mr__req *r = it->user;
        double start = mr__now_ms(), service = -1;   /* -1: teaches the estimates nothing */
        mr_coord_metrics_wait(s->co->metrics, r->tier, start - r->t0);
        if (r->sink.ops->cancelled(r->sink.ctx)) {
            refuse(r, MR_REFUSE_CANCELLED, 0);
        } else if (start + mr_admq_cheapest_ms(it) > it->deadline_ms) {
            refuse(r, MR_REFUSE_EXPIRED, it->service_ms);
        } else {
            if (mr__rerank_serve(r)) service = mr__now_ms() - start;
        }
        pthread_mutex_lock(&s->mu);
        mr_admq_done(&s->q, it, service);   /* `it` lives in r: free r after this */
        pthread_mutex_unlock(&s->mu);
        admitted_free(r);
        pthread_mutex_lock(&s->mu);
        publish(s);
        pthread_cond_broadcast(&s->cv);   /* a slot is free (maybe for a queued low tier) */
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void *sweep_main(void *arg) {
    struct mr__sched *s = arg;
    double health_at = 0;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        if (mr__now_ms() >= health_at) {   /* takes mr_coord.mu: never with s->mu */
            pthread_mutex_unlock(&s->mu);
            mr__profile_health_update(s->co);
            health_at = mr__now_ms() + HEALTH_MS;
            pthread_mutex_lock(&s->mu);
            if (s->stopping) break;
        }
        double now = mr__now_ms(), next = mr_admq_next_expiry(&s->q);
        struct timespec until;
        abs_ms(&until, fmin(next - now, SWEEP_MS));
        pthread_cond_timedwait(&s->sweep_cv, &s->mu, &until);
        for (;;) {
            now = mr__now_ms();
            mr_admq_item *it = mr_admq_sweep(&s->q, now, call_gone, NULL);
            if (!it) break;
            publish(s);
            pthread_mutex_unlock(&s->mu);
            mr__req *r = it->user;
            mr_coord_metrics_wait(s->co->metrics, r->tier, now - r->t0);
            refuse(r, r->sink.ops->cancelled(r->sink.ctx) ? MR_REFUSE_CANCELLED : MR_REFUSE_EXPIRED,
                   it->service_ms);
            admitted_free(r);
            pthread_mutex_lock(&s->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int mr__sched_new(mr_coord *c, mr_err *err) {
    struct mr__sched *s = calloc(1, sizeof *s);
    if (!s) return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    s->co = c;
    int prio[MR_ADMQ_MAX_TIERS];
    double max_ms[MR_ADMQ_MAX_TIERS];
    for (int t = 0; t < c->cfg.n_tiers && t < MR_ADMQ_MAX_TIERS; t++) {
        prio[t] = c->cfg.tiers[t].priority;
        /* a tier may queue what all the slots could serve within its budget */
        double b = c->cfg.tiers[t].budget_ms > 0 ? c->cfg.tiers[t].budget_ms : UNBUDGETED_MS;
        max_ms[t] = b * c->cfg.max_inflight;
    }
    mr_admq_init(&s->q, c->cfg.n_tiers, prio, max_ms, MAX_QUEUED, c->cfg.max_inflight,
                 c->cfg.safety);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->sweep_cv, &ca);
    pthread_condattr_destroy(&ca);
    c->sched = s;
    return 0;
}

int mr__sched_start(mr_coord *c, mr_err *err) {
    struct mr__sched *s = c->sched;
    if (!(s->exec = calloc((size_t)c->cfg.max_inflight, sizeof *s->exec)))
        return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    for (int i = 0; i < c->cfg.max_inflight; i++) {
        if (pthread_create(&s->exec[i], NULL, exec_main, s)) break;
        s->n_exec++;
    }
    if (s->n_exec < c->cfg.max_inflight || pthread_create(&s->sweeper, NULL, sweep_main, s))
        return mr_err_set(err, MR_ENOMEM, "coordinator: cannot start %d executor threads",
                          c->cfg.max_inflight);
    s->sweeper_started = 1;
    return 0;
}

void mr__sched_submit(mr__req *r, double work, double fallback_ms, double first_ms) {
    struct mr__sched *s = r->co->sched;
    double now = mr__now_ms();
    double rem = mr__req_remaining_ms(r);
    r->qi = (mr_admq_item){.tier = r->tier, .work = work > 1 ? work : 1, .user = r,
                           .deadline_ms = isfinite(rem) ? now + rem : INFINITY};
    mr_admq_item *displaced[1];
    int n_disp = 0;
    double retry = 0;
    pthread_mutex_lock(&s->mu);
    r->qi.service_ms = mr_admq_service_ms(&s->q, r->tier, r->qi.work, fallback_ms);
    /* a tier with degraded answers may answer after the first neural stage of a longer
     * profile: its share of the cost model's estimate, applied to the service time learnt
     * under the current load (the cost model alone ignores the other requests sharing the
     * pools). Not where the profile starts with pool-free stages: what cannot run in full is
     * better answered from them at once than queued for a late partial answer. */
    const mr_coord_config *cfg = &r->co->cfg;
    if (cfg->tiers[r->tier].allow_degraded && cfg->profiles[r->profile].n_stages > 1 &&
        fallback_ms > 0 && !mr__rerank_pool_free(r))
        r->qi.min_service_ms = r->qi.service_ms * fmin(first_ms / fallback_ms, 1);
    mr_admq_verdict v = s->stopping ? MR_ADMQ_FULL
                                    : mr_admq_offer(&s->q, &r->qi, now, displaced, 1, &n_disp,
                                                    &retry);
    int stopping = s->stopping;
    if (v == MR_ADMQ_QUEUED) {
        mr_coord_metrics_inflight(r->co->metrics, 1);   /* before any executor can take it */
        publish(s);
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n_disp; i++) {
        refuse(displaced[i]->user, MR_REFUSE_DISPLACED, retry);
        admitted_free(displaced[i]->user);
    }
    if (v == MR_ADMQ_QUEUED) return;
    /* too short even for an idle cluster: the first stage's cost model learns nothing from a
     * request that never runs, so relax it as the planner does for a stage it cannot run */
    if (v == MR_ADMQ_TOO_SLOW) mr__plan_relax(r, 0);
    refuse(r, stopping ? MR_REFUSE_STOPPING : v == MR_ADMQ_FULL ? MR_REFUSE_FULL
              : v == MR_ADMQ_TOO_SLOW ? MR_REFUSE_TOO_SHORT : MR_REFUSE_NO_TIME, retry);
    req_free(r);
}

void mr__sched_free(mr_coord *c) {
    struct mr__sched *s = c->sched;
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_cond_broadcast(&s->sweep_cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_exec; i++) pthread_join(s->exec[i], NULL);
    if (s->sweeper_started) pthread_join(s->sweeper, NULL);
    /* anything still queued (the rpc server normally drained it first) */
    for (mr_admq_item *it; (it = mr_admq_next(&s->q, 0));) {
        refuse(it->user, MR_REFUSE_STOPPING, 0);
        mr_admq_done(&s->q, it, -1);
        admitted_free(it->user);
    }
    free(s->exec);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->sweep_cv);
    free(s);
    c->sched = NULL;
}
