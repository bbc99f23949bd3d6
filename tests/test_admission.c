/* test_admission.c: the coordinator's admission at arrival.
 *
 * The first group checks the pure queue rules of coordinator/admission.h with a clock the test
 * drives: start order (tier priority, then earliest deadline, then arrival), the 3/4 share of
 * the lower tiers, refusal when a request cannot start and finish before its deadline, judged
 * on its cheapest (degraded) answer (and not
 * before its tier's first completion), the per-tier bound, displacement of lower-priority work
 * when the queue is full, sweeping of expired and cancelled requests, and the adaptive limit.
 *
 * The second is an overload test in one process: two workers (models/mrank-tiny) behind a
 * coordinator with two tiers of equal budget, "hi" (priority 2) and "lo" (priority 1), and
 * max_inflight 2. One request's service time S is measured first on an idle coordinator; a
 * second coordinator gets budgets of BUDGET_X * S, and then N_EACH requests of each tier are
 * sent at once (many times what the budget lets it serve). It asserts: refusals at arrival come
 * back within S (median), the high tier's answered share is above the low tier's, and every
 * request gets its answer (any status) within its budget plus SLACK_X * S. No absolute times:
 * everything is a ratio of S measured in the same run. Then the health of service
 * "profile/one" goes from SERVING to NOT_SERVING once both workers are gone. The third runs
 * the same overload on a profile that starts with a lexical stage, both tiers allowing degraded
 * answers: nothing is refused, what cannot run in full is answered from BM25 alone at once.
 * Every wait is bounded. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "admission.h"
#include "coordinator.h"
#include "grpc/health/v1/health.pb-c.h"
#include "mrank.pb-c.h"
#include "rpc.h"

#include "clusterutil.h"

/* ---- pure rules ---- */

static mr_admq_item item(int tier, double deadline, double service) {
    return (mr_admq_item){.tier = tier, .deadline_ms = deadline, .service_ms = service,
                          .work = service};
}

static mr_admq_verdict offer(mr_admq *q, mr_admq_item *it, double now) {
    mr_admq_item *disp[1];
    int nd = 0;
    double retry = 0;
    mr_admq_verdict v = mr_admq_offer(q, it, now, disp, 1, &nd, &retry);
    assert_int_equal(nd, 0);
    assert_true(retry >= 1);
    return v;
}

/* Two tiers: 0 low (priority 1), 1 high (priority 5); generous bounds unless changed. */
static void two_tiers(mr_admq *q, int max_items, int max_running) {
    int prio[2] = {1, 5};
    double max_ms[2] = {1e9, 1e9};
    mr_admq_init(q, 2, prio, max_ms, max_items, max_running, 1.0);
}

static void test_order(void **state) {
    (void)state;
    mr_admq q;
    two_tiers(&q, 100, 1);
    mr_admq_item a = item(0, 50, 1), b = item(1, 900, 1), c = item(1, 300, 1), d = item(1, 300, 1),
                 e = item(0, 20, 1);
    mr_admq_item *in[] = {&a, &b, &c, &d, &e};
    for (int i = 0; i < 5; i++) assert_int_equal(offer(&q, in[i], 0), MR_ADMQ_QUEUED);
    /* high tier first, earliest deadline first, then arrival order; then the low tier */
    mr_admq_item *want[] = {&c, &d, &b, &e, &a};
    for (int i = 0; i < 5; i++) {
        mr_admq_item *it = mr_admq_next(&q, 1);
        assert_ptr_equal(it, want[i]);
        assert_null(mr_admq_next(&q, 1));   /* limit 1: nothing more until it is done */
        mr_admq_done(&q, it, -1);
    }
    assert_null(mr_admq_next(&q, 2));
}

static void test_low_share(void **state) {
    (void)state;
    mr_admq q;
    two_tiers(&q, 100, 4);
    mr_admq_item lo[4], hi[2];
    for (int i = 0; i < 4; i++) {
        lo[i] = item(0, INFINITY, 1);
        assert_int_equal(offer(&q, &lo[i], 0), MR_ADMQ_QUEUED);
    }
    for (int i = 0; i < 3; i++) assert_ptr_equal(mr_admq_next(&q, 0), &lo[i]);
    assert_null(mr_admq_next(&q, 0));   /* the low tier fills 3 of 4 slots */
    hi[0] = item(1, INFINITY, 1);
    hi[1] = item(1, INFINITY, 1);
    assert_int_equal(offer(&q, &hi[0], 0), MR_ADMQ_QUEUED);
    assert_int_equal(offer(&q, &hi[1], 0), MR_ADMQ_QUEUED);
    assert_ptr_equal(mr_admq_next(&q, 0), &hi[0]);   /* the last slot is the high tier's */
    assert_null(mr_admq_next(&q, 0));
}

