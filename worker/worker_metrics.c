/* worker_metrics.c: the worker's Prometheus metrics and their /metrics endpoint.
 *
 * Histograms mrank_worker_{queue,compute,request}_seconds and mrank_worker_batch_tokens, the
 * gauge mrank_worker_inflight_tokens, counters mrank_worker_requests_total{code} and
 * mrank_worker_rejected_total. Updates take one mutex (a few per request, never per token);
 * libmicrohttpd serves GET /metrics (text format 0.0.4) from its own thread. */
#define _GNU_SOURCE
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

#define N_SEC_BUCKETS 15
#define N_TOK_BUCKETS 12
#define N_CODES 17

static const double sec_bounds[N_SEC_BUCKETS] = {0.0005, 0.001, 0.002, 0.005, 0.01,
                                                 0.02,   0.05,  0.1,   0.2,   0.5,
                                                 1,      2,     5,     10,    30};
static const double tok_bounds[N_TOK_BUCKETS] = {32,   64,   128,  256,   512,   1024,
                                                 2048, 4096, 8192, 16384, 32768, 65536};
static const char *code_names[N_CODES] = {
    "OK",           "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED", "NOT_FOUND",     "ALREADY_EXISTS",    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",    "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL",          "UNAVAILABLE",       "DATA_LOSS",
    "UNAUTHENTICATED"};

typedef struct hist {
    const double *bounds;
    int n;
    unsigned long long counts[N_TOK_BUCKETS > N_SEC_BUCKETS ? N_TOK_BUCKETS : N_SEC_BUCKETS];
    unsigned long long count;
    double sum;
} hist;

struct mr__wmetrics {
    pthread_mutex_t mu;
    hist queue, compute, request, batch;
    unsigned long long requests[N_CODES];
    unsigned long long rejected;
    long inflight;
    struct MHD_Daemon *d;
};

static void hist_add(hist *h, double v) {
    for (int i = 0; i < h->n; i++)
        if (v <= h->bounds[i]) h->counts[i]++;
    h->count++;
    h->sum += v;
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)k;
        char *q = realloc(b->p, cap);
        if (!q) return;
        b->p = q;
        b->cap = cap;
    }
}

static void hist_render(sbuf *b, const char *name, const char *help, const hist *h) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < h->n; i++)
        sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], h->counts[i]);
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, h->count,
              name, h->sum, name, h->count);
}

char *mr__wmetrics_render(mr__wmetrics *m) {
    sbuf b = {0};
    pthread_mutex_lock(&m->mu);
    hist_render(&b, "mrank_worker_queue_seconds", "Time from admission to the start of compute.",
                &m->queue);
    hist_render(&b, "mrank_worker_compute_seconds", "Model compute time of the batches a request ran in.",
                &m->compute);
    hist_render(&b, "mrank_worker_request_seconds", "Time from admission to the answer.",
                &m->request);
    hist_render(&b, "mrank_worker_batch_tokens", "Tokens per batch run.", &m->batch);
    sb_printf(&b,
              "# HELP mrank_worker_inflight_tokens Tokens admitted and not yet answered.\n"
              "# TYPE mrank_worker_inflight_tokens gauge\nmrank_worker_inflight_tokens %ld\n",
              m->inflight);
    sb_printf(&b, "# HELP mrank_worker_requests_total Score requests answered, by status.\n"
                  "# TYPE mrank_worker_requests_total counter\n");
    for (int i = 0; i < N_CODES; i++)
        if (m->requests[i] || i == 0)
            sb_printf(&b, "mrank_worker_requests_total{code=\"%s\"} %llu\n", code_names[i],
                      m->requests[i]);
    sb_printf(&b,
              "# HELP mrank_worker_rejected_total Score requests refused by admission control.\n"
              "# TYPE mrank_worker_rejected_total counter\nmrank_worker_rejected_total %llu\n",
              m->rejected);
    pthread_mutex_unlock(&m->mu);
    return b.p;
}

static enum MHD_Result on_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls) {
    mr__wmetrics *m = cls;
    struct MHD_Response *r;
    unsigned code;
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        static const char msg[] = "method not allowed\n";
        r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        code = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (strcmp(url, "/metrics")) {
        static const char msg[] = "not found: try /metrics\n";
        r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        code = MHD_HTTP_NOT_FOUND;
    } else {
        char *text = mr__wmetrics_render(m);
        if (!text) return MHD_NO;
        r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        code = MHD_HTTP_OK;
    }
    if (!r) return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

int mr__wmetrics_new(mr__wmetrics **out, int port, int *bound_port, mr_err *err) {
    *out = NULL;
    if (bound_port) *bound_port = -1;
    mr__wmetrics *m = calloc(1, sizeof *m);
    if (!m) return mr_err_set(err, MR_ENOMEM, "metrics: out of memory");
    pthread_mutex_init(&m->mu, NULL);
    m->queue = (hist){.bounds = sec_bounds, .n = N_SEC_BUCKETS};
    m->compute = (hist){.bounds = sec_bounds, .n = N_SEC_BUCKETS};
    m->request = (hist){.bounds = sec_bounds, .n = N_SEC_BUCKETS};
    m->batch = (hist){.bounds = tok_bounds, .n = N_TOK_BUCKETS};
    if (port >= 0) {
        m->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                                (uint16_t)port, NULL, NULL, on_http, m,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
        if (!m->d) {
            pthread_mutex_destroy(&m->mu);
            free(m);
            return mr_err_set(err, MR_EIO, "metrics: cannot listen on port %d", port);
        }
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
        if (bound_port) *bound_port = info ? info->port : port;
    }
    *out = m;
    return 0;
}

void mr__wmetrics_free(mr__wmetrics *m) {
    if (!m) return;
    if (m->d) MHD_stop_daemon(m->d);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void mr__wmetrics_request(mr__wmetrics *m, int grpc_code, double queue_s, double compute_s,
                          double total_s) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->requests[grpc_code >= 0 && grpc_code < N_CODES ? grpc_code : 2]++;
    if (grpc_code == 0) {
        hist_add(&m->queue, queue_s);
        hist_add(&m->compute, compute_s);
    }
    hist_add(&m->request, total_s);
    pthread_mutex_unlock(&m->mu);
}

void mr__wmetrics_batch(mr__wmetrics *m, int tokens) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    hist_add(&m->batch, tokens);
    pthread_mutex_unlock(&m->mu);
}

void mr__wmetrics_rejected(mr__wmetrics *m) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->rejected++;
    m->requests[8]++;   /* RESOURCE_EXHAUSTED */
    pthread_mutex_unlock(&m->mu);
}

void mr__wmetrics_inflight(mr__wmetrics *m, long tokens) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->inflight = tokens;
    pthread_mutex_unlock(&m->mu);
}
