/* worker_metrics.c: the worker's Prometheus metrics and their /metrics endpoint.
 *
 * Histograms mrank_worker_{queue,compute,request}_seconds and mrank_worker_batch_tokens, the
 * gauge mrank_worker_inflight_tokens, counters mrank_worker_requests_total{code},
 * mrank_worker_rejected_total, mrank_worker_computed_tokens_total,
 * mrank_worker_token_layers_total (where the backend counts them),
 * mrank_worker_cancelled_rows_total and mrank_worker_cancelled_tokens_total. Updates take one mutex (a few per request, never per token);
 * the text format and the HTTP endpoint are rpc/prom.h's. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>

#include "prom.h"
#include "rpc_status.h"
#include "worker_internal.h"

#define N_SEC_BUCKETS 15
#define N_TOK_BUCKETS 12

static const double sec_bounds[N_SEC_BUCKETS] = {0.0005, 0.001, 0.002, 0.005, 0.01,
                                                 0.02,   0.05,  0.1,   0.2,   0.5,
                                                 1,      2,     5,     10,    30};
static const double tok_bounds[N_TOK_BUCKETS] = {32,   64,   128,  256,   512,   1024,
                                                 2048, 4096, 8192, 16384, 32768, 65536};

struct mr__wmetrics {
    pthread_mutex_t mu;
    mr_prom_hist queue, compute, request, batch;
    unsigned long long requests[MR_RPC_N_STATUS];
    unsigned long long rejected, cancelled_rows;
    double computed, saved, token_layers;
    int counts_tl;   /* the backend counts token-layers */
    long inflight;
    mr_prom_http *http;
};

static void hist(mr_prom_text *t, const char *name, const char *help, const mr_prom_hist *h) {
    mr_prom_family(t, name, "histogram", help);
    mr_prom_hist_write(t, name, NULL, h);
}

static char *render(void *user) {
    mr__wmetrics *m = user;
    mr_prom_text t = {0};
    pthread_mutex_lock(&m->mu);
    hist(&t, "mrank_worker_queue_seconds", "Time from admission to the start of compute.",
         &m->queue);
    hist(&t, "mrank_worker_compute_seconds", "Model compute time of the batches a request ran in.",
         &m->compute);
    hist(&t, "mrank_worker_request_seconds", "Time from admission to the answer.", &m->request);
    hist(&t, "mrank_worker_batch_tokens", "Tokens per batch run.", &m->batch);
    mr_prom_family(&t, "mrank_worker_inflight_tokens", "gauge",
                   "Tokens admitted and not yet answered.");
    mr_prom_printf(&t, "mrank_worker_inflight_tokens %ld\n", m->inflight);
    mr_prom_family(&t, "mrank_worker_requests_total", "counter",
                   "Score requests answered, by status.");
    for (int i = 0; i < MR_RPC_N_STATUS; i++)
        if (m->requests[i] || i == 0)
            mr_prom_printf(&t, "mrank_worker_requests_total{code=\"%s\"} %llu\n",
                           mr_rpc_status_name(i), m->requests[i]);
    mr_prom_family(&t, "mrank_worker_rejected_total", "counter",
                   "Score requests refused by admission control.");
    mr_prom_printf(&t, "mrank_worker_rejected_total %llu\n", m->rejected);
    mr_prom_family(&t, "mrank_worker_computed_tokens_total", "counter",
                   "Tokens run through the model (a pass stopped after k of its D layers "
                   "counts k/D of its tokens).");
    mr_prom_printf(&t, "mrank_worker_computed_tokens_total %.0f\n", m->computed);
    if (m->counts_tl) {
        mr_prom_family(&t, "mrank_worker_token_layers_total", "counter",
                       "Tokens through each layer's K/V projections, summed over layers (the "
                       "engine's count: query-prefix sharing and pruning lower it).");
        mr_prom_printf(&t, "mrank_worker_token_layers_total %.0f\n", m->token_layers);
    }
    mr_prom_family(&t, "mrank_worker_cancelled_rows_total", "counter",
                   "Rows of cancelled or expired calls dropped before their pass ended.");
    mr_prom_printf(&t, "mrank_worker_cancelled_rows_total %llu\n", m->cancelled_rows);
    mr_prom_family(&t, "mrank_worker_cancelled_tokens_total", "counter",
                   "Tokens not computed thanks to cancellation (a row dropped after k of its D "
                   "layers counts (D-k)/D of its tokens).");
    mr_prom_printf(&t, "mrank_worker_cancelled_tokens_total %.0f\n", m->saved);
    pthread_mutex_unlock(&m->mu);
    mr_prom_process(&t, "worker");
    return mr_prom_text_take(&t);
}

int mr__wmetrics_new(mr__wmetrics **out, const char *host, int port, int *bound_port,
                     int counts_tl, mr_err *err) {
    *out = NULL;
    if (bound_port) *bound_port = -1;
    mr__wmetrics *m = calloc(1, sizeof *m);
    if (!m) return mr_err_set(err, MR_ENOMEM, "metrics: out of memory");
    pthread_mutex_init(&m->mu, NULL);
    m->counts_tl = counts_tl;
    mr_prom_hist_init(&m->queue, sec_bounds, N_SEC_BUCKETS);
    mr_prom_hist_init(&m->compute, sec_bounds, N_SEC_BUCKETS);
    mr_prom_hist_init(&m->request, sec_bounds, N_SEC_BUCKETS);
    mr_prom_hist_init(&m->batch, tok_bounds, N_TOK_BUCKETS);
    if (port >= 0) {
        int rc = mr_prom_http_new_at(&m->http, host, port, render, m, bound_port, err);
        if (rc) {
            pthread_mutex_destroy(&m->mu);
            free(m);
            return rc;
        }
    }
    *out = m;
    return 0;
}

void mr__wmetrics_free(mr__wmetrics *m) {
    if (!m) return;
    mr_prom_http_free(m->http);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void mr__wmetrics_request(mr__wmetrics *m, int grpc_code, double queue_s, double compute_s,
                          double total_s) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->requests[grpc_code >= 0 && grpc_code < MR_RPC_N_STATUS ? grpc_code
                                                              : GRPC_STATUS_UNKNOWN]++;
    if (grpc_code == GRPC_STATUS_OK) {
        mr_prom_hist_observe(&m->queue, queue_s);
        mr_prom_hist_observe(&m->compute, compute_s);
    }
    mr_prom_hist_observe(&m->request, total_s);
    pthread_mutex_unlock(&m->mu);
}

void mr__wmetrics_batch(mr__wmetrics *m, int tokens, double computed, long long token_layers) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    mr_prom_hist_observe(&m->batch, tokens);
    m->computed += computed;
    if (token_layers > 0) m->token_layers += (double)token_layers;
    pthread_mutex_unlock(&m->mu);
}

void mr__wmetrics_cancelled(mr__wmetrics *m, long rows, double saved) {
    if (!m || rows <= 0) return;
    pthread_mutex_lock(&m->mu);
    m->cancelled_rows += (unsigned long long)rows;
    m->saved += saved;
    pthread_mutex_unlock(&m->mu);
}

void mr__wmetrics_rejected(mr__wmetrics *m) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->rejected++;
    m->requests[GRPC_STATUS_RESOURCE_EXHAUSTED]++;
    pthread_mutex_unlock(&m->mu);
}

void mr__wmetrics_inflight(mr__wmetrics *m, long tokens) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->inflight = tokens;
    pthread_mutex_unlock(&m->mu);
}
