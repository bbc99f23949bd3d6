/* coord_internal.h: the coordinator's shared state and the functions its files offer each
 * other (not a public API: coordinator.h is).
 *
 * The path of one Rerank, file by file:
 *   rerank.c     the handlers: parse at arrival and submit; once started, stage by stage
 *                plan -> fan out -> keep, answer
 *   request.c    the request: unpack and validate, per-candidate state, token estimates, stats
 *   chunk.c      chunking: long documents split into overlapping windows (rows after the
 *                documents'); the first neural stage scores every chunk, later ones the best
 *   sched.c      admission at arrival and the executor threads (queue rules: admission.c/.h)
 *   profile_health.c  health per profile, refreshed by sched.c's sweeper
 *   plan.c       whether a stage fits the remaining budget, into how many calls it splits, and
 *                whether it runs fused with the next stage (one pass for both)
 *   fanout.c     one stage's (or fused pair's) Score calls over a pool's replicas: attempt
 *                timeouts, retries, hedges, cancellation; folds answers
 *   replicas.c   replica state (full, outlier, ejected) and the pick of a replica
 *   lexical_stage.c  a "lexical" stage: BM25 over the active candidates, in the executor
 *   fuse.c       the profile's fusion phase after the last stage (rules: fusion.h)
 *   wire.c       protobuf packing: Score requests, the ranking, Info
 *   probe.c      the prober thread: Worker Info, warm-up, health, ejected replicas back
 *   coordinator.c  lifecycle and handler registration
 *   sink.c       where an answer goes (mr__sink): the gRPC call's implementation
 *   http.c       the HTTP/JSON front end (Cohere/Jina/TEI shapes; http_json.c converts):
 *                another mr__sink into the same arrival path
 *   calib.c      calibration.json (Platt per stage sub-architecture) and the rule that makes
 *                reported scores non-increasing down the ranking; calib_fit.c fits it (calib.h)
 *   auth.c       API keys: UNAUTHENTICATED before a handler runs, PERMISSION_DENIED per tier
 *   redact.c     internal addresses out of client-facing error messages
 * The pure rules (keep, merge, cost model, deadline decision, retries, attempt timeouts,
 * hedge delay, ejection) are cascade.c's; the config is coord_config.c's; metrics are
 * coord_metrics.c's.
 *
 * Threads: a Rerank arrives on the rpc completion-queue thread (parse, estimate, submit: never
 * blocks), runs on one of sched.c's executor threads, its Score calls complete on the
 * channels' threads.
 *
 * Locking: mr_coord.mu (endpoint state, cost models, model name) is a leaf lock, held briefly;
 * a stage's fan-out lock is never held while taking it; sched.c's lock is never held together
 * with mr_coord.mu. */
#ifndef MR_COORD_INTERNAL_H
#define MR_COORD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "admission.h"
#include "calib.h"
#include "cascade.h"
#include "coord_config.h"
#include "coord_metrics.h"
#include "coordinator.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "trace.h"

/* One replica address of a pool (for a DNS pool: the one target gRPC balances over). */
typedef struct mr__endpoint {
    char target[300];
    mr_rpc_channel *ch;
    /* under mr_coord.mu */
    double down_until;          /* monotonic ms: ejected (skipped by the fan-out) until then;
                                 * the prober clears it when the replica scores again */
    double full_until;          /* monotonic ms: refused with RESOURCE_EXHAUSTED lately */
    mr_outlier outlier;         /* consecutive failures and ejections (cascade.h) */
    double inflight_tl;         /* token-layers of this coordinator's Score calls in flight */
    int inflight_calls;         /* and their number (a fused call's token-layers are fractional:
                                 * the sum need not return to exactly 0) */
    int info_ok;
    int warmed;                 /* answered a warm-up Score for every stage of its pool */
    int probing;                /* a probe of it is in flight (probe.c) */
    double ns_per_tl;
    int num_layers, max_batch_tokens;
} mr__endpoint;

typedef struct mr__pool {
    int n_ep;
    mr__endpoint *ep;
    atomic_uint rr;             /* round-robin cursor */
    mr_retry_budget retry;      /* under mr_coord.mu */
    /* DNS pool: addresses the name last resolved to (0 before the first answer, or none),
     * written by the prober, read by the planner; addr_sig: the prober's fingerprint of them */
    atomic_int replicas;
    uint64_t addr_sig;
} mr__pool;

