/* http.c: the coordinator's HTTP/JSON front end (libmicrohttpd): POST /v2/rerank (Cohere v2),
 * /v1/rerank (Cohere v1, Jina) and /rerank (TEI), bodies converted by http_json.c.
 *
 * One path behind both front ends: a request's JSON becomes a packed RerankRequest and enters
 * mr__rerank_arrive (rerank.c) with this file's mr__sink, so validation, limits, the API key's
 * tier, admission, the cascade, deadlines and metrics are gRPC's. Here only what is HTTP's:
 * routing (404, 405), the body size (413 from Content-Length, or from the bytes received,
 * before buffering past limits.max_request_bytes), the API key ("authorization: Bearer KEY",
 * 401 from the headers, before any body is read), readiness (503), the deadline header
 * X-Request-Timeout-Ms (milliseconds from when the whole body is in, as gRPC's clock starts
 * with the whole message; the tier budget still applies), and gRPC statuses mapped to
 * HTTP ones with a JSON {"message", "status"} body (429 carries Retry-After in whole seconds,
 * rounded up from retry-after-ms). A request waiting for its answer suspends its connection
 * (MHD_suspend_connection), so no daemon thread blocks; the sink's answer, on whatever thread
 * gives it, resumes it. A suspended connection does not notice its client leaving; the
 * request ends at its deadline or budget. TLS with security.tls's certificate and key (re-read
 * when their files change, http_tls.c, as the gRPC port's are); with tls.client_ca a
 * client certificate is required and checked against it (GnuTLS).
 *
 * Threads: the daemon's (MHD_OPTION_THREAD_POOL_SIZE) accept, read, parse and submit; the
 * scheduler's executors answer. hreq.mu orders a request's answer against its suspension. */
#define _GNU_SOURCE
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>

#include "coord_internal.h"
#include "http_json.h"
#include "http_tls.h"
#include "prom.h"
#include "rpc_status.h"
#include "textfile.h"

#define HTTP_THREADS 2            /* daemon threads: parsing a body is the only work on them */
#define HTTP_MAX_CONNECTIONS 1024
#define HTTP_IDLE_TIMEOUT_S 60    /* an idle keep-alive connection (not a waiting request) */
#define AUTH_MAX 4200             /* longest authorization header kept (auth.c reads 4200) */
#define PEM_LIMIT (1 << 20)

struct mr__http {
    mr_coord *co;
    struct MHD_Daemon *d;
    char *trust;                  /* client CA PEM text (MHD keeps a pointer to it) */
    int tls;                      /* http_tls.c holds the certificate */
    atomic_int stopping;
    atomic_int arriving;          /* requests between the stopping check and the scheduler */
    _Atomic double drain_until;   /* monotonic ms: in-flight requests cancelled after */
    atomic_ulong seq;             /* response ids */
};

enum { RECEIVING, WAITING, ANSWERED };

typedef struct hreq {
    struct mr__http *h;
    struct MHD_Connection *conn;
    mr_http_shape shape;
    char *body;
    size_t len;
    int too_large;
    double t0, deadline;          /* monotonic ms, set once the body is in (as gRPC's clock
                                     starts with the whole message); deadline INFINITY: none */
    double timeout_ms;            /* X-Request-Timeout-Ms, or INFINITY */
    int bad_timeout;
    char authz[AUTH_MAX];
    mr_http_answer ans;
    char id[48];
    mr_trace_ctx trace;           /* this request's SERVER span (traceparent header's child) */
    uint64_t trace_start_ns;
    pthread_mutex_t mu;
    int state, suspended, orphan;
    unsigned status;
    char *resp;                   /* JSON */
    double retry_ms;
} hreq;