static void test_no_time(void **state) {
    (void)state;
    mr_admq q;
    two_tiers(&q, 100, 1);
    /* before any completion the service estimate is a seed: only the wait counts */
    mr_admq_item seed = item(1, 5, 100);
    assert_int_equal(offer(&q, &seed, 0), MR_ADMQ_QUEUED);
    mr_admq_item *it = mr_admq_next(&q, 0);
    assert_ptr_equal(it, &seed);
    mr_admq_done(&q, it, 10);   /* 10 ms for 100 work units: 0.1 ms per unit */
    assert_true(fabs(mr_admq_service_ms(&q, 1, 100, 999) - 10) < 1e-9);
    assert_true(fabs(mr_admq_service_ms(&q, 0, 100, 999) - 999) < 1e-9);   /* other tier */

    /* one running for 10 ms from t=0: an arrival at t=0 waits ~10 ms (counted twice, see
     * admission.c), then 10 ms of service */
    mr_admq_item run = item(1, 1000, 10), late = item(1, 25, 10), ok = item(1, 35, 10);
    assert_int_equal(offer(&q, &run, 0), MR_ADMQ_QUEUED);
    assert_ptr_equal(mr_admq_next(&q, 0), &run);
    assert_true(fabs(mr_admq_wait_ms(&q, 1, 15, 0) - 10) < 1e-9);
    assert_int_equal(offer(&q, &late, 0), MR_ADMQ_NO_TIME);   /* 2 x 10 + 10 > 25 */
    assert_int_equal(offer(&q, &ok, 0), MR_ADMQ_QUEUED);      /* 2 x 10 + 10 <= 35 */
    /* the wait counts the queued work ahead: a later deadline queues behind `ok` */
    assert_true(fabs(mr_admq_wait_ms(&q, 1, 100, 0) - 20) < 1e-9);
    /* a lower tier's work is never ahead of a higher tier's arrival */
    mr_admq_item low = item(0, INFINITY, 500);
    assert_int_equal(offer(&q, &low, 0), MR_ADMQ_QUEUED);
    assert_true(fabs(mr_admq_wait_ms(&q, 1, 100, 0) - 20) < 1e-9);

    /* a refusal for its own service time alone relaxes the estimate (no lock-out); too short
     * even at the best speed seen (0.1 ms per unit: 10 ms for 100 units) is TOO_SLOW, not
     * load */
    double before = q.ms_per_work[1];
    mr_admq_item tiny = item(1, 1, 10);
    tiny.work = 100;
    assert_int_equal(offer(&q, &tiny, 0), MR_ADMQ_TOO_SLOW);
    assert_true(q.ms_per_work[1] < before);
    q.ms_per_work[1] = 0.3;   /* loaded: 30 ms for 100 units, the best still 10 ms */
    mr_admq_item loaded = item(1, 20, 30);
    loaded.work = 100;
    assert_int_equal(offer(&q, &loaded, 0), MR_ADMQ_NO_TIME);
    q.ms_per_work[1] = 0.1;
    /* judged on its cheapest answer: deadline 25 puts it ahead of `ok` (35), behind the
     * running 10 ms; a degraded answer of 2 ms fits, the full 10 ms does not */
    mr_admq_item cheap = item(1, 25, 10);
    assert_int_equal(offer(&q, &cheap, 0), MR_ADMQ_NO_TIME);   /* 2 x 10 + 10 > 25 */
    cheap.min_service_ms = 2;
    assert_int_equal(offer(&q, &cheap, 0), MR_ADMQ_QUEUED);    /* 2 x 10 + 2 <= 25 */
    assert_true(fabs(mr_admq_next_expiry(&q) - 23) < 1e-9);   /* must start by 25 - 2 */
}

