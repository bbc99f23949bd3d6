/* trace.c: W3C trace context parsing and formatting, and the OTLP/HTTP JSON span exporter
 * (see trace.h). The exporter is process-wide: one queue (a ring of MR_TRACE_QUEUE spans under
 * one mutex), one thread that wakes every EXPORT_PERIOD_MS or when BATCH spans wait, renders
 * them with cJSON and POSTs them with libcurl (EXPORT_TIMEOUT_MS per POST). */
#define _GNU_SOURCE
#include "trace.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define BATCH 256
#define EXPORT_PERIOD_MS 500
#define EXPORT_TIMEOUT_MS 3000
#define MAX_ATTRS 6

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;   /* W3C: lower-case hex only */
}

static int parse_hex(const char *s, uint8_t *out, int n) {
    int nonzero = 0;
    for (int i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
        nonzero |= out[i];
    }
    return nonzero ? 0 : -1;
}

int mr_trace_parse(const char *tp, mr_trace_ctx *out) {
    memset(out, 0, sizeof *out);
    /* version 00 is exactly 55 characters; later versions may append "-..." fields;
     * version ff is invalid */
    if (!tp || strlen(tp) < MR_TRACEPARENT_LEN) return MR_EFORMAT;
    if (hexval(tp[0]) < 0 || hexval(tp[1]) < 0 || (tp[0] == 'f' && tp[1] == 'f')) return MR_EFORMAT;
    if (tp[0] == '0' && tp[1] == '0' && tp[MR_TRACEPARENT_LEN]) return MR_EFORMAT;
    if (tp[MR_TRACEPARENT_LEN] && tp[MR_TRACEPARENT_LEN] != '-') return MR_EFORMAT;
    if (tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return MR_EFORMAT;
    uint8_t flags;
    if (parse_hex(tp + 3, out->trace_id, 16) || parse_hex(tp + 36, out->span_id, 8) ||
        (hexval(tp[53]) < 0 || hexval(tp[54]) < 0)) {
        memset(out, 0, sizeof *out);
        return MR_EFORMAT;
    }
    flags = (uint8_t)(hexval(tp[53]) << 4 | hexval(tp[54]));
    out->flags = flags;
    out->valid = 1;
    return 0;
}

static void random_bytes(uint8_t *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t k = getrandom(p + got, n - got, 0);
        if (k <= 0) break;
        got += (size_t)k;
    }
    if (got < n) {   /* no entropy source: the clock, mixed; ids only need to be unique */
        uint64_t x = (uint64_t)time(NULL) ^ (uint64_t)clock() << 17 ^ (uint64_t)(uintptr_t)p;
        for (size_t i = got; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            p[i] = (uint8_t)x;
        }
    }
    int zero = 1;
    for (size_t i = 0; i < n; i++) zero &= !p[i];
    if (zero) p[0] = 1;   /* all-zero ids are invalid */
}

void mr_trace_child(const mr_trace_ctx *parent, mr_trace_ctx *out) {
    mr_trace_ctx c;
    memset(&c, 0, sizeof c);
    if (parent && parent->valid) {
        memcpy(c.trace_id, parent->trace_id, 16);
        memcpy(c.parent_id, parent->span_id, 8);
        c.flags = parent->flags;
        memcpy(c.tracestate, parent->tracestate, sizeof c.tracestate);
    } else {
        random_bytes(c.trace_id, 16);
        c.flags = 1;
    }
    random_bytes(c.span_id, 8);
    c.valid = 1;
    *out = c;
}

static void hex(const uint8_t *p, int n, char *out) {
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = 0;
}

void mr_trace_format(const mr_trace_ctx *c, char *buf) {
    char t[33], s[17];
    hex(c->trace_id, 16, t);
    hex(c->span_id, 8, s);
    snprintf(buf, MR_TRACEPARENT_LEN + 1, "00-%s-%s-%02x", t, s, c->flags);
}

void mr_trace_id_hex(const mr_trace_ctx *c, char *buf) { hex(c->trace_id, 16, buf); }

uint64_t mr_trace_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- exporter ---- */

typedef struct span_rec {
    mr_trace_ctx c;
    int kind;
    char name[96];
    uint64_t start_ns, end_ns;
    char error[160];
    int has_error;
    char attrs[MAX_ATTRS][2][96];
    int n_attrs;
} span_rec;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    span_rec *ring;          /* MR_TRACE_QUEUE entries */
    size_t head, count;
    int running, stop;
    unsigned long dropped;
    char url[512];
    char service[64];
    pthread_t th;
} g_ex = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

