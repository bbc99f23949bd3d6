/* coordinator.c: the coordinator's lifecycle (see coordinator.h): the worker channels, the
 * metrics, the gRPC server with its Ranker handlers, the prober; and the Info handler.
 *
 * Threads: Rerank and RerankStream are parsed on the rpc layer's completion-queue thread and
 * handed to the scheduler (sched.c), whose executor threads run one request each (rerank.c),
 * blocking while their Score calls are in flight; the calls complete on the channels' polling
 * threads (fanout.c); one prober thread polls the replicas (probe.c); Info runs on the rpc
 * layer's handler threads. Lock order: coord_internal.h. */
#define _GNU_SOURCE
#include "coordinator.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coord_internal.h"
#include "prom.h"
#include "rpc_methods.h"
#include "tls.h"

double mr__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void on_info(mr_rpc_call *call, void *user) {
    if (!mr__auth_call(user, call, 1)) return;
    size_t len;
    uint8_t *buf = mr__wire_info(user, &len);
    if (!buf) {
        mr_rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    mr_rpc_call_finish(call, buf, len);
    free(buf);
}

/* The Rerank handlers behind the API-key check (rerank.c checks the tier after parsing). */
static void on_rerank(mr_rpc_call *call, void *user) {
    if (mr__auth_call(user, call, 0)) mr__on_rerank(call, user);
}

static void on_rerank_stream(mr_rpc_call *call, void *user) {
    if (mr__auth_call(user, call, 0)) mr__on_rerank_stream(call, user);
}

/* TLS of the public port (security.tls) and the worker channels' mTLS (security.internal). */
static int setup_tls(mr_coord *c, mr_rpc_tls_client *internal, mr_err *err) {
    const mr_cc_security *sec = &c->cfg.security;
    if (*sec->internal_cert) {
        *internal = (mr_rpc_tls_client){.ca = sec->internal_ca, .cert = sec->internal_cert,
                                        .key = sec->internal_key};
        if (mr_rpc_tls_client_check(internal, err)) return err ? err->code : MR_EINVAL;
    }
    if (!*sec->tls_cert) return 0;
    mr_rpc_tls_server *t = NULL;
    int rc = mr_rpc_tls_server_new(&t, sec->tls_cert, sec->tls_key, sec->tls_client_ca,
                                   "security.tls", err);
    return rc ? rc : mr_rpc_server_set_tls(c->srv, t, err);
}

int mr_coord_new(mr_coord **out, const mr_coord_config *cfg, const char *listen,
                 int metrics_port, mr_err *err) {
    mr_coord *c = calloc(1, sizeof *c);
    int rc;
    if (!c) return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    c->cfg = *cfg;
    snprintf(c->listen, sizeof c->listen, "%s", listen ? listen : cfg->listen);
    if (strcmp(cfg->http_listen, "off"))
        snprintf(c->http_listen, sizeof c->http_listen, "%s", cfg->http_listen);
    c->http_port = -1;
    c->metrics_port = metrics_port;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    for (int t = 0; t < cfg->n_tiers; t++)
        if (cfg->tiers[t].priority > c->max_priority) c->max_priority = cfg->tiers[t].priority;
    for (int s = 0; s < cfg->n_stages; s++)
        mr_cost_model_init(&c->cost[s], 0, 0.2, cfg->call_overhead_ms);
    mr_rpc_tls_client internal = {0};
    /* 4 handler threads serve Info only: Rerank runs on the scheduler's executors */
    if ((rc = mr_rpc_server_new(&c->srv, c->listen, 4, err)) ||
        (rc = setup_tls(c, &internal, err)))
        goto fail;
    for (int p = 0; p < cfg->n_pools; p++) {
        const mr_cc_pool *pc = &cfg->pools[p];
        mr__pool *pr = &c->pools[p];
        pr->n_ep = *pc->dns ? 1 : pc->n_addrs;
        mr_retry_budget_init(&pr->retry);
        if (!(pr->ep = calloc((size_t)pr->n_ep, sizeof *pr->ep))) {
            rc = mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
            goto fail;
        }
        for (int e = 0; e < pr->n_ep; e++) {
            snprintf(pr->ep[e].target, sizeof pr->ep[e].target, "%s",
                     *pc->dns ? pc->dns : pc->addrs[e]);
            if ((rc = mr_rpc_channel_new_tls(&pr->ep[e].ch, pr->ep[e].target,
                                             internal.cert ? &internal : NULL, err)))
                goto fail;
        }
    }
    /* the rpc handler threads only serve Info: Rerank runs on the scheduler's executors */
    if ((rc = mr_coord_metrics_new(&c->metrics, &c->cfg, err)) || (rc = mr__auth_new(c, err)) ||
        (rc = mr__calib_load(c, err)) || (rc = mr__sched_new(c, err)) ||
        (rc = mr__lexical_load(c, err)))
        goto fail;
    /* gRPC itself refuses a larger Rerank before receiving or parsing it all */
    if ((rc = mr_rpc_server_set_max_receive(c->srv, c->cfg.max_request_bytes, err))) goto fail;
    if ((rc = mr_rpc_server_add_inline(c->srv, MR_METHOD_RERANK, 0, on_rerank, c)) ||
        (rc = mr_rpc_server_add_inline(c->srv, MR_METHOD_RERANK_STREAM, 1, on_rerank_stream,
                                       c)) ||
        (rc = mr_rpc_server_add_unary(c->srv, MR_METHOD_RANKER_INFO, on_info, c))) {
        mr_err_set(err, rc, "coordinator: cannot register the Ranker methods");
        goto fail;
    }
    mr__profile_health_init(c);
    *out = c;
    return 0;
fail:
    mr_coord_free(c);
    return rc;
}

int mr_coord_start(mr_coord *c, int *port, mr_err *err) {
    int rc;
    char host[128];
    mr_prom_host_of(c->listen, host, sizeof host);   /* metrics beside the gRPC listener */
    if ((rc = mr_coord_metrics_serve(c->metrics, host, c->metrics_port, err)) ||
        (rc = mr__sched_start(c, err)) || (rc = mr_rpc_server_start(c->srv, port, err)) ||
        (rc = mr__http_start(c, &c->http_port, err)))
        return rc;
    return mr__prober_start(c, err);
}

int mr_coord_http_port(const mr_coord *c) { return c->http_port; }

int mr_coord_ready(mr_coord *c) {
    pthread_mutex_lock(&c->mu);
    int r = c->ready;
    pthread_mutex_unlock(&c->mu);
    return r;
}

void mr_coord_shutdown(mr_coord *c, int drain_ms) {
    if (!c || c->shut) return;
    c->shut = 1;
    mr__prober_stop(c);
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_mutex_unlock(&c->mu);
    /* the front ends drain first (HTTP's alongside gRPC's): queued and running requests still
     * have their executors; the HTTP daemon stops once every request of it is answered */
    mr__http_drain(c, drain_ms);
    if (c->srv) mr_rpc_server_shutdown(c->srv, drain_ms);
    mr__sched_free(c);
    mr__http_stop(c);
}

void mr_coord_free(mr_coord *c) {
    if (!c) return;
    mr_coord_shutdown(c, 0);
    mr_rpc_server_free(c->srv);
    for (int p = 0; p < MR_CC_MAX_POOLS; p++) {
        for (int e = 0; c->pools[p].ep && e < c->pools[p].n_ep; e++)
            mr_rpc_channel_free(c->pools[p].ep[e].ch);
        free(c->pools[p].ep);
    }
    mr_coord_metrics_free(c->metrics);
    mr__auth_free(c);
    mr__calib_free(c);
    mr__lexical_free(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}
