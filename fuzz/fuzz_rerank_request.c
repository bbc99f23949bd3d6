/* fuzz_rerank_request.c: libFuzzer target for the coordinator's request path up to the first
 * worker call: the input bytes are a serialized RerankRequest, as a client sends it.
 *
 * One coordinator is made before the first input (LLVMFuzzerInitialize: mr_coord_new, never
 * started: no listener, no prober, no executor; its one pool's channel to 127.0.0.1:1
 * connects lazily and is never used) from a config with two lexical stages (BM25 over the
 * repository's models/mrank-tiny/lexicon.txt, found from __FILE__ as fuzz_tokenizer.c does, with
 * English stems; and over the candidates' own statistics without stemming), one neural stage, and
 * profiles that fuse (weighted minmax and zscore, rrf) or cascade into the neural stage. Every
 * input goes the way an arrival goes (rerank.c, mr__rerank_arrive): mr__req_parse (unpack, NUL
 * walk, UTF-8, limits, tier, profile, overrides, chunking options), mr__req_start (rows, token
 * estimates, chunk.c's splitting of every document into word windows), mr__plan_request (the cost
 * model); then, where no worker is needed, the cascade itself through a sink that never blocks: a
 * profile of lexical stages only is served whole (mr__rerank_serve: BM25 of every stage, keep
 * rules, fusion, the packed ranking); a profile that starts with lexical stages, on a tier that
 * allows degraded answers, is served from those (mr__rerank_serve_pool_free, what an overload
 * gets); and the first neural stage's ScoreRequest over the documents is packed (wire.c). Not
 * reached: the neural stages themselves (plan.c's stage and fuse decisions, fanout.c, chunk.c's
 * rows of chunks and best chunk) run only while workers answer; fuzz_worker_request.c fuzzes
 * the worker's side. Checks: a refusal fills the error with a code and a message; a
 * served request answers exactly once, and a finished answer unpacks with min(documents,
 * top_n) results, distinct indexes in range, relevance scores that never increase down the
 * ranking, its profile's name. Each input's request is closed (mr__req_close) and freed: no
 * state outlives an input but the coordinator's metrics and cost models. Must never crash,
 * leak or read out of bounds. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"

/* The config; %.*s is the repository root (from __FILE__). */
static const char k_config[] =
    "{\"limits\": {\"max_documents\": 64, \"max_tokens_per_pair\": 64},"
    " \"pools\": [{\"name\": \"p\", \"addresses\": [\"127.0.0.1:1\"]}],"
    " \"stages\": ["
    "  {\"name\": \"bm25\", \"kind\": \"lexical\", \"k1\": 0.9, \"b\": 0.4,"
    "   \"lexicon\": \"%.*smodels/mrank-tiny/lexicon.txt\"},"
    "  {\"name\": \"plain\", \"kind\": \"lexical\", \"stem\": \"none\"},"
    "  {\"name\": \"deep\", \"pool\": \"p\", \"depth\": 2}],"
    " \"profiles\": ["
    "  {\"name\": \"cascade\", \"stages\": [{\"stage\": \"bm25\", \"keep_top_k\": 8,"
    "    \"max_keep_top_k\": 64}, {\"stage\": \"deep\"}]},"
    "  {\"name\": \"lexical\", \"stages\": [{\"stage\": \"bm25\", \"keep_top_k\": 8,"
    "    \"max_keep_top_k\": 64, \"max_keep_fraction\": 1}, {\"stage\": \"plain\"}],"
    "   \"fusion\": {\"method\": \"weighted\", \"weights\": {\"bm25\": 1, \"plain\": 0.5},"
    "    \"input_order\": 0.5}},"
    "  {\"name\": \"zscore\", \"stages\": [{\"stage\": \"plain\", \"keep_fraction\": 0.5,"
    "    \"min_score\": 0.1}, {\"stage\": \"bm25\"}],"
    "   \"fusion\": {\"method\": \"weighted\", \"normalize\": \"zscore\","
    "    \"weights\": {\"plain\": 1, \"bm25\": 2}}},"
    "  {\"name\": \"rrf\", \"stages\": [{\"stage\": \"plain\"}, {\"stage\": \"bm25\"}],"
    "   \"fusion\": {\"method\": \"rrf\", \"k\": 10}},"
    "  {\"name\": \"neural\", \"stages\": [{\"stage\": \"deep\"}]}],"
    " \"tiers\": ["
    "  {\"name\": \"standard\", \"profile\": \"cascade\", \"allow_degraded\": true},"
    "  {\"name\": \"lexical\", \"profile\": \"lexical\", \"priority\": 1},"
    "  {\"name\": \"batch\", \"profile\": \"neural\"}],"
    " \"default_tier\": \"standard\"}";

static mr_coord *g_co;

/* What the sink saw of one request. */
typedef struct answer {
    int finished, failed;
    const mr__req *r;
} answer;

static double s_remaining(void *ctx) { return MR_RPC_NO_DEADLINE_MS; }
static int s_cancelled(void *ctx) { return 0; }
static int s_metadata(void *ctx, const char *key, char *buf, size_t cap) { return -1; }
static int s_write(void *ctx, const uint8_t *resp, size_t len) { return 0; }
static const mr_trace_ctx *s_trace(void *ctx) { return NULL; }

