/* client.c: the gRPC core client behind rpc.h: a channel, unary calls and cancel groups.
 *
 * A channel owns one completion queue and one thread polling it; every call is a single batch
 * (send metadata + message + close, receive metadata + message + status) whose completion runs
 * the caller's callback on that thread. The blocking mr_rpc_unary is the asynchronous call
 * plus a condition variable. The call deadline guarantees completion, so a blocking call never
 * outlives its timeout by more than scheduling noise. A cancel group is a mutex-guarded list of
 * its calls in flight: a call joins it before its batch starts and leaves it in complete()
 * before its grpc_call is released, so firing (grpc_call_cancel on each) never touches a
 * released call. Load balancing is round_robin, set both as the channel's LB policy and in
 * its default service config.
 *
 * Renewal: gRPC 1.51's dns resolver re-resolves only when a connection fails, so replicas added
 * behind a name would stay unused. mr_rpc_channel_renew swaps in a fresh grpc_channel to the
 * same target with the same credentials (it resolves anew; connections to known addresses are
 * reused from gRPC's global subchannel pool); the old one is destroyed when its last call
 * completes. */
#define _GNU_SOURCE
#include "trace.h"
#include "rpc.h"
#include "tls.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "tsan/grpc_hb.h"

/* One grpc_channel and the calls started on it (under mr_rpc_channel.mu). */
typedef struct gchan {
    grpc_channel *ch;
    long calls;
    int retired;                /* replaced by a renewal: destroyed when calls reaches 0 */
} gchan;

struct mr_rpc_channel {
    gchan *cur;
    char *target;
    grpc_channel_credentials *creds;   /* kept for renewals */
    grpc_completion_queue *cq;
    pthread_t poller;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long pending;
    char *authorization;        /* "authorization" metadata value, or NULL */
};

struct mr_rpc_cancel {
    pthread_mutex_t mu;
    int fired;
    struct ucall *head;         /* calls in flight (doubly linked through prev/next) */
};

typedef struct ucall {
    mr_rpc_channel *ch;
    gchan *g;
    grpc_call *call;
    mr_rpc_cancel *group;       /* NULL, or the group whose list holds this call */
    struct ucall *prev, *next;
    mr_rpc_done done;
    void *user;
    grpc_byte_buffer *send, *recv;
    grpc_metadata md[3];
    mr_trace_ctx trace;      /* the CLIENT span of this call (valid when the caller traces) */
    uint64_t trace_start_ns;
    char method[96];
    grpc_metadata_array init_md, trail_md;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string;
} ucall;

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_init(void) {
    if (!getenv("GRPC_VERBOSITY")) gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
}

/* Takes u out of its cancel group's list (no-op without a group). */
static void group_leave(ucall *u) {
    mr_rpc_cancel *g = u->group;
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    if (u->prev) u->prev->next = u->next;
    else g->head = u->next;
    if (u->next) u->next->prev = u->prev;
    pthread_mutex_unlock(&g->mu);
    u->group = NULL;
}

