/* test_rpc.c: the gRPC layer (rpc/server.c, rpc/client.c) in one process over
 * loopback: unary echo, metadata, UNIMPLEMENTED, deadlines and the cancelled flag, health,
 * a port clash, shutdown with calls in flight (run under MR_SANITIZE for leaks), and inline
 * methods (run on the completion-queue thread while every handler thread is busy; arrival
 * time; failing with trailing metadata), arrival stamps of calls that queued behind an
 * inline handler, and a stream whose client stops reading (the write
 * gives up after the server's write cap and cancels the call; the server serves others). */
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "rpc.h"

static atomic_int slow_saw_cancel, slow_started, slow_done;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void echo(mr_rpc_call *call, void *user) {
    size_t n;
    const uint8_t *p = mr_rpc_call_request(call, &n);
    char tp[128] = "";
    int has = mr_rpc_call_metadata(call, "traceparent", tp, sizeof tp);
    char *out = malloc(n + 160);
    int k = snprintf(out, 160, "%s:%s:", (const char *)user, has >= 0 ? tp : "-");
    memcpy(out + k, p, n);
    mr_rpc_call_finish(call, (const uint8_t *)out, (size_t)k + n);
    free(out);
}

static void fail_handler(mr_rpc_call *call, void *user) {
    mr_rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "bad input: field x");
}

