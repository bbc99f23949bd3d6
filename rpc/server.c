/* server.c: the gRPC core server behind rpc.h.
 *
 * One completion queue, polled by one thread (cq_thread), carries every event: a registered
 * method's armed request completing (a call arrived), the generic request (a method nobody
 * registered: answered UNIMPLEMENTED at once), a call's RECV_CLOSE_ON_SERVER (client gone or
 * deadline passed: sets the cancelled flag), a call's final send, a stream write, and the
 * server's shutdown notification. Arrived calls go on a mutex+condvar queue drained by the
 * handler threads; health checks and the methods registered inline (mr_rpc_server_add_inline)
 * run on the queue thread itself, the moment the call and its message arrived. Between two
 * events it handles, the queue thread takes every event that is ready into a backlog and
 * stamps each arrived call then (cq_take), so an inline handler's time does not delay the
 * arrival time of the calls that came during it.
 *
 * Call lifetime: a call starts with two references, the owner's (whoever must finish it) and
 * the close batch's. Finishing turns the owner's reference into the send batch's; each batch
 * completion drops its reference, and the last one frees the call and decrements the server's
 * live-call count. The completion queue is shut down only when that count is zero and the
 * server is destroyed, so no batch can ever be started on a shut-down queue.
 *
 * Health/Watch calls are linked on s->watchers by their inline handler; one watch thread
 * (watch_main) writes each one's status when it changed and finishes those whose client went
 * away (the close event wakes it) or, at shutdown, all of them.
 *
 * Lock order: s->mu, then call->mu; health uses its own s->health_mu, never with the others
 * (the watch thread writes with no lock held). */
#define _GNU_SOURCE
#include "rpc.h"
#include "rpc_methods.h"
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "reflection.h"
#include "rpc_status.h"
#include "trace.h"
#include "tsan/grpc_hb.h"

#define MR__REQS_PER_METHOD 8
/* Inline methods (admission at arrival) keep more calls requested, so that a burst is matched
 * and stamped as it arrives rather than as slots are re-armed one handler at a time. */
#define MR__REQS_INLINE 64
/* Completion events the queue thread holds between handlers (cq_main): each is stamped when
 * taken, so a call's arrival time is not delayed by the handlers that ran before it. */
#define MR__CQ_BACKLOG 256
#define MR__MAX_METHODS 32
#define MR_RPC_MAX_WATCHERS 1024   /* Health/Watch streams open at once; more: RESOURCE_EXHAUSTED */
#define MR_RPC_MAX_BIDI 16         /* bidi streams (reflection) open at once; more: RESOURCE_EXHAUSTED */
/* How long a write may wait for the client to take a message (HTTP/2 flow control): the call's
 * deadline, at most the server's write cap (MR_RPC_WRITE_MAX_MS unless set); a health watch's
 * at most HEALTH_WRITE_MS, so that one watcher that stops reading cannot hold the other
 * watchers' updates for long. Past it the call is cancelled. */
#define HEALTH_WRITE_MS 2000

enum tag_kind { TAG_REQ, TAG_GENERIC, TAG_CLOSE, TAG_SEND, TAG_WRITE, TAG_READ, TAG_SHUTDOWN };

typedef struct tag {
    enum tag_kind kind;
    void *p;
} tag;

typedef struct rpc_method {
    char *path;
    mr_rpc_handler h;
    void *user;
    int stream;
    int inline_run;      /* runs on the queue thread (health, mr_rpc_server_add_inline) */
    int bidi;            /* client streaming too: its own thread, messages by mr_rpc_call_read */
    void *reg;           /* grpc_server_register_method handle */
} rpc_method;

/* One armed grpc_server_request_registered_call (or the generic grpc_server_request_call). */
typedef struct slot {
    tag t;
    mr_rpc_server *s;
    rpc_method *m;           /* NULL for the generic slot */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_call_details details;
    double seen_ms;          /* monotonic ms when the queue thread took its event */
} slot;

struct mr_rpc_call {
    mr_rpc_server *s;
    rpc_method *m;
    grpc_call *call;
    gpr_timespec deadline;   /* monotonic; inf_future when none */
    double arrival_ms;       /* monotonic ms when the call and its message arrived */
    grpc_metadata_array md;
    uint8_t *req;
    size_t req_len;
    tag close_tag, send_tag, write_tag, read_tag;
    int close_cancelled;     /* out-param of RECV_CLOSE_ON_SERVER */
    atomic_int cancelled;
    atomic_int refs;
    atomic_int finished;
    int sent_md;             /* initial metadata already sent */
    grpc_byte_buffer *send_buf, *write_buf;
    grpc_slice details;
    int have_details;
    grpc_metadata trailer;   /* one trailing metadata entry on failure (mr_rpc_call_fail_md) */
    int have_trailer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int write_done, write_ok;
    mr_trace_ctx trace;          /* this call's SERVER span */
    int trace_record;            /* export it: the client traced, or a public (Ranker) call;
                                  * untraced internal calls (probes, warm-ups) are not */
    uint64_t trace_start_ns;
    int read_done;
    grpc_byte_buffer *read_buf;  /* RECV_MESSAGE's out-param: NULL at the end of the stream */
    struct mr_rpc_call *next;    /* handler queue */
};

typedef struct health_entry {
    char *service;
    int serving;
    struct health_entry *next;
} health_entry;

/* One Health/Watch stream: the watch thread owns its call (finishes it) and is the only one
 * that unlinks or frees it; sent is the status last written (-2: none yet). */
typedef struct watcher {
    mr_rpc_call *call;
    char *service;
    int sent;
    int dead;                    /* a write failed: the client is gone */
    struct watcher *next;
} watcher;

struct mr_rpc_server {
    char *addr;
    int n_threads;
    int max_recv;               /* GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH */
    int write_max_ms;           /* a stream write's longest wait (mr_rpc_call_write) */
    mr_rpc_tls_server *tls;     /* owned; NULL: plaintext */
    grpc_server *srv;
    grpc_completion_queue *cq;
    rpc_method methods[MR__MAX_METHODS];
    int n_methods;
    int started, shut;
    pthread_t cq_thread;
    pthread_t *workers;
    int n_workers;