static void complete(ucall *u, int ok) {
    group_leave(u);
    uint8_t *resp = NULL;
    size_t len = 0;
    char msg[512];
    grpc_status_code st = ok ? u->status : GRPC_STATUS_INTERNAL;
    size_t dn = GRPC_SLICE_LENGTH(u->details);
    snprintf(msg, sizeof msg, "%.*s", (int)(dn < 500 ? dn : 500),
             (const char *)GRPC_SLICE_START_PTR(u->details));
    if (!ok) snprintf(msg, sizeof msg, "rpc batch failed");
    grpc_slice all = grpc_empty_slice();
    if (st == GRPC_STATUS_OK) {
        grpc_byte_buffer_reader r;
        if (u->recv && grpc_byte_buffer_reader_init(&r, u->recv)) {
            all = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            resp = GRPC_SLICE_START_PTR(all);
            len = GRPC_SLICE_LENGTH(all);
        } else if (!u->recv) {
            st = GRPC_STATUS_INTERNAL;
            snprintf(msg, sizeof msg, "OK status without a response message");
        }
    }
    if (u->trace.valid && mr_trace_exporting()) {
        const char *attrs[] = {"rpc.system", "grpc", "rpc.method", u->method, NULL};
        mr_trace_span(&u->trace, MR_SPAN_CLIENT, u->method, u->trace_start_ns, mr_trace_now_ns(),
                      st == GRPC_STATUS_OK ? NULL : msg, attrs);
    }
    u->done(u->user, st, msg, resp, len);
    grpc_slice_unref(all);
    if (u->send) grpc_byte_buffer_destroy(u->send);
    if (u->recv) grpc_byte_buffer_destroy(u->recv);
    grpc_metadata_array_destroy(&u->init_md);
    grpc_metadata_array_destroy(&u->trail_md);
    grpc_slice_unref(u->details);
    if (u->error_string) gpr_free((void *)u->error_string);
    if (u->call) grpc_call_unref(u->call);
    mr_rpc_channel *ch = u->ch;
    gchan *g = u->g, *dead = NULL;
    free(u);
    pthread_mutex_lock(&ch->mu);
    if (g && --g->calls == 0 && g->retired) dead = g;
    if (--ch->pending == 0) pthread_cond_broadcast(&ch->cv);
    pthread_mutex_unlock(&ch->mu);
    if (dead) {
        grpc_channel_destroy(dead->ch);
        free(dead);
    }
}

static void *poll_main(void *arg) {
    mr_rpc_channel *ch = arg;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(ch->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        MR_GRPC_TAKEN(ev.tag);
        complete(ev.tag, ev.success);
    }
    return NULL;
}

int mr_rpc_channel_new(mr_rpc_channel **out, const char *target, mr_err *err) {
    return mr_rpc_channel_new_tls(out, target, NULL, err);
}

int mr_rpc_channel_set_authorization(mr_rpc_channel *ch, const char *value, mr_err *err) {
    char *v = value ? strdup(value) : NULL;
    if (value && !v) return mr_err_set(err, MR_ENOMEM, "rpc channel: out of memory");
    if (ch->authorization) memset(ch->authorization, 0, strlen(ch->authorization));
    free(ch->authorization);
    ch->authorization = v;
    return 0;
}

/* A grpc_channel to target with mrank's arguments over creds (not consumed), or NULL. */
static grpc_channel *open_channel(const char *target, grpc_channel_credentials *creds) {
    grpc_arg args[10];
    int n = 0;
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                           .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                           .value.integer = MR_RPC_MAX_MESSAGE};
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                           .key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
                           .value.integer = MR_RPC_MAX_MESSAGE};
    args[n++] = (grpc_arg){.type = GRPC_ARG_STRING, .key = (char *)GRPC_ARG_LB_POLICY_NAME,
                           .value.string = (char *)"round_robin"};
    args[n++] = (grpc_arg){.type = GRPC_ARG_STRING, .key = (char *)GRPC_ARG_SERVICE_CONFIG,
                           .value.string =
                               (char *)"{\"loadBalancingConfig\":[{\"round_robin\":{}}]}"};
    /* a restarted worker is found again within a fraction of a second, not after 1 s+ */
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                           .key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
                           .value.integer = 100};
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                           .key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
                           .value.integer = 2000};
    /* keepalive: a peer whose link went down silently (no RST: a node lost, a partition) is
     * found within MR_RPC_KEEPALIVE_MS x 2; its calls fail UNAVAILABLE (the coordinator retries
     * them elsewhere) and round_robin stops picking it until it reconnects */
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_KEEPALIVE_TIME_MS,
                           .value.integer = MR_RPC_KEEPALIVE_MS};
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                           .value.integer = MR_RPC_KEEPALIVE_MS};
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                           .key = (char *)GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                           .value.integer = 1};
    args[n++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                           .key = (char *)GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA,
                           .value.integer = 0};
    grpc_channel_args ca = {(size_t)n, args};
    return grpc_channel_create(target, creds, &ca);
}

