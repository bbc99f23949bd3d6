/* prom.h: Prometheus text exposition (format 0.0.4) and the /metrics HTTP endpoint that serves
 * it, shared by the worker's and the coordinator's metrics.
 *
 * A metrics owner keeps its counters and histograms under its own lock and renders them on
 * demand into an mr_prom_text; the endpoint (libmicrohttpd, its own polling thread) calls the
 * owner's render function for every GET /metrics. Not here: which metrics exist (worker/
 * worker_metrics.c, coordinator/coord_metrics.c). */
#ifndef MR_PROM_H
#define MR_PROM_H

#include <stddef.h>

#include "mr_err.h"

/* ---- text ---- */

/* A growing text buffer; zero-initialise it. A failed allocation sets oom and makes every
 * later write a no-op, so writers check once, at the end (mr_prom_text_take). */
typedef struct mr_prom_text {
    char *p;
    size_t n, cap;
    int oom;
} mr_prom_text;

void mr_prom_printf(mr_prom_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "# HELP name help" and "# TYPE name type" (type: counter, gauge, histogram). */
void mr_prom_family(mr_prom_text *t, const char *name, const char *type, const char *help);
/* The text (malloc'd, NUL-terminated, the caller frees it), or NULL after an allocation
 * failure; the buffer is released either way. */
char *mr_prom_text_take(mr_prom_text *t);

/* mrank_build_info{version,revision,component} 1 and the process_* metrics of the Prometheus
 * client libraries (process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
 * process_start_time_seconds, ...), from /proc/self (prom_process.c). component: "worker",
 * "coordinator". */
void mr_prom_process(mr_prom_text *t, const char *component);

/* ---- histograms ---- */

#define MR_PROM_MAX_BUCKETS 24

/* Fixed upper bounds (increasing, at most MR_PROM_MAX_BUCKETS) plus the implicit +Inf. */
typedef struct mr_prom_hist {
    const double *bounds;
    int n;
    unsigned long long counts[MR_PROM_MAX_BUCKETS + 1]; /* per bucket; [n] is (bounds[n-1], +Inf) */
    unsigned long long count;
    double sum;
} mr_prom_hist;

/* bounds must outlive h; n is clamped to MR_PROM_MAX_BUCKETS. */
void mr_prom_hist_init(mr_prom_hist *h, const double *bounds, int n);
void mr_prom_hist_observe(mr_prom_hist *h, double v);
/* Writes the _bucket (cumulative), _sum and _count series of h. labels is NULL or a label list
 * without braces (tier="interactive") put before le. Does not write HELP/TYPE. */
void mr_prom_hist_write(mr_prom_text *t, const char *name, const char *labels,
                        const mr_prom_hist *h);

/* ---- endpoint ---- */

/* Renders the whole exposition (malloc'd, or NULL on failure). Called on the endpoint's
 * thread. */
typedef char *(*mr_prom_render_fn)(void *user);

typedef struct mr_prom_http mr_prom_http;

/* What the endpoint allows one client or many: hostile clients cost bounded work. Connections
 * over max_connections wait in the kernel's listen backlog until one closes; a client address
 * with max_per_ip connections open has more closed at once, so one address cannot take every
 * slot from the scraper. Polling is epoll (or poll) on an internal thread, never select, so
 * descriptors above 1023 work. */
typedef struct mr_prom_http_opts {
    const char *host;          /* numeric address or name (its first address) to bind;
                                * NULL or "": all interfaces */
    int port;                  /* 0: any free port */
    unsigned idle_timeout_s;   /* a connection idle this long is closed (default 10) */
    unsigned max_connections;  /* open at once (default 64) */
    unsigned max_per_ip;       /* open at once from one client address (default 16) */
} mr_prom_http_opts;

/* The defaults above, all interfaces, port 0. */
void mr_prom_http_opts_init(mr_prom_http_opts *o);

/* Serves GET (and HEAD) /metrics on o->host, o->port; other paths get 404, other
 * methods 405. *bound_port (may be NULL) receives the port. MR_EINVAL for a port outside
 * [0, 65535], a zero timeout or limit, or a host that does not resolve, MR_EIO when the port
 * cannot be bound. */
int mr_prom_http_start(mr_prom_http **out, const mr_prom_http_opts *o, mr_prom_render_fn render,
                       void *user, int *bound_port, mr_err *err);
/* mr_prom_http_start with the defaults on port, all interfaces. */
int mr_prom_http_new(mr_prom_http **out, int port, mr_prom_render_fn render, void *user,
                     int *bound_port, mr_err *err);
/* Connections open now (accepted, not yet closed). */
unsigned mr_prom_http_connections(const mr_prom_http *h);
/* mr_prom_http_start with the defaults on one address: host is a numeric address or a name (its first address), NULL or
 * "" for all interfaces. Services bind where their gRPC listener is (mr_prom_host_of). */
int mr_prom_http_new_at(mr_prom_http **out, const char *host, int port,
                        mr_prom_render_fn render, void *user, int *bound_port, mr_err *err);
/* The host part of a gRPC listen address: "127.0.0.1:7100" -> "127.0.0.1", "[::1]:0" ->
 * "::1", "0.0.0.0:7001" -> "0.0.0.0" (a wildcard only when gRPC was told so). */
void mr_prom_host_of(const char *listen, char *host, size_t cap);
/* Stops the endpoint (in-flight responses finish) and frees it; NULL is a no-op. */
void mr_prom_http_free(mr_prom_http *h);

#endif