int mr_trace_exporting(void) {
    pthread_mutex_lock(&g_ex.mu);
    int r = g_ex.running && !g_ex.stop;
    pthread_mutex_unlock(&g_ex.mu);
    return r;
}

void mr_trace_span(const mr_trace_ctx *c, mr_span_kind kind, const char *name, uint64_t start_ns,
                   uint64_t end_ns, const char *error, const char *const *attrs) {
    if (!c || !c->valid) return;
    pthread_mutex_lock(&g_ex.mu);
    if (!g_ex.running || g_ex.stop) {
        pthread_mutex_unlock(&g_ex.mu);
        return;
    }
    if (g_ex.count == MR_TRACE_QUEUE) {   /* full: drop, never wait */
        g_ex.dropped++;
        pthread_mutex_unlock(&g_ex.mu);
        return;
    }
    span_rec *s = &g_ex.ring[(g_ex.head + g_ex.count) % MR_TRACE_QUEUE];
    memset(s, 0, sizeof *s);
    s->c = *c;
    s->kind = kind;
    snprintf(s->name, sizeof s->name, "%s", name ? name : "span");
    s->start_ns = start_ns;
    s->end_ns = end_ns < start_ns ? start_ns : end_ns;
    if (error) {
        s->has_error = 1;
        snprintf(s->error, sizeof s->error, "%s", error);
    }
    for (int i = 0; attrs && attrs[2 * i] && attrs[2 * i + 1] && i < MAX_ATTRS; i++) {
        snprintf(s->attrs[i][0], sizeof s->attrs[i][0], "%s", attrs[2 * i]);
        snprintf(s->attrs[i][1], sizeof s->attrs[i][1], "%s", attrs[2 * i + 1]);
        s->n_attrs = i + 1;
    }
    g_ex.count++;
    if (g_ex.count >= BATCH) pthread_cond_signal(&g_ex.cv);
    pthread_mutex_unlock(&g_ex.mu);
}

static void add_attr(cJSON *arr, const char *k, const char *v) {
    cJSON *a = cJSON_CreateObject(), *val = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "key", k);
    cJSON_AddStringToObject(val, "stringValue", v);
    cJSON_AddItemToObject(a, "value", val);
    cJSON_AddItemToArray(arr, a);
}

/* The OTLP/HTTP JSON body of spans[0..n) (ids as hex strings, times as decimal strings, as
 * the OTLP JSON mapping says), or NULL when out of memory. */
static char *render(const span_rec *spans, size_t n) {
    cJSON *root = cJSON_CreateObject();
    cJSON *rss = cJSON_AddArrayToObject(root, "resourceSpans");
    cJSON *rs = cJSON_CreateObject();
    cJSON_AddItemToArray(rss, rs);
    cJSON *res = cJSON_AddObjectToObject(rs, "resource");
    add_attr(cJSON_AddArrayToObject(res, "attributes"), "service.name", g_ex.service);
    cJSON *sss = cJSON_AddArrayToObject(rs, "scopeSpans");
    cJSON *ss = cJSON_CreateObject();
    cJSON_AddItemToArray(sss, ss);
    cJSON *scope = cJSON_AddObjectToObject(ss, "scope");
    cJSON_AddStringToObject(scope, "name", "mrank");
    cJSON *arr = cJSON_AddArrayToObject(ss, "spans");
    for (size_t i = 0; i < n; i++) {
        const span_rec *s = &spans[i];
        char t[33], id[17], pid[17], num[32];
        hex(s->c.trace_id, 16, t);
        hex(s->c.span_id, 8, id);
        hex(s->c.parent_id, 8, pid);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "traceId", t);
        cJSON_AddStringToObject(o, "spanId", id);
        static const uint8_t zero[8];
        if (memcmp(s->c.parent_id, zero, 8)) cJSON_AddStringToObject(o, "parentSpanId", pid);
        if (*s->c.tracestate) cJSON_AddStringToObject(o, "traceState", s->c.tracestate);
        cJSON_AddStringToObject(o, "name", s->name);
        cJSON_AddNumberToObject(o, "kind", s->kind);
        snprintf(num, sizeof num, "%llu", (unsigned long long)s->start_ns);
        cJSON_AddStringToObject(o, "startTimeUnixNano", num);
        snprintf(num, sizeof num, "%llu", (unsigned long long)s->end_ns);
        cJSON_AddStringToObject(o, "endTimeUnixNano", num);
        cJSON *at = cJSON_AddArrayToObject(o, "attributes");
        for (int k = 0; k < s->n_attrs; k++) add_attr(at, s->attrs[k][0], s->attrs[k][1]);
        cJSON *st = cJSON_AddObjectToObject(o, "status");
        cJSON_AddNumberToObject(st, "code", s->has_error ? 2 : 1);   /* ERROR : OK */
        if (s->has_error) cJSON_AddStringToObject(st, "message", s->error);
        cJSON_AddItemToArray(arr, o);
    }
    char *body = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return body;
}

