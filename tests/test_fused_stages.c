/* test_fused_stages.c: stages that continue (coordinator/plan.c mr__plan_fuse, fanout.c
 * mr__fanout_fused, rerank.c): two consecutive stages of one pool that can share a forward pass
 * (exit 2 then exit 4 of models/mrank-tiny, same width) sent as one Score call per group with
 * exits [2, 4] and a prune step at 2, in one process, small enough for the sanitizer build.
 *
 * Three profiles over the same two stages differ only in "fuse": "split" (never), "fused"
 * (always) and "auto". test_same_answers sends requests of 8 to 16 distinct documents with
 * different keep rules on the first stage (none, keep_top_k, keep_fraction, min_score, top_k
 * with min_score) to "split" and "fused" and requires the same ranking (order, stage, depth)
 * and stage figures (candidates in, kept) and the same raw scores within SCORE_TOL; the
 * worker's own counters (its /metrics) must show the fused request took one pass where the
 * split one took two, and fewer tokens through the model, and the coordinator's
 * mrank_coord_fused_stages_total must count exactly the fused requests. test_auto: where one
 * call holds the pair (one replica, every request within a worker batch) and at least half the
 * candidates survive, "auto" fuses every request. test_split_calls: two replicas whose batches hold four documents, so the fused pair
 * is split into several calls, each with its own top_k (a superset of the global survivors):
 * still the split cascade's answers (the work is not compared there: the calls' own top_k
 * take more rows to the deeper exit, which is what the cost model weighs for "auto").
 *
 * Without the change (the coordinator sending every stage as its own calls) the pass and
 * token counts of "fused" equal those of "split" and the fused counter stays 0, so
 * test_same_answers and test_auto fail. */
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coordinator.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "rpc_methods.h"
#include "worker.h"

#include "clusterutil.h"
#include "metricsutil.h"

enum { MAX_DOCS = 16 };

/* A fused pass scores each row with the same engine on the same tokens; what differs is the
 * shape of the products (the exit-2 scores come from a pass that goes on, where the split
 * stage runs only the last tokens through its last layer; the exit-4 scores from rows pruned
 * inside a larger batch), which changes OpenBLAS's blocking and so float sums by a few ulps,
 * as in test_failover (measured there at most 9.5e-7 on scores near -8). 1e-5 of
 * max(|score|, 1) leaves 10x that; a score of the wrong exit or width is off by 1e-2 or more. */
#define SCORE_TOL 1e-5

/* The two stages and three profiles on pool "p" of the addresses addrs (a JSON list body). */
static void config(char *json, size_t cap, const char *addrs) {
    const char *stages = "[{\"stage\": \"s2\", \"max_keep_top_k\": 16, \"max_keep_fraction\": 1},"
                         " {\"stage\": \"s4\"}]";
    snprintf(json, cap,
             "{\"limits\": {\"max_documents\": 16, \"max_tokens_per_pair\": 64},"
             " \"pools\": [{\"name\": \"p\", \"addresses\": [%s]}],"
             " \"stages\": [{\"name\": \"s2\", \"pool\": \"p\", \"depth\": 2},"
             " {\"name\": \"s4\", \"pool\": \"p\", \"depth\": 4}],"
             " \"profiles\": [{\"name\": \"split\", \"fuse\": \"never\", \"stages\": %s},"
             " {\"name\": \"fused\", \"fuse\": \"always\", \"stages\": %s},"
             " {\"name\": \"auto\", \"stages\": %s}],"
             " \"tiers\": [{\"name\": \"t\", \"profile\": \"split\"}]}",
             addrs, stages, stages, stages);
}

/* A worker over models/mrank-tiny whose batches hold batch_tokens tokens, with metrics. */
static mr_worker *start_worker(int batch_tokens) {
    mr_worker_opts o;
    tiny_worker_opts(&o);
    o.max_batch_tokens = batch_tokens;
    o.metrics_port = 0;
    mr_worker *w = NULL;
    mr_err err = {0};
    if (mr_worker_new(&w, &o, &err)) fail_msg("worker: %s", err.msg);
    return w;
}

/* A keep rule override of the first stage. */
typedef struct rule {
    int top_k;
    float fraction;
    int has_min;
    float min_score;
} rule;

typedef struct answer {
    int n, n_stages;
    uint32_t order[MAX_DOCS], stage[MAX_DOCS], depth[MAX_DOCS];
    float raw[MAX_DOCS];                /* in ranking order */
    uint32_t in[2], kept[2];
} answer;

