/* test_failover.c: coordinator failover and fault handling in one process, small enough for
 * the sanitizer build.
 *
 * test_failover: two workers (worker/worker.c) serve the bundled model models/mrank-tiny as the
 * two replicas of one pool of a coordinator (coordinator/coordinator.c) with a one-stage
 * profile; the C client of rpc.h sends Rerank calls over loopback. The ranking is recorded
 * with both workers up, then one worker is shut down and freed, and each of a fixed number of
 * further requests must still be answered OK with the same order and the same scores (within
 * SCORE_TOL, its reason beside it). The coordinator's own retry counter (its /metrics) must be
 * 0 before the failure and positive after it, so the test cannot pass without a call having
 * failed over. The scripted counterpart, a worker process killed under load, is step 5 of
 * tests/cluster_e2e.sh (slow, main build only).
 *
 * The other tests use fake workers (an rpc.h server answering Worker Info and Score with made-up
 * scores) that can be switched to hang (answer nothing until the call is cancelled, like a
 * SIGSTOPped process) or to refuse every Score with RESOURCE_EXHAUSTED, and that count what
 * they see: a hung replica of two is ejected and every request is still answered by the other;
 * a full pool gets a bounded number of retries (the pool's retry budget), a one-replica pool
 * none; a lone replica behind a DNS name that turns slow still answers every request of a
 * tier without a budget, with no retry; a client that cancels gets the coordinator's outstanding Score calls cancelled (the
 * fake workers see the cancellation before their calls' own deadlines); a short-budget tier
 * hedges a call stuck on a hung replica and cancels the losing copy; a full later stage gives
 * a degraded answer where the tier allows it. Every wait is bounded
 * and the assertions are counts, not times. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <stdatomic.h>

#include "cascade.h"
#include "coordinator.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "rpc_methods.h"
#include "worker.h"

#include "clusterutil.h"
#include "metricsutil.h"

enum { N_DOCS = K_TINY_N_DOCS, N_AFTER = 6 };

/* Scores before and after the failure come from the same CPU engine on the same rows; only
 * the batches differ (the surviving worker may pack both halves of a request into one batch),
 * which changes OpenBLAS's blocking and so the float sums by a few ulps: measured here at most
 * 9.5e-7 on scores near -8 (one ulp there), test_worker 4.8e-7 on O(1) scores. 1e-5 of
 * max(|score|, 1) leaves 10x-80x that; a request scored by the wrong model, exit or width is
 * off by 1e-2 or more. */
#define SCORE_TOL 1e-5


static double coord_retries(int port) {
    return scrape_metric(port, "mrank_coord_retries_total{pool=\"p\"}");
}

typedef struct ranking {
    uint32_t order[N_DOCS];   /* document indices, best first */
    float score[N_DOCS];      /* raw score by document index */
} ranking;

/* One Rerank of the eight documents in tier; its status (the response is dropped). */
static grpc_status_code rerank_status(mr_rpc_channel *ch, const char *tier) {
    size_t len, rlen = 0;
    uint8_t *req = tiny_rerank_request(tier, N_DOCS, &len), *resp = NULL;
    grpc_status_code st;
    char msg[512];
    mr_rpc_unary(ch, MR_METHOD_RERANK, req, len, 20000, &resp, &rlen, &st, msg, sizeof msg);
    free(req);
    free(resp);
    return st;
}

static void rerank(mr_rpc_channel *ch, ranking *out) {
    size_t len, rlen = 0;
    uint8_t *req = tiny_rerank_request("", N_DOCS, &len), *resp = NULL;
    grpc_status_code st;
    char msg[512];
    int rc = mr_rpc_unary(ch, MR_METHOD_RERANK, req, len, 20000, &resp, &rlen, &st, msg,
                          sizeof msg);
    free(req);
    if (rc) fail_msg("Rerank: status %d: %s", (int)st, msg);
    Mrank__V1__RerankResponse *r = mrank__v1__rerank_response__unpack(NULL, rlen, resp);
    free(resp);
    assert_non_null(r);
    assert_false(r->degraded);
    assert_int_equal(r->n_results, N_DOCS);
    int seen[N_DOCS] = {0};
    for (int i = 0; i < N_DOCS; i++) {
        uint32_t k = r->results[i]->index;
        assert_true(k < N_DOCS && !seen[k]);
        seen[k] = 1;
        out->order[i] = k;
        out->score[k] = r->results[i]->raw_score;
        assert_int_equal(r->results[i]->depth, 4);
    }
    mrank__v1__rerank_response__free_unpacked(r, NULL);
}

