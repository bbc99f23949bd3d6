/* test_chunking.c: long documents in chunks (RerankRequest.chunking; coordinator/chunk.c).
 *
 * test_split: the splitting rule on its own (mr__chunk_split): windows of whole words within
 * the estimate, a new one every stride, the max_chunks bound with the cut flag, a text that
 * fits one window kept whole, a cut on a UTF-8 boundary.
 *
 * The other tests run one worker serving models/mrank-tiny and a coordinator in process, and
 * send Rerank calls over loopback with a pair budget of 64 tokens. The long document L is four
 * off-topic sentences (F), then the relevant sentence R, then F again: truncated at the budget
 * it is F's beginning, so without chunking it scores as F does; with chunking its best chunk
 * holds R.
 *   test_long_document: in a request of R, M (an off-topic sentence the tiny model scores
 *     between F and R), F and L, L ranks below M without chunking and above it with chunking;
 *     L's score is exactly the best of its chunks' scores when each chunk (cut by the same
 *     rule) is sent alone as a document without chunking, the reported chunk is that one and
 *     its bytes hold R; Score rows are the chunks' count.
 *   test_escalation: a two-stage profile scores every chunk at depth 2, then only the winning
 *     chunk at depth 4: the second stage's rows are the documents' count, and L's final score
 *     is its winning chunk's depth-4 score alone.
 *   test_planning: at the first neural stage the rows are chunks, but the next stage scores one
 *     row per document: the budget reserved for it (mr__plan_rest_ms) counts the documents
 *     (mr__chunk_docs), a request of R and two L reserving what 3 rows cost, not 1 + 2n.
 *   test_refusals: invalid options get INVALID_ARGUMENT naming the field; chunks outnumbering
 *     limits.max_documents are refused; max_chunks bounds a document's chunks (truncated set).
 * Scores are compared within SCORE_TOL (test_failover.c's: the same rows in other batches). */
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coord_internal.h"
#include "rpc_methods.h"

#include "clusterutil.h"

#define SCORE_TOL 1e-5

/* ---- splitting ---- */

static void test_split(void **state) {
    (void)state;
    mr__span sp[MR_CHUNK_MAX_CHUNKS];
    int cut;
    /* each one-byte word counts 2 / 3.5 tokens: three fit a window of 2; stride 1 starts the
     * next chunk at the third word of this one */
    const char *t = "a b c d e f g";
    assert_int_equal(mr__chunk_split(t, strlen(t), 2, 1, 16, 1000, sp, &cut), 3);
    assert_int_equal(cut, 0);
    const uint32_t want[3][2] = {{0, 5}, {4, 5}, {8, 5}};   /* "a b c", "c d e", "e f g" */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(sp[i].start, want[i][0]);
        assert_int_equal(sp[i].len, want[i][1]);
    }
    /* stride = window: no overlap; every word covered once */
    assert_int_equal(mr__chunk_split(t, strlen(t), 2, 2, 16, 1000, sp, &cut), 3);
    assert_int_equal(sp[1].start, 6);   /* "d e f" */
    assert_int_equal(sp[2].start, 12);  /* "g" */
    assert_int_equal(sp[2].len, 1);
    /* max_chunks: the words after the last chunk are left out, and said so */
    assert_int_equal(mr__chunk_split(t, strlen(t), 2, 1, 2, 1000, sp, &cut), 2);
    assert_int_equal(cut, 1);
    /* a text that fits one window is one chunk, all of it (spaces included) */
    const char *s = "  short text \n";
    assert_int_equal(mr__chunk_split(s, strlen(s), 20, 5, 16, 1000, sp, &cut), 1);
    assert_int_equal(sp[0].start, 0);
    assert_int_equal(sp[0].len, strlen(s));
    assert_int_equal(cut, 0);
    assert_int_equal(mr__chunk_split("", 0, 20, 5, 16, 1000, sp, &cut), 1);
    assert_int_equal(sp[0].len, 0);
    /* a word longer than the byte cap is cut on a UTF-8 boundary: 'a' then two-byte 'é's; a cut
     * at 6 bytes would split the third 'é' */
    const char *u = "a\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9 b c d e f g h";
    int n = mr__chunk_split(u, strlen(u), 3, 3, 16, 6, sp, &cut);
    assert_true(n >= 2);
    assert_int_equal(sp[0].start, 0);
    assert_int_equal(sp[0].len, 5);
    assert_int_equal(sp[1].start, 12);  /* the next word */
    /* a window (6 tokens: about 6 of these words) cut by the byte cap (60 bytes: 3 words, far
     * apart with 20 spaces each) resumes at the first word after the cut, not at the window's
     * stride point: no word between them is skipped */
    char far[400] = "";
    for (int i = 0; i < 12; i++) {
        char wd[32];
        snprintf(wd, sizeof wd, "w%02d                    ", i);
        strcat(far, wd);
    }
    n = mr__chunk_split(far, strlen(far), 6, 6, 16, 60, sp, &cut);
    assert_true(n >= 4);
    assert_int_equal(cut, 0);
    int seen[12] = {0};
    for (int c = 0; c < n; c++)
        for (uint32_t b = sp[c].start; b < sp[c].start + sp[c].len; b++)
            if (far[b] == 'w') seen[atoi(far + b + 1)] = 1;
    for (int i = 0; i < 12; i++)
        if (!seen[i]) fail_msg("word w%02d is in no chunk (%d chunks)", i, n);
    for (int c = 1; c < n; c++) assert_true(sp[c].start > sp[c - 1].start);
}