    pthread_mutex_t mu;      /* everything below */
    pthread_cond_t cv;       /* queue non-empty, or stopping */
    pthread_cond_t idle_cv;  /* live calls reached 0, or the shutdown tag arrived */
    mr_rpc_call *qhead, *qtail;
    int stopping;            /* handler threads exit once the queue is empty */
    int shutting_down;       /* no re-arming */
    int shutdown_done;       /* the shutdown tag arrived */
    long live_calls;
    int n_bidi;              /* bidi handler threads running (each ends with its call) */
    mr_rpc_call *bidi_calls[MR_RPC_MAX_BIDI]; /* their calls, each with a reference held here,
                                                so shutdown can cancel a stream that waits on
                                                a silent client instead of draining for it */
    tag shutdown_tag;

    pthread_mutex_t health_mu;
    health_entry *health;
    atomic_int health_frozen;    /* shutdown began: statuses stay NOT_SERVING */
    /* Health/Watch (under health_mu): streams, and the thread that writes their updates */
    pthread_cond_t health_cv;    /* a status changed, a watcher arrived or left, or stopping */
    watcher *watchers;
    int n_watchers;
    int health_dirty;            /* something for the watch thread to look at */
    int watch_stop;              /* shutdown: finish every watch, accept no new one */
    int watch_started;
    pthread_t watch_thread;
};

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_init(void) {
    if (!getenv("GRPC_VERBOSITY")) gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
}

static void *xcalloc(size_t n, size_t sz) { return calloc(n ? n : 1, sz ? sz : 1); }

/* ---- calls ---- */

static void call_unref(mr_rpc_call *c) {
    if (atomic_fetch_sub(&c->refs, 1) != 1) return;
    mr_rpc_server *s = c->s;
    grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    if (c->send_buf) grpc_byte_buffer_destroy(c->send_buf);
    if (c->write_buf) grpc_byte_buffer_destroy(c->write_buf);
    if (c->have_details) grpc_slice_unref(c->details);
    if (c->have_trailer) {
        grpc_slice_unref(c->trailer.key);
        grpc_slice_unref(c->trailer.value);
    }
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c->req);
    free(c);
    pthread_mutex_lock(&s->mu);
    if (--s->live_calls == 0) pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
}

static uint8_t *read_payload(grpc_byte_buffer *bb, size_t *len) {
    *len = 0;
    if (!bb) return xcalloc(1, 1);
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    size_t n = GRPC_SLICE_LENGTH(all);
    uint8_t *out = xcalloc(n + 1, 1);
    if (out) {
        memcpy(out, GRPC_SLICE_START_PTR(all), n);
        *len = n;
    }
    grpc_slice_unref(all);
    return out;
}

/* Takes over slot's call, deadline, metadata and payload; starts the close batch. NULL when
 * out of memory or the close batch cannot start (the call is then cancelled and released). */
static mr_rpc_call *call_new(mr_rpc_server *s, slot *sl) {
    mr_rpc_call *c = xcalloc(1, sizeof *c);
    size_t len = 0;
    uint8_t *req = c ? read_payload(sl->payload, &len) : NULL;
    if (sl->payload) grpc_byte_buffer_destroy(sl->payload);
    sl->payload = NULL;
    if (!c || !req) {
        free(c);
        free(req);
        grpc_call_cancel_with_status(sl->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                                     NULL);
        grpc_call_unref(sl->call);
        grpc_metadata_array_destroy(&sl->md);
        grpc_metadata_array_init(&sl->md);
        return NULL;
    }
    c->s = s;
    c->m = sl->m;
    c->call = sl->call;
    c->deadline = gpr_convert_clock_type(sl->deadline, GPR_CLOCK_MONOTONIC);
    c->arrival_ms = sl->seen_ms;
    c->md = sl->md;   /* moved */
    grpc_metadata_array_init(&sl->md);
    {
        char tp[MR_TRACEPARENT_LEN + 8];
        mr_trace_ctx parent;
        int have = mr_rpc_call_metadata(c, "traceparent", tp, sizeof tp) > 0 &&
                   !mr_trace_parse(tp, &parent);
        if (have && mr_rpc_call_metadata(c, "tracestate", parent.tracestate,
                                         sizeof parent.tracestate) >= (int)sizeof parent.tracestate)
            parent.tracestate[0] = 0;   /* longer than we keep: dropped, not cut */
        mr_trace_child(have ? &parent : NULL, &c->trace);
        c->trace_start_ns = mr_trace_now_ns();
        c->trace_record = have || !strncmp(mr_rpc_call_method(c), "/" MR_SERVICE_RANKER "/",
                                           strlen(MR_SERVICE_RANKER) + 2);
    }
    c->req = req;
    c->req_len = len;
    c->close_tag = (tag){TAG_CLOSE, c};
    c->send_tag = (tag){TAG_SEND, c};
    c->write_tag = (tag){TAG_WRITE, c};
    c->read_tag = (tag){TAG_READ, c};
    atomic_init(&c->refs, 2);
    atomic_init(&c->cancelled, 0);
    atomic_init(&c->finished, 0);
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;   /* monotonic: a write's bound (write_within) is a duration */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&s->mu);
    s->live_calls++;
    pthread_mutex_unlock(&s->mu);

    grpc_op op = {0};
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    MR_GRPC_HANDOFF(&c->close_tag);
    if (grpc_call_start_batch(c->call, &op, 1, &c->close_tag, NULL) != GRPC_CALL_OK) {
        atomic_store(&c->cancelled, 1);
        call_unref(c);   /* the close reference; the owner still finishes it */
    }
    return c;
}

const uint8_t *mr_rpc_call_request(mr_rpc_call *c, size_t *len) {
    if (len) *len = c->req_len;
    return c->req;
}