static unsigned http_status(grpc_status_code c) {
    switch (c) {
    case GRPC_STATUS_OK: return MHD_HTTP_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_OUT_OF_RANGE:
    case GRPC_STATUS_FAILED_PRECONDITION: return MHD_HTTP_BAD_REQUEST;
    case GRPC_STATUS_UNAUTHENTICATED: return MHD_HTTP_UNAUTHORIZED;
    case GRPC_STATUS_PERMISSION_DENIED: return MHD_HTTP_FORBIDDEN;
    case GRPC_STATUS_NOT_FOUND: return MHD_HTTP_NOT_FOUND;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return MHD_HTTP_TOO_MANY_REQUESTS;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return MHD_HTTP_GATEWAY_TIMEOUT;
    case GRPC_STATUS_CANCELLED:
    case GRPC_STATUS_UNAVAILABLE: return MHD_HTTP_SERVICE_UNAVAILABLE;
    case GRPC_STATUS_UNIMPLEMENTED: return MHD_HTTP_NOT_IMPLEMENTED;
    default: return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
}

/* TEI's /rerank speaks its own error dialect (serving conventions): validation is 422, a
 * failing backend 424, and the body adds {"error", "error_type"}. Others keep the status. */
static unsigned shape_status(mr_http_shape shape, unsigned status) {
    if (shape != MR_HTTP_TEI) return status;
    if (status == MHD_HTTP_BAD_REQUEST) return MHD_HTTP_UNPROCESSABLE_CONTENT;
    if (status == MHD_HTTP_INTERNAL_SERVER_ERROR) return MHD_HTTP_FAILED_DEPENDENCY;
    return status;
}

/* TEI's error_type for a (shaped) status; NULL for the other shapes. */
static const char *tei_type(mr_http_shape shape, unsigned status) {
    if (shape != MR_HTTP_TEI) return NULL;
    switch (status) {
    case MHD_HTTP_CONTENT_TOO_LARGE:
    case MHD_HTTP_UNPROCESSABLE_CONTENT: return "Validation";
    case MHD_HTTP_TOO_MANY_REQUESTS: return "Overloaded";
    case MHD_HTTP_SERVICE_UNAVAILABLE: return "Unhealthy";
    case MHD_HTTP_UNAUTHORIZED:
    case MHD_HTTP_FORBIDDEN: return "Unauthorized";
    default: return "Backend";
    }
}

/* The error answer of shape: status (shaped) and its JSON (NULL on OOM). */
static char *error_json(mr_http_shape shape, unsigned *status, grpc_status_code code,
                        const char *msg) {
    *status = shape_status(shape, *status);
    return mr_http_json_error(msg, mr_rpc_status_name(code), tei_type(shape, *status));
}

static void hreq_free(hreq *q) {
    free(q->body);
    free(q->resp);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

/* The answer, from any thread: stored, and the connection resumed if it was suspended. */
/* The span name of a request's shape: its path. */
static const char *http_shape_path(mr_http_shape s) {
    return s == MR_HTTP_COHERE_V2 ? "POST /v2/rerank"
         : s == MR_HTTP_COHERE_V1 ? "POST /v1/rerank" : "POST /rerank";
}

static void answer(hreq *q, unsigned status, char *json, double retry_ms) {
    if (mr_trace_exporting()) {   /* the request's span, as rpc/server.c records a call's */
        char code[48];
        snprintf(code, sizeof code, "HTTP %u", json ? status : 500u);
        const char *attrs[] = {"http.status_code", code + 5, NULL};
        mr_trace_span(&q->trace, MR_SPAN_SERVER, http_shape_path(q->shape), q->trace_start_ns,
                      mr_trace_now_ns(), status >= 400 || !json ? code : NULL, attrs);
    }
    pthread_mutex_lock(&q->mu);
    q->status = json ? status : MHD_HTTP_INTERNAL_SERVER_ERROR;
    q->resp = json;
    q->retry_ms = retry_ms;
    q->state = ANSWERED;
    int orphan = q->orphan;
    if (q->suspended && !orphan) MHD_resume_connection(q->conn);
    q->suspended = 0;
    pthread_mutex_unlock(&q->mu);
    if (orphan) hreq_free(q);   /* the connection ended without waiting for it */
}

static double s_remaining(void *ctx) {
    hreq *q = ctx;
    return isfinite(q->deadline) ? q->deadline - mr__now_ms() : MR_RPC_NO_DEADLINE_MS;
}

/* Only the shutdown drain cancels an HTTP request (a suspended connection does not notice its
 * client leaving): a deadline that passes acts through s_remaining, so the request ends as
 * DEADLINE_EXCEEDED (504) or with a degraded answer, never as "cancelled by the client". */
static int s_cancelled(void *ctx) {
    hreq *q = ctx;
    return atomic_load(&q->h->stopping) && mr__now_ms() >= q->h->drain_until;
}

static int s_metadata(void *ctx, const char *key, char *buf, size_t cap) {
    hreq *q = ctx;
    if (strcmp(key, "authorization") || !*q->authz) return -1;
    snprintf(buf, cap, "%s", q->authz);
    return (int)strlen(q->authz);
}

static int s_write(void *ctx, const uint8_t *resp, size_t len) {
    (void)ctx, (void)resp, (void)len;
    return 0;   /* no partial rankings over HTTP */
}

static void s_finish(void *ctx, const uint8_t *resp, size_t len) {
    hreq *q = ctx;
    answer(q, MHD_HTTP_OK, mr_http_json_response(resp, len, &q->ans, q->id), 0);
}

static void s_fail(void *ctx, grpc_status_code code, const char *msg, double retry_ms) {
    hreq *q = ctx;
    unsigned st = http_status(code);
    char *json = error_json(q->shape, &st, code, msg);
    answer(q, st, json, retry_ms);
}

static const mr_trace_ctx *s_trace(void *ctx) { return &((hreq *)ctx)->trace; }

static const mr__sink_ops k_http = {s_remaining, s_cancelled, s_metadata, s_write,
                                    s_finish,    s_fail,      s_trace};

static enum MHD_Result send_json(struct MHD_Connection *conn, unsigned status, char *json,
                                 double retry_ms, const char *allow) {
    if (!json) {   /* the answer could not be made (out of memory): say so if we can */
        static char k_oom[] = "{\"message\":\"coordinator: out of memory making the answer\","
                              "\"status\":\"INTERNAL\"}";
        struct MHD_Response *r =
            MHD_create_response_from_buffer(strlen(k_oom), k_oom, MHD_RESPMEM_PERSISTENT);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, "Content-Type", "application/json");
        enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, r);
        MHD_destroy_response(r);
        return ret;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(json), json, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(json);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (retry_ms > 0) {
        char v[32];
        snprintf(v, sizeof v, "%.0f", fmax(1, ceil(retry_ms / 1000)));
        MHD_add_response_header(r, "Retry-After", v);
        snprintf(v, sizeof v, "%.0f", ceil(retry_ms));
        MHD_add_response_header(r, "Retry-After-Ms", v);
    }
    if (allow) MHD_add_response_header(r, "Allow", allow);
    if (status == MHD_HTTP_UNAUTHORIZED)   /* RFC 7235: a 401 names its scheme */
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"mrank\"");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, mr_http_shape shape,
                                  unsigned status, grpc_status_code code, const char *msg,
                                  const char *allow) {
    char *json = error_json(shape, &status, code, msg);
    return send_json(conn, status, json, 0, allow);
}