/* ---- a cluster ---- */

enum { MAX_DOCS = 32 };   /* limits.max_documents */

#define QUERY K_TINY_QUERY
#define R_WORDS "measurements of boundary layer transition on a flat plate with heat transfer"
#define R_TEXT R_WORDS " ."
#define F_TEXT                                                                         \
    "the opera season opened with a new production and a famous tenor . the committee " \
    "voted to raise taxes on imported grain . a recipe for bread with flour , water , " \
    "salt and yeast . the river flooded the valley after a week of rain ."
#define M_TEXT "a recipe for bread with flour , water , salt and yeast ."
#define L_TEXT F_TEXT " " R_TEXT " " F_TEXT
#define WINDOW 24
#define STRIDE 12

typedef struct cluster {
    mr_worker *w;
    mr_coord *c;
    mr_rpc_channel *ch;
} cluster;

static void cluster_start(cluster *k) {
    k->w = start_tiny_worker();
    char json[1024];
    snprintf(json, sizeof json,
             "{\"limits\": {\"max_documents\": %d, \"max_tokens_per_pair\": 64},"
             " \"pools\": [{\"name\": \"p\", \"addresses\": [\"127.0.0.1:%d\"]}],"
             " \"stages\": [{\"name\": \"half\", \"pool\": \"p\", \"depth\": 2},"
             " {\"name\": \"full\", \"pool\": \"p\", \"depth\": 4}],"
             " \"profiles\": [{\"name\": \"one\", \"stages\": [{\"stage\": \"full\"}]},"
             " {\"name\": \"two\", \"stages\": [{\"stage\": \"half\", \"keep_top_k\": 16},"
             " {\"stage\": \"full\"}]}],"
             " \"tiers\": [{\"name\": \"t\", \"profile\": \"one\"}]}",
             MAX_DOCS, mr_worker_port(k->w));
    int port = 0;
    k->c = start_cluster_coord(json, &port, NULL);
    k->ch = channel_to(port);
}

static void cluster_stop(cluster *k) {
    mr_rpc_channel_free(k->ch);
    mr_coord_free(k->c);
    mr_worker_shutdown(k->w, 1000);
    mr_worker_free(k->w);
}

/* A packed RerankRequest of QUERY over docs[0..n) with profile and chunking (window 0: none),
 * malloc'd, its size in *len. */
static uint8_t *pack_request(const char *const *docs, int n, const char *profile,
                             unsigned window, unsigned stride, unsigned max_chunks, size_t *len) {
    Mrank__V1__RerankRequest rq = MRANK__V1__RERANK_REQUEST__INIT;
    Mrank__V1__Document d[MAX_DOCS + 1], *dp[MAX_DOCS + 1];
    Mrank__V1__Chunking ch = MRANK__V1__CHUNKING__INIT;
    assert_true(n <= MAX_DOCS + 1);   /* L's chunks alone: at most MR_CHUNK_MAX_CHUNKS */
    for (int i = 0; i < n; i++) {
        mrank__v1__document__init(&d[i]);
        d[i].text = (char *)docs[i];
        dp[i] = &d[i];
    }
    rq.query = QUERY;
    rq.profile = (char *)profile;
    rq.n_documents = (size_t)n;
    rq.documents = dp;
    ch.window = window, ch.stride = stride, ch.max_chunks = max_chunks;
    if (window || stride || max_chunks) rq.chunking = &ch;
    *len = mrank__v1__rerank_request__get_packed_size(&rq);
    uint8_t *req = malloc(*len + 1);
    assert_non_null(req);
    mrank__v1__rerank_request__pack(&rq, req);
    return req;
}