const char *mr_rpc_call_method(mr_rpc_call *c) { return c->m ? c->m->path : ""; }

double mr_rpc_call_arrival_ms(mr_rpc_call *c) { return c->arrival_ms; }

double mr_rpc_call_remaining_ms(mr_rpc_call *c) {
    if (gpr_time_cmp(c->deadline, gpr_inf_future(GPR_CLOCK_MONOTONIC)) == 0)
        return MR_RPC_NO_DEADLINE_MS;
    gpr_timespec d = gpr_time_sub(c->deadline, gpr_now(GPR_CLOCK_MONOTONIC));
    return (double)d.tv_sec * 1e3 + d.tv_nsec / 1e6;
}

int mr_rpc_call_cancelled(mr_rpc_call *c) {
    return atomic_load(&c->cancelled) || mr_rpc_call_remaining_ms(c) <= 0;
}

int mr_rpc_call_metadata(mr_rpc_call *c, const char *key, char *buf, size_t cap) {
    size_t klen = strlen(key);
    for (size_t i = 0; i < c->md.count; i++) {
        grpc_slice k = c->md.metadata[i].key, v = c->md.metadata[i].value;
        if (GRPC_SLICE_LENGTH(k) != klen || memcmp(GRPC_SLICE_START_PTR(k), key, klen)) continue;
        size_t n = GRPC_SLICE_LENGTH(v);
        if (cap) {
            size_t m = n < cap - 1 ? n : cap - 1;
            memcpy(buf, GRPC_SLICE_START_PTR(v), m);
            buf[m] = 0;
        }
        return (int)n;
    }
    return -1;
}

static grpc_byte_buffer *make_buffer(const uint8_t *p, size_t len) {
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)p, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

/* The completion-queue thread: a write there would wait for its own completion forever. */
static _Thread_local int t_on_cq_thread;

static void abs_deadline(struct timespec *ts, int ms);

/* Sends one message and waits until gRPC has taken it, at most cap_ms: a client that stops
 * reading (HTTP/2 flow control) would otherwise hold the writing thread for ever. Past the
 * bound the call is cancelled (its completion then comes at once) and the write fails. */
static int write_within(mr_rpc_call *c, const uint8_t *buf, size_t len, int cap_ms) {
    if (t_on_cq_thread || atomic_load(&c->finished) || atomic_load(&c->cancelled))
        return MR_ESTATE;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    int n = 0;
    if (!c->sent_md) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    if (c->write_buf) grpc_byte_buffer_destroy(c->write_buf);
    c->write_buf = make_buffer(buf ? buf : (const uint8_t *)"", len);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = c->write_buf;
    n++;
    pthread_mutex_lock(&c->mu);
    c->write_done = 0;
    pthread_mutex_unlock(&c->mu);
    MR_GRPC_HANDOFF(&c->write_tag);
    if (grpc_call_start_batch(c->call, ops, (size_t)n, &c->write_tag, NULL) != GRPC_CALL_OK)
        return MR_ESTATE;
    c->sent_md = 1;
    struct timespec until;
    abs_deadline(&until, cap_ms);
    int timed_out = 0;
    pthread_mutex_lock(&c->mu);
    while (!c->write_done && !timed_out)
        timed_out = pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT;
    if (!c->write_done) {   /* stuck: cancel, then the batch completes (failed) promptly */
        pthread_mutex_unlock(&c->mu);
        grpc_call_cancel(c->call, NULL);
        pthread_mutex_lock(&c->mu);
        while (!c->write_done) pthread_cond_wait(&c->cv, &c->mu);
    }
    int ok = c->write_ok && !timed_out;
    pthread_mutex_unlock(&c->mu);
    return ok ? 0 : MR_ESTATE;
}

int mr_rpc_call_write(mr_rpc_call *c, const uint8_t *buf, size_t len) {
    double rem = mr_rpc_call_remaining_ms(c);
    int max = c->s->write_max_ms;
    int cap = rem < max ? (rem > 1 ? (int)rem : 1) : max;
    return write_within(c, buf, len, cap);
}

int mr_rpc_call_read(mr_rpc_call *c, uint8_t **msg, size_t *len) {
    *msg = NULL;
    *len = 0;
    if (!c->m || !c->m->bidi || atomic_load(&c->finished) || atomic_load(&c->cancelled))
        return MR_ESTATE;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->read_buf;
    c->read_buf = NULL;
    pthread_mutex_lock(&c->mu);
    c->read_done = 0;
    pthread_mutex_unlock(&c->mu);
    MR_GRPC_HANDOFF(&c->read_tag);
    if (grpc_call_start_batch(c->call, &op, 1, &c->read_tag, NULL) != GRPC_CALL_OK)
        return MR_ESTATE;
    pthread_mutex_lock(&c->mu);
    while (!c->read_done) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    if (!c->read_buf) return atomic_load(&c->cancelled) ? MR_ESTATE : 1;
    *msg = read_payload(c->read_buf, len);
    grpc_byte_buffer_destroy(c->read_buf);
    c->read_buf = NULL;
    return *msg ? 0 : MR_ENOMEM;
}

const mr_trace_ctx *mr_rpc_call_trace(mr_rpc_call *c) { return &c->trace; }