struct mr_coord {
    mr_coord_config cfg;
    char listen[128];
    int metrics_port;
    mr_rpc_server *srv;
    mr_coord_metrics *metrics;
    mr__pool pools[MR_CC_MAX_POOLS];
    int max_priority;
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* wakes the prober at shutdown and when a probe ends */
    mr_cost_model cost[MR_CC_MAX_STAGES];
    struct mr__sched *sched;    /* sched.c */
    int ready, stopping, prober_started, shut;
    char model[512];
    char dtype[8];               /* the workers' model dtype (Worker Info), "" until known */
    int untrained;
    pthread_t prober;
    int n_probing;              /* probes in flight (under mu) */
    mr_rpc_cancel *probe_cancel;    /* the probes' calls, cancelled at shutdown */
    struct mr__auth *auth;      /* API keys (auth.c), NULL when none are configured */
    struct mr__http *http;      /* the HTTP/JSON front end (http.c), NULL when off */
    char http_listen[128];      /* its address ("" off) */
    int http_port;              /* bound, -1 when off */
    struct mr__calib *calib;    /* calibration.json (calib.c), NULL: identity */
    struct mr_lexicon *lex[MR_CC_MAX_STAGES];   /* lexical stages' lexicons (NULL: none) */
};

/* Where one Rerank's answer goes, and what the request reads of its client: a gRPC call
 * (sink.c) or an HTTP connection (http.c). The rest of the path (parse, validation, tier
 * check, admission, cascade, metrics) never knows which. Exactly one of finish and fail is
 * called, once; ctx is not touched afterwards. */
typedef struct mr__sink_ops {
    /* ms until the client's deadline (negative once passed; MR_RPC_NO_DEADLINE_MS: none) */
    double (*remaining_ms)(void *ctx);
    /* 1 when the client went away, its deadline passed or the server is stopping */
    int (*cancelled)(void *ctx);
    /* request metadata / header key (lower case) into buf: its length, or -1 when absent */
    int (*metadata)(void *ctx, const char *key, char *buf, size_t cap);
    /* a partial ranking (RerankStream): 0, or MR_ESTATE when the client is gone */
    int (*write)(void *ctx, const uint8_t *resp, size_t len);
    /* the answer: a packed RerankResponse */
    void (*finish)(void *ctx, const uint8_t *resp, size_t len);
    /* a failure; retry_ms > 0: when the client may retry (overload) */
    void (*fail)(void *ctx, grpc_status_code code, const char *msg, double retry_ms);
    /* the request's trace context (trace.h), parent of its stage spans; NULL: none */
    const mr_trace_ctx *(*trace)(void *ctx);
} mr__sink_ops;

typedef struct mr__sink {
    const mr__sink_ops *ops;
    void *ctx;
} mr__sink;

/* ---- sink.c ---- */

/* The sink of a gRPC call (mr_rpc_call_* underneath). */
mr__sink mr__sink_grpc(mr_rpc_call *call);

/* One Rerank in flight. */
typedef struct mr__req {
    mr_coord *co;
    mr__sink sink;
    int stream;                 /* RerankStream */
    int fanned_out;             /* a stage's Score calls went out (its time is service time) */
    mr_admq_item qi;            /* its place in sched.c's queue */
    Mrank__V1__RerankRequest *in;
    int tier, profile, n;
    mr_keep_rule keep[MR_CC_MAX_STAGES];
    double t0;                  /* arrival (mr_rpc_call_arrival_ms): budgets count from here */
    int n_fixed;                /* query + suffix tokens: estimated, exact after stage 0 */
    int *stage;                 /* (n) deepest profile stage position that scored it, -1 none */
    float *score;               /* (n) raw score at that stage (the fused one in the fused group) */
    int fused_stage;            /* profile stage position whose group fuse.c fused, -1 none */
    float *logit;               /* (n) when fused: the head's raw score before fusion */
    int *depth;                 /* (n) */
    int *passage_tokens;        /* (n) estimated, exact after stage 0 */
    int *truncated;             /* (n) */
    /* The arrays above have a row per document, then (chunking) one per chunk of a document
     * split in several (chunk.c); the ranking reads the documents' rows only. */
    struct mr__chunks *chunks;  /* chunk.c: NULL when the request asks for no chunking */
    int stage_rows[MR_CC_MAX_STAGES];   /* Score rows each profile stage sent (StageStats) */
    long prompt_tokens, total_tokens;
    int n_stats;
    Mrank__V1__StageStats stats[MR_CC_MAX_STAGES];
    char stat_names[MR_CC_MAX_STAGES][MR_CC_NAME];
    mr_trace_ctx stage_trace;   /* the running stage's span (fanout.c); its Score calls' parent */
} mr__req;