static void test_failover(void **state) {
    mr_worker *w[2] = {start_tiny_worker(), start_tiny_worker()};
    char json[1024];
    snprintf(json, sizeof json,
             "{\"limits\": {\"max_documents\": 16, \"max_tokens_per_pair\": 64},"
             " \"pools\": [{\"name\": \"p\", \"addresses\": [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]}],"
             " \"stages\": [{\"name\": \"full\", \"pool\": \"p\", \"depth\": 4}],"
             " \"profiles\": [{\"name\": \"one\", \"stages\": [{\"stage\": \"full\"}]}],"
             " \"tiers\": [{\"name\": \"t\", \"profile\": \"one\"}]}",
             mr_worker_port(w[0]), mr_worker_port(w[1]));
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    mr_rpc_channel *ch = channel_to(port);

    /* both replicas up: eight documents go out as two Score calls, one to each */
    ranking before, after;
    rerank(ch, &before);
    assert_true(coord_retries(mport) == 0);

    mr_worker_shutdown(w[1], 0);
    mr_worker_free(w[1]);
    w[1] = NULL;
    for (int k = 0; k < N_AFTER; k++) {
        rerank(ch, &after);
        for (int i = 0; i < N_DOCS; i++) {
            assert_int_equal(after.order[i], before.order[i]);
            float a = after.score[i], b = before.score[i];
            if (!(fabs(a - b) <= SCORE_TOL * fmax(fabs(b), 1.0)))
                fail_msg("request %d document %d: %.9g after the failure, %.9g before", k, i,
                         a, b);
        }
    }
    double retries = coord_retries(mport);
    fprintf(stderr, "# %d requests after the failure, all answered; %.0f Score calls retried\n",
            N_AFTER, retries);
    assert_true(retries >= 1);

    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    mr_worker_shutdown(w[0], 1000);
    mr_worker_free(w[0]);
}

/* ---- fake workers ---- */

/* FAKE_HANG: nothing answers (a stopped process); FAKE_HANG_SCORE: Score hangs while Worker
 * Info still answers (a wedged scoring thread) */
typedef enum fake_mode { FAKE_OK = 0, FAKE_HANG, FAKE_HANG_SCORE, FAKE_FULL, FAKE_SLOW } fake_mode;

/* FAKE_SLOW's delay: well past an attempt timeout's floor (MR_ATTEMPT_FLOOR_MS) and past
 * MR_ATTEMPT_EST_FACTOR x any estimate the fake's claimed compute_ms can give */
#define FAKE_SLOW_MS 900

typedef struct fake {
    mr_rpc_server *srv;
    int port;
    double compute_ms;          /* what it claims each Score took: feeds the cost model */
    atomic_int mode;
    atomic_int score_calls;     /* Score calls received, in any mode, the prober's included */
    atomic_int check_calls;     /* ... of which the prober's (warm-up and ejection checks) */
    atomic_int hung;            /* hung calls that ended */
    atomic_int hung_cancelled;  /* ... of which by a cancellation before their own deadline */
} fake;

/* Hangs like a stopped process until the call is cancelled or its deadline passes (bounded:
 * 30 s), counting how it ended; then fails it (the client sees nothing of it). */
static void fake_hang(fake *f, mr_rpc_call *call) {
    for (int i = 0; i < 15000 && !mr_rpc_call_cancelled(call); i++) usleep(2000);
    if (mr_rpc_call_cancelled(call) && mr_rpc_call_remaining_ms(call) > 0)
        atomic_fetch_add(&f->hung_cancelled, 1);
    atomic_fetch_add(&f->hung, 1);
    mr_rpc_call_fail(call, GRPC_STATUS_CANCELLED, "fake worker: hung call ended");
}

static void fake_info(mr_rpc_call *call, void *user) {
    fake *f = user;
    if (atomic_load(&f->mode) == FAKE_HANG) {
        fake_hang(f, call);
        return;
    }
    Mrank__V1__WorkerInfoResponse wi = MRANK__V1__WORKER_INFO_RESPONSE__INIT;
    wi.model = "fake";
    wi.num_layers = 4;
    wi.max_batch_tokens = 4096;
    wi.max_inflight_tokens = 65536;
    wi.backend = "cpu";
    uint8_t buf[256];
    size_t len = mrank__v1__worker_info_response__get_packed_size(&wi);
    assert_true(len <= sizeof buf);
    mrank__v1__worker_info_response__pack(&wi, buf);
    mr_rpc_call_finish(call, buf, len);
}