/* Waits until the call is cancelled (client deadline, cancel or server shutdown), 5 s max. */
static void slow(mr_rpc_call *call, void *user) {
    atomic_fetch_add(&slow_started, 1);
    double t0 = now_ms();
    while (!mr_rpc_call_cancelled(call) && now_ms() - t0 < 5000) usleep(2000);
    if (mr_rpc_call_cancelled(call)) atomic_fetch_add(&slow_saw_cancel, 1);
    /* like the worker: a passed deadline is answered DEADLINE_EXCEEDED, which also keeps the
     * client's status stable when this answer races the client's own deadline timer */
    if (mr_rpc_call_remaining_ms(call) <= 0)
        mr_rpc_call_fail(call, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline passed");
    else
        mr_rpc_call_fail(call, GRPC_STATUS_CANCELLED, "gave up");
    atomic_fetch_add(&slow_done, 1);
}

/* Written on the server's queue thread, read by the test after the answer came back: the
 * answer's path through the socket orders the two, but TSan does not see it (it reported
 * the plain double as a race in one run of ten), so the hand-over is an atomic. */
static _Atomic double inline_arrival;

/* Inline: refuses at once, with a retry hint in the trailing metadata. */
static void shed(mr_rpc_call *call, void *user) {
    atomic_store(&inline_arrival, mr_rpc_call_arrival_ms(call));
    mr_rpc_call_fail_md(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "busy", "retry-after-ms", "42");
}

typedef struct fixture {
    mr_rpc_server *s;
    mr_rpc_channel *ch;
    int port;
} fixture;

/* Starts s on its loopback port and opens a channel to it; target (TARGET_CAP bytes) receives
 * "127.0.0.1:PORT" and *port (may be NULL) the port. */
enum { TARGET_CAP = 64 };
static mr_rpc_channel *start_loopback(mr_rpc_server *s, int *port, char *target) {
    mr_err err = {0};
    mr_rpc_channel *ch = NULL;
    int p = 0;
    assert_int_equal(mr_rpc_server_start(s, &p, &err), 0);
    assert_true(p > 0);
    snprintf(target, TARGET_CAP, "127.0.0.1:%d", p);
    assert_int_equal(mr_rpc_channel_new(&ch, target, &err), 0);
    if (port) *port = p;
    return ch;
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    mr_err err = {0};
    assert_int_equal(mr_rpc_server_new(&f->s, "127.0.0.1:0", 4, &err), 0);
    assert_int_equal(mr_rpc_server_add_unary(f->s, "/t.T/Echo", echo, "echo"), 0);
    assert_int_equal(mr_rpc_server_add_unary(f->s, "/t.T/Echo", echo, "echo"), MR_EINVAL);
    assert_int_equal(mr_rpc_server_add_unary(f->s, "/t.T/Fail", fail_handler, NULL), 0);
    assert_int_equal(mr_rpc_server_add_unary(f->s, "/t.T/Slow", slow, NULL), 0);
    char target[TARGET_CAP];
    f->ch = start_loopback(f->s, &f->port, target);
    atomic_store(&slow_saw_cancel, 0);
    atomic_store(&slow_started, 0);
    atomic_store(&slow_done, 0);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    mr_rpc_channel_free(f->ch);
    mr_rpc_server_shutdown(f->s, 1000);
    mr_rpc_server_free(f->s);
    free(f);
    return 0;
}

static void test_echo(void **state) {
    fixture *f = *state;
    uint8_t *resp = NULL;
    size_t n = 0;
    grpc_status_code st;
    char msg[256];
    /* the first call connects; then measure a few round trips */
    int rc = mr_rpc_unary(f->ch, "/t.T/Echo", (const uint8_t *)"hello", 5, 5000, &resp, &n, &st,
                          msg, sizeof msg);
    assert_int_equal(rc, 0);
    assert_int_equal(st, GRPC_STATUS_OK);
    assert_int_equal(n, strlen("echo:-:hello"));
    assert_memory_equal(resp, "echo:-:hello", n);
    free(resp);
    double t0 = now_ms();
    for (int i = 0; i < 200; i++) {
        rc = mr_rpc_unary(f->ch, "/t.T/Echo", (const uint8_t *)"x", 1, 5000, &resp, &n, &st, msg,
                          sizeof msg);
        assert_int_equal(rc, 0);
        free(resp);
    }
    fprintf(stderr, "# echo round trip: %.1f us mean over 200\n", (now_ms() - t0) * 1e3 / 200);
    /* empty request, empty response still OK */
    rc = mr_rpc_unary(f->ch, "/t.T/Echo", NULL, 0, 5000, &resp, &n, &st, msg, sizeof msg);
    assert_int_equal(rc, 0);
    free(resp);
    /* a large message (over gRPC's 4 MB default) */
    size_t big = 6u << 20;
    uint8_t *b = malloc(big);
    memset(b, 'z', big);
    rc = mr_rpc_unary(f->ch, "/t.T/Echo", b, big, 10000, &resp, &n, &st, msg, sizeof msg);
    assert_int_equal(rc, 0);
    assert_int_equal(n, big + strlen("echo:-:"));
    free(resp);
    free(b);
}

static void test_fail_and_unknown(void **state) {
    fixture *f = *state;
    uint8_t *resp = (uint8_t *)1;
    size_t n = 7;
    grpc_status_code st;
    char msg[256];
    int rc = mr_rpc_unary(f->ch, "/t.T/Fail", (const uint8_t *)"a", 1, 5000, &resp, &n, &st, msg,
                          sizeof msg);
    assert_int_equal(rc, MR_EIO);
    assert_int_equal(st, GRPC_STATUS_INVALID_ARGUMENT);
    assert_string_equal(msg, "bad input: field x");
    assert_null(resp);
    assert_int_equal(n, 0);
    rc = mr_rpc_unary(f->ch, "/t.T/Nope", (const uint8_t *)"a", 1, 5000, &resp, &n, &st, msg,
                      sizeof msg);
    assert_int_equal(rc, MR_EIO);
    assert_int_equal(st, GRPC_STATUS_UNIMPLEMENTED);
    assert_non_null(strstr(msg, "/t.T/Nope"));
    /* the server still works after that */
    rc = mr_rpc_unary(f->ch, "/t.T/Echo", (const uint8_t *)"a", 1, 5000, &resp, &n, &st, msg,
                      sizeof msg);
    assert_int_equal(rc, 0);
    free(resp);
}

static void test_deadline_and_cancel(void **state) {
    fixture *f = *state;
    uint8_t *resp = NULL;
    size_t n;
    grpc_status_code st;
    char msg[256];
    mr_rpc_unary(f->ch, "/t.T/Echo", (const uint8_t *)"a", 1, 5000, &resp, &n, &st, msg,
                 sizeof msg);   /* connect first */
    free(resp);
    double t0 = now_ms();
    int rc = mr_rpc_unary(f->ch, "/t.T/Slow", (const uint8_t *)"a", 1, 100, &resp, &n, &st, msg,
                          sizeof msg);
    double dt = now_ms() - t0;
    assert_int_equal(rc, MR_EIO);
    assert_int_equal(st, GRPC_STATUS_DEADLINE_EXCEEDED);
    /* not before the deadline; and long before the handler's own 5 s give-up, so the client
     * was answered by its deadline, not by the handler (no absolute bound on shared cores) */
    assert_true(dt >= 90 && dt < 5000);
    /* the handler notices (deadline or RECV_CLOSE cancelled) and finishes */
    for (int i = 0; i < 500 && atomic_load(&slow_done) < 1; i++) usleep(2000);
    assert_int_equal(atomic_load(&slow_done), 1);
    assert_int_equal(atomic_load(&slow_saw_cancel), 1);
}

/* A raw gRPC core call, for what rpc.h's client does not expose: trailing metadata, and a
 * stream that is left unread. */
typedef struct raw_call {
    grpc_channel *chan;
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_byte_buffer *req;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code st;
    grpc_slice details;
} raw_call;

/* Waits (at most ms) for tag on r's queue; 1 when it came with success, 0 failed, -1 none came. */
static int raw_wait(raw_call *r, void *tag, int ms) {
    grpc_event ev = grpc_completion_queue_pluck(
        r->cq, tag,
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN)), NULL);
    return ev.type == GRPC_OP_COMPLETE ? ev.success != 0 : -1;
}