double mr__now_ms(void);

/* ---- request.c ---- */

/* Unpacks and validates body (len bytes) into r->in and resolves tier, profile and keep rules.
 * MR_EINVAL/MR_ERANGE with a message for the client. */
int mr__req_parse(mr__req *r, const uint8_t *body, size_t len, mr_err *err);
/* Per-candidate state and token estimates for an admitted request. MR_ENOMEM. */
int mr__req_start(mr__req *r, mr_err *err);
void mr__req_close(mr__req *r);
/* Estimated tokens of so many bytes of text (~3.5 bytes a token), until a stage reports exact
 * counts. */
double mr__est_tokens(size_t bytes);
/* Estimated query segment + suffix tokens of r's pairs (before exact counts). */
int mr__req_fixed_tokens(const mr__req *r);
/* Passage tokens a pair has room for under max_tokens_per_pair with n_fixed fixed tokens. */
int mr__req_passage_room(const mr__req *r, int n_fixed);
/* Estimated passage tokens of so many bytes, capped at the room (r->n_fixed). */
int mr__req_est_passage(const mr__req *r, size_t bytes);
/* The text a row scores: a document's, or a chunk's (chunk.c). */
const char *mr__req_text(const mr__req *r, int row);
/* The stage at profile position pos. */
const mr_cc_stage *mr__req_stage(const mr__req *r, int pos);
/* Milliseconds left: the smaller of the gRPC deadline and the tier budget. */
double mr__req_remaining_ms(const mr__req *r);
/* Records a stage's figures for the answer and the metrics. */
void mr__req_stat(mr__req *r, int pos, int in, int kept, double ms, int skipped);
/* Records stage pos as reached by no candidate (the stage before it kept none): in the answer
 * with candidates_in 0, not skipped (the answer is not degraded); not in the metrics, as it
 * did not run. */
void mr__req_stat_unreached(mr__req *r, int pos);

/* ---- sched.c ---- */

/* Creates the (idle) scheduler of c (c->sched); MR_ENOMEM. */
int mr__sched_new(mr_coord *c, mr_err *err);
/* Starts the executor threads (cfg.max_inflight) and the sweeper; MR_ENOMEM. */
int mr__sched_start(mr_coord *c, mr_err *err);
/* On the rpc queue thread, never blocks: queues r (heap-allocated, parsed and started; work
 * in token-layers of its first stage, fallback_ms the cost model's estimate of its service
 * (used until requests of its tier completed), first_ms the cost model's estimate of its
 * first stage: a degraded answer's) or refuses it at once. Takes r over (frees it once it is
 * answered). */
void mr__sched_submit(mr__req *r, double work, double fallback_ms, double first_ms);
/* Stops and joins the threads (after the rpc server drained), refuses anything still queued,
 * frees; NULL scheduler is a no-op. */
void mr__sched_free(mr_coord *c);

/* ---- profile_health.c ---- */

/* Registers every profile's health service "profile/<name>" NOT_SERVING. */
void mr__profile_health_init(mr_coord *c);
/* Sets each profile's health and impaired gauge from its pools' replicas (takes mr_coord.mu). */
void mr__profile_health_update(mr_coord *c);

/* ---- plan.c ---- */

/* Parallel calls a stage on pool p can count on. */
int mr__pool_parallelism(mr_coord *c, int p);
/* Whether profile stage pos may run on active[0..n_active) in the remaining budget; *est_ms
 * and *rem_ms receive the estimate and the budget left. A stage that may not run relaxes its
 * cost model (cascade.h). */
mr_stage_decision mr__plan_stage(mr__req *r, int pos, const int *active, int n_active,
                                 double *est_ms, double *rem_ms);
/* The first stage over every document of r: its token-layers (the request's work) and in
 * *est_ms the cost model's estimate of the whole profile, every stage counted as if it kept
 * every candidate (a conservative seed until real service times are known); in *first_ms the
 * stages up to the first neural one (the cheapest answer the pools give: a degraded one; a
 * profile's leading lexical stages alone are mr__rerank_serve_pool_free's answer). */
