/* prom.c: Prometheus text writer, histograms and the libmicrohttpd /metrics endpoint with its
 * connection limits and idle timeout (see prom.h). */
#define _GNU_SOURCE
#include "prom.h"

#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mr_prom_printf(mr_prom_text *t, const char *fmt, ...) {
    if (t->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->p ? t->p + t->n : NULL, t->p ? t->cap - t->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            t->oom = 1;
            return;
        }
        if (t->p && t->n + (size_t)k < t->cap) {
            t->n += (size_t)k;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)k;
        char *q = realloc(t->p, cap);
        if (!q) {
            t->oom = 1;
            return;
        }
        t->p = q;
        t->cap = cap;
    }
}

void mr_prom_family(mr_prom_text *t, const char *name, const char *type, const char *help) {
    mr_prom_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *mr_prom_text_take(mr_prom_text *t) {
    char *p = t->p;
    if (t->oom) {
        free(p);
        p = NULL;
    } else if (!p) {
        p = calloc(1, 1);
    }
    *t = (mr_prom_text){0};
    return p;
}

void mr_prom_hist_init(mr_prom_hist *h, const double *bounds, int n) {
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n = n < MR_PROM_MAX_BUCKETS ? n : MR_PROM_MAX_BUCKETS;
}

void mr_prom_hist_observe(mr_prom_hist *h, double v) {
    int b = 0;
    while (b < h->n && v > h->bounds[b]) b++;
    h->counts[b]++;
    h->count++;
    h->sum += v;
}

void mr_prom_hist_write(mr_prom_text *t, const char *name, const char *labels,
                        const mr_prom_hist *h) {
    const char *l = labels ? labels : "", *sep = labels ? "," : "";
    unsigned long long cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        mr_prom_printf(t, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, l, sep, h->bounds[i], cum);
    }
    mr_prom_printf(t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, l, sep, h->count);
    if (labels) {
        mr_prom_printf(t, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, l, h->sum, name, l,
                       h->count);
    } else {
        mr_prom_printf(t, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name, h->count);
    }
}

struct mr_prom_http {
    struct MHD_Daemon *d;
    mr_prom_render_fn render;
    void *user;
};

static enum MHD_Result on_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls) {
    mr_prom_http *h = cls;
    struct MHD_Response *r;
    unsigned code;
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        static const char msg[] = "method not allowed: GET /metrics\n";
        r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        code = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (strcmp(url, "/metrics")) {
        static const char msg[] = "not found: try /metrics\n";
        r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        code = MHD_HTTP_NOT_FOUND;
    } else {
        char *text = h->render(h->user);
        if (!text) return MHD_NO;
        r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        if (!r) free(text);
        else MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        code = MHD_HTTP_OK;
    }
    if (!r) return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

int mr_prom_http_new(mr_prom_http **out, int port, mr_prom_render_fn render, void *user,
                     int *bound_port, mr_err *err) {
    return mr_prom_http_new_at(out, NULL, port, render, user, bound_port, err);
}

int mr_prom_http_new_at(mr_prom_http **out, const char *host, int port,
                        mr_prom_render_fn render, void *user, int *bound_port, mr_err *err) {
    mr_prom_http_opts o;
    mr_prom_http_opts_init(&o);
    o.host = host;
    o.port = port;
    return mr_prom_http_start(out, &o, render, user, bound_port, err);
}

void mr_prom_host_of(const char *listen, char *host, size_t cap) {
    const char *a = listen ? listen : "";
    if (!strncmp(a, "ipv4:", 5) || !strncmp(a, "ipv6:", 5)) a += 5;
    const char *end;
    if (*a == '[' && (end = strchr(a, ']'))) a++;   /* [::1]:7100 */
    else end = strrchr(a, ':');
    size_t n = end ? (size_t)(end - a) : strlen(a);
    snprintf(host, cap, "%.*s", (int)n, a);
}

void mr_prom_http_opts_init(mr_prom_http_opts *o) {
    *o = (mr_prom_http_opts){.port = 0, .idle_timeout_s = 10, .max_connections = 64,
                             .max_per_ip = 16};
}

int mr_prom_http_start(mr_prom_http **out, const mr_prom_http_opts *o, mr_prom_render_fn render,
                       void *user, int *bound_port, mr_err *err) {
    *out = NULL;
    if (bound_port) *bound_port = -1;
    if (o->port < 0 || o->port > 65535)
        return mr_err_set(err, MR_EINVAL, "metrics: port %d out of range", o->port);
    if (!o->idle_timeout_s || !o->max_connections || !o->max_per_ip)
        return mr_err_set(err, MR_EINVAL, "metrics: idle timeout %u s, %u connections, %u per "
                          "address: each must be at least 1", o->idle_timeout_s,
                          o->max_connections, o->max_per_ip);
    const char *host = o->host;
    struct sockaddr_storage sa;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (host && *host) {   /* bind exactly there (a name resolves to its first address) */
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
        if (getaddrinfo(host, NULL, &hints, &ai) || !ai)
            return mr_err_set(err, MR_EINVAL, "metrics: cannot resolve host '%s'", host);
        memset(&sa, 0, sizeof sa);
        memcpy(&sa, ai->ai_addr, ai->ai_addrlen);
        if (sa.ss_family == AF_INET6) {
            ((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)o->port);
            flags |= MHD_USE_IPv6;
        } else {
            ((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)o->port);
        }
        freeaddrinfo(ai);
    }
    mr_prom_http *h = calloc(1, sizeof *h);
    if (!h) return mr_err_set(err, MR_ENOMEM, "metrics: out of memory");
    h->render = render;
    h->user = user;
    /* AUTO picks epoll on Linux (poll elsewhere): select() would refuse fds above 1023 */
    if (host && *host)
        h->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_http, h,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->idle_timeout_s,
                                MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
                                MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->max_per_ip,
                                MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_END);
    else
        h->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_http, h,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->idle_timeout_s,
                                MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
                                MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->max_per_ip,
                                MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return mr_err_set(err, MR_EIO, "metrics: cannot listen on %s port %d",
                          host && *host ? host : "all interfaces", o->port);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    if (bound_port) *bound_port = info && info->port ? info->port : o->port;
    *out = h;
    return 0;
}

unsigned mr_prom_http_connections(const mr_prom_http *h) {
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return info ? info->num_connections : 0;
}

void mr_prom_http_free(mr_prom_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->d);
    free(h);
}