/* Starts a call of method on target with deadline dl: sends the message "a" and the close and
 * asks for the initial metadata (tag 1), and in a batch of its own for the status (tag 2: it
 * completes once the messages before it were read). raw_close frees it. */
static void raw_open(raw_call *r, const char *target, const char *method, gpr_timespec dl) {
    memset(r, 0, sizeof *r);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    r->chan = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    r->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice m = grpc_slice_from_static_string(method);
    r->call = grpc_channel_create_call(r->chan, NULL, GRPC_PROPAGATE_DEFAULTS, r->cq, m, NULL, dl,
                                       NULL);
    assert_non_null(r->call);
    grpc_metadata_array_init(&r->init_md);
    grpc_metadata_array_init(&r->trail_md);
    grpc_slice payload = grpc_slice_from_static_string("a");
    r->req = grpc_raw_byte_buffer_create(&payload, 1);
    r->st = GRPC_STATUS_UNKNOWN;
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = r->req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &r->init_md;
    assert_int_equal(grpc_call_start_batch(r->call, ops, 4, (void *)1, NULL), GRPC_CALL_OK);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &r->trail_md;
    ops[0].data.recv_status_on_client.status = &r->st;
    ops[0].data.recv_status_on_client.status_details = &r->details;
    assert_int_equal(grpc_call_start_batch(r->call, ops, 1, (void *)2, NULL), GRPC_CALL_OK);
}