/* With tls.client_ca: 0 when the client presented a certificate that verifies. */
static int client_cert_bad(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!ci || !ci->tls_session) return 1;
    unsigned st = 0;
    gnutls_session_t s = (gnutls_session_t)ci->tls_session;
    if (gnutls_certificate_type_get(s) != GNUTLS_CRT_X509) return 1;
    unsigned n = 0;
    if (!gnutls_certificate_get_peers(s, &n) || !n) return 1;
    return gnutls_certificate_verify_peers2(s, &st) || st;
}

/* The first call of a request: route, limits, headers. */
static enum MHD_Result start(struct mr__http *h, struct MHD_Connection *conn, const char *url,
                             const char *method, void **con_cls) {
    mr_http_shape shape;
    if (!strcmp(url, "/v2/rerank")) shape = MR_HTTP_COHERE_V2;
    else if (!strcmp(url, "/v1/rerank")) shape = MR_HTTP_COHERE_V1;
    else if (!strcmp(url, "/rerank")) shape = MR_HTTP_TEI;
    else return send_error(conn, MR_HTTP_COHERE_V2, MHD_HTTP_NOT_FOUND, GRPC_STATUS_NOT_FOUND,
                           "unknown path (POST /v2/rerank, /v1/rerank or /rerank)", NULL);
    if (strcmp(method, "POST"))
        return send_error(conn, shape, MHD_HTTP_METHOD_NOT_ALLOWED, GRPC_STATUS_UNIMPLEMENTED,
                          "only POST is served here", "POST");
    if (h->trust && client_cert_bad(conn))
        return send_error(conn, shape, MHD_HTTP_UNAUTHORIZED, GRPC_STATUS_UNAUTHENTICATED,
                          "a client certificate signed by the configured CA is required",
                          NULL);
    long max = h->co->cfg.max_request_bytes;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtod(cl, NULL) > (double)max) {
        char m[160];
        snprintf(m, sizeof m, "request body is %.64s bytes, the limit is %ld "
                 "(Info.max_request_bytes)", cl, max);
        return send_error(conn, shape, MHD_HTTP_CONTENT_TOO_LARGE, GRPC_STATUS_INVALID_ARGUMENT, m,
                          NULL);
    }
    hreq *q = calloc(1, sizeof *q);
    if (!q) return MHD_NO;
    pthread_mutex_init(&q->mu, NULL);
    q->h = h;
    q->conn = conn;
    q->shape = shape;
    q->t0 = mr__now_ms();
    q->deadline = q->timeout_ms = INFINITY;
    const char *to = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Timeout-Ms");
    if (to) {
        char *end;
        double ms = strtod(to, &end);
        if (end == to || *end || !(ms > 0) || ms > 1e9) q->bad_timeout = 1;
        else q->timeout_ms = ms;
    }
    /* W3C trace context from the headers, as gRPC metadata is read (rpc/server.c) */
    const char *tp = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "traceparent");
    mr_trace_ctx parent;
    int have = tp && !mr_trace_parse(tp, &parent);
    const char *ts = have ? MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "tracestate") : NULL;
    if (have) {
        parent.tracestate[0] = 0;
        if (ts && strlen(ts) < sizeof parent.tracestate)   /* longer: dropped, not cut */
            snprintf(parent.tracestate, sizeof parent.tracestate, "%s", ts);
    }
    mr_trace_child(have ? &parent : NULL, &q->trace);
    q->trace_start_ns = mr_trace_now_ns();
    const char *az = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (az) snprintf(q->authz, sizeof q->authz, "%s", az);
    snprintf(q->id, sizeof q->id, "mrank-%lx-%lu", (unsigned long)q->t0,
             (unsigned long)atomic_fetch_add(&h->seq, 1));
    /* the key needs the headers only: a client without one never gets a body buffered */
    mr__sink sink = {&k_http, q};
    if (!mr__auth_check(h->co, &sink, 0)) {
        hreq_free(q);
        return send_error(conn, shape, MHD_HTTP_UNAUTHORIZED, GRPC_STATUS_UNAUTHENTICATED,
                          MR__AUTH_MISSING, NULL);
    }
    *con_cls = q;
    return MHD_YES;
}