static void s_fail(void *ctx, grpc_status_code code, const char *msg, double retry_ms) {
    answer *a = ctx;
    a->failed++;
    if (code == GRPC_STATUS_OK || !msg || !*msg) {
        fprintf(stderr, "fuzz_rerank_request: failed with status %d, message '%s'\n", code,
                msg ? msg : "(null)");
        abort();
    }
}

/* The answer's checks (see the comment at the top). */
static void s_finish(void *ctx, const uint8_t *resp, size_t len) {
    answer *a = ctx;
    const mr__req *r = a->r;
    a->finished++;
    Mrank__V1__RerankResponse *o = mrank__v1__rerank_response__unpack(NULL, len, resp);
    size_t want = r->in->top_n && r->in->top_n < (uint32_t)r->n ? r->in->top_n : (size_t)r->n;
    if (!o || o->n_results != want ||
        strcmp(o->profile, r->co->cfg.profiles[r->profile].name)) {
        fprintf(stderr, "fuzz_rerank_request: answer: %zu results, want %zu\n",
                o ? o->n_results : 0, want);
        abort();
    }
    char *seen = calloc((size_t)r->n, 1);
    if (!seen) abort();
    for (size_t i = 0; i < o->n_results; i++) {
        const Mrank__V1__RerankResult *x = o->results[i];
        if (x->index >= (uint32_t)r->n || seen[x->index]++ || isnan(x->relevance_score) ||
            (i && x->relevance_score > o->results[i - 1]->relevance_score)) {
            fprintf(stderr, "fuzz_rerank_request: result %zu: index %u, relevance %g\n", i,
                    x->index, (double)x->relevance_score);
            abort();
        }
    }
    free(seen);
    mrank__v1__rerank_response__free_unpacked(o, NULL);
}

/* The ScoreRequest of neural stage pos over every document (the one call fanout.c sends when
 * the documents are the stage's rows): it must pack, unpack and carry the query and each
 * document's text in order. */
static void check_wire(const mr__req *r, int pos) {
    int *rows = malloc((size_t)r->n * sizeof *rows);
    uint8_t *buf = NULL;
    size_t len;
    mr_err err = {0};
    if (!rows) abort();
    for (int i = 0; i < r->n; i++) rows[i] = i;
    if (mr__wire_score(r, mr__req_stage(r, pos), rows, r->n, &buf, &len, &err)) abort();
    Mrank__V1__ScoreRequest *q = mrank__v1__score_request__unpack(NULL, len, buf);
    if (!q || q->n_passages != (size_t)r->n || strcmp(q->query, r->in->query)) abort();
    for (int i = 0; i < r->n; i++)
        if (strcmp(q->passages[i], r->in->documents[i]->text)) abort();
    mrank__v1__score_request__free_unpacked(q, NULL);
    free(buf);
    free(rows);
}

static const mr__sink_ops k_sink = {s_remaining, s_cancelled, s_metadata, s_write,
                                    s_finish,    s_fail,      s_trace};

static void free_coord(void) { mr_coord_free(g_co); }

static void make_coord(void) {
    const char *file = __FILE__, *cut = strstr(file, "fuzz/fuzz_rerank_request.c");
    int dir = cut ? (int)(cut - file) : 0;
    char json[sizeof k_config + 4096];
    snprintf(json, sizeof json, k_config, dir, file);
    mr_coord_config *cfg = malloc(sizeof *cfg);
    mr_err err = {0};
    if (!cfg || mr_coord_config_parse(cfg, "fuzz-cluster.json", json, &err) ||
        mr_coord_new(&g_co, cfg, "127.0.0.1:0", 0, &err)) {
        fprintf(stderr, "fuzz_rerank_request: coordinator: %s\n", err.msg);
        abort();
    }
    free(cfg);
    atexit(free_coord);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Before the first input: the config's comparisons (the path search above) stay out of
 * libFuzzer's comparison table. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    make_coord();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    answer a = {0};
    mr__req *r = calloc(1, sizeof *r);
    if (!r) abort();
    a.r = r;
    r->co = g_co;
    r->sink = (mr__sink){&k_sink, &a};
    r->t0 = mr__now_ms();
    mr_err err = {0};
    if (mr__req_parse(r, data, size, &err) || mr__req_start(r, &err)) {
        if (err.code == 0 || !err.msg[0]) abort();
    } else {
        double est, first, work = mr__plan_request(r, &est, &first);
        if (!(work >= 0) || !(est >= 0) || !(first >= 0) || first > est) abort();
        int n_lex = mr__first_neural(r), served = 1;
        if (n_lex == g_co->cfg.profiles[r->profile].n_stages) mr__rerank_serve(r);
        else served = (check_wire(r, n_lex), mr__rerank_serve_pool_free(r));
        if (a.finished + a.failed != served) {
            fprintf(stderr, "fuzz_rerank_request: %d answers, %d failures\n", a.finished,
                    a.failed);
            abort();
        }
    }
    mr__req_close(r);
    free(r);
    return 0;
}