static void test_tier_bound(void **state) {
    (void)state;
    mr_admq q;
    int prio[2] = {1, 5};
    double max_ms[2] = {25, 1e9};
    mr_admq_init(&q, 2, prio, max_ms, 100, 1, 1.0);
    mr_admq_item a = item(0, INFINITY, 10), b = item(0, INFINITY, 10), c = item(0, INFINITY, 10),
                 h = item(1, INFINITY, 10);
    assert_int_equal(offer(&q, &a, 0), MR_ADMQ_QUEUED);
    assert_int_equal(offer(&q, &b, 0), MR_ADMQ_QUEUED);
    assert_int_equal(offer(&q, &c, 0), MR_ADMQ_FULL);     /* 30 ms queued > 25 */
    assert_int_equal(offer(&q, &h, 0), MR_ADMQ_QUEUED);   /* another tier's bound */
}

static void test_displace(void **state) {
    (void)state;
    mr_admq q;
    two_tiers(&q, 3, 1);
    mr_admq_item l1 = item(0, 100, 1), l2 = item(0, 300, 1), l3 = item(0, 200, 1),
                 l4 = item(0, 50, 1), h = item(1, 100, 1), h2 = item(1, 100, 1),
                 h3 = item(1, 100, 1), h4 = item(1, 100, 1);
    assert_int_equal(offer(&q, &l1, 0), MR_ADMQ_QUEUED);
    assert_int_equal(offer(&q, &l2, 0), MR_ADMQ_QUEUED);
    assert_int_equal(offer(&q, &l3, 0), MR_ADMQ_QUEUED);
    assert_int_equal(offer(&q, &l4, 0), MR_ADMQ_FULL);   /* same priority: no displacement */
    mr_admq_item *disp[1];
    int nd = 0;
    double retry;
    /* the high arrival sheds the least urgent low request (latest deadline) */
    assert_int_equal(mr_admq_offer(&q, &h, 0, disp, 1, &nd, &retry), MR_ADMQ_QUEUED);
    assert_int_equal(nd, 1);
    assert_ptr_equal(disp[0], &l2);
    assert_int_equal(mr_admq_offer(&q, &h2, 0, disp, 1, &nd, &retry), MR_ADMQ_QUEUED);
    assert_ptr_equal(disp[0], &l3);
    assert_int_equal(mr_admq_offer(&q, &h3, 0, disp, 1, &nd, &retry), MR_ADMQ_QUEUED);
    assert_ptr_equal(disp[0], &l1);
    /* only high work left: full */
    assert_int_equal(mr_admq_offer(&q, &h4, 0, disp, 1, &nd, &retry), MR_ADMQ_FULL);
    assert_int_equal(nd, 0);
    assert_ptr_equal(mr_admq_next(&q, 0), &h);
}

static int gone_if_marked(void *user, void *ctx) {
    (void)ctx;
    return user != NULL;
}

static void test_sweep(void **state) {
    (void)state;
    mr_admq q;
    two_tiers(&q, 100, 1);
    int mark;
    q.ms_per_work[0] = q.ms_per_work[1] = 1;   /* both tiers have completions: not seeded */
    mr_admq_item a = item(0, 100, 30), b = item(1, 1000, 30), c = item(1, 2000, 30);
    c.user = &mark;   /* "cancelled by its client" */
    assert_int_equal(offer(&q, &a, 0), MR_ADMQ_QUEUED);
    assert_int_equal(offer(&q, &b, 0), MR_ADMQ_QUEUED);
    assert_true(fabs(mr_admq_next_expiry(&q) - 70) < 1e-9);   /* a must start by 100 - 30 */
    assert_null(mr_admq_sweep(&q, 60, NULL, NULL));
    assert_ptr_equal(mr_admq_sweep(&q, 71, NULL, NULL), &a);
    assert_null(mr_admq_sweep(&q, 71, NULL, NULL));
    assert_int_equal(offer(&q, &c, 71), MR_ADMQ_QUEUED);
    assert_ptr_equal(mr_admq_sweep(&q, 72, gone_if_marked, NULL), &c);
    assert_ptr_equal(mr_admq_next(&q, 72), &b);
}