static enum MHD_Result submit_checked(struct mr__http *h, hreq *q);

/* The whole body is in: check, convert, and enter the common path. */
static enum MHD_Result submit(struct mr__http *h, hreq *q) {
    mr_coord *c = h->co;
    char m[200];
    if (q->too_large) {
        snprintf(m, sizeof m, "request body is over the limit of %d bytes "
                 "(Info.max_request_bytes)", c->cfg.max_request_bytes);
        return send_error(q->conn, q->shape, MHD_HTTP_CONTENT_TOO_LARGE,
                          GRPC_STATUS_INVALID_ARGUMENT, m, NULL);
    }
    atomic_fetch_add(&h->arriving, 1);
    enum MHD_Result ret = submit_checked(h, q);
    atomic_fetch_sub(&h->arriving, 1);
    return ret;
}

/* submit() once the body's size is known to fit; counted in h->arriving. */
static enum MHD_Result submit_checked(struct mr__http *h, hreq *q) {
    mr_coord *c = h->co;
    if (atomic_load(&h->stopping))
        return send_error(q->conn, q->shape, MHD_HTTP_SERVICE_UNAVAILABLE, GRPC_STATUS_UNAVAILABLE,
                          "coordinator shutting down", NULL);
    mr__sink sink = {&k_http, q};
    if (!mr_coord_ready(c))
        return send_error(q->conn, q->shape, MHD_HTTP_SERVICE_UNAVAILABLE, GRPC_STATUS_UNAVAILABLE,
                          "coordinator not ready: a worker pool has no live replica yet", NULL);
    if (q->bad_timeout)
        return send_error(q->conn, q->shape, MHD_HTTP_BAD_REQUEST, GRPC_STATUS_INVALID_ARGUMENT,
                          "X-Request-Timeout-Ms: expected milliseconds, a number in (0, 1e9]",
                          NULL);
    uint8_t *pb;
    size_t pb_len;
    mr_err err = {0};
    q->t0 = mr__now_ms();   /* the clock starts with the whole body, as gRPC's does */
    q->deadline = q->t0 + q->timeout_ms;
    if (mr_http_json_request(q->body ? q->body : "", q->len, q->shape, c->cfg.max_documents,
                             &pb, &pb_len, &q->ans, &err)) {
        /* too many documents: TEI says 413 ("too many inputs"), the others 400 */
        unsigned st = MHD_HTTP_BAD_REQUEST;
        if (err.code == MR_ENOMEM) st = MHD_HTTP_SERVICE_UNAVAILABLE;
        else if (err.code == MR_ERANGE && q->shape == MR_HTTP_TEI) st = MHD_HTTP_CONTENT_TOO_LARGE;
        return send_error(q->conn, q->shape, st, mr_rpc_status_of(err.code), err.msg, NULL);
    }
    free(q->body);   /* the RerankRequest holds what is needed */
    q->body = NULL;
    q->state = WAITING;
    mr__rerank_arrive(c, sink, q->t0, pb, pb_len, 0);
    free(pb);
    pthread_mutex_lock(&q->mu);
    int answered = q->state == ANSWERED;
    char *json = q->resp;
    if (answered) {
        q->resp = NULL;
    } else {   /* queued: wait without holding a daemon thread */
        q->suspended = 1;
        MHD_suspend_connection(q->conn);
    }
    pthread_mutex_unlock(&q->mu);
    /* refused at arrival: the answer goes out at once */
    return answered ? send_json(q->conn, q->status, json, q->retry_ms, NULL) : MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    struct mr__http *h = cls;
    hreq *q = *con_cls;
    if (!q) return start(h, conn, url, method, con_cls);
    if (q->state == RECEIVING && *upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (q->too_large || q->len + n > (size_t)h->co->cfg.max_request_bytes) {
            q->too_large = 1;   /* read and dropped: the 413 goes out once the body is in */
            free(q->body);
            q->body = NULL;
            return MHD_YES;
        }
        char *b = realloc(q->body, q->len + n + 1);
        if (!b) return MHD_NO;
        memcpy(b + q->len, upload_data, n);
        q->body = b;
        q->len += n;
        return MHD_YES;
    }
    if (q->state == RECEIVING) return submit(h, q);
    pthread_mutex_lock(&q->mu);
    int done = q->state == ANSWERED;
    char *json = q->resp;
    q->resp = NULL;
    pthread_mutex_unlock(&q->mu);
    if (!done) return MHD_YES;   /* a spurious call while waiting */
    return send_json(conn, q->status, json, q->retry_ms, NULL);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)conn, (void)toe;
    hreq *q = *con_cls;
    if (!q) return;
    *con_cls = NULL;
    pthread_mutex_lock(&q->mu);
    int waiting = q->state == WAITING;
    q->orphan = waiting;   /* the request's answer frees it */
    pthread_mutex_unlock(&q->mu);
    if (!waiting) hreq_free(q);
}