static void call_end(mr_rpc_call *c, grpc_status_code code, const char *message,
                     const uint8_t *resp, size_t len, int send_msg, const char *md_key,
                     const char *md_value) {
    if (atomic_exchange(&c->finished, 1)) {
        gpr_log(GPR_ERROR, "mrank rpc: %s finished twice (ignored)", mr_rpc_call_method(c));
        return;
    }
    const char *path = mr_rpc_call_method(c);
    if (c->trace_record && mr_trace_exporting()) {
        const char *attrs[] = {"rpc.system", "grpc", "rpc.method", path, "rpc.grpc.status_code",
                               mr_rpc_status_name(code), NULL};
        mr_trace_span(&c->trace, MR_SPAN_SERVER, path, c->trace_start_ns, mr_trace_now_ns(),
                      code == GRPC_STATUS_OK ? NULL : (message && *message ? message : "error"),
                      attrs);
    }
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    int n = 0;
    if (!c->sent_md) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
        c->sent_md = 1;
    }
    if (send_msg) {
        c->send_buf = make_buffer(resp ? resp : (const uint8_t *)"", len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send_buf;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    if (message && *message) {
        c->details = grpc_slice_from_copied_string(message);
        c->have_details = 1;
        ops[n].data.send_status_from_server.status_details = &c->details;
    }
    if (md_key && md_value) {
        c->trailer.key = grpc_slice_from_copied_string(md_key);
        c->trailer.value = grpc_slice_from_copied_string(md_value);
        c->have_trailer = 1;
        ops[n].data.send_status_from_server.trailing_metadata_count = 1;
        ops[n].data.send_status_from_server.trailing_metadata = &c->trailer;
    }
    n++;
    /* the owner's reference becomes the send batch's */
    MR_GRPC_HANDOFF(&c->send_tag);
    if (grpc_call_start_batch(c->call, ops, (size_t)n, &c->send_tag, NULL) != GRPC_CALL_OK)
        call_unref(c);
}

void mr_rpc_call_finish(mr_rpc_call *c, const uint8_t *resp, size_t len) {
    int send_msg = !(c->m && c->m->stream && !resp && !len);
    call_end(c, GRPC_STATUS_OK, NULL, resp, len, send_msg, NULL, NULL);
}

void mr_rpc_call_fail(mr_rpc_call *c, grpc_status_code code, const char *message) {
    mr_rpc_call_fail_md(c, code, message, NULL, NULL);
}

void mr_rpc_call_fail_md(mr_rpc_call *c, grpc_status_code code, const char *message,
                         const char *key, const char *value) {
    if (code == GRPC_STATUS_OK) code = GRPC_STATUS_UNKNOWN;
    call_end(c, code, message, NULL, 0, 0, key, value);
}

/* ---- health ---- */

/* 1 serving, 0 not, -1 unknown service; caller holds health_mu. */
static int health_get_locked(mr_rpc_server *s, const char *service) {
    for (health_entry *e = s->health; e; e = e->next)
        if (!strcmp(e->service, service)) return e->serving;
    return -1;
}

static int health_get(mr_rpc_server *s, const char *service) {
    pthread_mutex_lock(&s->health_mu);
    int st = health_get_locked(s, service);
    pthread_mutex_unlock(&s->health_mu);
    return st;
}

/* Packs a HealthCheckResponse for st (1, 0, -1 = SERVICE_UNKNOWN) into buf (>= 16 bytes). */
static size_t health_pack(int st, uint8_t *buf) {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = st > 0    ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                  : st == 0 ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                            : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    return grpc__health__v1__health_check_response__pack(&resp, buf);
}

void mr_rpc_server_set_health(mr_rpc_server *s, const char *service, int serving) {
    if (!s) return;
    if (!service) service = "";
    pthread_mutex_lock(&s->health_mu);
    health_entry *e = s->health;
    while (e && strcmp(e->service, service)) e = e->next;
    if (!e && (e = xcalloc(1, sizeof *e)) && (e->service = strdup(service))) {
        e->next = s->health;
        s->health = e;
    } else if (e && !e->service) {
        free(e);
        e = NULL;
    }
    if (e) e->serving = serving && !atomic_load(&s->health_frozen);
    s->health_dirty = 1;
    pthread_cond_signal(&s->health_cv);
    pthread_mutex_unlock(&s->health_mu);
}

/* The HealthCheckRequest of c (Check and Watch share it), or NULL with c failed
 * INVALID_ARGUMENT; the caller frees it. */
static Grpc__Health__V1__HealthCheckRequest *health_request(mr_rpc_call *c) {
    Grpc__Health__V1__HealthCheckRequest *rq =
        grpc__health__v1__health_check_request__unpack(NULL, c->req_len, c->req);
    if (!rq) mr_rpc_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "malformed HealthCheckRequest");
    return rq;
}

static void health_check(mr_rpc_call *c, void *user) {
    mr_rpc_server *s = user;
    Grpc__Health__V1__HealthCheckRequest *rq = health_request(c);
    if (!rq) return;
    int st = health_get(s, rq->service ? rq->service : "");
    if (st < 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "unknown service '%.200s'", rq->service);
        grpc__health__v1__health_check_request__free_unpacked(rq, NULL);
        mr_rpc_call_fail(c, GRPC_STATUS_NOT_FOUND, msg);
        return;
    }
    grpc__health__v1__health_check_request__free_unpacked(rq, NULL);
    uint8_t buf[16];
    size_t n = health_pack(st, buf);
    mr_rpc_call_finish(c, buf, n);
}

/* Health/Watch arrives (on the queue thread, inline: it only links the call for the watch
 * thread, which writes the current status at once and every change after). */