static size_t discard(char *p, size_t sz, size_t n, void *u) { return sz * n; }

/* POSTs body; 0 on a 2xx answer. */
static int post(CURL *h, const char *body) {
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, g_ex.url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)EXPORT_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    CURLcode rc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(hd);
    return rc == CURLE_OK && code >= 200 && code < 300 ? 0 : -1;
}

static void *export_main(void *arg) {
    CURL *h = curl_easy_init();
    span_rec *batch = calloc(BATCH, sizeof *batch);
    pthread_mutex_lock(&g_ex.mu);
    for (;;) {
        if (!g_ex.stop && g_ex.count < BATCH) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += EXPORT_PERIOD_MS * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&g_ex.cv, &g_ex.mu, &until);
        }
        size_t n = 0;
        while (batch && n < BATCH && g_ex.count) {
            batch[n++] = g_ex.ring[g_ex.head];
            g_ex.head = (g_ex.head + 1) % MR_TRACE_QUEUE;
            g_ex.count--;
        }
        int stop = g_ex.stop;
        pthread_mutex_unlock(&g_ex.mu);
        int failed = 0;
        if (n) {
            char *body = render(batch, n);
            failed = !h || !body || post(h, body);
            cJSON_free(body);
        }
        pthread_mutex_lock(&g_ex.mu);
        if (failed) g_ex.dropped += n;
        if (stop && (!g_ex.count || failed || !batch)) break;
    }
    pthread_mutex_unlock(&g_ex.mu);
    free(batch);
    if (h) curl_easy_cleanup(h);
    return NULL;
}

int mr_trace_export_start(const char *endpoint, const char *service, mr_err *err) {
    if (!endpoint || (strncmp(endpoint, "http://", 7) && strncmp(endpoint, "https://", 8)) ||
        strlen(endpoint) > 400)
        return mr_err_set(err, MR_EINVAL, "otlp endpoint '%.100s' is not an http(s):// URL",
                          endpoint ? endpoint : "(null)");
    pthread_mutex_lock(&g_ex.mu);
    if (g_ex.running) {
        pthread_mutex_unlock(&g_ex.mu);
        return mr_err_set(err, MR_ESTATE, "otlp exporter already started");
    }
    const char *path = strchr(endpoint + (endpoint[4] == 's' ? 8 : 7), '/');
    snprintf(g_ex.url, sizeof g_ex.url, "%s%s", endpoint, path ? "" : "/v1/traces");
    snprintf(g_ex.service, sizeof g_ex.service, "%s", service ? service : "mrank");
    if (!(g_ex.ring = calloc(MR_TRACE_QUEUE, sizeof *g_ex.ring))) {
        pthread_mutex_unlock(&g_ex.mu);
        return mr_err_set(err, MR_ENOMEM, "otlp exporter: out of memory");
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_ex.head = g_ex.count = 0;
    g_ex.stop = 0;
    g_ex.running = 1;
    if (pthread_create(&g_ex.th, NULL, export_main, NULL)) {
        g_ex.running = 0;
        free(g_ex.ring);
        g_ex.ring = NULL;
        pthread_mutex_unlock(&g_ex.mu);
        return mr_err_set(err, MR_ENOMEM, "otlp exporter: cannot start its thread");
    }
    pthread_mutex_unlock(&g_ex.mu);
    return 0;
}

void mr_trace_export_stop(void) {
    pthread_mutex_lock(&g_ex.mu);
    if (!g_ex.running) {
        pthread_mutex_unlock(&g_ex.mu);
        return;
    }
    g_ex.stop = 1;
    pthread_cond_signal(&g_ex.cv);
    pthread_mutex_unlock(&g_ex.mu);
    pthread_join(g_ex.th, NULL);
    pthread_mutex_lock(&g_ex.mu);
    g_ex.running = 0;
    free(g_ex.ring);
    g_ex.ring = NULL;
    g_ex.count = 0;
    pthread_mutex_unlock(&g_ex.mu);
    curl_global_cleanup();
}

unsigned long mr_trace_dropped(void) {
    pthread_mutex_lock(&g_ex.mu);
    unsigned long d = g_ex.dropped;
    pthread_mutex_unlock(&g_ex.mu);
    return d;
}