/* One Rerank of docs[0..n) with profile and chunking (window 0: none): the response (free
 * with mrank__v1__rerank_response__free_unpacked), or NULL with *st and msg on a failure. */
static Mrank__V1__RerankResponse *rerank(cluster *k, const char *const *docs, int n,
                                         const char *profile, unsigned window, unsigned stride,
                                         unsigned max_chunks, grpc_status_code *st, char *msg,
                                         size_t cap) {
    size_t len, rlen = 0;
    uint8_t *req = pack_request(docs, n, profile, window, stride, max_chunks, &len), *resp = NULL;
    int rc = mr_rpc_unary(k->ch, MR_METHOD_RERANK, req, len, 20000, &resp, &rlen, st, msg, cap);
    free(req);
    if (rc) {
        free(resp);
        return NULL;
    }
    Mrank__V1__RerankResponse *r = mrank__v1__rerank_response__unpack(NULL, rlen, resp);
    free(resp);
    assert_non_null(r);
    assert_int_equal(r->n_results, n);
    return r;
}

static Mrank__V1__RerankResponse *rerank_ok(cluster *k, const char *const *docs, int n,
                                            const char *profile, unsigned window,
                                            unsigned stride, unsigned max_chunks) {
    grpc_status_code st;
    char msg[512];
    Mrank__V1__RerankResponse *r =
        rerank(k, docs, n, profile, window, stride, max_chunks, &st, msg, sizeof msg);
    if (!r) fail_msg("Rerank: status %d: %s", (int)st, msg);
    return r;
}

/* The result of request index i and its rank (0-based) in r. */
static const Mrank__V1__RerankResult *result_of(const Mrank__V1__RerankResponse *r, uint32_t i,
                                                int *rank) {
    for (size_t k = 0; k < r->n_results; k++)
        if (r->results[k]->index == i) {
            if (rank) *rank = (int)k;
            return r->results[k];
        }
    fail_msg("document %u is not in the response", i);
    return NULL;
}

static void assert_close(float a, float b, const char *what) {
    if (!(fabs(a - b) <= SCORE_TOL * fmax(fabs(b), 1.0)))
        fail_msg("%s: %.9g, expected %.9g", what, a, b);
}

/* L's chunks by the coordinator's rule (the max_bytes cap is far above these words), as
 * NUL-terminated copies into texts (free each). */
static int chunks_of_l(char **texts, mr__span *sp) {
    int cut;
    const char *l = L_TEXT;
    int n = mr__chunk_split(l, strlen(l), WINDOW, STRIDE, MR_CHUNK_MAX_CHUNKS, 64 * 64, sp, &cut);
    assert_int_equal(cut, 0);
    assert_true(n >= 3 && 3 * n > MAX_DOCS);   /* test_refusals needs three L over the limit */
    for (int c = 0; c < n; c++) texts[c] = strndup(l + sp[c].start, sp[c].len);
    return n;
}

