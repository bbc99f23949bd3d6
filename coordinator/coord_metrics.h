/* coord_metrics.h: the coordinator's Prometheus metrics and their HTTP endpoint.
 *
 * Counters per (profile stage position, tier): candidates in, survivors kept (survival ratio =
 * kept / in), escalations (requests that reached a stage after the first), stages skipped for
 * the deadline; per tier: requests by outcome, degraded answers, deadline misses and a request
 * latency histogram; per pool: Score retries on another replica, retries refused (by reason),
 * replica ejections, hedges, Score calls cancelled in flight, replicas known; per stage: the
 * cost model's current ns per token-layer; per API key name: calls accepted and refused, and
 * calls without a valid key; the admission queue: per tier queued requests and their
 * estimated ms, a queue-wait histogram and refusals by reason, and the adaptive concurrency
 * limit; per profile whether it is impaired and how many stage pairs ran fused. Served as Prometheus text at GET /metrics by
 * rpc/prom.h's endpoint on its own thread. Recording takes one mutex briefly; the coordinator is the only
 * writer. */
#ifndef MR_COORD_METRICS_H
#define MR_COORD_METRICS_H

#include "cascade.h"
#include "coord_config.h"

typedef struct mr_coord_metrics mr_coord_metrics;

/* Outcome of one request, for mrank_coord_requests_total{outcome}. */
typedef enum mr_outcome {
    MR_OUT_OK = 0, MR_OUT_DEGRADED, MR_OUT_INVALID, MR_OUT_DEADLINE, MR_OUT_UNAVAILABLE,
    MR_OUT_REJECTED, MR_OUT_ERROR, MR_OUT_N
} mr_outcome;

/* Why a request was refused before it ran, for mrank_coord_refusals_total{reason}. */
typedef enum mr_refusal {
    MR_REFUSE_NO_TIME = 0,      /* could not start and finish within its budget */
    MR_REFUSE_TOO_SHORT,        /* its budget is too short even for an idle cluster
                                 * (DEADLINE_EXCEEDED) */
    MR_REFUSE_FULL,             /* its tier's queue was full */
    MR_REFUSE_DISPLACED,        /* shed from the queue for a higher-priority arrival */
    MR_REFUSE_EXPIRED,          /* waited until it could no longer finish in time */
    MR_REFUSE_CANCELLED,        /* the client went away while it was queued */
    MR_REFUSE_STOPPING,         /* the coordinator is shutting down */
    MR_REFUSE_N
} mr_refusal;

/* Allocates counters for cfg (which must outlive the metrics). */
int mr_coord_metrics_new(mr_coord_metrics **out, const mr_coord_config *cfg, mr_err *err);
/* Starts the HTTP endpoint on host:port (host NULL/"": all interfaces); port 0 does nothing. */
int mr_coord_metrics_serve(mr_coord_metrics *m, const char *host, int port, mr_err *err);
void mr_coord_metrics_free(mr_coord_metrics *m);

/* stage = index into cfg->stages. */
void mr_coord_metrics_stage(mr_coord_metrics *m, int stage, int tier, int in, int kept,
                            int escalated, int skipped, double ms);
void mr_coord_metrics_request(mr_coord_metrics *m, int tier, mr_outcome out, int deadline_miss,
                              double ms);
void mr_coord_metrics_retry(mr_coord_metrics *m, int pool);
/* A retry not made, and why (cascade.h). */
void mr_coord_metrics_retry_refused(mr_coord_metrics *m, int pool, mr_retry_verdict why);
void mr_coord_metrics_ejection(mr_coord_metrics *m, int pool);
/* A hedge sent (a second copy of a slow call to another replica). */
void mr_coord_metrics_hedge(mr_coord_metrics *m, int pool);
/* n Score calls still in flight cancelled by the coordinator. */
void mr_coord_metrics_cancelled(mr_coord_metrics *m, int pool, int n);
void mr_coord_metrics_cost(mr_coord_metrics *m, int stage, double ns_per_tl);
void mr_coord_metrics_inflight(mr_coord_metrics *m, int delta);
/* API keys (coordinator/auth.c): a call by the key named key_name (never the key itself) was
 * accepted or refused for its tier (denied = 1); key_name NULL: a call without a valid key
 * (UNAUTHENTICATED). At most MR_COORD_METRICS_KEYS names; later ones count as "other". */
#define MR_COORD_METRICS_KEYS 256
void mr_coord_metrics_auth(mr_coord_metrics *m, const char *key_name, int denied);
/* mrank_coord_pool_replicas{pool}: addresses a pool's DNS name resolves to (a static pool:
 * its address count). */
void mr_coord_metrics_replicas(mr_coord_metrics *m, int pool, int n);
/* Queue gauges of tier: requests queued and the sum of their estimated service ms. */
void mr_coord_metrics_queue(mr_coord_metrics *m, int tier, int n, double est_ms);
/* Time a request of tier spent queued (from arrival until it started or was removed). */
void mr_coord_metrics_wait(mr_coord_metrics *m, int tier, double ms);
/* A request of tier could not run its whole profile for reason why: refused (lexical 0,
 * mrank_coord_refusals_total) or answered from its pool-free stages instead (lexical 1,
 * mrank_coord_lexical_answers_total). */
void mr_coord_metrics_refusal(mr_coord_metrics *m, int tier, mr_refusal why, int lexical);
/* 1 while some stage's pool of profile (index into cfg->profiles) has no live replica. */
void mr_coord_metrics_profile_impaired(mr_coord_metrics *m, int profile, int impaired);
/* A stage pair of profile ran as one fused pass (mrank_coord_fused_stages_total). */
void mr_coord_metrics_fused(mr_coord_metrics *m, int profile);
/* The admission queue's current concurrency limit. */
void mr_coord_metrics_limit(mr_coord_metrics *m, double limit);

/* Renders the text exposition into a malloc'd string (caller frees). */
char *mr_coord_metrics_render(mr_coord_metrics *m);

#endif