static void health_watch(mr_rpc_call *c, void *user) {
    mr_rpc_server *s = user;
    Grpc__Health__V1__HealthCheckRequest *rq = health_request(c);
    if (!rq) return;
    watcher *w = xcalloc(1, sizeof *w);
    if (w) w->service = strdup(rq->service ? rq->service : "");
    grpc__health__v1__health_check_request__free_unpacked(rq, NULL);
    if (!w || !w->service) {
        if (w) free(w);
        mr_rpc_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->call = c;
    w->sent = -2;
    pthread_mutex_lock(&s->health_mu);
    int full = s->n_watchers >= MR_RPC_MAX_WATCHERS;
    const char *why = s->watch_stop || !s->watch_started ? "server shutting down"
                      : full                             ? "too many health watches"
                                                         : NULL;
    if (!why) {
        w->next = s->watchers;
        s->watchers = w;
        s->n_watchers++;
        s->health_dirty = 1;
        pthread_cond_signal(&s->health_cv);
    }
    pthread_mutex_unlock(&s->health_mu);
    if (why) {
        free(w->service);
        free(w);
        mr_rpc_call_fail(c, full ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_UNAVAILABLE, why);
    }
}

/* The watch thread: waits for a change, then (without the lock) writes each watcher's status
 * when it differs from the one last sent and finishes the watches whose client is gone. At
 * shutdown it writes the final NOT_SERVING and ends every watch with UNAVAILABLE. Writes are
 * a few bytes each and block only until gRPC took them. */
static void *watch_main(void *arg) {
    mr_rpc_server *s = arg;
    uint8_t buf[16];
    pthread_mutex_lock(&s->health_mu);
    for (;;) {
        while (!s->health_dirty && !s->watch_stop) pthread_cond_wait(&s->health_cv, &s->health_mu);
        int stop = s->watch_stop;
        s->health_dirty = 0;
        /* unlink the finished ones; note the status each live one should see */
        watcher *done = NULL;
        for (watcher **pp = &s->watchers; *pp;) {
            watcher *w = *pp;
            if (stop || w->dead || mr_rpc_call_cancelled(w->call)) {
                *pp = w->next;
                s->n_watchers--;
                w->next = done;
                done = w;
            } else {
                pp = &w->next;
            }
        }
        int n_live = 0;
        for (watcher *w = s->watchers; w; w = w->next) n_live++;
        watcher **live = n_live ? xcalloc((size_t)n_live, sizeof *live) : NULL;
        int *want = n_live ? xcalloc((size_t)n_live, sizeof *want) : NULL;
        int k = 0;
        if (live && want)
            for (watcher *w = s->watchers; w; w = w->next) {
                live[k] = w;
                want[k++] = health_get_locked(s, w->service);
            }
        else if (n_live)
            s->health_dirty = 1;   /* out of memory: try again at the next wake-up */
        pthread_mutex_unlock(&s->health_mu);
        /* only this thread unlinks or frees watchers: the pointers stay valid unlocked */
        for (int i = 0; i < k; i++) {
            if (want[i] == live[i]->sent) continue;
            if (write_within(live[i]->call, buf, health_pack(want[i], buf), HEALTH_WRITE_MS)) {
                live[i]->dead = 1;
            } else {
                live[i]->sent = want[i];
            }
        }
        int any_dead = 0;
        for (int i = 0; i < k; i++) any_dead |= live[i]->dead;
        free(live);
        free(want);
        while (done) {
            watcher *w = done;
            done = w->next;
            if (stop && !mr_rpc_call_cancelled(w->call) && w->sent != 0)
                write_within(w->call, buf, health_pack(0, buf), HEALTH_WRITE_MS);
            if (stop) mr_rpc_call_fail(w->call, GRPC_STATUS_UNAVAILABLE, "server shutting down");
            else mr_rpc_call_fail(w->call, GRPC_STATUS_CANCELLED, "watch ended");
            free(w->service);
            free(w);
        }
        pthread_mutex_lock(&s->health_mu);
        if (any_dead) s->health_dirty = 1;
        if (stop) break;
    }
    pthread_mutex_unlock(&s->health_mu);
    return NULL;
}

/* ---- server ---- */

static int add_method(mr_rpc_server *s, const char *path, mr_rpc_handler h, void *user,
                      int stream, int inline_run, int bidi) {
    if (!s || !path || !h || s->started || s->n_methods == MR__MAX_METHODS) return MR_EINVAL;
    for (int i = 0; i < s->n_methods; i++)
        if (!strcmp(s->methods[i].path, path)) return MR_EINVAL;
    rpc_method *m = &s->methods[s->n_methods];
    if (!(m->path = strdup(path))) return MR_ENOMEM;
    m->h = h;
    m->user = user;
    m->stream = stream;
    m->inline_run = inline_run;
    m->bidi = bidi;
    s->n_methods++;
    return 0;
}

int mr_rpc_server_set_max_receive(mr_rpc_server *s, int bytes, mr_err *err) {
    if (!s || s->started) return mr_err_set(err, MR_EINVAL, "rpc server: max receive set after start");
    if (bytes < 1 || bytes > MR_RPC_MAX_MESSAGE)
        return mr_err_set(err, MR_EINVAL, "rpc server: max receive %d bytes is outside 1..%d", bytes,
                          MR_RPC_MAX_MESSAGE);
    s->max_recv = bytes;
    return 0;
}

int mr_rpc_server_set_write_max(mr_rpc_server *s, int ms, mr_err *err) {
    if (!s || s->started) return mr_err_set(err, MR_EINVAL, "rpc server: write cap set after start");
    if (ms < 1 || ms > MR_RPC_WRITE_MAX_MS)
        return mr_err_set(err, MR_EINVAL, "rpc server: write cap %d ms is outside 1..%d", ms,
                          MR_RPC_WRITE_MAX_MS);
    s->write_max_ms = ms;
    return 0;
}

int mr_rpc_server_set_tls(mr_rpc_server *s, mr_rpc_tls_server *tls, mr_err *err) {
    if (!s || s->started) {
        mr_rpc_tls_server_free(tls);
        return mr_err_set(err, MR_EINVAL, "rpc server: TLS set after start");
    }
    mr_rpc_tls_server_free(s->tls);
    s->tls = tls;
    return 0;
}

int mr_rpc_server_add_unary(mr_rpc_server *s, const char *method, mr_rpc_handler h,
                            void *user) {
    return add_method(s, method, h, user, 0, 0, 0);
}

int mr_rpc_server_add_stream(mr_rpc_server *s, const char *method, mr_rpc_handler h,
                             void *user) {
    return add_method(s, method, h, user, 1, 0, 0);
}

int mr_rpc_server_add_bidi(mr_rpc_server *s, const char *method, mr_rpc_handler h, void *user) {
    return add_method(s, method, h, user, 1, 0, 1);
}

int mr_rpc_server_method_count(const mr_rpc_server *s) { return s->n_methods; }

const char *mr_rpc_server_method_path(const mr_rpc_server *s, int i) {
    return i >= 0 && i < s->n_methods ? s->methods[i].path : NULL;
}

int mr_rpc_server_add_inline(mr_rpc_server *s, const char *method, int stream, mr_rpc_handler h,
                             void *user) {
    return add_method(s, method, h, user, stream != 0, 1, 0);
}

int mr_rpc_server_new(mr_rpc_server **out, const char *listen_addr, int n_threads,
                      mr_err *err) {
    *out = NULL;
    if (!listen_addr || !*listen_addr || n_threads < 1 || n_threads > 1024)
        return mr_err_set(err, MR_EINVAL, "rpc server: bad address '%s' or thread count %d",
                          listen_addr ? listen_addr : "(null)", n_threads);
    mr_rpc_server *s = xcalloc(1, sizeof *s);
    if (!s || !(s->addr = strdup(listen_addr))) {
        free(s);
        return mr_err_set(err, MR_ENOMEM, "rpc server: out of memory");
    }
    s->n_threads = n_threads;
    s->max_recv = MR_RPC_MAX_MESSAGE;
    s->write_max_ms = MR_RPC_WRITE_MAX_MS;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->idle_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->health_mu, NULL);
    s->shutdown_tag = (tag){TAG_SHUTDOWN, s};
    pthread_cond_init(&s->health_cv, NULL);
    int rc = add_method(s, MR_METHOD_HEALTH_CHECK, health_check, s, 0, 1, 0);
    if (!rc) rc = add_method(s, MR_METHOD_HEALTH_WATCH, health_watch, s, 1, 1, 0);
    if (!rc) rc = add_method(s, MR_METHOD_REFLECTION_V1, mr__rpc_reflection_info, s, 1, 0, 1);
    if (!rc)
        rc = add_method(s, MR_METHOD_REFLECTION_V1ALPHA, mr__rpc_reflection_info, s, 1, 0, 1);
    if (rc) {
        mr_rpc_server_free(s);
        return mr_err_set(err, rc, "rpc server: out of memory");
    }
    mr_rpc_server_set_health(s, "", 0);
    *out = s;
    return 0;
}