double mr__plan_request(mr__req *r, double *est_ms, double *first_ms);
/* One relax step of the cost model of profile stage pos (cascade.h: a stage not run for lack
 * of budget observes nothing). */
void mr__plan_relax(mr__req *r, int pos);
/* Number of Score calls for active[0..n_active) on the stage's pool. */
int mr__plan_calls(mr__req *r, const mr_cc_stage *st, const int *active, int n_active);
/* What the profile stages after pos need (ms, with the safety factor) if active[0..n_active)
 * ran them, shrunk by the keep rules' top_k and fraction (applied to documents: a chunked
 * request's rows at its first neural stage count as their documents, mr__chunk_docs): the
 * budget a stage's attempts leave alone. 0 when the tier allows degraded answers (the later
 * stages may be skipped). */
double mr__plan_rest_ms(mr__req *r, int pos, const int *active, int n_active);

/* ---- stages that continue (plan.c decides, fanout.c runs, rerank.c walks the cascade) ----
 * Consecutive profile stages pos and pos + 1 that can share one forward pass (plan.c)
 * may run as one Score call per group with exits [depth of pos, depth of pos + 1] and a prune
 * step at the shallower exit (cascade.h mr_cascade_fused_prune); the deeper stage's scores are
 * carried (mr__carry) until the cascade, having kept stage pos's survivors by the usual rule,
 * reaches stage pos + 1 (docs/cluster.md, "Stages that continue"). */

/* A fused pair's plan (mr__plan_fuse). */
typedef struct mr__fuse_plan {
    int n_calls;                /* Score calls, each one pass over its rows */
    double est_ms;              /* the cost model's estimate of the pair */
} mr__fuse_plan;

/* The deeper stage's scores of a fused pair, held until the cascade reaches that stage. */
typedef struct mr__carry {
    int pos;                    /* the profile stage position they belong to, -1: none */
    int n;                      /* rows allocated (the request's documents) */
    float *score;               /* (n) raw score at the deeper exit */
    int *depth, *tokens;        /* (n) exit reached, tokens of the pair */
    char *truncated, *have;     /* (n) have: the row reached the deeper exit */
    double ms;                  /* the deeper stage's share of the pair's wall time */
} mr__carry;

/* Whether stages pos and pos + 1 run fused over active[0..n_active): they can share one pass
 * (both neural, on one pool, the deeper one deeper, the same adapters in order, pooling and
 * ratio, and the deeper one's compress layers below the shallower depth exactly the
 * shallower one's), the profile's "fuse" is not "never", the cost model's estimate of the
 * pair is not above that of the two stages split (for "auto"; "always" skips this), the
 * pair's calls fit a worker batch and its estimate fits the remaining budget. Fills *fp. */
int mr__plan_fuse(mr__req *r, int pos, const int *active, int n_active, mr__fuse_plan *fp);
/* When c holds stage pos's scores for every active[0..n_active): writes them into r (as the
 * stage's own calls would: score, depth, truncation, tokens), *ms its share of the pair's
 * time, and returns 1; else 0 (the stage runs its own calls). c is emptied either way. */
int mr__carry_take(mr__req *r, mr__carry *c, int pos, const int *active, int n_active,
                   double *ms);
void mr__carry_free(mr__carry *c);

/* ---- replicas.c ---- */

/* How a failed Score status counts for the retry and ejection rules. */
mr_call_failure mr__call_failure(grpc_status_code st);
/* A replica of pool p for the next call: never `avoid` (-1: none) unless it is the only one;
 * round-robin over the replicas neither ejected nor full, else a full one, else the ejected
 * one whose ejection ends first. */
int mr__replica_pick(mr_coord *c, int p, int avoid);
/* Replicas of pool p other than `except` neither ejected nor full at now; 0 for a DNS pool
 * (its backends are not known). Caller holds mr_coord.mu. */
int mr__replica_n_free(mr_coord *c, int p, int except, double now);
/* Books a failed attempt on replica e (status st after wall_ms; est_ms its estimate): a full
 * mark for RESOURCE_EXHAUSTED, else the outlier state, and an ejection (counted, logged) when
 * that says so. */
void mr__replica_failed(mr_coord *c, int p, int e, grpc_status_code st, double wall_ms,
                        double est_ms);