/* One Rerank of n distinct documents (the shared ones, numbered) on profile with rule. */
static void rerank(mr_rpc_channel *ch, const char *profile, int n, const rule *ru, answer *a) {
    Mrank__V1__RerankRequest rq = MRANK__V1__RERANK_REQUEST__INIT;
    Mrank__V1__Document d[MAX_DOCS], *dp[MAX_DOCS];
    Mrank__V1__StageOverride ov = MRANK__V1__STAGE_OVERRIDE__INIT, *ovp = &ov;
    char text[MAX_DOCS][160];
    assert_true(n > 0 && n <= MAX_DOCS);
    for (int i = 0; i < n; i++) {
        mrank__v1__document__init(&d[i]);
        snprintf(text[i], sizeof text[i], "%s ( part %d )", k_tiny_docs[i % K_TINY_N_DOCS], i);
        d[i].text = text[i];
        dp[i] = &d[i];
    }
    rq.query = K_TINY_QUERY;
    rq.profile = (char *)profile;
    rq.n_documents = (size_t)n;
    rq.documents = dp;
    ov.keep_top_k = (uint32_t)ru->top_k;
    ov.keep_fraction = ru->fraction;
    ov.has_min_score = ru->has_min;
    ov.min_score = ru->min_score;
    rq.n_overrides = 1;
    rq.overrides = &ovp;
    size_t len = mrank__v1__rerank_request__get_packed_size(&rq), rlen = 0;
    uint8_t *req = malloc(len + 1), *resp = NULL;
    assert_non_null(req);
    mrank__v1__rerank_request__pack(&rq, req);
    grpc_status_code st;
    char msg[512];
    int rc = mr_rpc_unary(ch, MR_METHOD_RERANK, req, len, 20000, &resp, &rlen, &st, msg,
                          sizeof msg);
    free(req);
    if (rc) fail_msg("Rerank (%s): status %d: %s", profile, (int)st, msg);
    Mrank__V1__RerankResponse *r = mrank__v1__rerank_response__unpack(NULL, rlen, resp);
    free(resp);
    assert_non_null(r);
    assert_false(r->degraded);
    assert_int_equal(r->n_results, n);
    assert_int_equal(r->n_stages, 2);
    a->n = n;
    a->n_stages = (int)r->n_stages;
    for (int i = 0; i < n; i++) {
        a->order[i] = r->results[i]->index;
        a->stage[i] = r->results[i]->stage;
        a->depth[i] = r->results[i]->depth;
        a->raw[i] = r->results[i]->raw_score;
    }
    for (int s = 0; s < 2; s++) {
        assert_false(r->stages[s]->skipped);
        a->in[s] = r->stages[s]->candidates_in;
        a->kept[s] = r->stages[s]->kept;
    }
    mrank__v1__rerank_response__free_unpacked(r, NULL);
}

/* The largest score difference of two answers that must be the same ranking; fails the test
 * on any other difference. */
static double same(const answer *x, const answer *y, const char *what) {
    double worst = 0;
    assert_int_equal(x->n, y->n);
    for (int s = 0; s < 2; s++) {
        if (x->in[s] != y->in[s] || x->kept[s] != y->kept[s])
            fail_msg("%s: stage %d in/kept %u/%u split, %u/%u fused", what, s, x->in[s],
                     x->kept[s], y->in[s], y->kept[s]);
    }
    for (int i = 0; i < x->n; i++) {
        if (x->order[i] != y->order[i] || x->stage[i] != y->stage[i] || x->depth[i] != y->depth[i])
            fail_msg("%s: rank %d: document %u stage %u depth %u split, %u %u %u fused", what, i,
                     x->order[i], x->stage[i], x->depth[i], y->order[i], y->stage[i],
                     y->depth[i]);
        double d = fabs((double)x->raw[i] - y->raw[i]);
        if (!(d <= SCORE_TOL * fmax(fabs(x->raw[i]), 1.0)))
            fail_msg("%s: rank %d: raw %.9g split, %.9g fused", what, i, x->raw[i], y->raw[i]);
        if (d > worst) worst = d;
    }
    return worst;
}

/* Passes (batches) run and tokens computed by the workers (their /metrics; both are counted
 * before the Score calls of the pass are answered, so a Rerank's answer finds them up to
 * date, which the worker's request counter is not). A call within one batch is one pass. */
typedef struct work {
    double calls, tokens;
} work;

