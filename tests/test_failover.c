/* test_failover.c: coordinator failover in one process, small enough for the sanitizer build.
 * Two workers (worker/worker.c) serve the bundled model models/mrank-tiny as the two replicas
 * of one pool of a coordinator (coordinator/coordinator.c) with a one-stage profile; the C
 * client of rpc.h sends Rerank calls over loopback. The ranking is recorded with both workers
 * up, then one worker is shut down and freed, and each of a fixed number of further requests
 * must still be answered OK with the same order and the same scores (within SCORE_TOL, its
 * reason beside it). The coordinator's own retry counter (its /metrics) must be 0 before the
 * failure and positive after it, so the test cannot pass without a call having failed over.
 * Every wait is bounded. The scripted counterpart, a worker process killed under load, is step
 * 5 of tests/cluster_e2e.sh (slow, main build only). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "coordinator.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "worker.h"

#include "clusterutil.h"

enum { N_DOCS = 8, N_AFTER = 6 };

/* Scores before and after the failure come from the same CPU engine on the same rows; only
 * the batches differ (the surviving worker may pack both halves of a request into one batch),
 * which changes OpenBLAS's blocking and so the float sums by a few ulps: measured here at most
 * 9.5e-7 on scores near -8 (one ulp there), test_worker 4.8e-7 on O(1) scores. 1e-5 of
 * max(|score|, 1) leaves 10x-80x that; a request scored by the wrong model, exit or width is
 * off by 1e-2 or more. */
#define SCORE_TOL 1e-5

static const char *const docs[N_DOCS] = {
    "measurements of boundary layer transition on a flat plate with heat transfer .",
    "the opera season opened with a new production and a famous tenor .",
    "laminar boundary layers at supersonic speed with wall cooling .",
    "the committee voted to raise taxes on imported grain .",
    "heat transfer in a turbulent boundary layer on a heated plate .",
    "a recipe for bread with flour , water , salt and yeast .",
    "transition from laminar to turbulent flow in a pipe .",
    "the river flooded the valley after a week of rain ."};
static const char *const query = "boundary layer transition on a heated flat plate";

/* A port that was free a moment ago (the coordinator's metrics endpoint takes no port 0). */
static int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_true(s >= 0);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

/* mrank_coord_retries_total{pool="p"} from the coordinator's /metrics (HTTP/1.0 GET, 5 s
 * receive timeout); fails the test when the page or the line is missing. */
static double coord_retries(int port) {
    static char buf[1 << 16];
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {5, 0};
    assert_true(s >= 0);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) fail_msg("metrics port %d: connect", port);
    const char get[] = "GET /metrics HTTP/1.0\r\n\r\n";
    assert_int_equal(write(s, get, sizeof get - 1), (ssize_t)(sizeof get - 1));
    size_t n = 0;
    for (ssize_t k; n < sizeof buf - 1 && (k = read(s, buf + n, sizeof buf - 1 - n)) > 0;)
        n += (size_t)k;
    close(s);
    buf[n] = 0;
    const char *key = "\nmrank_coord_retries_total{pool=\"p\"} ";
    const char *at = strstr(buf, key);
    if (!at) fail_msg("no retries counter in the metrics page (%zu bytes)", n);
    return strtod(at + strlen(key), NULL);
}

typedef struct ranking {
    uint32_t order[N_DOCS];   /* document indices, best first */
    float score[N_DOCS];      /* raw score by document index */
} ranking;

static void rerank(mr_rpc_channel *ch, ranking *out) {
    Mrank__V1__RerankRequest rq = MRANK__V1__RERANK_REQUEST__INIT;
    Mrank__V1__Document d[N_DOCS], *dp[N_DOCS];
    for (int i = 0; i < N_DOCS; i++) {
        mrank__v1__document__init(&d[i]);
        d[i].text = (char *)docs[i];
        dp[i] = &d[i];
    }
    rq.query = (char *)query;
    rq.n_documents = N_DOCS;
    rq.documents = dp;
    size_t len = mrank__v1__rerank_request__get_packed_size(&rq), rlen = 0;
    uint8_t *req = malloc(len + 1), *resp = NULL;
    mrank__v1__rerank_request__pack(&rq, req);
    grpc_status_code st;
    char msg[512];
    int rc = mr_rpc_unary(ch, "/mrank.v1.Ranker/Rerank", req, len, 20000, &resp, &rlen, &st, msg,
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
    mr_coord_config *cfg = calloc(1, sizeof *cfg);
    mr_coord *c = NULL;
    mr_err err = {0};
    int port = 0, mport = free_port();
    assert_non_null(cfg);
    if (mr_coord_config_parse(cfg, "failover.json", json, &err)) fail_msg("config: %s", err.msg);
    if (mr_coord_new(&c, cfg, "127.0.0.1:0", mport, &err) || mr_coord_start(c, &port, &err))
        fail_msg("coordinator: %s", err.msg);
    free(cfg);
    for (int i = 0; i < 600 && !mr_coord_ready(c); i++) usleep(50000);   /* at most 30 s */
    assert_true(mr_coord_ready(c));
    char target[64];
    mr_rpc_channel *ch = NULL;
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    assert_int_equal(mr_rpc_channel_new(&ch, target, &err), 0);

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failover),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