/* Scores each passage by its length (any fixed function will do: nothing compares them with a
 * model), with token counts the coordinator folds in like a real worker's. */
static void fake_score(mr_rpc_call *call, void *user) {
    fake *f = user;
    atomic_fetch_add(&f->score_calls, 1);
    size_t len;
    const uint8_t *body = mr_rpc_call_request(call, &len);
    Mrank__V1__ScoreRequest *rq = mrank__v1__score_request__unpack(NULL, len, body);
    if (rq && rq->query && !strcmp(rq->query, "what does the warm-up check?"))
        atomic_fetch_add(&f->check_calls, 1);     /* probe.c's query */
    int mode = atomic_load(&f->mode);
    if (mode == FAKE_HANG || mode == FAKE_HANG_SCORE) {
        if (rq) mrank__v1__score_request__free_unpacked(rq, NULL);
        fake_hang(f, call);
        return;
    }
    if (mode == FAKE_FULL) {
        if (rq) mrank__v1__score_request__free_unpacked(rq, NULL);
        mr_rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "fake worker: full");
        return;
    }
    if (mode == FAKE_SLOW) usleep(FAKE_SLOW_MS * 1000);   /* then answers as usual */
    if (!rq || rq->n_passages > 64) {
        if (rq) mrank__v1__score_request__free_unpacked(rq, NULL);
        mr_rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "fake worker: bad request");
        return;
    }
    Mrank__V1__ScoreResponse out = MRANK__V1__SCORE_RESPONSE__INIT;
    Mrank__V1__PassageScores ps[64], *pp[64];
    float sc[64];
    for (size_t i = 0; i < rq->n_passages; i++) {
        mrank__v1__passage_scores__init(&ps[i]);
        uint32_t pt = (uint32_t)strlen(rq->passages[i]) / 5 + 1;
        sc[i] = -(float)strlen(rq->passages[i]) / 10.0f;
        ps[i].n_scores = 1;
        ps[i].scores = &sc[i];
        ps[i].depth = rq->arch ? rq->arch->depth : 4;
        ps[i].passage_tokens = pt;
        ps[i].tokens = pt + 12;
        pp[i] = &ps[i];
    }
    out.n_passages = rq->n_passages;
    out.passages = pp;
    out.compute_ms = f->compute_ms;
    size_t olen = mrank__v1__score_response__get_packed_size(&out);
    uint8_t *buf = malloc(olen + 1);
    assert_non_null(buf);
    mrank__v1__score_response__pack(&out, buf);
    mr_rpc_call_finish(call, buf, olen);
    free(buf);
    mrank__v1__score_request__free_unpacked(rq, NULL);
}

static fake *fake_start(double compute_ms) {
    fake *f = calloc(1, sizeof *f);
    mr_err err = {0};
    assert_non_null(f);
    f->compute_ms = compute_ms;
    /* 16 handler threads: hung calls hold one each until they are cancelled */
    if (mr_rpc_server_new(&f->srv, "127.0.0.1:0", 16, &err) ||
        mr_rpc_server_add_unary(f->srv, MR_METHOD_SCORE, fake_score, f) ||
        mr_rpc_server_add_unary(f->srv, MR_METHOD_WORKER_INFO, fake_info, f) ||
        mr_rpc_server_start(f->srv, &f->port, &err))
        fail_msg("fake worker: %s", err.msg);
    return f;
}

static void fake_free(fake *f) {
    mr_rpc_server_free(f->srv);
    free(f);
}

/* A one-stage pool "p" over fakes a and b (b < 0: a alone) and, when solo > 0, a second pool
 * "solo" of one replica at port solo with its own tier "s"; tier "t" has budget_ms. */