static work work_of(mr_worker *const *w, int n) {
    work k = {0, 0};
    for (int i = 0; i < n; i++) {
        int port = mr_worker_metrics_port(w[i]);
        k.calls += scrape_metric(port, "mrank_worker_batch_tokens_count");
        k.tokens += scrape_metric(port, "mrank_worker_computed_tokens_total");
    }
    return k;
}

static double fused_count(int mport, const char *profile) {
    char series[128];
    snprintf(series, sizeof series, "mrank_coord_fused_stages_total{profile=\"%s\"}", profile);
    return scrape_metric(mport, series);
}

/* A min_score for the first stage between two of its scores far enough apart (a gap of more
 * than 100x SCORE_TOL, so that fp noise cannot move a document across it): from a split
 * answer keeping one document, whose other 15 carry their first-stage scores. */
static float pick_min_score(mr_rpc_channel *ch) {
    answer a;
    rule one = {.top_k = 1};
    rerank(ch, "split", MAX_DOCS, &one, &a);
    float s0[MAX_DOCS];
    int n = 0;
    for (int i = 0; i < a.n; i++)
        if (a.stage[i] == 0) s0[n++] = a.raw[i];   /* ranking order: descending */
    assert_int_equal(n, MAX_DOCS - 1);
    int best = -1;
    for (int i = 2; i < 9; i++)
        if (best < 0 || s0[i] - s0[i + 1] > s0[best] - s0[best + 1]) best = i;
    assert_true(s0[best] - s0[best + 1] > 100 * SCORE_TOL * fmax(fabs(s0[best]), 1.0));
    return (s0[best] + s0[best + 1]) / 2;
}

typedef struct scase {
    int n;
    rule ru;
} scase;

/* Runs every case on "split" then "fused", checking the answers against each other and, with
 * one_call (one replica, every request within a batch), the work each took. */
static void run_cases(mr_rpc_channel *ch, mr_worker *const *w, int n_w, int mport,
                      const scase *cs, int n_cases, int one_call) {
    double worst = 0;
    double f0 = fused_count(mport, "fused"), s0 = fused_count(mport, "split");
    for (int k = 0; k < n_cases; k++) {
        char what[96];
        snprintf(what, sizeof what, "case %d (%d documents, top_k %d, fraction %g, min %s)", k,
                 cs[k].n, cs[k].ru.top_k, (double)cs[k].ru.fraction,
                 cs[k].ru.has_min ? "yes" : "no");
        answer split, fused;
        work a = work_of(w, n_w);
        rerank(ch, "split", cs[k].n, &cs[k].ru, &split);
        work b = work_of(w, n_w);
        rerank(ch, "fused", cs[k].n, &cs[k].ru, &fused);
        work c = work_of(w, n_w);
        double d = same(&split, &fused, what);
        if (d > worst) worst = d;
        double split_calls = b.calls - a.calls, fused_calls = c.calls - b.calls;
        double split_tok = b.tokens - a.tokens, fused_tok = c.tokens - b.tokens;
        fprintf(stderr, "# %s: kept %u of %u; passes %.0f split, %.0f fused; tokens %.0f "
                "split, %.0f fused\n", what, split.kept[0], split.in[0], split_calls,
                fused_calls, split_tok, fused_tok);
        if (one_call) {
            /* each stage one pass, the pair one pass; the survivors' first layers are not
             * computed again, nor the query prefix (one batch, not two) */
            assert_true(split_calls == 2);
            assert_true(fused_calls == 1);
            assert_true(fused_tok < split_tok);
        }
    }
    assert_true(fused_count(mport, "fused") - f0 == n_cases);
    assert_true(fused_count(mport, "split") - s0 == 0);
    fprintf(stderr, "# largest raw score difference fused vs split: %.3g\n", worst);
}

/* One worker whose batch holds 16 documents of at most 64 tokens (2048 tokens), and a
 * coordinator over it with config()'s profiles; *mport its metrics port. */
static mr_coord *one_worker_cluster(mr_worker **w, mr_rpc_channel **ch, int *mport) {
    *w = start_worker(2048);
    char addrs[64], json[2048];
    snprintf(addrs, sizeof addrs, "\"127.0.0.1:%d\"", mr_worker_port(*w));
    config(json, sizeof json, addrs);
    int port = 0;
    mr_coord *c = start_cluster_coord(json, &port, mport);
    *ch = channel_to(port);
    return c;
}

