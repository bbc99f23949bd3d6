/* coordinator.h: the cascade coordinator: serves mrank.v1.Ranker (Rerank, RerankStream, Info)
 * and grpc.health.v1 over rpc/rpc.h, and runs each request's cascade over the worker pools
 * named in the cluster config (coord_config.h).
 *
 * A request is validated against the published limits the moment it arrives and admitted or
 * refused there (RESOURCE_EXHAUSTED with a retry-after-ms hint) by an admission queue ordered
 * by tier priority and deadline, with budgets charged from arrival; admitted, it is run stage
 * by stage: the stage's candidates are split into parallel Score calls spread over the
 * pool's replicas (failed or hung replicas are retried on another one within the deadline),
 * the keep rule picks the survivors, and the next stage re-scores only those. Before each stage
 * the cost model (cascade.h) decides whether it fits the remaining budget (min of the gRPC
 * deadline and the tier budget); when it does not, the answer is the ranking so far with
 * degraded=true, or DEADLINE_EXCEEDED when the tier forbids degraded answers. A background
 * thread polls every replica's Worker Info (speed, layers) and reports the coordinator
 * SERVING once every pool has a live replica. The files and the path of a request through them
 * are listed in coord_internal.h; the pure decision rules are cascade.c's, config parsing
 * coord_config.c's, metrics coord_metrics.c's. */
#ifndef MR_COORDINATOR_H
#define MR_COORDINATOR_H

#include "coord_config.h"
#include "mr_err.h"

typedef struct mr_coord mr_coord;

/* Creates a coordinator for cfg (copied) that will listen on listen (NULL: cfg->listen) and
 * serve metrics on metrics_port (0: none). Opens the worker channels; connects lazily. */
int mr_coord_new(mr_coord **out, const mr_coord_config *cfg, const char *listen,
                 int metrics_port, mr_err *err);
/* Binds and starts serving; *port (may be NULL) receives the bound port. */
int mr_coord_start(mr_coord *c, int *port, mr_err *err);
/* The bound port of the HTTP/JSON front end (cfg->http_listen), -1 when off or not started. */
int mr_coord_http_port(const mr_coord *c);
/* 1 once every pool has answered Worker Info (health SERVING). */
int mr_coord_ready(mr_coord *c);
/* Health NOT_SERVING, drain in-flight requests for up to drain_ms, stop every thread. */
void mr_coord_shutdown(mr_coord *c, int drain_ms);
/* Shuts down if needed and frees; NULL is a no-op. */
void mr_coord_free(mr_coord *c);

#endif