static void fake_config(char *json, size_t cap, int a, int b, int solo, int budget_ms) {
    char addrs[64], extra_pool[128] = "", extra_stage[128] = "", extra_prof[128] = "",
         extra_tier[128] = "";
    if (b > 0) snprintf(addrs, sizeof addrs, "\"127.0.0.1:%d\", \"127.0.0.1:%d\"", a, b);
    else snprintf(addrs, sizeof addrs, "\"127.0.0.1:%d\"", a);
    if (solo > 0) {
        snprintf(extra_pool, sizeof extra_pool,
                 ", {\"name\": \"solo\", \"addresses\": [\"127.0.0.1:%d\"]}", solo);
        snprintf(extra_stage, sizeof extra_stage,
                 ", {\"name\": \"lone\", \"pool\": \"solo\", \"depth\": 4}");
        snprintf(extra_prof, sizeof extra_prof,
                 ", {\"name\": \"two\", \"stages\": [{\"stage\": \"lone\"}]}");
        snprintf(extra_tier, sizeof extra_tier,
                 ", {\"name\": \"s\", \"profile\": \"two\"}");
    }
    snprintf(json, cap,
             "{\"limits\": {\"max_documents\": 16, \"max_tokens_per_pair\": 64},"
             " \"pools\": [{\"name\": \"p\", \"addresses\": [%s]}%s],"
             " \"stages\": [{\"name\": \"full\", \"pool\": \"p\", \"depth\": 4}%s],"
             " \"profiles\": [{\"name\": \"one\", \"stages\": [{\"stage\": \"full\"}]}%s],"
             " \"tiers\": [{\"name\": \"t\", \"profile\": \"one\", \"budget_ms\": %d}%s]}",
             addrs, extra_pool, extra_stage, extra_prof, budget_ms, extra_tier);
}

/* One of two replicas hangs (answers nothing, Worker Info included, like a SIGSTOPped process):
 * every request is still answered by the other within the tier's budget, the hung replica is
 * ejected (the ejection counter), and it gets few of the calls afterwards. */
