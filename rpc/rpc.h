/* rpc.h: a small server and client over the gRPC C core, for the worker and the coordinator.
 *
 * Messages are opaque bytes here (callers pack and unpack them with protobuf-c); methods are
 * named by their full path, e.g. "/mrank.v1.Worker/Score". The server owns one completion queue
 * polled by one thread; arriving calls are handed to a fixed pool of handler threads. It serves
 * grpc.health.v1.Health/Check and Health/Watch itself (Watch streams are written by one watch
 * thread: the current status at once, then each change, until the client cancels or shutdown
 * sends NOT_SERVING and ends them UNAVAILABLE; at most 1024 open) and answers UNIMPLEMENTED
 * for methods nobody registered.
 * The client side is a channel (round_robin over every address the target resolves to) with a
 * blocking unary call and an asynchronous one; asynchronous calls can be cancelled in groups.
 * TLS and mTLS from PEM files (tls.h) on both sides, optional. Every server also answers gRPC
 * server reflection (v1 and v1alpha, reflection.h) on bidirectional streams, each on a thread
 * of its own; the client side has no streaming.
 *
 * Threading: every function may be called from any thread unless noted. A handler runs on a
 * handler thread and may return before the call is finished: it can pass the call to another
 * thread (a batcher) which finishes it later. Each call must be finished exactly once, by
 * mr_rpc_call_finish or mr_rpc_call_fail(_md); the layer frees it afterwards, so the call must not be
 * touched after that. Message size limit is MR_RPC_MAX_MESSAGE on both sides. gRPC's own log
 * goes to stderr at ERROR and above unless GRPC_VERBOSITY is set. */
#ifndef MR_RPC_H
#define MR_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>

#include "mr_err.h"

#define MR_RPC_MAX_MESSAGE (64 * 1024 * 1024)
#define MR_RPC_WRITE_MAX_MS 30000   /* default and largest wait of a stream write */
/* mr_rpc_call_remaining_ms when the client set no deadline. */
#define MR_RPC_NO_DEADLINE_MS 1e12

/* ---- server ---- */

typedef struct mr_rpc_server mr_rpc_server;
typedef struct mr_rpc_call mr_rpc_call;
typedef void (*mr_rpc_handler)(mr_rpc_call *call, void *user);

/* Creates a server that will listen on listen_addr ("127.0.0.1:0", "0.0.0.0:7001", "[::]:0")
 * with n_threads handler threads (>= 1). Nothing listens until mr_rpc_server_start. */
int mr_rpc_server_new(mr_rpc_server **out, const char *listen_addr, int n_threads, mr_err *err);
/* Largest request message accepted (bytes, 1..MR_RPC_MAX_MESSAGE; default MR_RPC_MAX_MESSAGE);
 * only before start, else MR_EINVAL. gRPC refuses a larger message with RESOURCE_EXHAUSTED as
 * it arrives, before any handler runs or anything is parsed. */
int mr_rpc_server_set_max_receive(mr_rpc_server *s, int bytes, mr_err *err);
/* Longest wait of one stream write for a client that does not take it (ms, 1..
 * MR_RPC_WRITE_MAX_MS; default MR_RPC_WRITE_MAX_MS): see mr_rpc_call_write. Only before start,
 * else MR_EINVAL. */
int mr_rpc_server_set_write_max(mr_rpc_server *s, int ms, mr_err *err);
/* Serves TLS (mTLS when tls has a client CA) instead of plaintext; takes ownership of tls
 * (also on failure). Only before start, else MR_EINVAL. */
typedef struct mr_rpc_tls_server mr_rpc_tls_server;
int mr_rpc_server_set_tls(mr_rpc_server *s, mr_rpc_tls_server *tls, mr_err *err);
/* Registers a method path with a unary (one response) or server-streaming handler; only
 * before start. MR_EINVAL on a duplicate path or after start. */
int mr_rpc_server_add_unary(mr_rpc_server *s, const char *method, mr_rpc_handler h, void *user);
int mr_rpc_server_add_stream(mr_rpc_server *s, const char *method, mr_rpc_handler h, void *user);
/* Registers a method (unary, or server-streaming when stream is 1) whose handler runs on the
 * completion-queue thread the moment the call and its message arrived, ahead of the handler
 * threads' queue: it must be cheap and never block (no I/O, no waiting, only brief locks),
 * and typically fails the call at once or hands it to the caller's own scheduler, whose
 * threads finish it later. Same rules as add_unary otherwise. */
int mr_rpc_server_add_inline(mr_rpc_server *s, const char *method, int stream, mr_rpc_handler h,
                             void *user);
/* Registers a bidirectional-streaming method: the handler runs on a thread of its own (at most
 * 16 such calls at once per server, more get RESOURCE_EXHAUSTED), reads the client's messages
 * with mr_rpc_call_read, writes with mr_rpc_call_write and finishes the call as usual.
 * mr_rpc_call_request is empty for these calls. */