static void slot_free(slot *sl) {
    grpc_metadata_array_destroy(&sl->md);
    if (!sl->m) grpc_call_details_destroy(&sl->details);
    if (sl->payload) grpc_byte_buffer_destroy(sl->payload);
    free(sl);
}

/* Arms sl (again); on failure frees it. Caller must not hold s->mu. */
static void slot_arm(mr_rpc_server *s, slot *sl) {
    pthread_mutex_lock(&s->mu);
    int stop = s->shutting_down;
    pthread_mutex_unlock(&s->mu);
    if (stop) {
        slot_free(sl);
        return;
    }
    sl->call = NULL;
    sl->payload = NULL;
    grpc_metadata_array_init(&sl->md);
    grpc_call_error e;
    MR_GRPC_HANDOFF(&sl->t);
    if (sl->m) {
        /* a bidi method reads its messages itself: gRPC wants no payload slot for it */
        e = grpc_server_request_registered_call(s->srv, sl->m->reg, &sl->call, &sl->deadline,
                                                &sl->md, sl->m->bidi ? NULL : &sl->payload,
                                                s->cq, s->cq, &sl->t);
    } else {
        grpc_call_details_init(&sl->details);
        e = grpc_server_request_call(s->srv, &sl->call, &sl->details, &sl->md, s->cq, s->cq,
                                     &sl->t);
    }
    if (e != GRPC_CALL_OK) slot_free(sl);
}

static void enqueue(mr_rpc_server *s, mr_rpc_call *c) {
    pthread_mutex_lock(&s->mu);
    c->next = NULL;
    if (s->qtail) s->qtail->next = c;
    else s->qhead = c;
    s->qtail = c;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

typedef struct bidi_job {
    mr_rpc_server *s;
    mr_rpc_call *c;
} bidi_job;

/* The end of a bidi call's handler thread (or of its failed start): out of the registry, one
 * thread fewer, and the registry's reference dropped (call_unref takes s->mu itself). */
static void bidi_end(mr_rpc_server *s, mr_rpc_call *c) {
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < MR_RPC_MAX_BIDI; i++)
        if (s->bidi_calls[i] == c) s->bidi_calls[i] = NULL;
    if (--s->n_bidi == 0) pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
    call_unref(c);
}

static void *bidi_main(void *arg) {
    bidi_job *j = arg;
    mr_rpc_server *s = j->s;
    mr_rpc_call *c = j->c;
    c->m->h(c, c->m->user);
    free(j);
    bidi_end(s, c);
    return NULL;
}

/* A bidi call gets its own (detached) thread, at most MR_RPC_MAX_BIDI at once, so a client
 * that keeps its stream open holds no handler thread. */
static void start_bidi(mr_rpc_server *s, mr_rpc_call *c) {
    bidi_job *j = xcalloc(1, sizeof *j);
    pthread_mutex_lock(&s->mu);
    int room = j && s->n_bidi < MR_RPC_MAX_BIDI && !s->shutting_down;
    if (room) {
        s->n_bidi++;
        for (int i = 0; i < MR_RPC_MAX_BIDI; i++)
            if (!s->bidi_calls[i]) {
                atomic_fetch_add(&c->refs, 1);
                s->bidi_calls[i] = c;
                break;
            }
    }
    pthread_mutex_unlock(&s->mu);
    if (room) {
        *j = (bidi_job){s, c};
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &at, bidi_main, j);
        pthread_attr_destroy(&at);
        if (!rc) return;
        bidi_end(s, c);
    }
    free(j);
    mr_rpc_call_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "too many streams open");
}

