/* admission.h: the pure logic of the coordinator's admission queue, independent of gRPC,
 * threads and clocks (the caller passes "now" in monotonic ms and holds its own lock).
 *
 * Requests arrive with a tier (and its priority), an absolute deadline (the earlier of the
 * client's and arrival + the tier budget), an estimated service time, the service time of its
 * cheapest answer (a tier that allows degraded answers may answer after the first stage) and
 * a size in work units (token-layers of the first stage). They wait in per-tier queues ordered
 * by deadline and start in priority order (tier priority, then earliest deadline, then
 * arrival) while fewer than `limit` requests run; tiers below the top priority may only fill
 * 3/4 of the limit, so a burst of low-priority work leaves room for the top tier.
 *
 * An arrival is refused at once when its cheapest answer could not finish before its deadline
 * even on an idle cluster (TOO_SLOW), when it could not start and finish in time (NO_TIME:
 * twice the estimated wait for the work ahead of it, spread over the limit, plus its service
 * time times the safety factor), or when its tier's queue holds its bound of estimated service ms (FULL).
 * Before its tier's first completion a request is judged on the wait only (its estimate is a
 * seed), and each refusal for its service time alone relaxes the tier's estimate by 5%, so a
 * burst cannot lock a tier out. When the whole queue is at its item bound, a higher-priority
 * arrival displaces a queued lower-priority request (the least urgent), which the caller fails
 * at once. Queued requests that can no longer finish in time, or that the caller finds gone
 * (client cancelled), are swept out.
 *
 * The concurrency limit adapts (AIMD) between 1 and max_running: -10% per completed request
 * that took more than 1.5 times the recent best ms per work unit of its tier (the pools are
 * saturated: more concurrency only adds latency), +1/limit per fast completion while requests
 * wait. tests/test_admission.c checks every rule. */
#ifndef MR_ADMISSION_H
#define MR_ADMISSION_H

#define MR_ADMQ_MAX_TIERS 16

typedef struct mr_admq_item {
    int tier;
    double deadline_ms;         /* absolute monotonic ms; INFINITY: none */
    double service_ms;          /* estimated service time */
    double min_service_ms;      /* of the cheapest answer it may get (a degraded one: the first
                                 * stage only), <= service_ms; 0: service_ms */
    double work;                /* size in work units (> 0): what service times are learnt per */
    double enq_ms, start_ms;    /* set by the queue */
    int seeded;                 /* set by the queue: no request of its tier had completed, so
                                 * its service time is only a seed (not judged on it) */
    long seq;                   /* set by the queue: arrival order */
    void *user;
    struct mr_admq_item *next;  /* queue or running list */
} mr_admq_item;

typedef enum mr_admq_verdict {
    MR_ADMQ_QUEUED = 0,         /* queued (maybe after displacing lower-priority items) */
    MR_ADMQ_NO_TIME,            /* cannot start and finish before its deadline */
    MR_ADMQ_TOO_SLOW,           /* could not finish in time even on an idle cluster: the
                                 * deadline is too short (not a matter of load) */
    MR_ADMQ_FULL                /* its tier's queue (or the whole queue) is full */
} mr_admq_verdict;

typedef struct mr_admq {
    int n_tiers;
    int priority[MR_ADMQ_MAX_TIERS];
    double max_queued_ms[MR_ADMQ_MAX_TIERS];   /* bound of a tier's queued service ms */
    int max_items;              /* bound of the whole queue (requests) */
    int max_running;            /* upper bound of the adaptive limit */
    double safety;              /* service estimates are multiplied by this (>= 1) */
    int top_priority;
    double limit;               /* adaptive concurrency limit in [1, max_running] */
    double ms_per_work[MR_ADMQ_MAX_TIERS];        /* EWMA of service ms per work unit (0: none) */
    double best_ms_per_work[MR_ADMQ_MAX_TIERS];   /* recent minimum (drifts up slowly) */
    mr_admq_item *head[MR_ADMQ_MAX_TIERS];
    int n_queued[MR_ADMQ_MAX_TIERS];
    double queued_ms[MR_ADMQ_MAX_TIERS];       /* sum of the queued service_ms */
    mr_admq_item *running;
    int n_running, n_items;
    long seq;
} mr_admq;

/* Initial state. priority[t] for t < n_tiers (<= MR_ADMQ_MAX_TIERS); max_queued_ms[t] > 0
 * (a tier's first queued request is always allowed). The limit starts at max_running. */
void mr_admq_init(mr_admq *q, int n_tiers, const int *priority, const double *max_queued_ms,
                  int max_items, int max_running, double safety);

/* Estimated service time of a request of tier and `work` units: work times the tier's
 * observed ms per unit, or fallback_ms before any request of the tier completed. */
double mr_admq_service_ms(const mr_admq *q, int tier, double work, double fallback_ms);

/* Service time of the cheapest answer of it (min_service_ms when set, else service_ms), the
 * one its deadline is judged on; 0 for a seeded item (the planner judges it when it runs). */
double mr_admq_cheapest_ms(const mr_admq_item *it);

/* Estimated wait before a request of tier `tier` with deadline `deadline_ms` would start. */
double mr_admq_wait_ms(const mr_admq *q, int tier, double deadline_ms, double now);

/* Offers it (tier, deadline_ms, service_ms, work, user set). On MR_ADMQ_QUEUED the item is
 * queued; up to cap displaced items are stored in displaced[] and *n_displaced set (they are
 * out of the queue: fail them; displacement only happens when the whole queue is at
 * max_items, one item per arrival). *retry_ms always gets the estimated wait (>= 1), a hint of
 * when to try again after a refusal. */
mr_admq_verdict mr_admq_offer(mr_admq *q, mr_admq_item *it, double now, mr_admq_item **displaced,
                              int cap, int *n_displaced, double *retry_ms);

/* The next item to start now (moved to the running list), or NULL when nothing is queued or
 * the limit (for its priority) is reached. */
mr_admq_item *mr_admq_next(mr_admq *q, double now);

/* Removes and returns one queued item that can no longer finish before its deadline (now +
 * its cheapest answer's service time > deadline_ms) or for which gone(user, ctx) is 1 (gone
 * may be NULL); NULL when none. */
mr_admq_item *mr_admq_sweep(mr_admq *q, double now, int (*gone)(void *user, void *ctx),
                            void *ctx);

/* Earliest time (monotonic ms) at which some queued item expires; INFINITY when none. */
double mr_admq_next_expiry(const mr_admq *q);

/* A running item finished after service_ms of actual service: leaves the running list and
 * feeds the estimates and the adaptive limit. */
void mr_admq_done(mr_admq *q, mr_admq_item *it, double service_ms);

#endif