/* Books an answer of replica e: its outlier state starts over. */
void mr__replica_answered(mr_coord *c, int p, int e);

/* ---- fanout.c ---- */

/* Scores active[0..n_active) with profile stage pos over the pool's replicas, retrying failed
 * calls on other replicas within the budget and the pool's retry budget, and folds the scores
 * into r. 0 on success; else *code/msg say why (DEADLINE_EXCEEDED when the budget ran out,
 * CANCELLED when the client went away; its calls in flight are cancelled then); r is unchanged
 * then. */
int mr__fanout_stage(mr__req *r, int pos, const int *active, int n_active,
                     grpc_status_code *code, char *msg, size_t cap);
/* The same for the fused pair pos, pos + 1 (plan fp): stage pos's scores into r, stage
 * pos + 1's into *carry (the rows that reached the deeper exit; carry->ms is the caller's to
 * set), *share_pos the shallower stage's share of the pair's token-layers (what the caller
 * splits the pair's time by). Counted in mrank_coord_fused_stages_total. */
int mr__fanout_fused(mr__req *r, int pos, const int *active, int n_active,
                     const mr__fuse_plan *fp, mr__carry *carry, double *share_pos,
                     grpc_status_code *code, char *msg, size_t cap);

/* ---- chunk.c ---- */

#define MR_CHUNK_MAX_CHUNKS 16  /* chunks per document, the bound of chunking.max_chunks */

typedef struct mr__chunks mr__chunks;

/* A chunk's bytes in its document's text. */
typedef struct mr__span {
    uint32_t start, len;
} mr__span;

/* Splits text[0..len) into at most max_chunks windows of whole whitespace-delimited words of
 * `window` estimated tokens (mr__est_tokens of each word and one space; at least one word,
 * cut at max_bytes on a UTF-8 boundary), a new one every `stride` tokens; spans into out (room
 * for max_chunks). Returns the count (>= 1: a text that fits one window, or has no word, is
 * one chunk, all of it); *cut = 1 when words after the last chunk are left out. */
int mr__chunk_split(const char *text, size_t len, int window, int stride, int max_chunks,
                    size_t max_bytes, mr__span *out, int *cut);
/* Validates r->in->chunking (MR_EINVAL/MR_ERANGE naming the field); no-op when absent/off. */
int mr__chunk_check(const mr__req *r, mr_err *err);
/* Splits r's documents (r->n, r->n_fixed set): r->chunks, and *rows += the chunk rows.
 * MR_ERANGE when the chunks outnumber limits.max_documents, MR_ENOMEM. No-op when off. */
int mr__chunk_start(mr__req *r, int *rows, mr_err *err);
/* Once the row arrays exist: each split document's row gets the estimate of all its chunks
 * (the first neural stage's cost) and truncated when words were left out. */
void mr__chunk_rows(mr__req *r);
/* The text of chunk row `row` (>= r->n). */
const char *mr__chunk_text(const mr__req *r, int row);
void mr__chunk_free(mr__req *r);
/* Profile stage pos (neural) over the documents active[0..n_active): mr__fanout_stage over
 * their rows (without chunking, the documents themselves; with it, every chunk at the first
 * neural stage, the best chunk after), the document taking its best chunk's result. Records
 * the rows in r->stage_rows[pos]. Same contract as mr__fanout_stage. */
int mr__chunk_stage(mr__req *r, int pos, const int *active, int n_active,
                    grpc_status_code *code, char *msg, size_t cap);
/* The documents that rows[0..n_rows) of profile stage pos stand for, the count the next
 * stage's keep rule bounds: at the first neural stage of a chunked request, the documents
 * whose chunks they are (each document's rows consecutive, as mr__chunk_stage lists them);
 * else n_rows. */
int mr__chunk_docs(const mr__req *r, int pos, const int *rows, int n_rows);
/* With chunking, the winning chunk of document d (index, byte offset and length): 1, or 0
 * when none (no chunking, or no neural stage scored d). */
int mr__chunk_result(const mr__req *r, int d, uint32_t *index, uint32_t *offset,
                     uint32_t *length);

/* ---- wire.c ---- */

/* A packed ScoreRequest for the stage's sub-architecture and the documents members[0..n) of
 * r (malloc'd into *buf), or MR_ENOMEM. */