int mr_rpc_channel_new_tls(mr_rpc_channel **out, const char *target,
                           const mr_rpc_tls_client *tls, mr_err *err) {
    *out = NULL;
    if (!target || !*target) return mr_err_set(err, MR_EINVAL, "rpc channel: empty target");
    pthread_once(&log_once, log_init);
    grpc_init();
    grpc_channel_credentials *creds =
        tls ? mr__rpc_tls_client_credentials(tls, err) : grpc_insecure_credentials_create();
    mr_rpc_channel *ch = creds ? calloc(1, sizeof *ch) : NULL;
    if (!ch) {
        if (creds) grpc_channel_credentials_release(creds);
        grpc_shutdown();
        return creds ? mr_err_set(err, MR_ENOMEM, "rpc channel: out of memory")
                     : (err ? err->code : MR_EIO);
    }
    ch->creds = creds;
    ch->target = strdup(target);
    ch->cur = calloc(1, sizeof *ch->cur);
    if (ch->cur && ch->target) ch->cur->ch = open_channel(target, creds);
    ch->cq = grpc_completion_queue_create_for_next(NULL);
    pthread_mutex_init(&ch->mu, NULL);
    pthread_cond_init(&ch->cv, NULL);
    if (!ch->cur || !ch->cur->ch || pthread_create(&ch->poller, NULL, poll_main, ch)) {
        if (ch->cur && ch->cur->ch) grpc_channel_destroy(ch->cur->ch);
        grpc_completion_queue_shutdown(ch->cq);
        while (grpc_completion_queue_next(ch->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
                   .type != GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(ch->cq);
        pthread_mutex_destroy(&ch->mu);
        pthread_cond_destroy(&ch->cv);
        grpc_channel_credentials_release(ch->creds);
        free(ch->cur);
        free(ch->target);
        free(ch);
        grpc_shutdown();
        return mr_err_set(err, MR_EIO, "rpc channel: cannot create a channel to '%s'", target);
    }
    *out = ch;
    return 0;
}

int mr_rpc_channel_renew(mr_rpc_channel *ch, mr_err *err) {
    if (!ch) return mr_err_set(err, MR_EINVAL, "rpc channel: NULL");
    gchan *g = calloc(1, sizeof *g);
    if (!g) return mr_err_set(err, MR_ENOMEM, "rpc channel: out of memory");
    if (!(g->ch = open_channel(ch->target, ch->creds))) {
        free(g);
        return mr_err_set(err, MR_EIO, "rpc channel: cannot renew the channel to '%s'",
                          ch->target);
    }
    pthread_mutex_lock(&ch->mu);
    gchan *old = ch->cur;
    ch->cur = g;
    old->retired = 1;
    int idle = old->calls == 0;
    pthread_mutex_unlock(&ch->mu);
    if (idle) {
        grpc_channel_destroy(old->ch);
        free(old);
    }
    return 0;
}

void mr_rpc_channel_free(mr_rpc_channel *ch) {
    if (!ch) return;
    pthread_mutex_lock(&ch->mu);
    while (ch->pending > 0) pthread_cond_wait(&ch->cv, &ch->mu);
    pthread_mutex_unlock(&ch->mu);
    grpc_channel_destroy(ch->cur->ch);   /* no call pending: every retired one is gone */
    free(ch->cur);
    free(ch->target);
    grpc_channel_credentials_release(ch->creds);
    grpc_completion_queue_shutdown(ch->cq);
    pthread_join(ch->poller, NULL);
    grpc_completion_queue_destroy(ch->cq);
    pthread_mutex_destroy(&ch->mu);
    pthread_cond_destroy(&ch->cv);
    mr_rpc_channel_set_authorization(ch, NULL, NULL);
    free(ch);
    grpc_shutdown();
}

int mr_rpc_unary_async(mr_rpc_channel *ch, const char *method, const uint8_t *req,
                       size_t req_len, const mr_rpc_opts *opts, mr_rpc_done done, void *user) {
    if (!ch || !method || !done || (!req && req_len)) return MR_EINVAL;
    ucall *u = calloc(1, sizeof *u);
    if (!u) return MR_ENOMEM;
    u->ch = ch;
    u->done = done;
    u->user = user;
    u->details = grpc_empty_slice();
    grpc_metadata_array_init(&u->init_md);
    grpc_metadata_array_init(&u->trail_md);
    gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
    if (opts && opts->timeout_ms > 0)
        deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                gpr_time_from_micros((int64_t)(opts->timeout_ms * 1e3),
                                                     GPR_TIMESPAN));
    grpc_slice mslice = grpc_slice_from_copied_string(method);
    pthread_mutex_lock(&ch->mu);    /* a renewal cannot destroy the channel the call starts on */
    u->g = ch->cur;
    u->g->calls++;
    ch->pending++;
    u->call = grpc_channel_create_call(u->g->ch, NULL, GRPC_PROPAGATE_DEFAULTS, ch->cq, mslice,
                                       NULL, deadline, NULL);
    pthread_mutex_unlock(&ch->mu);
    grpc_slice_unref(mslice);
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)(req ? req : (const uint8_t *)""),
                                                  req_len);
    u->send = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    size_t n_md = 0;
    if (opts && opts->trace && opts->trace->valid) {
        /* a span of its own for this hop: the server's span is its child */
        char tp[MR_TRACEPARENT_LEN + 1];
        mr_trace_child(opts->trace, &u->trace);
        u->trace_start_ns = mr_trace_now_ns();
        snprintf(u->method, sizeof u->method, "%s", method);
        mr_trace_format(&u->trace, tp);
        u->md[n_md].key = grpc_slice_from_static_string("traceparent");
        u->md[n_md++].value = grpc_slice_from_copied_string(tp);
        if (*u->trace.tracestate) {
            u->md[n_md].key = grpc_slice_from_static_string("tracestate");
            u->md[n_md++].value = grpc_slice_from_copied_string(u->trace.tracestate);
        }
    } else if (opts && opts->traceparent && *opts->traceparent) {
        u->md[n_md].key = grpc_slice_from_static_string("traceparent");
        u->md[n_md++].value = grpc_slice_from_copied_string(opts->traceparent);
    }
    if (ch->authorization) {
        u->md[n_md].key = grpc_slice_from_static_string("authorization");
        u->md[n_md++].value = grpc_slice_from_copied_string(ch->authorization);
    }
    ops[0].data.send_initial_metadata.count = n_md;
    ops[0].data.send_initial_metadata.metadata = n_md ? u->md : NULL;
    if (opts && opts->wait_for_ready)
        ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY |
                       GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = u->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &u->init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &u->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &u->trail_md;
    ops[5].data.recv_status_on_client.status = &u->status;
    ops[5].data.recv_status_on_client.status_details = &u->details;
    ops[5].data.recv_status_on_client.error_string = &u->error_string;

    int fired = 0;
    if (opts && opts->cancel && u->call) {
        mr_rpc_cancel *g = opts->cancel;
        pthread_mutex_lock(&g->mu);
        if (!(fired = g->fired)) {
            u->group = g;
            u->next = g->head;
            if (g->head) g->head->prev = u;
            g->head = u;
        }
        pthread_mutex_unlock(&g->mu);
    }
    if (fired) {
        for (size_t i = 0; i < n_md; i++) grpc_slice_unref(u->md[i].value);
        u->status = GRPC_STATUS_CANCELLED;
        grpc_slice_unref(u->details);
        u->details = grpc_slice_from_copied_string("cancelled before it started");
        complete(u, 1);
        return 0;
    }
    /* the values to release after start_batch, which copies them: u may complete (and be
     * freed by the poller) before start_batch returns, so they are not read from u then */
    grpc_slice md_values[sizeof u->md / sizeof u->md[0]];
    for (size_t i = 0; i < n_md; i++) md_values[i] = u->md[i].value;
    MR_GRPC_HANDOFF(u);
    grpc_call_error e = u->call ? grpc_call_start_batch(u->call, ops, 6, u, NULL)
                                : GRPC_CALL_ERROR;
    for (size_t i = 0; i < n_md; i++) grpc_slice_unref(md_values[i]);
    if (e != GRPC_CALL_OK) {
        u->status = GRPC_STATUS_INTERNAL;
        grpc_slice_unref(u->details);
        u->details = grpc_slice_from_copied_string("cannot start the call");
        complete(u, 1);
    }
    return 0;
}