static void on_request(mr_rpc_server *s, slot *sl, int ok) {
    if (!ok) {   /* server shutting down */
        slot_free(sl);
        return;
    }
    if (!sl->m) {   /* generic: nobody registered this method */
        char path[256];
        size_t n = GRPC_SLICE_LENGTH(sl->details.method);
        snprintf(path, sizeof path, "%.*s", (int)(n < 200 ? n : 200),
                 (const char *)GRPC_SLICE_START_PTR(sl->details.method));
        sl->deadline = sl->details.deadline;
        grpc_call_details_destroy(&sl->details);
        grpc_call_details_init(&sl->details);
        mr_rpc_call *c = call_new(s, sl);
        if (c) {
            char msg[300];
            snprintf(msg, sizeof msg, "unknown method %s", path);
            mr_rpc_call_fail(c, GRPC_STATUS_UNIMPLEMENTED, msg);
        }
        slot_arm(s, sl);
        return;
    }
    mr_rpc_call *c = call_new(s, sl);
    rpc_method *m = sl->m;
    slot_arm(s, sl);
    if (!c) return;
    if (m->inline_run) m->h(c, m->user);
    else if (m->bidi) start_bidi(s, c);
    else enqueue(s, c);
}

static double mono_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1e3 + now.tv_nsec / 1e6;
}

/* The queue thread's backlog: events taken from the completion queue, handled in order. */
typedef struct cq_backlog {
    grpc_event ev[MR__CQ_BACKLOG];
    int head, n, shut;
} cq_backlog;

/* Takes every event ready on the queue (waiting for one when the backlog is empty) into b, up
 * to its size, and stamps each new call with the time it was taken: the handlers of earlier
 * events (an inline Rerank's admission, a refusal) run after, and a call's clock (its
 * deadline budget at the coordinator) starts before them. */
static void cq_take(mr_rpc_server *s, cq_backlog *b) {
    while (!b->shut && b->n < MR__CQ_BACKLOG) {
        int wait = b->n == 0;
        grpc_event ev = grpc_completion_queue_next(
            s->cq, wait ? gpr_inf_future(GPR_CLOCK_REALTIME) : gpr_inf_past(GPR_CLOCK_REALTIME),
            NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) b->shut = 1;
        if (ev.type != GRPC_OP_COMPLETE) {
            if (wait && !b->shut) continue;
            break;
        }
        MR_GRPC_TAKEN(ev.tag);
        tag *t = ev.tag;
        if (t->kind == TAG_REQ || t->kind == TAG_GENERIC) ((slot *)t)->seen_ms = mono_ms();
        b->ev[(b->head + b->n++) % MR__CQ_BACKLOG] = ev;
    }
}

static void *cq_main(void *arg) {
    mr_rpc_server *s = arg;
    t_on_cq_thread = 1;
    cq_backlog b = {.n = 0};
    for (;;) {
        cq_take(s, &b);
        if (b.n == 0) break;   /* shut down, every event handled */
        grpc_event ev = b.ev[b.head];
        b.head = (b.head + 1) % MR__CQ_BACKLOG;
        b.n--;
        tag *t = ev.tag;
        mr_rpc_call *c = t->p;
        switch (t->kind) {
        case TAG_REQ:
        case TAG_GENERIC: on_request(s, (slot *)t, ev.success); break;
        case TAG_CLOSE:
            if (c->close_cancelled || !ev.success) atomic_store(&c->cancelled, 1);
            if (c->m && c->m->h == health_watch) {   /* a watch may have ended: look */
                pthread_mutex_lock(&s->health_mu);
                s->health_dirty = 1;
                pthread_cond_signal(&s->health_cv);
                pthread_mutex_unlock(&s->health_mu);
            }
            call_unref(c);
            break;
        case TAG_SEND: call_unref(c); break;
        case TAG_WRITE:
            pthread_mutex_lock(&c->mu);
            c->write_done = 1;
            c->write_ok = ev.success;
            pthread_cond_signal(&c->cv);
            pthread_mutex_unlock(&c->mu);
            break;
        case TAG_READ:
            pthread_mutex_lock(&c->mu);
            c->read_done = 1;
            if (!ev.success && c->read_buf) {   /* failed batch: no message */
                grpc_byte_buffer_destroy(c->read_buf);
                c->read_buf = NULL;
            }
            if (!ev.success) atomic_store(&c->cancelled, 1);
            pthread_cond_signal(&c->cv);
            pthread_mutex_unlock(&c->mu);
            break;
        case TAG_SHUTDOWN:
            pthread_mutex_lock(&s->mu);
            s->shutdown_done = 1;
            pthread_cond_broadcast(&s->idle_cv);
            pthread_mutex_unlock(&s->mu);
            break;
        }
    }
    return NULL;
}

static void *worker_main(void *arg) {
    mr_rpc_server *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->qhead && !s->stopping) pthread_cond_wait(&s->cv, &s->mu);
        mr_rpc_call *c = s->qhead;
        if (!c) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        s->qhead = c->next;
        if (!s->qhead) s->qtail = NULL;
        pthread_mutex_unlock(&s->mu);
        c->m->h(c, c->m->user);
    }
    return NULL;
}