int mr_rpc_server_add_bidi(mr_rpc_server *s, const char *method, mr_rpc_handler h, void *user);
/* The registered method paths (built-in ones included), i in [0, count). */
int mr_rpc_server_method_count(const mr_rpc_server *s);
const char *mr_rpc_server_method_path(const mr_rpc_server *s, int i);
/* Binds, starts the threads and begins serving. *bound_port (may be NULL) receives the port,
 * useful with port 0. MR_EIO when the address cannot be bound. */
int mr_rpc_server_start(mr_rpc_server *s, int *bound_port, mr_err *err);
/* Health status reported by grpc.health.v1.Health/Check and Watch for service ("" = the whole
 * server). Every service starts NOT_SERVING, "" included: call with serving=1 once ready.
 * Unknown services get NOT_FOUND from Check and SERVICE_UNKNOWN from Watch, as the health
 * protocol says; a change reaches every Watch of the service. */
void mr_rpc_server_set_health(mr_rpc_server *s, const char *service, int serving);
/* Stops serving: every health status goes NOT_SERVING, new calls are refused, calls in flight
 * get up to drain_ms to finish, then are cancelled (handlers see mr_rpc_call_cancelled and must
 * still finish them); returns once every call is finished and every thread has stopped. Call
 * at most once, never from a handler thread. */
void mr_rpc_server_shutdown(mr_rpc_server *s, int drain_ms);
/* Frees the server (shutting it down first, drain 0, if needed). NULL is a no-op. */
void mr_rpc_server_free(mr_rpc_server *s);

/* The request message (valid until the call is finished; never NULL, possibly len 0). */
const uint8_t *mr_rpc_call_request(mr_rpc_call *call, size_t *len);
/* The method path this call was registered under. */
const char *mr_rpc_call_method(mr_rpc_call *call);
/* CLOCK_MONOTONIC time in ms at which the call and its message arrived: taken when the
 * completion-queue thread took the call's event, which it does for every ready event between
 * two handlers, so a call that arrived during an inline handler is stamped when that handler
 * returns, not after the handlers queued before it. Budgets are charged from here. */
double mr_rpc_call_arrival_ms(mr_rpc_call *call);
/* Milliseconds until the client's deadline (negative once passed; MR_RPC_NO_DEADLINE_MS when
 * none). The deadline arrives rounded up (a 5000 ms deadline may read 5009 ms). */
double mr_rpc_call_remaining_ms(mr_rpc_call *call);
/* 1 when the client cancelled, went away, the deadline passed or the server is cancelling
 * calls at shutdown: work for the call should stop and the call be failed (any status; the
 * client never sees it). */
int mr_rpc_call_cancelled(mr_rpc_call *call);
/* Copies the value of request metadata key (lower case, e.g. "traceparent") into buf;
 * returns its length, or -1 when absent. */
int mr_rpc_call_metadata(mr_rpc_call *call, const char *key, char *buf, size_t cap);
/* Bidi calls: waits for the client's next message; 0 with *msg (malloc'd, the caller frees it)
 * and *len, 1 when the client closed its side (no more messages), MR_ESTATE when the call is
 * cancelled or not bidi, MR_ENOMEM. */
int mr_rpc_call_read(mr_rpc_call *c, uint8_t **msg, size_t *len);
/* The call's trace context (trace.h): a SERVER span whose parent is the client's traceparent
 * metadata (a new trace when it sent none or a malformed one); exported when the call ends if
 * the client sent a traceparent or the call is mrank.v1.Ranker's (untraced internal calls,
 * such as probes, are not). Pass it as mr_rpc_opts.trace to calls made for this one. */
const struct mr_trace_ctx *mr_rpc_call_trace(mr_rpc_call *c);
/* Streams: sends one response message and waits until gRPC took it, at most until the call's
 * deadline and the server's write cap (30 s unless set): a client that stops reading gets its
 * call cancelled then. 0, or MR_ESTATE
 * when the client is gone or too slow, or when called on the server's completion-queue
 * thread (which would wait for itself); finish the call anyway. Only from one thread at a time
 * per call. */
int mr_rpc_call_write(mr_rpc_call *call, const uint8_t *buf, size_t len);
/* Ends the call with OK and a last message (resp may be NULL with len 0 for a stream that has
 * nothing more to send; a unary call always sends one message). */
void mr_rpc_call_finish(mr_rpc_call *call, const uint8_t *resp, size_t len);
/* Ends the call with a non-OK status and message (message may be NULL). */
void mr_rpc_call_fail(mr_rpc_call *call, grpc_status_code code, const char *message);
/* Same with one trailing metadata entry key: value (lower-case key, printable ASCII value, e.g.
 * "retry-after-ms": "120"); key or value NULL sends none. */
void mr_rpc_call_fail_md(mr_rpc_call *call, grpc_status_code code, const char *message,
                         const char *key, const char *value);

/* ---- client ---- */

typedef struct mr_rpc_channel mr_rpc_channel;

/* Channels ping their connections this often (and give up on one whose ping is unanswered as
 * long); servers accept pings twice as often. */