static void test_same_answers(void **state) {
    (void)state;
    mr_worker *w;
    mr_rpc_channel *ch;
    int mport = 0;
    mr_coord *c = one_worker_cluster(&w, &ch, &mport);
    float ms = pick_min_score(ch);
    const scase cs[] = {{8, {0}},
                        {8, {.top_k = 3}},
                        {12, {.fraction = 0.5f}},
                        {16, {.top_k = 5}},
                        {12, {.has_min = 1, .min_score = ms}},
                        {16, {.top_k = 2, .has_min = 1, .min_score = ms}},
                        {16, {.top_k = 9, .has_min = 1, .min_score = ms}}};
    run_cases(ch, &w, 1, mport, cs, (int)(sizeof cs / sizeof *cs), 1);
    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    stop_workers(&w, 1);
}

static void test_auto(void **state) {
    (void)state;
    mr_worker *w;
    mr_rpc_channel *ch;
    int mport = 0;
    mr_coord *c = one_worker_cluster(&w, &ch, &mport);
    /* survivors of at least half: their two recomputed layers outweigh the full layer 1 a
     * fused pass runs for every row (plan.c), so the compute favours fusion too, whatever the
     * cost model learnt of the round trip */
    const rule rules[] = {{0}, {.top_k = 6}, {.fraction = 0.75f}};
    enum { N_AUTO = 3 };
    for (int k = 0; k < N_AUTO; k++) {
        answer split, au;
        rerank(ch, "split", 8 + 4 * k, &rules[k], &split);
        work a = work_of(&w, 1);
        rerank(ch, "auto", 8 + 4 * k, &rules[k], &au);
        work b = work_of(&w, 1);
        same(&split, &au, "auto");
        /* one replica, one batch: the pair in one call beats two rounds of calls */
        assert_true(b.calls - a.calls == 1);
    }
    assert_true(fused_count(mport, "auto") == N_AUTO);
    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    stop_workers(&w, 1);
}

static void test_split_calls(void **state) {
    (void)state;
    /* 256-token batches: before the first stage has tokenized, a fused call counts each
     * document as max_tokens_per_pair (64) tokens, so 16 documents go out as 4 calls */
    mr_worker *w[2] = {start_worker(256), start_worker(256)};
    char addrs[96], json[2048];
    snprintf(addrs, sizeof addrs, "\"127.0.0.1:%d\", \"127.0.0.1:%d\"", mr_worker_port(w[0]),
             mr_worker_port(w[1]));
    config(json, sizeof json, addrs);
    int port = 0, mport = 0;
    mr_coord *c = start_cluster_coord(json, &port, &mport);
    mr_rpc_channel *ch = channel_to(port);
    const scase cs[] = {{16, {.top_k = 3}}, {16, {.fraction = 0.25f}}, {13, {.top_k = 1}}};
    run_cases(ch, w, 2, mport, cs, (int)(sizeof cs / sizeof *cs), 0);
    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    stop_workers(w, 2);
}

/* A keep rule that keeps no candidate (min_score above every first-stage score): both
 * profiles answer from the first stage alone, not degraded, and the answer still lists both
 * stages, the second with no candidates (before, it was left out of `stages`); the second
 * stage counts no escalation in the metrics, as it never ran. rerank() asserts the two
 * entries, not skipped, and an answer that is not degraded. */
static void test_none_kept(void **state) {
    (void)state;
    mr_worker *w;
    mr_rpc_channel *ch;
    int mport = 0;
    mr_coord *c = one_worker_cluster(&w, &ch, &mport);
    const char *esc = "mrank_coord_stage_escalations_total{stage=\"s4\",tier=\"t\"}";
    double e0 = scrape_metric(mport, esc);
    rule none = {.has_min = 1, .min_score = 1e5f};   /* logits of mrank-tiny are far below */
    answer split, fused;
    rerank(ch, "split", 12, &none, &split);
    rerank(ch, "fused", 12, &none, &fused);
    same(&split, &fused, "none kept");
    assert_int_equal(split.in[0], 12);
    assert_int_equal(split.kept[0], 0);
    assert_int_equal(split.in[1], 0);
    assert_int_equal(split.kept[1], 0);
    for (int i = 0; i < split.n; i++) assert_int_equal(split.stage[i], 0);
    assert_true(scrape_metric(mport, esc) == e0);
    mr_rpc_channel_free(ch);
    mr_coord_free(c);
    stop_workers(&w, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_answers),
        cmocka_unit_test(test_auto),
        cmocka_unit_test(test_split_calls),
        cmocka_unit_test(test_none_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