int mr_rpc_cancel_new(mr_rpc_cancel **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return MR_ENOMEM;
    pthread_mutex_init(&(*out)->mu, NULL);
    return 0;
}

int mr_rpc_cancel_fire(mr_rpc_cancel *g) {
    int n = 0;
    if (!g) return 0;
    pthread_mutex_lock(&g->mu);
    /* a second fire cancels nothing new (a call joining a fired group is cancelled as it
     * joins): counting the list again would count a call twice */
    int again = g->fired;
    g->fired = 1;
    /* completions run on the pollers and wait for this lock in group_leave: every call in the
     * list still holds its grpc_call */
    for (ucall *u = again ? NULL : g->head; u; u = u->next, n++) grpc_call_cancel(u->call, NULL);
    pthread_mutex_unlock(&g->mu);
    return n;
}

int mr_rpc_cancel_fired(mr_rpc_cancel *g) {
    pthread_mutex_lock(&g->mu);
    int f = g->fired;
    pthread_mutex_unlock(&g->mu);
    return f;
}

void mr_rpc_cancel_free(mr_rpc_cancel *g) {
    if (!g) return;
    pthread_mutex_destroy(&g->mu);
    free(g);
}

typedef struct sync_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    grpc_status_code status;
    char *msg;
    size_t msg_cap;
    uint8_t *resp;
    size_t resp_len;
    int nomem;
} sync_wait;