int mr_rpc_server_start(mr_rpc_server *s, int *bound_port, mr_err *err) {
    if (!s || s->started) return mr_err_set(err, MR_EINVAL, "rpc server: already started");
    pthread_once(&log_once, log_init);
    grpc_init();
    s->started = 1;
    grpc_arg args[5];
    args[0] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                         .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                         .value.integer = s->max_recv};
    args[1] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
                         .value.integer = MR_RPC_MAX_MESSAGE};
    args[2] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_ALLOW_REUSEPORT,
                         .value.integer = 0};
    /* clients ping every MR_RPC_KEEPALIVE_MS to find a silently dead peer (rpc.h); without
     * these the server would answer their pings with GOAWAY (too_many_pings) */
    args[3] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                         .key = (char *)GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                         .value.integer = MR_RPC_KEEPALIVE_MS / 2};
    args[4] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                         .key = (char *)GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                         .value.integer = 1};
    grpc_channel_args ca = {5, args};
    s->srv = grpc_server_create(&ca, NULL);
    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->srv, s->cq, NULL);
    for (int i = 0; i < s->n_methods; i++) {
        s->methods[i].reg = grpc_server_register_method(
            s->srv, s->methods[i].path, NULL,
            s->methods[i].bidi ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
            0);
        if (!s->methods[i].reg) {
            mr_err_set(err, MR_EINVAL, "rpc server: cannot register %s", s->methods[i].path);
            goto fail;
        }
    }
    grpc_server_credentials *creds = s->tls ? mr__rpc_tls_server_credentials(s->tls)
                                            : grpc_insecure_server_credentials_create();
    if (!creds) {   /* the certificate files could not be read at start (tls.c logged why) */
        mr_err_set(err, MR_EIO, "rpc server: no TLS credentials for %s", s->addr);
        goto fail;
    }
    int port = grpc_server_add_http2_port(s->srv, s->addr, creds);
    grpc_server_credentials_release(creds);
    if (port <= 0) {
        mr_err_set(err, MR_EIO, "rpc server: cannot listen on %s (in use or bad address)",
                   s->addr);
        goto fail;
    }
    grpc_server_start(s->srv);
    if (pthread_create(&s->cq_thread, NULL, cq_main, s)) {
        /* nothing is armed yet: shut the empty server down right here */
        mr_err_set(err, MR_ENOMEM, "rpc server: cannot start threads");
        grpc_server_shutdown_and_notify(s->srv, s->cq, &s->shutdown_tag);
        grpc_server_cancel_all_calls(s->srv);
        while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).tag !=
               &s->shutdown_tag) {
        }
        goto fail;
    }
    /* without the watch thread, Watch answers UNAVAILABLE (health_watch) */
    s->watch_started = pthread_create(&s->watch_thread, NULL, watch_main, s) == 0;
    s->workers = xcalloc((size_t)s->n_threads, sizeof *s->workers);
    for (int i = 0; s->workers && i < s->n_threads; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s)) break;
        s->n_workers++;
    }
    for (int i = 0; i < s->n_methods; i++) {
        int n_req = s->methods[i].inline_run ? MR__REQS_INLINE : MR__REQS_PER_METHOD;
        for (int k = 0; k < n_req; k++) {
            slot *sl = xcalloc(1, sizeof *sl);
            if (!sl) break;
            *sl = (slot){.t = {TAG_REQ, NULL}, .s = s, .m = &s->methods[i]};
            sl->t.p = sl;
            slot_arm(s, sl);
        }
    }
    for (int k = 0; k < 2; k++) {
        slot *sl = xcalloc(1, sizeof *sl);
        if (!sl) break;
        *sl = (slot){.t = {TAG_GENERIC, NULL}, .s = s, .m = NULL};
        sl->t.p = sl;
        slot_arm(s, sl);
    }
    if (s->n_workers == 0) {
        mr_err_set(err, MR_ENOMEM, "rpc server: cannot start handler threads");
        mr_rpc_server_shutdown(s, 0);
        return MR_ENOMEM;
    }
    if (bound_port) *bound_port = port;
    return 0;
fail:
    grpc_server_destroy(s->srv);
    s->srv = NULL;
    grpc_completion_queue_shutdown(s->cq);
    while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(s->cq);
    s->cq = NULL;
    s->shut = 1;
    grpc_shutdown();
    return err ? err->code : MR_EIO;
}

static void abs_deadline(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void mr_rpc_server_shutdown(mr_rpc_server *s, int drain_ms) {
    if (!s || !s->started || s->shut) return;
    s->shut = 1;
    atomic_store(&s->health_frozen, 1);
    pthread_mutex_lock(&s->health_mu);
    for (health_entry *e = s->health; e; e = e->next) e->serving = 0;
    s->watch_stop = 1;   /* watches get NOT_SERVING and end: they do not hold up the drain */
    pthread_cond_signal(&s->health_cv);
    pthread_mutex_unlock(&s->health_mu);
    pthread_mutex_lock(&s->mu);
    s->shutting_down = 1;
    /* bidi streams (reflection) wait on their client, not on work: end them now, as the
     * watches, rather than drain for them */
    for (int i = 0; i < MR_RPC_MAX_BIDI; i++)
        if (s->bidi_calls[i]) grpc_call_cancel(s->bidi_calls[i]->call, NULL);
    pthread_mutex_unlock(&s->mu);
    MR_GRPC_HANDOFF(&s->shutdown_tag);
    grpc_server_shutdown_and_notify(s->srv, s->cq, &s->shutdown_tag);

    /* drain: wait for calls in flight to finish on their own */
    struct timespec until;
    abs_deadline(&until, drain_ms > 0 ? drain_ms : 0);
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    while ((s->live_calls > 0 || !s->shutdown_done) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&s->idle_cv, &s->mu, &until);
    pthread_mutex_unlock(&s->mu);
    grpc_server_cancel_all_calls(s->srv);
    /* joined after the cancel: a write stuck on a client that stopped reading fails now */
    if (s->watch_started) pthread_join(s->watch_thread, NULL);
    s->watch_started = 0;
    pthread_mutex_lock(&s->mu);
    while (s->live_calls > 0 || !s->shutdown_done || s->n_bidi > 0)
        pthread_cond_wait(&s->idle_cv, &s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_workers; i++) pthread_join(s->workers[i], NULL);
    grpc_server_destroy(s->srv);
    s->srv = NULL;
    /* every call is freed and no batch can start any more: now the queue may shut down */
    grpc_completion_queue_shutdown(s->cq);
    pthread_join(s->cq_thread, NULL);
    grpc_completion_queue_destroy(s->cq);
    s->cq = NULL;
    grpc_shutdown();
}

void mr_rpc_server_free(mr_rpc_server *s) {
    if (!s) return;
    mr_rpc_server_shutdown(s, 0);
    for (int i = 0; i < s->n_methods; i++) free(s->methods[i].path);
    for (health_entry *e = s->health, *nx; e; e = nx) {
        nx = e->next;
        free(e->service);
        free(e);
    }
    free(s->workers);
    free(s->addr);
    mr_rpc_tls_server_free(s->tls);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->idle_cv);
    pthread_mutex_destroy(&s->health_mu);
    pthread_cond_destroy(&s->health_cv);
    free(s);
}