int mr__wire_score(const mr__req *r, const mr_cc_stage *st, const int *members, int n,
                   uint8_t **buf, size_t *len, mr_err *err);
/* The same with exits [shallow, st's depth] and a prune step (NULL: none) at shallow: a fused
 * pair's call (st is the deeper stage). shallow 0: mr__wire_score. */
int mr__wire_score_fused(const mr__req *r, const mr_cc_stage *st, int shallow,
                         const mr_fused_prune *prune, const int *members, int n, uint8_t **buf,
                         size_t *len, mr_err *err);
/* The current merged ranking as a packed RerankResponse (malloc'd), or NULL on OOM. */
uint8_t *mr__wire_ranking(mr__req *r, int final, int degraded, size_t *len);
/* The packed Ranker InfoResponse (malloc'd), or NULL on OOM. */
uint8_t *mr__wire_info(mr_coord *c, size_t *len);

/* ---- lexical_stage.c ---- */

/* Loads the lexicon file of every lexical stage (MR_E* naming the config, stage and file). */
int mr__lexical_load(mr_coord *c, mr_err *err);
void mr__lexical_free(mr_coord *c);
/* Profile position of r's first neural stage (the first that tokenizes: exact token counts,
 * usage); n_stages when there is none. */
int mr__first_neural(const mr__req *r);
/* Scores active[0..n_active) with profile stage pos (lexical) into r; 0, or -1 with code/msg. */
int mr__lexical_stage(mr__req *r, int pos, const int *active, int n_active,
                      grpc_status_code *code, char *msg, size_t cap);

/* ---- fuse.c ---- */

/* A request's fusion state: NULL when the profile has no fusion (or out of memory: the answer
 * is then the merge rule's, unfused); the other calls accept NULL. */
typedef struct mr__fuse mr__fuse;
mr__fuse *mr__fuse_begin(const mr__req *r);
/* Records the raw scores stage pos gave active[0..n_active). */
void mr__fuse_record(mr__fuse *f, const mr__req *r, int pos, const int *active, int n_active);
/* Replaces the raw scores of the candidates of the deepest stage that ran by the fused ones.
 * -1 when out of memory (scores unchanged). */
int mr__fuse_finish(mr__fuse *f, mr__req *r);
void mr__fuse_free(mr__fuse *f);

/* ---- rerank.c ---- */

/* rpc.h inline handlers (completion-queue thread) of Rerank and RerankStream (user: the
 * mr_coord): parse, then mr__sched_submit or fail at once. */
void mr__on_rerank(mr_rpc_call *call, void *user);
void mr__on_rerank_stream(mr_rpc_call *call, void *user);
/* The arrival path shared by every front end (never blocks): body is a packed RerankRequest
 * that arrived at t0 (monotonic ms) for sink; parses and validates it, checks the API key's
 * tier, and submits it to the scheduler, or fails the sink at once. stream: partial rankings
 * through sink.write. */
void mr__rerank_arrive(mr_coord *c, mr__sink sink, double t0, const uint8_t *body, size_t len,
                       int stream);
/* Runs an admitted request to its answer (executor thread) and records its metrics; the
 * caller frees r. 1 when its first stage's Score calls went out, whatever the outcome (its time
 * is service time: a stage that ran out of budget says the cluster is slow), else 0. */
int mr__rerank_serve(mr__req *r);
/* Instead of refusing a request for time or load: when its tier allows degraded answers and
 * its profile starts with pool-free (lexical) stages followed by others, answers it from those
 * stages alone (degraded=true, the rest marked skipped; microseconds per candidate, on the
 * calling thread) and records its metrics: 1 (the caller frees r). 0 when it cannot (or the
 * client went away): the caller refuses r. */
int mr__rerank_serve_pool_free(mr__req *r);
/* The leading pool-free (lexical) stages of r's profile when its tier allows degraded answers
 * and the profile has stages after them (mr__rerank_serve_pool_free can answer r), else 0. */
int mr__rerank_pool_free(const mr__req *r);
/* Fails a request that never ran (code, msg; retry_ms > 0 adds the trailing metadata
 * "retry-after-ms") and records its metrics; the caller frees r. Never blocks. */
void mr__rerank_refuse(mr__req *r, grpc_status_code code, const char *msg, double retry_ms);

/* ---- auth.c ---- */