static void test_hung_replica(void **state) {
    enum { N_HUNG = 12 };
    fake *f[2] = {fake_start(1.0), fake_start(1.0)};
    char json[2048];
    /* 5 s: ample for a loopback call of a fake under the sanitizers on a shared machine; an
     * attempt on the hung replica gets at most half of it (cascade.h), the retry the rest */
    fake_config(json, sizeof json, f[0]->port, f[1]->port, 0, 5000);
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    mr_rpc_channel *ch = channel_to(port);
    ranking r;
    rerank(ch, &r);
    assert_true(scrape_metric(mport, "mrank_coord_ejections_total{pool=\"p\"}") == 0);

    atomic_store(&f[1]->mode, FAKE_HANG);
    int calls0 = atomic_load(&f[1]->score_calls);
    for (int k = 0; k < N_HUNG; k++) rerank(ch, &r);   /* each must be answered in full */
    int to_hung = atomic_load(&f[1]->score_calls) - calls0;
    double ej = scrape_metric(mport, "mrank_coord_ejections_total{pool=\"p\"}");
    fprintf(stderr, "# hung replica: %d requests answered, %d Score calls sent to the hung "
            "replica, %.0f ejections\n", N_HUNG, to_hung, ej);
    assert_true(ej >= 1);
    /* without ejection round-robin sends it a call of every request (>= N_HUNG); ejected for
     * 1 s, then 2 s, 4 s ... it gets one call per ejection that ends, so N_HUNG / 2 holds
     * unless these 12 requests took more than about a minute */
    assert_true(to_hung >= 1 && to_hung <= N_HUNG / 2);
    assert_true(scrape_metric(mport, "mrank_coord_retries_total{pool=\"p\"}") >= 1);

    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    fake_free(f[0]);
    fake_free(f[1]);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* One of two replicas hangs on Score while it still answers Worker Info: the prober's check
 * (a small Score call) keeps it out until its ejection ends, so its ejections keep doubling.
 * Once the fan-out has ejected it a third time (for 4 s), 3 s of requests send it no call,
 * though the prober (every 2 s, plus its 1 s check) tried the check meanwhile. */
static void test_hung_score(void **state) {
    enum { MAX_REQUESTS = 3000 };   /* bounds both loops beside their time limits */
    fake *f[2] = {fake_start(1.0), fake_start(1.0)};
    char json[2048];
    fake_config(json, sizeof json, f[0]->port, f[1]->port, 0, 5000);   /* no hedging */
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    mr_rpc_channel *ch = channel_to(port);
    ranking r;
    atomic_store(&f[1]->mode, FAKE_HANG_SCORE);
    int check0 = atomic_load(&f[1]->check_calls);    /* the warm-up's are done: it is ready */
    double t0 = now_ms();
    int k = 0;
    for (; k < MAX_REQUESTS && now_ms() - t0 < 30000 &&
           scrape_metric(mport, "mrank_coord_ejections_total{pool=\"p\"}") < 3; k++)
        rerank(ch, &r);   /* each answered in full by the other replica */
    assert_true(scrape_metric(mport, "mrank_coord_ejections_total{pool=\"p\"}") == 3);
    int fan0 = atomic_load(&f[1]->score_calls) - atomic_load(&f[1]->check_calls);
    double t1 = now_ms();
    int n = 0;
    for (; n < MAX_REQUESTS && now_ms() - t1 < 3000; n++) rerank(ch, &r);
    int fan = atomic_load(&f[1]->score_calls) - atomic_load(&f[1]->check_calls) - fan0;
    int checks = atomic_load(&f[1]->check_calls) - check0;
    fprintf(stderr, "# Score hung, Info answering: 3 ejections after %d requests (%.1f s); then "
            "%d requests in %.1f s sent it %d calls; the prober checked it %d times\n", k,
            (t1 - t0) / 1000, n, (now_ms() - t1) / 1000, fan, checks);
    assert_int_equal(fan, 0);    /* before: back after every probe that Worker Info answered */
    assert_true(checks >= 1);
    assert_true(scrape_metric(mport, "mrank_coord_ejections_total{pool=\"p\"}") == 3);

    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    fake_free(f[0]);
    fake_free(f[1]);
}

/* A replica whose Score hangs from the start (its warm-up waits the warm-up timeout, 60 s)
 * holds only its own probe: the coordinator still becomes ready on the other replica, notices
 * within a few probe rounds when that one stops answering too, and shuts down without waiting
 * for the hung warm-up. Before, every probe round waited for every replica's probe. */
static void test_hung_warm_up(void **state) {
    fake *f[2] = {fake_start(1.0), fake_start(1.0)};
    char json[2048];
    fake_config(json, sizeof json, f[0]->port, f[1]->port, 0, 5000);
    atomic_store(&f[1]->mode, FAKE_HANG_SCORE);
    int port = 0;
    mr_coord *c = start_cluster_coord(json, &port, NULL);   /* ready within 30 s, or fails */
    assert_true(atomic_load(&f[1]->check_calls) >= 1);     /* its warm-up is under way */
    atomic_store(&f[0]->mode, FAKE_HANG);
    double t0 = now_ms();
    while (mr_coord_ready(c) && now_ms() - t0 < 20000) usleep(50000);
    double lost_ms = now_ms() - t0;
    assert_false(mr_coord_ready(c));
    double t1 = now_ms();
    mr_coord_free(c);
    double shut_ms = now_ms() - t1;
    fprintf(stderr, "# hung warm-up: NOT_SERVING %.1f s after the last replica hung; shutdown "
            "took %.1f s\n", lost_ms / 1000, shut_ms / 1000);
    /* not timings of this machine but which wait ends them: a probe round takes at most
     * ROUND_WAIT_MS (1.5 s) + the 2 s step, a shutdown the drain of nothing; the hung warm-up
     * would hold either for up to its 60 s timeout */
    assert_true(shut_ms < 15000);
    fake_free(f[0]);
    fake_free(f[1]);
}

/* A pool whose replicas all answer RESOURCE_EXHAUSTED gets a bounded number of retries (the
 * pool's retry budget; never several per call), every failure's refusal is counted, and a pool
 * of one replica never retries RESOURCE_EXHAUSTED. */
static void test_full_pool(void **state) {
    enum { N_FULL = 10 };
    fake *f[3] = {fake_start(1.0), fake_start(1.0), fake_start(1.0)};
    char json[2048];
    fake_config(json, sizeof json, f[0]->port, f[1]->port, f[2]->port, 0);
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    mr_rpc_channel *ch = channel_to(port);
    for (int i = 0; i < 3; i++) atomic_store(&f[i]->mode, FAKE_FULL);
    int calls0 = atomic_load(&f[0]->score_calls) + atomic_load(&f[1]->score_calls);
    for (int k = 0; k < N_FULL; k++)
        assert_int_equal(rerank_status(ch, "t"), GRPC_STATUS_RESOURCE_EXHAUSTED);
    int calls = atomic_load(&f[0]->score_calls) + atomic_load(&f[1]->score_calls) - calls0;
    double retries = scrape_metric(mport, "mrank_coord_retries_total{pool=\"p\"}");
    double refused = 0;
    static const char *const reasons[] = {"pool_full", "budget", "attempts", "no_replica",
                                          "deadline"};
    for (int i = 0; i < 5; i++) {
        char series[128];
        snprintf(series, sizeof series,
                 "mrank_coord_retries_refused_total{pool=\"p\",reason=\"%s\"}", reasons[i]);
        refused += scrape_metric(mport, series);
    }
    fprintf(stderr, "# full pool: %d requests refused, %d Score calls, %.0f retries, %.0f "
            "retries refused\n", N_FULL, calls, retries, refused);
    /* retries come out of the bucket: at most its start plus a tenth of the original calls
     * (the calls less the retries); the old rule made up to 4 per call */
    assert_true(retries <= MR_RETRY_TOKENS_MAX + MR_RETRY_TOKENS_PER_CALL * (calls - retries));
    assert_true(retries < N_FULL);
    /* every request ended on a refused retry */
    assert_true(refused >= N_FULL);
    assert_true(scrape_metric(mport, "mrank_coord_retries_refused_total{pool=\"p\",reason=\"pool_full\"}") >= 1);

    /* one replica: RESOURCE_EXHAUSTED is never retried */
    int solo0 = atomic_load(&f[2]->score_calls);
    for (int k = 0; k < N_FULL; k++)
        assert_int_equal(rerank_status(ch, "s"), GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_true(scrape_metric(mport, "mrank_coord_retries_total{pool=\"solo\"}") == 0);
    assert_true(scrape_metric(mport, "mrank_coord_retries_refused_total{pool=\"solo\","
                                    "reason=\"no_replica\"}") >= N_FULL);
    /* eight documents fit one call on one replica: one call per request */
    assert_int_equal(atomic_load(&f[2]->score_calls) - solo0, N_FULL);

    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    for (int i = 0; i < 3; i++) fake_free(f[i]);
}

/* A DNS pool that resolves to one address (a one-replica Deployment behind a headless
 * Service) whose replica turns slow, each Score taking FAKE_SLOW_MS while it claims 1 ms: a
 * tier without a budget still gets every answer, and no call is retried. An attempt timeout
 * from the cost model (3x the estimate) is for moving a call to another replica; with no other
 * one it would only turn a slow answer into an error (what multihost.sh's warm-up met in CI
 * when the cores were busy). */
static void test_slow_lone_replica(void **state) {
    enum { N_SLOW = 3 };
    fake *f = fake_start(1.0);
    char json[1024];
    snprintf(json, sizeof json,
             "{\"limits\": {\"max_documents\": 16, \"max_tokens_per_pair\": 64},"
             " \"pools\": [{\"name\": \"p\", \"dns\": \"dns:///127.0.0.1:%d\"}],"
             " \"stages\": [{\"name\": \"full\", \"pool\": \"p\", \"depth\": 4}],"
             " \"profiles\": [{\"name\": \"one\", \"stages\": [{\"stage\": \"full\"}]}],"
             " \"tiers\": [{\"name\": \"t\", \"profile\": \"one\", \"budget_ms\": 0}]}",
             f->port);
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    for (int i = 0; i < 100 && scrape_metric(mport, "mrank_coord_pool_replicas{pool=\"p\"}") != 1;
         i++)
        usleep(50000);   /* the prober's first DNS answer; at most 5 s */
    assert_true(scrape_metric(mport, "mrank_coord_pool_replicas{pool=\"p\"}") == 1);
    mr_rpc_channel *ch = channel_to(port);
    atomic_store(&f->mode, FAKE_SLOW);
    for (int k = 0; k < N_SLOW; k++) assert_int_equal(rerank_status(ch, "t"), GRPC_STATUS_OK);
    fprintf(stderr, "# lone slow replica: %d requests answered, %.0f retries\n", N_SLOW,
            coord_retries(mport));
    assert_true(coord_retries(mport) == 0);
    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    fake_free(f);
}

/* A tier with a short budget hedges: with one of two replicas hung, a call sent to it is sent
 * again to the other after a short delay, the first answer wins, and the hung copy is
 * cancelled (the fake sees each of its calls cancelled before the call's own deadline). */
static void test_hedge(void **state) {
    enum { N_REQ = 6 };
    fake *f[2] = {fake_start(1.0), fake_start(1.0)};
    char json[2048];
    /* 1000 ms: a short budget (hedging is on, MR_HEDGE_MAX_BUDGET_MS), still ample for a
     * loopback call of a fake under the sanitizers */
    fake_config(json, sizeof json, f[0]->port, f[1]->port, 0, (int)MR_HEDGE_MAX_BUDGET_MS);
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    mr_rpc_channel *ch = channel_to(port);
    atomic_store(&f[1]->mode, FAKE_HANG);
    int calls0 = atomic_load(&f[1]->score_calls);
    ranking r;
    for (int k = 0; k < N_REQ; k++) rerank(ch, &r);
    int to_hung = atomic_load(&f[1]->score_calls) - calls0, ended = 0;
    for (int i = 0; i < 2000 && ended < to_hung; i++) {   /* at most 20 s */
        ended = atomic_load(&f[1]->hung);
        if (ended < to_hung) usleep(10000);
    }
    int cancelled = atomic_load(&f[1]->hung_cancelled);
    double hedges = scrape_metric(mport, "mrank_coord_hedges_total{pool=\"p\"}");
    fprintf(stderr, "# hedging: %d requests answered, %.0f hedges, %d calls to the hung replica, "
            "%d of them cancelled\n", N_REQ, hedges, to_hung, cancelled);
    assert_true(hedges >= 1);
    assert_true(to_hung >= 1);
    assert_int_equal(ended, to_hung);
    /* each lost its race and was cancelled, none waited for its own timeout */
    assert_int_equal(cancelled, to_hung);
    assert_true(scrape_metric(mport, "mrank_coord_score_cancelled_total{pool=\"p\"}") >= to_hung);

    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    fake_free(f[0]);
    fake_free(f[1]);
}

/* A later stage whose pool is full (RESOURCE_EXHAUSTED) leaves the first stage's ranking
 * standing when the tier allows degraded answers, and fails the request when it does not. */
static void test_full_later_stage(void **state) {
    fake *f[2] = {fake_start(1.0), fake_start(1.0)};
    char json[2048];
    snprintf(json, sizeof json,
             "{\"limits\": {\"max_documents\": 16, \"max_tokens_per_pair\": 64},"
             " \"pools\": [{\"name\": \"p\", \"addresses\": [\"127.0.0.1:%d\"]},"
             "  {\"name\": \"q\", \"addresses\": [\"127.0.0.1:%d\"]}],"
             " \"stages\": [{\"name\": \"a\", \"pool\": \"p\", \"depth\": 2},"
             "  {\"name\": \"b\", \"pool\": \"q\", \"depth\": 4}],"
             " \"profiles\": [{\"name\": \"two\", \"stages\": [{\"stage\": \"a\", "
             "\"keep_top_k\": 4}, {\"stage\": \"b\"}]}],"
             " \"tiers\": [{\"name\": \"soft\", \"profile\": \"two\", \"allow_degraded\": true},"
             "  {\"name\": \"hard\", \"profile\": \"two\"}]}",
             f[0]->port, f[1]->port);
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    mr_rpc_channel *ch = channel_to(port);
    atomic_store(&f[1]->mode, FAKE_FULL);
    size_t len, rlen = 0;
    uint8_t *req = tiny_rerank_request("soft", N_DOCS, &len), *resp = NULL;
    grpc_status_code st;
    char msg[512];
    if (mr_rpc_unary(ch, MR_METHOD_RERANK, req, len, 20000, &resp, &rlen, &st, msg, sizeof msg))
        fail_msg("Rerank (soft): status %d: %s", (int)st, msg);
    free(req);
    Mrank__V1__RerankResponse *r = mrank__v1__rerank_response__unpack(NULL, rlen, resp);
    free(resp);
    assert_non_null(r);
    assert_true(r->degraded);
    assert_int_equal(r->n_results, N_DOCS);
    for (size_t i = 0; i < r->n_results; i++) assert_int_equal(r->results[i]->stage, 0);
    mrank__v1__rerank_response__free_unpacked(r, NULL);
    assert_int_equal(rerank_status(ch, "hard"), GRPC_STATUS_RESOURCE_EXHAUSTED);

    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    fake_free(f[0]);
    fake_free(f[1]);
}

typedef struct client_done {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    grpc_status_code status;
} client_done;

static void on_client_done(void *user, grpc_status_code status, const char *msg,
                           const uint8_t *resp, size_t resp_len) {
    client_done *d = user;
    pthread_mutex_lock(&d->mu);
    d->status = status;
    d->done = 1;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* A client cancels its Rerank while the coordinator's Score calls hang: the coordinator
 * cancels them (each fake sees its call cancelled before the call's own deadline) and counts
 * them. The fakes claim 10 s per warm-up call, so an attempt's timeout (3x the estimate) is
 * about 30 s: a call that ended before it was cancelled by the coordinator. */
static void test_client_cancel(void **state) {
    fake *f[2] = {fake_start(10000.0), fake_start(10000.0)};
    char json[2048];
    fake_config(json, sizeof json, f[0]->port, f[1]->port, 0, 0);
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    mr_rpc_channel *ch = channel_to(port);
    for (int i = 0; i < 2; i++) atomic_store(&f[i]->mode, FAKE_HANG);
    int calls0 = atomic_load(&f[0]->score_calls) + atomic_load(&f[1]->score_calls);

    mr_rpc_cancel *g = NULL;
    assert_int_equal(mr_rpc_cancel_new(&g), 0);
    client_done d = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, GRPC_STATUS_OK};
    size_t len;
    uint8_t *req = tiny_rerank_request("t", N_DOCS, &len);
    mr_rpc_opts o = {.timeout_ms = 60000, .cancel = g};
    assert_int_equal(mr_rpc_unary_async(ch, MR_METHOD_RERANK, req, len, &o, on_client_done, &d),
                     0);
    free(req);
    /* both Score calls (8 documents over two replicas) reach the fakes: at most 20 s */
    int calls = 0;
    for (int i = 0; i < 2000; i++) {
        calls = atomic_load(&f[0]->score_calls) + atomic_load(&f[1]->score_calls) - calls0;
        if (calls >= 2) break;
        usleep(10000);
    }
    assert_int_equal(calls, 2);
    assert_int_equal(mr_rpc_cancel_fire(g), 1);
    assert_int_equal(mr_rpc_cancel_fire(g), 0);   /* fired again: nothing counted twice */
    pthread_mutex_lock(&d.mu);
    while (!d.done) pthread_cond_wait(&d.cv, &d.mu);   /* the cancel completes it at once */
    pthread_mutex_unlock(&d.mu);
    assert_int_equal(d.status, GRPC_STATUS_CANCELLED);
    /* a call started with a fired group completes at once with CANCELLED, sending nothing */
    d.done = 0;
    d.status = GRPC_STATUS_OK;
    assert_int_equal(mr_rpc_unary_async(ch, MR_METHOD_RERANK, NULL, 0, &o, on_client_done, &d),
                     0);
    assert_int_equal(d.done, 1);
    assert_int_equal(d.status, GRPC_STATUS_CANCELLED);
    mr_rpc_cancel_free(g);
    /* the fakes see both calls end: at most 20 s, far below the calls' 30 s deadlines */
    int hung = 0;
    for (int i = 0; i < 2000; i++) {
        hung = atomic_load(&f[0]->hung) + atomic_load(&f[1]->hung);
        if (hung >= 2) break;
        usleep(10000);
    }
    int cancelled = atomic_load(&f[0]->hung_cancelled) + atomic_load(&f[1]->hung_cancelled);
    double counted = scrape_metric(mport, "mrank_coord_score_cancelled_total{pool=\"p\"}");
    fprintf(stderr, "# client cancel: %d Score calls hung, %d ended by cancellation, the "
            "coordinator counted %.0f\n", calls, cancelled, counted);
    assert_int_equal(hung, 2);
    assert_int_equal(cancelled, 2);
    assert_true(counted == 2);

    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    fake_free(f[0]);
    fake_free(f[1]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failover),
        cmocka_unit_test(test_hung_replica),
        cmocka_unit_test(test_hung_score),
        cmocka_unit_test(test_hung_warm_up),
        cmocka_unit_test(test_full_pool),
        cmocka_unit_test(test_slow_lone_replica),
        cmocka_unit_test(test_client_cancel),
        cmocka_unit_test(test_hedge),
        cmocka_unit_test(test_full_later_stage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