/* Frees r; its status (tag 2) must have come. */
static void raw_close(raw_call *r) {
    grpc_slice_unref(r->details);
    grpc_metadata_array_destroy(&r->init_md);
    grpc_metadata_array_destroy(&r->trail_md);
    grpc_byte_buffer_destroy(r->req);
    grpc_call_unref(r->call);
    grpc_completion_queue_shutdown(r->cq);
    while (grpc_completion_queue_pluck(r->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
               .type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(r->cq);
    grpc_channel_destroy(r->chan);
}

/* Calls method on target (5 s deadline) and copies the trailing metadata value of key into buf
 * ("" when absent); returns the status. */
static grpc_status_code raw_call_trailer(const char *target, const char *method, const char *key,
                                         char *buf, size_t cap) {
    raw_call r;
    raw_open(&r, target, method,
             gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(5000, GPR_TIMESPAN)));
    assert_true(raw_wait(&r, (void *)1, 6000) >= 0);
    assert_true(raw_wait(&r, (void *)2, 6000) >= 0);
    buf[0] = 0;
    for (size_t i = 0; i < r.trail_md.count; i++)
        if (grpc_slice_str_cmp(r.trail_md.metadata[i].key, key) == 0) {
            size_t n = GRPC_SLICE_LENGTH(r.trail_md.metadata[i].value);
            if (n >= cap) n = cap - 1;
            memcpy(buf, GRPC_SLICE_START_PTR(r.trail_md.metadata[i].value), n);
            buf[n] = 0;
        }
    grpc_status_code st = r.st;
    raw_close(&r);
    return st;
}

static void on_slow_done(void *user, grpc_status_code status, const char *msg,
                         const uint8_t *resp, size_t resp_len) {
    (void)status, (void)msg, (void)resp, (void)resp_len;
    atomic_fetch_add((atomic_int *)user, 1);
}

static void test_inline(void **state) {
    (void)state;
    mr_rpc_server *s = NULL;
    mr_rpc_channel *ch = NULL;
    mr_err err = {0};
    assert_int_equal(mr_rpc_server_new(&s, "127.0.0.1:0", 1, &err), 0);
    assert_int_equal(mr_rpc_server_add_unary(s, "/t.T/Slow", slow, NULL), 0);
    assert_int_equal(mr_rpc_server_add_inline(s, "/t.T/Shed", 0, shed, NULL), 0);
    assert_int_equal(mr_rpc_server_add_inline(s, "/t.T/Shed", 0, shed, NULL), MR_EINVAL);
    char target[TARGET_CAP];
    ch = start_loopback(s, NULL, target);
    atomic_store(&slow_started, 0);
    atomic_store(&slow_done, 0);
    atomic_int async_done = 0;
    /* the only handler thread is busy with Slow until its 3 s deadline */
    mr_rpc_opts o = {.timeout_ms = 3000, .wait_for_ready = 1};
    assert_int_equal(mr_rpc_unary_async(ch, "/t.T/Slow", (const uint8_t *)"a", 1, &o,
                                        on_slow_done, &async_done), 0);
    for (int i = 0; i < 1000 && atomic_load(&slow_started) < 1; i++) usleep(2000);
    assert_int_equal(atomic_load(&slow_started), 1);
    uint8_t *resp = NULL;
    size_t n = 0;
    grpc_status_code st;
    char msg[256];
    double t0 = now_ms();
    int rc = mr_rpc_unary(ch, "/t.T/Shed", (const uint8_t *)"a", 1, 5000, &resp, &n, &st, msg,
                          sizeof msg);
    double t1 = now_ms();
    assert_int_equal(rc, MR_EIO);
    assert_int_equal(st, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_string_equal(msg, "busy");
    double arrival = atomic_load(&inline_arrival);
    assert_true(arrival >= t0 && arrival <= t1);
    char trailer[32];
    assert_int_equal(raw_call_trailer(target, "/t.T/Shed", "retry-after-ms", trailer,
                                      sizeof trailer), GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_string_equal(trailer, "42");
    /* answered while the handler thread was still blocked: it ran on the queue thread */
    assert_int_equal(atomic_load(&slow_done), 0);
    mr_rpc_channel_free(ch);   /* waits for Slow's callback */
    assert_int_equal(atomic_load(&async_done), 1);
    mr_rpc_server_free(s);
}

static void test_server_args(void **state) {
    (void)state;
    mr_rpc_server *s = (mr_rpc_server *)1;
    mr_err err = {0};
    assert_int_equal(mr_rpc_server_new(&s, "127.0.0.1:0", 0, &err), MR_EINVAL);
    assert_null(s);
    assert_int_equal(mr_rpc_server_new(&s, "127.0.0.1:0", 1, &err), 0);
    mr_rpc_server_free(s);   /* never started */
    mr_rpc_server_free(NULL);
}

/* A server with a 1 KB receive limit: a 2 KB request gets RESOURCE_EXHAUSTED from gRPC and the
 * handler never runs; a small one is still served on the same channel. */
static void test_max_receive(void **state) {
    (void)state;
    mr_rpc_server *s = NULL;
    mr_rpc_channel *ch = NULL;
    mr_err err = {0};
    assert_int_equal(mr_rpc_server_new(&s, "127.0.0.1:0", 1, &err), 0);
    assert_int_equal(mr_rpc_server_set_max_receive(s, 0, &err), MR_EINVAL);
    assert_int_equal(mr_rpc_server_set_max_receive(s, MR_RPC_MAX_MESSAGE + 1, &err), MR_EINVAL);
    assert_int_equal(mr_rpc_server_set_max_receive(s, 1024, &err), 0);
    assert_int_equal(mr_rpc_server_add_unary(s, "/t.T/Echo", echo, "echo"), 0);
    char target[TARGET_CAP];
    ch = start_loopback(s, NULL, target);
    assert_int_equal(mr_rpc_server_set_max_receive(s, 2048, &err), MR_EINVAL);   /* after start */
    uint8_t big[2048], *resp = NULL;
    size_t n = 0;
    grpc_status_code st;
    char msg[256];
    memset(big, 'z', sizeof big);
    mr_rpc_unary(ch, "/t.T/Echo", big, sizeof big, 5000, &resp, &n, &st, msg, sizeof msg);
    free(resp);
    resp = NULL;
    if (st != GRPC_STATUS_RESOURCE_EXHAUSTED) fail_msg("2 KB over a 1 KB limit: status %d %s", (int)st, msg);
    assert_int_equal(mr_rpc_unary(ch, "/t.T/Echo", big, 1000, 5000, &resp, &n, &st, msg, sizeof msg), 0);
    assert_int_equal(st, GRPC_STATUS_OK);
    assert_int_equal(n, 1000 + strlen("echo:-:"));
    free(resp);
    mr_rpc_channel_free(ch);
    mr_rpc_server_shutdown(s, 1000);
    mr_rpc_server_free(s);
}

static int check_health(mr_rpc_channel *ch, const char *service, grpc_status_code *st) {
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rq.service = (char *)service;
    uint8_t buf[256];
    size_t len = grpc__health__v1__health_check_request__pack(&rq, buf);
    uint8_t *resp = NULL;
    size_t n = 0;
    char msg[256];
    mr_rpc_unary(ch, "/grpc.health.v1.Health/Check", buf, len, 5000, &resp, &n, st, msg,
                 sizeof msg);
    if (*st != GRPC_STATUS_OK) return -1;
    Grpc__Health__V1__HealthCheckResponse *r =
        grpc__health__v1__health_check_response__unpack(NULL, n, resp);
    free(resp);
    assert_non_null(r);
    int status = r->status;
    grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    return status;
}

static void test_health(void **state) {
    fixture *f = *state;
    grpc_status_code st;
    assert_int_equal(check_health(f->ch, "", &st),
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    mr_rpc_server_set_health(f->s, "", 1);
    mr_rpc_server_set_health(f->s, "mrank.v1.Worker", 1);
    assert_int_equal(check_health(f->ch, "", &st),
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    assert_int_equal(check_health(f->ch, "mrank.v1.Worker", &st),
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    assert_int_equal(check_health(f->ch, "nope", &st), -1);
    assert_int_equal(st, GRPC_STATUS_NOT_FOUND);
    mr_rpc_server_set_health(f->s, "mrank.v1.Worker", 0);
    assert_int_equal(check_health(f->ch, "mrank.v1.Worker", &st),
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
}

/* Results of async calls. A callback claims a slot, writes its status (and an OK reply) and
 * only then counts itself in n, so a test that sees n reach k reads k written results (the
 * callback had counted first, and a reader under TSan once saw n = 1 with the reply not yet
 * written: "" in test_async_metadata). last: the last OK reply (tests reading it make one
 * call). */
typedef struct async_res {
    atomic_int claimed;
    atomic_int n;
    atomic_int codes[32];
    char last[128];
} async_res;

static void on_done(void *user, grpc_status_code status, const char *msg, const uint8_t *resp,
                    size_t len) {
    (void)msg;
    async_res *r = user;
    int i = atomic_fetch_add(&r->claimed, 1);
    if (i < 32) atomic_store(&r->codes[i], (int)status);
    if (status == GRPC_STATUS_OK) snprintf(r->last, sizeof r->last, "%.*s", (int)len, resp);
    atomic_fetch_add(&r->n, 1);   /* publishes the writes above */
}

/* Inline handlers that hold the queue thread for HOLD_MS each, recording their calls' arrival
 * times. */
enum { N_HOLD = 4, HOLD_MS = 100 };
static _Atomic double hold_arrival[N_HOLD];
static atomic_int hold_n;

static void hold(mr_rpc_call *call, void *user) {
    (void)user;
    int i = atomic_fetch_add(&hold_n, 1);
    if (i < N_HOLD) atomic_store(&hold_arrival[i], mr_rpc_call_arrival_ms(call));
    usleep(HOLD_MS * 1000);
    mr_rpc_call_finish(call, (const uint8_t *)"ok", 2);
}

/* Calls that arrive together while the queue thread runs an inline handler are stamped when
 * that handler returns, all of them, not each when its own turn comes: a coordinator charges
 * the wait behind earlier admissions to the request's budget. N_HOLD calls sent at once, each
 * held HOLD_MS on the queue thread: their arrival times span under 2 x HOLD_MS (one handler,
 * plus the sends' spread); stamped in turn they spanned (N_HOLD - 1) x HOLD_MS = 3 x HOLD_MS. */
static void test_arrival_stamps(void **state) {
    (void)state;
    mr_rpc_server *s = NULL;
    mr_rpc_channel *ch = NULL;
    mr_err err = {0};
    atomic_store(&hold_n, 0);
    assert_int_equal(mr_rpc_server_new(&s, "127.0.0.1:0", 1, &err), 0);
    assert_int_equal(mr_rpc_server_add_inline(s, "/t.T/Hold", 0, hold, NULL), 0);
    char target[TARGET_CAP];
    ch = start_loopback(s, NULL, target);
    uint8_t *resp = NULL;
    size_t n = 0;
    grpc_status_code st;
    char msg[256];
    assert_int_equal(mr_rpc_unary(ch, "/t.T/Hold", (const uint8_t *)"a", 1, 5000, &resp, &n, &st,
                                  msg, sizeof msg), 0);   /* connected */
    free(resp);
    atomic_store(&hold_n, 0);
    static async_res r;
    memset(&r, 0, sizeof r);
    mr_rpc_opts o = {.timeout_ms = 10000, .wait_for_ready = 1};
    double t0 = now_ms();
    for (int i = 0; i < N_HOLD; i++)
        assert_int_equal(mr_rpc_unary_async(ch, "/t.T/Hold", (const uint8_t *)"a", 1, &o,
                                            on_done, &r), 0);
    for (int i = 0; i < 5000 && atomic_load(&r.n) < N_HOLD; i++) usleep(1000);
    assert_int_equal(atomic_load(&r.n), N_HOLD);
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < N_HOLD; i++) {
        double a = atomic_load(&hold_arrival[i]);
        assert_true(a >= t0);
        lo = a < lo ? a : lo;
        hi = a > hi ? a : hi;
    }
    fprintf(stderr, "# %d calls held %d ms each on the queue thread: arrival times span %.1f ms\n",
            N_HOLD, HOLD_MS, hi - lo);
    assert_true(hi - lo < 2 * HOLD_MS);
    mr_rpc_channel_free(ch);
    mr_rpc_server_free(s);
}

static void test_async_metadata(void **state) {
    fixture *f = *state;
    static async_res r;
    memset(&r, 0, sizeof r);
    mr_rpc_opts o = {.timeout_ms = 5000, .wait_for_ready = 1,
                     .traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"};
    assert_int_equal(mr_rpc_unary_async(f->ch, "/t.T/Echo", (const uint8_t *)"m", 1, &o, on_done,
                                        &r),
                     0);
    for (int i = 0; i < 1000 && atomic_load(&r.n) < 1; i++) usleep(1000);
    assert_int_equal(atomic_load(&r.n), 1);
    assert_int_equal(atomic_load(&r.codes[0]), GRPC_STATUS_OK);
    assert_string_equal(r.last, "echo:00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01:m");
}

static void test_port_clash(void **state) {
    fixture *f = *state;
    mr_rpc_server *s2;
    mr_err err = {0};
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", f->port);
    assert_int_equal(mr_rpc_server_new(&s2, addr, 1, &err), 0);
    assert_int_equal(mr_rpc_server_start(s2, NULL, &err), MR_EIO);
    assert_non_null(strstr(err.msg, addr));
    mr_rpc_server_free(s2);
}

static void test_unreachable(void **state) {
    (void)state;
    mr_rpc_channel *ch;
    mr_err err = {0};
    assert_int_equal(mr_rpc_channel_new(&ch, "127.0.0.1:1", &err), 0);
    uint8_t *resp;
    size_t n;
    grpc_status_code st;
    char msg[256];
    double t0 = now_ms();
    int rc = mr_rpc_unary(ch, "/t.T/Echo", (const uint8_t *)"a", 1, 30000, &resp, &n, &st, msg,
                          sizeof msg);
    assert_int_equal(rc, MR_EIO);
    /* fails fast: a call that waited for its 30 s deadline would end DEADLINE_EXCEEDED */
    assert_int_equal(st, GRPC_STATUS_UNAVAILABLE);
    fprintf(stderr, "# unreachable: UNAVAILABLE after %.1f ms\n", now_ms() - t0);
    mr_rpc_channel_free(ch);
}

/* Calls in flight at shutdown: slow handlers are cancelled after the drain and finish; the
 * clients get a status; nothing crashes or leaks. */
static void test_shutdown_in_flight(void **state) {
    fixture *f = *state;
    static async_res r;
    memset(&r, 0, sizeof r);
    mr_rpc_opts o = {.timeout_ms = 10000, .wait_for_ready = 1};
    for (int i = 0; i < 6; i++)
        assert_int_equal(mr_rpc_unary_async(f->ch, "/t.T/Slow", (const uint8_t *)"s", 1, &o,
                                            on_done, &r),
                         0);
    for (int i = 0; i < 2000 && atomic_load(&slow_started) < 4; i++) usleep(1000);
    assert_true(atomic_load(&slow_started) >= 4);   /* 4 handler threads, 2 calls queued */
    double t0 = now_ms();
    mr_rpc_server_shutdown(f->s, 100);
    double dt = now_ms() - t0;
    fprintf(stderr, "# shutdown with 6 calls in flight: %.1f ms\n", dt);
    /* the drain ended by cancelling the handlers (each saw the cancel), not by their 5 s
     * give-up: an order of events, not a duration */
    assert_int_equal(atomic_load(&slow_done), atomic_load(&slow_started));
    assert_int_equal(atomic_load(&slow_saw_cancel), atomic_load(&slow_started));
    for (int i = 0; i < 3000 && atomic_load(&r.n) < 6; i++) usleep(1000);
    assert_int_equal(atomic_load(&r.n), 6);
    for (int i = 0; i < 6; i++) assert_int_not_equal(atomic_load(&r.codes[i]), GRPC_STATUS_OK);
    /* a second shutdown is a no-op; teardown frees */
    mr_rpc_server_shutdown(f->s, 100);
}

/* ---- a client that stops reading a stream ---- */

/* The flood handler writes FLOOD_MAX messages of FLOOD_MSG bytes (100 MB: far beyond HTTP/2's
 * flow-control windows and loopback's socket buffers, so a client that reads nothing cannot
 * take them all) until a write fails. */
enum { FLOOD_MSG = 256 * 1024, FLOOD_MAX = 400, FLOOD_CAP_MS = 1000 };
static atomic_int flood_written, flood_failed, flood_done;

static void flood(mr_rpc_call *call, void *user) {
    (void)user;
    uint8_t *buf = calloc(FLOOD_MSG, 1);
    for (int i = 0; buf && i < FLOOD_MAX; i++) {
        if (mr_rpc_call_write(call, buf, FLOOD_MSG)) {
            atomic_store(&flood_failed, 1);
            break;
        }
        atomic_fetch_add(&flood_written, 1);
    }
    free(buf);
    if (atomic_load(&flood_failed))
        mr_rpc_call_fail(call, GRPC_STATUS_CANCELLED, "client too slow");
    else
        mr_rpc_call_finish(call, NULL, 0);
    atomic_store(&flood_done, 1);
}

/* A server-streaming call with no deadline whose client never asks for a message: the
 * server's writes stall on flow control, and mr_rpc_call_write gives up after the server's
 * write cap (set to FLOOD_CAP_MS here; 30 s by default) and cancels the call, so the handler
 * thread is not held by that client (before the cap, it waited for as long as the client
 * kept the connection: the bounded wait below fails). Meanwhile the server answers others. */
static void test_stalled_reader(void **state) {
    (void)state;
    mr_rpc_server *s = NULL;
    mr_rpc_channel *ch = NULL;
    mr_err err = {0};
    atomic_store(&flood_written, 0);
    atomic_store(&flood_failed, 0);
    atomic_store(&flood_done, 0);
    assert_int_equal(mr_rpc_server_new(&s, "127.0.0.1:0", 2, &err), 0);
    assert_int_equal(mr_rpc_server_set_write_max(s, 0, &err), MR_EINVAL);
    assert_int_equal(mr_rpc_server_set_write_max(s, MR_RPC_WRITE_MAX_MS + 1, &err), MR_EINVAL);
    assert_int_equal(mr_rpc_server_set_write_max(s, FLOOD_CAP_MS, &err), 0);
    assert_int_equal(mr_rpc_server_add_stream(s, "/t.T/Flood", flood, NULL), 0);
    assert_int_equal(mr_rpc_server_add_unary(s, "/t.T/Echo", echo, "echo"), 0);
    char target[TARGET_CAP];
    ch = start_loopback(s, NULL, target);
    assert_int_equal(mr_rpc_server_set_write_max(s, 500, &err), MR_EINVAL);   /* after start */

    /* the stalled client: asks for no message */
    raw_call r;
    raw_open(&r, target, "/t.T/Flood", gpr_inf_future(GPR_CLOCK_REALTIME));
    assert_int_equal(raw_wait(&r, (void *)1, 10000), 1);

    /* the writes stall: the server still answers another call while the flood waits */
    for (int i = 0; i < 5000 && atomic_load(&flood_written) == 0; i++) usleep(1000);
    assert_true(atomic_load(&flood_written) > 0);
    uint8_t *resp = NULL;
    size_t n = 0;
    grpc_status_code est;
    char msg[256];
    assert_int_equal(mr_rpc_unary(ch, "/t.T/Echo", (const uint8_t *)"x", 1, 5000, &resp, &n,
                                  &est, msg, sizeof msg), 0);
    free(resp);

    /* the handler gives up on its own: bounded far beyond the cap, it must end */
    for (int i = 0; i < 20000 && !atomic_load(&flood_done); i++) usleep(1000);
    int written = atomic_load(&flood_written);
    fprintf(stderr, "# stalled reader: %d of %d messages of %d KB taken before the write gave "
            "up\n", written, FLOOD_MAX, FLOOD_MSG / 1024);
    assert_true(atomic_load(&flood_done));
    assert_true(atomic_load(&flood_failed));
    assert_true(written < FLOOD_MAX);
    /* the client, reading again, gets at most what was taken, then the cancellation (gRPC
     * holds the status back until the messages before it are read) */
    int got = 0;
    for (;;) {
        grpc_byte_buffer *m = NULL;
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &m;
        assert_int_equal(grpc_call_start_batch(r.call, &op, 1, (void *)3, NULL), GRPC_CALL_OK);
        assert_true(raw_wait(&r, (void *)3, 10000) >= 0);
        if (!m) break;
        grpc_byte_buffer_destroy(m);
        assert_true(++got <= written);
    }
    assert_int_equal(raw_wait(&r, (void *)2, 10000), 1);
    assert_int_equal(r.st, GRPC_STATUS_CANCELLED);
    raw_close(&r);
    mr_rpc_channel_free(ch);
    mr_rpc_server_shutdown(s, 1000);
    mr_rpc_server_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fail_and_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_and_cancel, setup, teardown),
        cmocka_unit_test(test_server_args),
        cmocka_unit_test(test_inline),
        cmocka_unit_test(test_arrival_stamps),
        cmocka_unit_test(test_max_receive),
        cmocka_unit_test_setup_teardown(test_health, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_port_clash, setup, teardown),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test_setup_teardown(test_shutdown_in_flight, setup, teardown),
        cmocka_unit_test(test_stalled_reader),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