/* Loads security.api_keys when configured (checking its tiers). MR_E* naming the file. */
int mr__auth_new(mr_coord *c, mr_err *err);
void mr__auth_free(mr_coord *c);
/* 1 when the sink's client may go on (no keys configured, or a known key in its
 * "authorization" metadata/header); else 0 (counted; the caller answers UNAUTHENTICATED with
 * MR__AUTH_MISSING). count_ok: count an accepted call in the key's metrics. */
int mr__auth_check(mr_coord *c, const mr__sink *s, int count_ok);
#define MR__AUTH_MISSING "missing or unknown API key (send 'authorization: Bearer KEY')"
/* mr__auth_check for a gRPC call, failing it UNAUTHENTICATED when it returns 0. */
int mr__auth_call(mr_coord *c, mr_rpc_call *call, int count_ok);
/* 0 when the sink's key may use tier (index into cfg.tiers); else -1 with *code
 * (PERMISSION_DENIED) and msg for the client. Counts the call in the key's metrics. */
int mr__auth_tier(mr_coord *c, const mr__sink *s, int tier, grpc_status_code *code, char *msg,
                  size_t cap);

/* ---- http.c ---- */

/* Starts the HTTP/JSON front end on c->http_listen (no-op when ""): TLS with the public
 * port's certificate when security.tls is set. *port (may be NULL) receives the bound port.
 * MR_EIO when the address cannot be bound, MR_EUNSUPPORTED for an unusable TLS setup. */
int mr__http_start(mr_coord *c, int *port, mr_err *err);
/* New requests get 503; requests in flight see their sink cancelled after drain_ms. Returns
 * once no request is on its way into the scheduler (at once, arrival never blocks); no-op
 * when off. */
void mr__http_drain(mr_coord *c, int drain_ms);
/* Stops the daemon; every request must have been answered (the scheduler is freed). */
void mr__http_stop(mr_coord *c);

/* ---- calib.c ---- */

/* Loads <model>/calibration.json when cfg.model names a folder that has one (c->calib stays
 * NULL otherwise: identity, relevance = sigmoid(raw)). MR_EFORMAT naming the file. */
int mr__calib_load(mr_coord *c, mr_err *err);
void mr__calib_free(mr_coord *c);
/* calibration.json's text (name for messages) for the stages of cfg: *out (free()), or
 * MR_EFORMAT/MR_ENOMEM. */
int mr__calib_parse(struct mr__calib **out, const mr_coord_config *cfg, const char *name,
                    const char *json, mr_err *err);
/* sigmoid(a * raw + b) with the parameters of config stage index `stage` (identity a = 1,
 * b = 0 without any; k may be NULL); 0 for an unscored (NaN) document. */
float mr__calib_score(const struct mr__calib *k, int stage, float raw);
/* The reporting rule, down the ranking: min(own calibrated score, the score reported just
 * above it) (INFINITY above the first). */
float mr__calib_report(float calibrated, float above);

/* ---- redact.c ---- */

/* Replaces internal addresses in msg (a client-facing error, cap bytes) by pool names and
 * replica indexes, logging the original to stderr; 1 when something was replaced. */
int mr__redact(const mr_coord *c, char *msg, size_t cap);

/* ---- probe.c ---- */

/* Splits a gRPC dns target ("dns:///host:port", "dns://authority/host:port", "dns:host:port",
 * "[v6]:port" hosts; port 443 when absent, as gRPC) into host and port. MR_EINVAL. */
int mr__dns_split(const char *target, char *host, size_t hcap, char *port, size_t pcap,
                  mr_err *err);
/* Resolves host:port (getaddrinfo, TCP) and counts the distinct addresses into *n, with a
 * fingerprint of the set in *sig. A name with no address gives *n = 0 and returns 0; a
 * failure to ask (EAI_AGAIN, ...) returns MR_EIO. */
int mr__dns_count(const char *host, const char *port, int *n, uint64_t *sig, mr_err *err);

/* Every probe round first resolves each DNS pool's name: the count feeds the planner and
 * mrank_coord_pool_replicas; a changed set renews the pool's channel (rpc.h) so that gRPC
 * balances over the new addresses too. */
int mr__prober_start(mr_coord *c, mr_err *err);
/* Wakes and joins the prober, cancels the probes' calls in flight and waits for them to end;
 * no-op when it never started. */
void mr__prober_stop(mr_coord *c);

#endif