static void test_adaptive_limit(void **state) {
    (void)state;
    mr_admq q;
    two_tiers(&q, 100, 8);
    assert_true(q.limit == 8);
    mr_admq_item it[40];
    /* fast completions set the best ms per unit (1) */
    for (int i = 0; i < 3; i++) {
        it[i] = item(1, INFINITY, 1);
        offer(&q, &it[i], 0);
        mr_admq_done(&q, mr_admq_next(&q, 0), 1);
    }
    assert_true(q.limit == 8);
    /* slow completions (5x the best): the limit shrinks, never below 1 */
    for (int i = 3; i < 40; i++) {
        it[i] = item(1, INFINITY, 1);
        offer(&q, &it[i], 0);
        mr_admq_done(&q, mr_admq_next(&q, 0), 5);
    }
    assert_true(q.limit < 8 && q.limit >= 1);
    double low = q.limit;
    /* fast again with requests waiting: it grows back, at most to max_running */
    mr_admq_item waiting = item(1, INFINITY, 1), f[200];
    offer(&q, &waiting, 0);
    for (int i = 0; i < 200; i++) {   /* completions of items that bypassed the queue */
        f[i] = item(1, INFINITY, 1);
        mr_admq_done(&q, &f[i], 1);
    }
    assert_true(q.limit > low);
    assert_true(q.limit <= 8);
}

/* ---- overload in one process ---- */

/* N_DOCS documents (the 8 texts repeated) make S long against the fixed cost of one gRPC call,
 * which is all a refusal costs */
enum { N_TEXTS = K_TINY_N_DOCS, N_DOCS = 48, N_EACH = 30, N_SERVICE = 5 };
#define BUDGET_X 4.0     /* budget = 4 S: a handful of requests fit, most of 2 x 30 cannot */
/* Answers are due by the budget; an admitted request that started just in time may overrun it
 * by the error of its service estimate and the scheduling noise of a shared 2-core machine:
 * allow one more S. Without admission at arrival requests wait in a queue far longer. */
#define SLACK_X 1.0
/* A refusal at arrival does no model work: parse, estimate, answer; what its time measures
 * here is mostly the burst itself (60 calls sent at once by this process and parsed one after
 * the other by the server's queue thread, while the workers compete for the same 2 shared
 * cores): measured 0.1-0.5 S. A request that waited for a slot takes at least the rest of a
 * running one's service plus its own, over S: a median refusal within S is an answer that
 * never waited for a slot. */
#define REFUSAL_X 1.0
/* A lexical answer instead of a refusal also scores the 48 documents with BM25 on the thread
 * that would have refused (measured 0.5-0.8 S in the burst of 60); one that waited for a slot
 * until the full model no longer fitted comes after budget - 1.2 S = 2.8 S: a median within
 * 2 S is an answer that did not wait for a slot. */
#define LEXICAL_X 2.0


static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A coordinator over the two workers with max_inflight 2 and tiers "hi" (priority 2) and "lo"
 * (priority 1) of budget_ms each (0: none) on profile "one": the full model, after a lexical
 * stage that keeps every candidate when lexical (both tiers then allow degraded answers). */