static void sync_done(void *user, grpc_status_code status, const char *msg, const uint8_t *resp,
                      size_t resp_len) {
    sync_wait *w = user;
    if (status == GRPC_STATUS_OK && resp_len) {
        if ((w->resp = malloc(resp_len))) {
            memcpy(w->resp, resp, resp_len);
            w->resp_len = resp_len;
        } else {
            w->nomem = 1;
        }
    }
    if (w->msg && w->msg_cap) snprintf(w->msg, w->msg_cap, "%s", msg ? msg : "");
    pthread_mutex_lock(&w->mu);
    w->status = status;
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int mr_rpc_unary(mr_rpc_channel *ch, const char *method, const uint8_t *req, size_t req_len,
                 double timeout_ms, uint8_t **resp, size_t *resp_len, grpc_status_code *status,
                 char *msg, size_t msg_cap) {
    mr_rpc_opts o = {.timeout_ms = timeout_ms};
    return mr_rpc_unary_opts(ch, method, req, req_len, &o, resp, resp_len, status, msg, msg_cap);
}

int mr_rpc_unary_opts(mr_rpc_channel *ch, const char *method, const uint8_t *req,
                      size_t req_len, const mr_rpc_opts *o, uint8_t **resp, size_t *resp_len,
                      grpc_status_code *status, char *msg, size_t msg_cap) {
    if (resp) *resp = NULL;
    if (resp_len) *resp_len = 0;
    if (msg && msg_cap) msg[0] = 0;
    if (status) *status = GRPC_STATUS_INTERNAL;
    sync_wait w = {.msg = msg, .msg_cap = msg_cap};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int rc = mr_rpc_unary_async(ch, method, req, req_len, o, sync_done, &w);
    if (rc == 0) {
        pthread_mutex_lock(&w.mu);
        while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        if (w.nomem) {
            w.status = GRPC_STATUS_RESOURCE_EXHAUSTED;
            if (msg && msg_cap) snprintf(msg, msg_cap, "out of memory for the response");
        }
        if (status) *status = w.status;
        if (w.status == GRPC_STATUS_OK) {
            if (resp) *resp = w.resp;
            else free(w.resp);
            if (resp_len) *resp_len = w.resp_len;
        } else {
            free(w.resp);
            rc = MR_EIO;
        }
    }
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    return rc;
}