#define MR_RPC_KEEPALIVE_MS 2000

/* A channel to target: "127.0.0.1:7001", "localhost:7001", "dns:///workers.svc:7001",
 * "ipv4:10.0.0.1:7001,10.0.0.2:7001". round_robin over the resolved addresses. Connects
 * lazily. */
int mr_rpc_channel_new(mr_rpc_channel **out, const char *target, mr_err *err);
/* The same over TLS (tls.h's mr_rpc_tls_client; NULL = plaintext, as mr_rpc_channel_new).
 * The files are checked here (MR_ENOTFOUND/MR_EFORMAT naming them) and watched afterwards. */
typedef struct mr_rpc_tls_client mr_rpc_tls_client;
int mr_rpc_channel_new_tls(mr_rpc_channel **out, const char *target,
                           const mr_rpc_tls_client *tls, mr_err *err);
/* Sends "authorization: VALUE" metadata (e.g. "Bearer KEY") on every later call of the
 * channel; NULL clears it. Call before the channel is shared between threads. */
int mr_rpc_channel_set_authorization(mr_rpc_channel *ch, const char *value, mr_err *err);
/* Replaces the channel's connection to its target with a fresh one, which resolves the name
 * again (gRPC's dns resolver re-resolves only after a connection fails, so addresses added
 * behind a name stay unused until then). Calls in flight finish on the old one; connections
 * to known addresses are reused. MR_ENOMEM, MR_EIO. */
int mr_rpc_channel_renew(mr_rpc_channel *ch, mr_err *err);
/* Waits for in-flight asynchronous calls to complete (their callbacks run), then frees. */
void mr_rpc_channel_free(mr_rpc_channel *ch);

/* Blocking unary call. timeout_ms <= 0 means no deadline; otherwise returns by the deadline
 * (plus scheduling noise). On return *status and msg (NUL-terminated, may be NULL/0) are set;
 * on OK, *resp is a malloc'd copy of the response (caller frees; NULL when len 0). Returns 0
 * on OK, MR_EIO for any non-OK status, MR_EINVAL on bad arguments. Fails fast with
 * UNAVAILABLE while no server is reachable. */
int mr_rpc_unary(mr_rpc_channel *ch, const char *method, const uint8_t *req, size_t req_len,
                 double timeout_ms, uint8_t **resp, size_t *resp_len, grpc_status_code *status,
                 char *msg, size_t msg_cap);

/* A cancel group: asynchronous calls started with it (mr_rpc_opts.cancel) can all be cancelled
 * at once, e.g. the Score calls of one request when its client goes away. Firing cancels every
 * call of the group still in flight (each completes with CANCELLED, done runs as usual) and
 * makes calls started with it afterwards complete at once with CANCELLED. A group may serve
 * calls on several channels; free it only after every call started with it has completed. */
typedef struct mr_rpc_cancel mr_rpc_cancel;
/* 0, or MR_ENOMEM. */
int mr_rpc_cancel_new(mr_rpc_cancel **out);
/* Cancels the group's calls in flight; returns how many it cancelled (0 when fired before:
 * nothing is counted twice). Idempotent. */
int mr_rpc_cancel_fire(mr_rpc_cancel *g);
/* 1 once fired. */
int mr_rpc_cancel_fired(mr_rpc_cancel *g);
void mr_rpc_cancel_free(mr_rpc_cancel *g);

typedef struct mr_rpc_opts {
    double timeout_ms;          /* <= 0: no deadline */
    int wait_for_ready;         /* 1: wait for a connection (until the deadline) instead of
                                 * failing UNAVAILABLE at once */
    const char *traceparent;    /* W3C trace context sent as "traceparent" metadata, or NULL */
    const struct mr_trace_ctx *trace; /* parent span (trace.h): the call gets a CLIENT span of
                                 * its own, sent as traceparent/tracestate (overrides the
                                 * field above); NULL: none */
    mr_rpc_cancel *cancel;      /* the call belongs to this group (NULL: none) */
} mr_rpc_opts;

/* Called once per asynchronous call on the channel's polling thread (keep it short; do not
 * free the channel from it). resp is valid only during the callback. */
typedef void (*mr_rpc_done)(void *user, grpc_status_code status, const char *msg,
                            const uint8_t *resp, size_t resp_len);
/* mr_rpc_unary with options (a cancel group, wait_for_ready, trace context). */
int mr_rpc_unary_opts(mr_rpc_channel *ch, const char *method, const uint8_t *req,
                      size_t req_len, const mr_rpc_opts *opts, uint8_t **resp, size_t *resp_len,
                      grpc_status_code *status, char *msg, size_t msg_cap);

/* Starts a unary call and returns at once; done runs exactly once when it completes (also on
 * a start failure, then with a non-OK status). 0, or MR_EINVAL/MR_ENOMEM (done not run). */
int mr_rpc_unary_async(mr_rpc_channel *ch, const char *method, const uint8_t *req,
                       size_t req_len, const mr_rpc_opts *opts, mr_rpc_done done, void *user);

#endif