static void test_long_document(void **state) {
    (void)state;
    cluster k;
    cluster_start(&k);
    const char *docs[4] = {R_TEXT, M_TEXT, F_TEXT, L_TEXT};
    enum { IR, IM, IF, IL };
    const size_t r_at = strlen(F_TEXT) + 1;   /* R's bytes in L */

    /* without chunking L is cut to F's beginning: F's score, below M */
    Mrank__V1__RerankResponse *plain = rerank_ok(&k, docs, 4, "one", 0, 0, 0);
    int rank_l0, rank_m0;
    const Mrank__V1__RerankResult *l0 = result_of(plain, IL, &rank_l0);
    result_of(plain, IM, &rank_m0);
    assert_close(l0->raw_score, result_of(plain, IF, NULL)->raw_score, "L without chunking");
    assert_true(l0->truncated);
    assert_int_equal(l0->chunk_length, 0);   /* no chunking asked: no chunk reported */
    assert_true(rank_l0 > rank_m0);

    /* with chunking: above M */
    Mrank__V1__RerankResponse *chunked = rerank_ok(&k, docs, 4, "one", WINDOW, STRIDE, 0);
    int rank_l1, rank_m1;
    const Mrank__V1__RerankResult *l1 = result_of(chunked, IL, &rank_l1);
    result_of(chunked, IM, &rank_m1);
    fprintf(stderr, "# L: rank %d, raw %.4f without chunking; rank %d, raw %.4f, chunk %u "
            "(bytes %u+%u) with\n", rank_l0, l0->raw_score, rank_l1, l1->raw_score, l1->chunk,
            l1->chunk_offset, l1->chunk_length);
    assert_true(rank_l1 < rank_m1);
    assert_true(rank_l1 < rank_l0);

    /* its score is its best chunk's, each chunk scored alone as a plain document */
    char *texts[MR_CHUNK_MAX_CHUNKS];
    mr__span sp[MR_CHUNK_MAX_CHUNKS];
    int n = chunks_of_l(texts, sp);
    Mrank__V1__RerankResponse *alone =
        rerank_ok(&k, (const char *const *)texts, n, "one", 0, 0, 0);
    int best = 0;
    for (int c = 1; c < n; c++)
        if (result_of(alone, (uint32_t)c, NULL)->raw_score >
            result_of(alone, (uint32_t)best, NULL)->raw_score)
            best = c;
    assert_int_equal(l1->chunk, best);
    assert_close(l1->raw_score, result_of(alone, (uint32_t)best, NULL)->raw_score,
                 "L's best chunk");
    assert_int_equal(l1->chunk_offset, sp[best].start);
    assert_int_equal(l1->chunk_length, sp[best].len);
    /* ... and it is a chunk that holds R's words */
    assert_true(l1->chunk_offset <= r_at &&
                r_at + strlen(R_WORDS) <= l1->chunk_offset + l1->chunk_length);
    /* rows: every chunk of L (and of F, also longer than a window), one for R and M */
    int cut, nf = mr__chunk_split(F_TEXT, strlen(F_TEXT), WINDOW, STRIDE, MR_CHUNK_MAX_CHUNKS,
                                  64 * 64, sp, &cut);
    assert_int_equal(chunked->n_stages, 1);
    assert_int_equal(chunked->stages[0]->rows, 2 + nf + n);
    assert_int_equal(plain->stages[0]->rows, 4);
    /* a document that fits one window is its own chunk 0, all of it */
    const Mrank__V1__RerankResult *r1 = result_of(chunked, IR, NULL);
    assert_int_equal(r1->chunk, 0);
    assert_int_equal(r1->chunk_offset, 0);
    assert_int_equal(r1->chunk_length, strlen(R_TEXT));
    assert_close(r1->raw_score, result_of(plain, IR, NULL)->raw_score, "R");
    for (int c = 0; c < n; c++) free(texts[c]);
    mrank__v1__rerank_response__free_unpacked(plain, NULL);
    mrank__v1__rerank_response__free_unpacked(chunked, NULL);
    mrank__v1__rerank_response__free_unpacked(alone, NULL);
    cluster_stop(&k);
}

static void test_escalation(void **state) {
    (void)state;
    cluster k;
    cluster_start(&k);
    const char *docs[3] = {R_TEXT, M_TEXT, L_TEXT};
    char *texts[MR_CHUNK_MAX_CHUNKS];
    mr__span sp[MR_CHUNK_MAX_CHUNKS];
    int n = chunks_of_l(texts, sp);
    Mrank__V1__RerankResponse *two = rerank_ok(&k, docs, 3, "two", WINDOW, STRIDE, 0);
    assert_int_equal(two->n_stages, 2);
    assert_int_equal(two->stages[0]->rows, 2 + n);   /* every chunk at depth 2 */
    assert_int_equal(two->stages[1]->rows, 3);       /* one row per document at depth 4 */
    const Mrank__V1__RerankResult *l = result_of(two, 2, NULL);
    assert_int_equal(l->stage, 1);
    assert_int_equal(l->depth, 4);
    assert_true(l->chunk < (uint32_t)n);
    assert_int_equal(l->chunk_offset, sp[l->chunk].start);
    /* the depth-4 score is the winning chunk's, scored alone */
    Mrank__V1__RerankResponse *alone =
        rerank_ok(&k, (const char *const *)&texts[l->chunk], 1, "one", 0, 0, 0);
    assert_close(l->raw_score, alone->results[0]->raw_score, "L at depth 4");
    for (int c = 0; c < n; c++) free(texts[c]);
    mrank__v1__rerank_response__free_unpacked(two, NULL);
    mrank__v1__rerank_response__free_unpacked(alone, NULL);
    cluster_stop(&k);
}