static mr_coord *start_coord(mr_worker **w, double budget_ms, int lexical, int *port) {
    char json[2048];
    const char *deg = lexical ? ", \"allow_degraded\": true" : "";
    snprintf(json, sizeof json,
             "{\"limits\": {\"max_documents\": 64, \"max_tokens_per_pair\": 64,"
             " \"max_inflight\": 2},"
             " \"pools\": [{\"name\": \"p\", \"addresses\": [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]}],"
             " \"stages\": [{\"name\": \"full\", \"pool\": \"p\", \"depth\": 4},"
             " {\"name\": \"bm25\", \"kind\": \"lexical\"}],"
             " \"profiles\": [{\"name\": \"one\", \"stages\": [%s{\"stage\": \"full\"}]}],"
             " \"tiers\": [{\"name\": \"hi\", \"priority\": 2, \"profile\": \"one\","
             " \"budget_ms\": %.0f%s}, {\"name\": \"lo\", \"priority\": 1, \"profile\": \"one\","
             " \"budget_ms\": %.0f%s}], \"default_tier\": \"lo\"}",
             mr_worker_port(w[0]), mr_worker_port(w[1]),
             lexical ? "{\"stage\": \"bm25\", \"keep_top_k\": 64}, " : "", budget_ms, deg,
             budget_ms, deg);
    return start_cluster_coord(json, port, NULL);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct outcome {
    pthread_mutex_t *mu;
    int *n_done;
    double t_sent, ms;
    grpc_status_code st;
    char msg[200];
    int done, degraded, lexical_only;   /* lexical_only: only stage "bm25" ran */
} outcome;

static void on_done(void *user, grpc_status_code st, const char *msg, const uint8_t *resp,
                    size_t resp_len) {
    outcome *o = user;
    Mrank__V1__RerankResponse *r =
        st == GRPC_STATUS_OK ? mrank__v1__rerank_response__unpack(NULL, resp_len, resp) : NULL;
    pthread_mutex_lock(o->mu);
    o->ms = now_ms() - o->t_sent;
    o->st = st;
    snprintf(o->msg, sizeof o->msg, "%s", msg ? msg : "");
    if (r) {
        o->degraded = r->degraded;
        o->lexical_only = r->n_stages == 2 && !strcmp(r->stages[0]->name, "bm25") &&
                          !r->stages[0]->skipped && r->stages[1]->skipped;
    } else if (st == GRPC_STATUS_OK) {
        snprintf(o->msg, sizeof o->msg, "answer does not unpack");
        o->st = GRPC_STATUS_INTERNAL;
    }
    o->done = 1;
    (*o->n_done)++;
    pthread_mutex_unlock(o->mu);
    mrank__v1__rerank_response__free_unpacked(r, NULL);
}

/* One Rerank on ch, waited for; fails the test unless it is answered, or (warm_up) ran out of
 * budget or room: a warm-up request only teaches the budgeted coordinator its service times,
 * one that ran out of budget while the machine's speed moved (the suite's other tests start or
 * stop beside it) teaches it too, and proves nothing against admission. Its time in ms. */
static double rerank_once(mr_rpc_channel *ch, const uint8_t *req, size_t len, int warm_up) {
    uint8_t *resp = NULL;
    size_t rlen = 0;
    grpc_status_code st;
    char msg[256];
    double t = now_ms();
    if (mr_rpc_unary(ch, "/mrank.v1.Ranker/Rerank", req, len, 20000, &resp, &rlen, &st, msg,
                     sizeof msg) &&
        !(warm_up && (st == GRPC_STATUS_DEADLINE_EXCEEDED || st == GRPC_STATUS_RESOURCE_EXHAUSTED)))
        fail_msg("%s Rerank: status %d: %s", warm_up ? "warm-up" : "idle", (int)st, msg);
    free(resp);
    return now_ms() - t;
}

/* S: the median time of N_SERVICE sequential requests req on an idle coordinator without a
 * budget over the workers w (the first one warms the connections up). */
static double idle_service_ms(mr_worker **w, const uint8_t *req, size_t len) {
    int port = 0;
    mr_coord *c = start_coord(w, 0, 0, &port);
    mr_rpc_channel *ch = channel_to(port);
    double svc[N_SERVICE];
    rerank_once(ch, req, len, 0);
    for (int i = 0; i < N_SERVICE; i++) svc[i] = rerank_once(ch, req, len, 0);
    qsort(svc, N_SERVICE, sizeof svc[0], cmp_double);
    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    return svc[N_SERVICE / 2];
}

/* The overload: after N_SERVICE sequential requests of each tier have taught the coordinator
 * their service times (steady state), 2 x N_EACH requests at once, interleaved hi (req[0]) and
 * lo (req[1]), each with a client deadline far beyond the budget (only the coordinator's
 * admission can make the answers come within it); waits (at most 60 s) until all are done.
 * Returns o[2 * N_EACH] (the caller frees it). */
static outcome *burst(mr_rpc_channel *ch, uint8_t *const *req, const size_t *len, double budget,
                      pthread_mutex_t *mu) {
    for (int i = 0; i < 2 * N_SERVICE; i++) rerank_once(ch, req[i % 2], len[i % 2], 1);
    int n_done = 0;
    outcome *o = calloc(2 * N_EACH, sizeof *o);
    assert_non_null(o);
    mr_rpc_opts opts = {.timeout_ms = 20 * budget + 20000, .wait_for_ready = 1};
    for (int i = 0; i < 2 * N_EACH; i++) {
        o[i] = (outcome){.mu = mu, .n_done = &n_done, .t_sent = now_ms()};
        assert_int_equal(mr_rpc_unary_async(ch, "/mrank.v1.Ranker/Rerank", req[i % 2],
                                            len[i % 2], &opts, on_done, &o[i]),
                         0);
    }
    int d = 0;
    for (int k = 0; k < 1200 && d < 2 * N_EACH; k++) {   /* at most 60 s */
        usleep(50000);
        pthread_mutex_lock(mu);
        d = n_done;
        pthread_mutex_unlock(mu);
    }
    assert_int_equal(d, 2 * N_EACH);
    return o;
}

/* grpc.health.v1 status of service: 1 SERVING, 0 NOT_SERVING, -1 any failure (NOT_FOUND). */
static int health(mr_rpc_channel *ch, const char *service) {
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rq.service = (char *)service;
    uint8_t buf[256], *resp = NULL;
    size_t n = grpc__health__v1__health_check_request__pack(&rq, buf), rlen = 0;
    grpc_status_code st;
    char msg[256];
    if (mr_rpc_unary(ch, "/grpc.health.v1.Health/Check", buf, n, 5000, &resp, &rlen, &st, msg,
                     sizeof msg))
        return -1;
    Grpc__Health__V1__HealthCheckResponse *r =
        grpc__health__v1__health_check_response__unpack(NULL, rlen, resp);
    free(resp);
    assert_non_null(r);
    int ok = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    return ok;
}

/* The overload tests' cluster side: two workers, and a request of N_DOCS documents for each
 * tier ("hi", "lo"). */
typedef struct rig {
    mr_worker *w[2];
    uint8_t *req[2];
    size_t len[2];
} rig;

static void rig_start(rig *k) {
    for (int t = 0; t < 2; t++) {
        k->w[t] = start_tiny_worker();
        k->req[t] = tiny_rerank_request(t ? "lo" : "hi", N_DOCS, &k->len[t]);
    }
}

/* Frees the requests, and the workers unless gone (a test that stopped them sets gone). */
static void rig_free(rig *k, int gone) {
    free(k->req[0]);
    free(k->req[1]);
    if (!gone) stop_workers(k->w, 2);
}

static void test_overload(void **state) {
    (void)state;
    rig k;
    rig_start(&k);
    mr_worker **w = k.w;
    uint8_t **req = k.req;
    size_t *len = k.len;
    int port = 0;
    mr_coord *c = NULL;
    mr_rpc_channel *ch = NULL;
    outcome *o = NULL;
    double S = 0, budget = 0, refusal_p50 = 0;
    int answered[2] = {0}, refused_at_arrival = 0;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    /* A round whose S was measured at one machine speed and whose load ran at another (the
     * suite's other tests start or stop between the two) answers almost nothing: every request
     * looks too slow for a budget of 4 x S (the full suite failed so twice: 0 of 60 answered,
     * and 1 hi and 1 lo answered with 57 refused at arrival). Two answers or fewer are too few
     * to compare the tiers (a quiet machine answers 2-3 hi and no lo): such a round proves
     * nothing either way and is run again with S measured anew, at most 3 rounds; the
     * assertions below judge the last. */
    for (int round = 0;; round++) {
        S = idle_service_ms(w, req[0], len[0]);
        budget = ceil(BUDGET_X * S);
        c = start_coord(w, budget, 0, &port);
        ch = channel_to(port);
        o = burst(ch, req, len, budget, &mu);

        answered[0] = answered[1] = refused_at_arrival = 0;
        int other = 0;
        double refusal_ms[2 * N_EACH], worst = 0;
        for (int i = 0; i < 2 * N_EACH; i++) {
            int tier = i % 2;
            if (o[i].ms > worst) worst = o[i].ms;
            if (o[i].ms > budget + SLACK_X * S)
                fail_msg("request %d (%s): %s after %.1f ms, budget %.0f ms, S %.1f ms", i,
                         tier ? "lo" : "hi", o[i].st ? o[i].msg : "answered", o[i].ms, budget, S);
            if (o[i].st == GRPC_STATUS_OK) {
                answered[tier]++;
            } else if (o[i].st == GRPC_STATUS_RESOURCE_EXHAUSTED &&
                       strstr(o[i].msg, "cannot finish within")) {
                refusal_ms[refused_at_arrival++] = o[i].ms;
            } else {
                /* shed from the queue (displaced or expired), or started on an estimate that
                 * proved optimistic and ran out of budget: never another status */
                other++;
                if (o[i].st != GRPC_STATUS_RESOURCE_EXHAUSTED &&
                    o[i].st != GRPC_STATUS_DEADLINE_EXCEEDED)
                    fail_msg("request %d (%s): status %d: %s after %.1f ms", i, tier ? "lo" : "hi",
                             (int)o[i].st, o[i].msg, o[i].ms);
            }
        }
        qsort(refusal_ms, (size_t)refused_at_arrival, sizeof refusal_ms[0], cmp_double);
        refusal_p50 = refused_at_arrival ? refusal_ms[refused_at_arrival / 2] : 0;
        fprintf(stderr, "# S %.1f ms, budget %.0f ms: answered hi %d/%d lo %d/%d; refused at "
                "arrival "
                "%d (median %.2f ms), shed or out of time later %d; slowest %.1f ms\n", S, budget,
                answered[0], N_EACH, answered[1], N_EACH, refused_at_arrival, refusal_p50, other,
                worst);
        if (answered[0] + answered[1] > 2 || round == 2) break;
        fprintf(stderr, "# too few answered to compare tiers: S measured again\n");
        free(o);
        mr_rpc_channel_free(ch);
        mr_coord_free(c);
    }
    assert_true(answered[0] >= 1);
    assert_true(answered[0] > answered[1]);
    assert_true(refused_at_arrival >= N_EACH / 2);   /* the overload is real */
    assert_true(refusal_p50 <= REFUSAL_X * S);

    /* health per profile: serving with its pool up, not once both workers are gone (the
     * prober polls a ready pool every 2 s; the profile's health follows within 250 ms) */
    int h = 0;
    for (int i = 0; i < 100 && (h = health(ch, "profile/one")) != 1; i++) usleep(50000);
    assert_int_equal(h, 1);   /* at most 5 s */
    assert_int_equal(health(ch, "profile/nope"), -1);
    stop_workers(w, 2);
    for (int i = 0; i < 300 && (h = health(ch, "profile/one")) == 1; i++) usleep(50000);
    assert_int_equal(h, 0);   /* at most 15 s */

    mr_rpc_channel_free(ch);
    free(o);
    rig_free(&k, 1);
    mr_coord_free(c);
}

/* The same overload on a profile that starts with a lexical stage, both tiers allowing degraded
 * answers: what admission cannot run through the pool (refused at arrival, shed or expired in
 * the queue) is answered from the lexical stage alone instead (degraded, "full" skipped): every
 * request is answered, within its budget plus SLACK_X * S, and the lexical answers come at once
 * (median within LEXICAL_X * S). */
static void test_lexical_answers(void **state) {
    (void)state;
    rig k;
    rig_start(&k);
    int port = 0;
    mr_rpc_channel *ch = NULL;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    double S = idle_service_ms(k.w, k.req[0], k.len[0]), budget = ceil(BUDGET_X * S);
    mr_coord *c = start_coord(k.w, budget, 1, &port);
    ch = channel_to(port);
    outcome *o = burst(ch, k.req, k.len, budget, &mu);
    int full = 0, n_lex = 0;
    double lex_ms[2 * N_EACH], worst = 0;
    for (int i = 0; i < 2 * N_EACH; i++) {
        if (o[i].st != GRPC_STATUS_OK)
            fail_msg("request %d: status %d: %s after %.1f ms (a lexical answer was possible)", i,
                     (int)o[i].st, o[i].msg, o[i].ms);
        if (o[i].ms > budget + SLACK_X * S)
            fail_msg("request %d: answered after %.1f ms, budget %.0f ms, S %.1f ms (%s)", i,
                     o[i].ms, budget, S, o[i].lexical_only ? "lexical stage only"
                                         : o[i].degraded ? "degraded after the full stage began"
                                                         : "full model");
        if (o[i].ms > worst) worst = o[i].ms;
        if (o[i].lexical_only) {
            assert_true(o[i].degraded);
            lex_ms[n_lex++] = o[i].ms;
        }
        full += !o[i].degraded;
    }
    qsort(lex_ms, (size_t)n_lex, sizeof lex_ms[0], cmp_double);
    fprintf(stderr, "# S %.1f ms, budget %.0f ms: %d of %d answered by the full model, %d by the "
            "lexical stage alone (median %.1f ms); slowest answer %.1f ms\n", S, budget, full,
            2 * N_EACH, n_lex, n_lex ? lex_ms[n_lex / 2] : 0, worst);
    assert_true(n_lex >= N_EACH / 2);   /* the overload is real */
    assert_true(lex_ms[n_lex / 2] <= LEXICAL_X * S);
    mr_rpc_channel_free(ch);
    free(o);
    mr_coord_free(c);
    rig_free(&k, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),        cmocka_unit_test(test_low_share),
        cmocka_unit_test(test_no_time),      cmocka_unit_test(test_tier_bound),
        cmocka_unit_test(test_displace),     cmocka_unit_test(test_sweep),
        cmocka_unit_test(test_adaptive_limit), cmocka_unit_test(test_overload),
        cmocka_unit_test(test_lexical_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