/* host:port of c->http_listen into sa; MR_EINVAL. */
static int address(const char *listen, struct sockaddr_storage *sa, unsigned *flags,
                   mr_err *err) {
    char host[128];
    mr_prom_host_of(listen, host, sizeof host);
    const char *colon = strrchr(listen, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || end == colon + 1 || *end || port < 0 || port > 65535)
        return mr_err_set(err, MR_EINVAL, "http_listen '%s': expected HOST:PORT", listen);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    if (getaddrinfo(*host ? host : NULL, NULL, &hints, &ai) || !ai)
        return mr_err_set(err, MR_EINVAL, "http_listen '%s': cannot resolve '%s'", listen, host);
    memset(sa, 0, sizeof *sa);
    memcpy(sa, ai->ai_addr, ai->ai_addrlen);
    if (sa->ss_family == AF_INET6) {
        ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
        *flags |= MHD_USE_IPv6;
    } else {
        ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
    }
    freeaddrinfo(ai);
    return 0;
}

static void http_free(struct mr__http *h) {
    if (!h) return;
    if (h->tls) mr__https_cert_stop();
    free(h->trust);
    free(h);
}

int mr__http_start(mr_coord *c, int *port, mr_err *err) {
    if (port) *port = -1;
    if (!*c->http_listen) return 0;
    struct sockaddr_storage sa;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    int rc = address(c->http_listen, &sa, &flags, err);
    if (rc) return rc;
    struct mr__http *h = calloc(1, sizeof *h);
    if (!h) return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    h->co = c;
    h->drain_until = INFINITY;
    const mr_cc_security *sec = &c->cfg.security;
    if (*sec->tls_cert) {
        flags |= MHD_USE_TLS;
        if (!(rc = mr__https_cert_start(sec->tls_cert, sec->tls_key, err))) h->tls = 1;
        if (rc || (*sec->tls_client_ca &&
             (rc = mr__read_text(sec->tls_client_ca, PEM_LIMIT, &h->trust, NULL, err)))) {
            http_free(h);
            return rc;
        }
    }
    struct MHD_OptionItem tls[] = {
        {h->tls ? MHD_OPTION_HTTPS_CERT_CALLBACK : MHD_OPTION_END, 0,
         (void *)mr__https_cert_retrieve},
        {h->trust ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, 0, h->trust},
        {MHD_OPTION_END, 0, NULL}};
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)HTTP_THREADS, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)HTTP_MAX_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)HTTP_IDLE_TIMEOUT_S, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_ARRAY, tls, MHD_OPTION_END);
    if (!h->d) {
        http_free(h);
        return mr_err_set(err, MR_EIO, "http: cannot listen on %s%s", c->http_listen,
                          *sec->tls_cert ? " (or the TLS certificate/key were refused)" : "");
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    if (port) *port = info ? info->port : -1;
    c->http = h;
    return 0;
}

void mr__http_drain(mr_coord *c, int drain_ms) {
    struct mr__http *h = c->http;
    if (!h) return;
    h->drain_until = mr__now_ms() + (drain_ms > 0 ? drain_ms : 0);
    atomic_store(&h->stopping, 1);
    /* a request past the stopping check is about to reach the scheduler: let it (never
     * blocks), so that nothing enters the scheduler once it is being freed */
    struct timespec ms = {0, 1000000};
    while (atomic_load(&h->arriving) > 0) nanosleep(&ms, NULL);
}

void mr__http_stop(mr_coord *c) {
    struct mr__http *h = c->http;
    if (!h) return;
    MHD_stop_daemon(h->d);
    http_free(h);
    c->http = NULL;
}