static void test_planning(void **state) {
    (void)state;
    cluster k;
    cluster_start(&k);
    char *texts[MR_CHUNK_MAX_CHUNKS];
    mr__span sp[MR_CHUNK_MAX_CHUNKS];
    int n = chunks_of_l(texts, sp);
    for (int c = 0; c < n; c++) free(texts[c]);
    const char *docs[3] = {R_TEXT, L_TEXT, L_TEXT};
    size_t len;       /* profile two: half keeps 16, then full */
    uint8_t *body = pack_request(docs, 3, "two", WINDOW, STRIDE, 0, &len);
    mr__req *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->co = k.c;
    mr_err err = {0};
    if (mr__req_parse(r, body, len, &err) || mr__req_start(r, &err)) fail_msg("%s", err.msg);
    assert_false(k.c->cfg.tiers[r->tier].allow_degraded);   /* else nothing is reserved */
    /* the first stage's rows as mr__chunk_stage lists them: R's own, then each L's chunks */
    int rows[1 + 2 * MR_CHUNK_MAX_CHUNKS], m = 0;
    rows[m++] = 0;
    for (int c = 0; c < 2 * n; c++) rows[m++] = 3 + c;
    assert_int_equal(mr__chunk_docs(r, 0, rows, m), 3);
    assert_int_equal(mr__chunk_docs(r, 1, rows, 3), 3);     /* later stages: rows are docs */
    double chunked = mr__plan_rest_ms(r, 0, rows, m);
    mr__chunks *saved = r->chunks;                         /* the same rows as documents */
    r->chunks = NULL;
    double as_rows = mr__plan_rest_ms(r, 0, rows, m);
    r->chunks = saved;
    /* rest = safety (overhead + kept x mean token-layers x ns / parallelism), kept = the keep
     * rule's bound (top 16) of the count: the row-dependent part scales by 3 / min(16, m);
     * 1e-9 relative covers the double arithmetic */
    int si = k.c->cfg.profiles[r->profile].stages[1].stage, kept = m < 16 ? m : 16;
    double fixed = k.c->cost[si].overhead_ms * (k.c->cfg.safety > 1 ? k.c->cfg.safety : 1);
    assert_true(as_rows > chunked);
    double want = (as_rows - fixed) * 3 / kept, got = chunked - fixed;
    if (!(fabs(got - want) <= 1e-9 * fabs(want)))
        fail_msg("reserve for 3 documents %.9g, expected %.9g (%d rows, %d kept: %.9g)", got,
                 want, m, kept, as_rows - fixed);
    mr__req_close(r);
    free(r);
    free(body);
    cluster_stop(&k);
}

static void test_refusals(void **state) {
    (void)state;
    cluster k;
    cluster_start(&k);
    const char *docs[3] = {L_TEXT, L_TEXT, L_TEXT};
    static const struct {
        unsigned window, stride, max_chunks;
        const char *names;
    } bad[] = {
        {0, 4, 0, "chunking.window: 0"},
        {0, 0, 3, "chunking.window: 0"},
        {200, 0, 0, "chunking.window: 200 passage tokens do not fit"},
        {WINDOW, WINDOW + 1, 0, "chunking.stride: 25 is above the window 24"},
        {WINDOW, 0, MR_CHUNK_MAX_CHUNKS + 1, "chunking.max_chunks: 17 is above the bound 16"},
        /* three documents of n chunks each: more rows than max_documents */
        {WINDOW, STRIDE, 0, NULL},
    };
    char *texts[MR_CHUNK_MAX_CHUNKS];
    mr__span sp[MR_CHUNK_MAX_CHUNKS];
    int n = chunks_of_l(texts, sp);
    char too_many[128];
    snprintf(too_many, sizeof too_many, "chunking: the 3 documents split into %d chunks, the "
             "limit is %d (Info.max_documents)", 3 * n, MAX_DOCS);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        grpc_status_code st;
        char msg[512];
        Mrank__V1__RerankResponse *r = rerank(&k, docs, 3, "one", bad[i].window, bad[i].stride,
                                              bad[i].max_chunks, &st, msg, sizeof msg);
        if (r) fail_msg("case %zu accepted", i);
        assert_int_equal(st, GRPC_STATUS_INVALID_ARGUMENT);
        const char *names = bad[i].names ? bad[i].names : too_many;
        if (!strstr(msg, names)) fail_msg("case %zu: '%s'", i, msg);
    }
    for (int c = 0; c < n; c++) free(texts[c]);
    /* max_chunks bounds each document: 3 x 5 rows fit, the rest of L is left out */
    Mrank__V1__RerankResponse *r = rerank_ok(&k, docs, 3, "one", WINDOW, STRIDE, 5);
    assert_int_equal(r->stages[0]->rows, 15);
    for (size_t i = 0; i < r->n_results; i++) {
        assert_true(r->results[i]->chunk < 5);
        assert_true(r->results[i]->truncated);
    }
    mrank__v1__rerank_response__free_unpacked(r, NULL);
    cluster_stop(&k);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_long_document),
        cmocka_unit_test(test_escalation),
        cmocka_unit_test(test_planning),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
