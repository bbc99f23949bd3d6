/* coordinator.c: the Ranker service and the cascade over worker pools (see coordinator.h).
 *
 * Threads: the rpc layer's handler threads run one request each, blocking while their Score
 * calls are in flight (the calls themselves are asynchronous and complete on the channels'
 * polling threads, which only copy the response and signal). One prober thread polls Worker
 * Info. Lock order: coord.mu (endpoint state, cost models, inflight) is a leaf lock; a stage
 * batch's mu is never held while taking coord.mu. */
#define _GNU_SOURCE
#include "coordinator.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cascade.h"
#include "coord_metrics.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "rpc_status.h"

#define MR_COORD_VERSION "mrank-coordinator 0.1"
#define M_SCORE "/mrank.v1.Worker/Score"
#define M_WINFO "/mrank.v1.Worker/Info"
#define NO_BUDGET_TIMEOUT_MS 60000.0
#define DOWN_MS 1000.0          /* a replica that answered UNAVAILABLE is avoided this long */
#define DNS_PARALLEL 4          /* parallel calls assumed for a DNS pool (replicas unknown) */

typedef struct endpoint {
    char target[300];
    mr_rpc_channel *ch;
    /* under coord.mu */
    double down_until;          /* monotonic ms */
    int info_ok;
    int warmed;                 /* answered a warm-up Score for every stage of its pool */
    double ns_per_tl;
    int num_layers, max_batch_tokens;
} endpoint;

typedef struct pool_rt {
    int n_ep;
    endpoint *ep;
    atomic_uint rr;
} pool_rt;

struct mr_coord {
    mr_coord_config cfg;
    char listen[128];
    int metrics_port;
    mr_rpc_server *srv;
    mr_coord_metrics *metrics;
    pool_rt pools[MR_CC_MAX_POOLS];
    int max_priority;
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* wakes the prober at shutdown */
    mr_cost_model cost[MR_CC_MAX_STAGES];
    int inflight;
    int ready, stopping, prober_started, shut;
    char model[512];
    int untrained;
    pthread_t prober;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------------------------------------ */
/* replicas                                                                                   */

/* Picks a replica of pool p for call number k, avoiding `avoid` and replicas marked down.
 * The counter moves one step per call, so the calls of a stage land on consecutive replicas
 * (adding k as well sent both calls of a stage to the same one of two replicas). */
static int pick_endpoint(mr_coord *c, int p, unsigned k, int avoid) {
    pool_rt *pr = &c->pools[p];
    if (pr->n_ep == 1) return 0;
    unsigned base = atomic_fetch_add(&pr->rr, 1);
    double t = now_ms();
    int best = -1;
    double best_down = INFINITY;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < pr->n_ep; i++) {
        int e = (int)((base + (unsigned)i) % (unsigned)pr->n_ep);
        if (e == avoid) continue;
        if (pr->ep[e].down_until <= t) { best = e; break; }
        if (pr->ep[e].down_until < best_down) { best_down = pr->ep[e].down_until; best = e; }
    }
    pthread_mutex_unlock(&c->mu);
    return best >= 0 ? best : (avoid >= 0 ? avoid : 0);
}

static void mark_down(mr_coord *c, int p, int e) {
    pthread_mutex_lock(&c->mu);
    c->pools[p].ep[e].down_until = now_ms() + DOWN_MS;
    pthread_mutex_unlock(&c->mu);
}

static int pool_parallelism(const mr_coord *c, int p) {
    return *c->cfg.pools[p].dns ? DNS_PARALLEL : c->pools[p].n_ep;
}

/* ------------------------------------------------------------------------------------------ */
/* one stage: parallel Score calls with failover                                              */

typedef struct batch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
} batch;

typedef struct slot {
    batch *b;
    int *members;               /* request indices scored by this call */
    int n;
    uint8_t *req;
    size_t req_len;
    int ep, attempts;
    double t_start, wall_ms;
    grpc_status_code status;
    char msg[256];
    uint8_t *resp;
    size_t resp_len;
    double token_layers;
} slot;

static void on_score_done(void *user, grpc_status_code status, const char *msg,
                          const uint8_t *resp, size_t resp_len) {
    slot *s = user;
    s->status = status;
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "");
    s->wall_ms = now_ms() - s->t_start;
    free(s->resp);
    s->resp = NULL;
    s->resp_len = 0;
    if (status == GRPC_STATUS_OK && resp_len) {
        s->resp = malloc(resp_len);
        if (s->resp) {
            memcpy(s->resp, resp, resp_len);
            s->resp_len = resp_len;
        } else {
            s->status = GRPC_STATUS_RESOURCE_EXHAUSTED;
            snprintf(s->msg, sizeof s->msg, "coordinator: out of memory");
        }
    }
    pthread_mutex_lock(&s->b->mu);
    s->b->pending--;
    pthread_cond_signal(&s->b->cv);
    pthread_mutex_unlock(&s->b->mu);
}

/* Per-request state. */
typedef struct req {
    mr_coord *co;
    mr_rpc_call *call;
    Mrank__V1__RerankRequest *in;
    int tier, profile, n;
    mr_keep_rule keep[MR_CC_MAX_STAGES];
    double t0;
    int n_fixed;                /* estimated query + prompt tokens */
    int *stage;                 /* (n) deepest profile stage position that scored it, -1 none */
    float *score;               /* (n) raw score at that stage */
    int *depth;                 /* (n) */
    int *passage_tokens;        /* (n) estimate, exact after stage 0 */
    int *truncated;             /* (n) */
    long prompt_tokens, total_tokens;
    int n_stats;
    Mrank__V1__StageStats stats[MR_CC_MAX_STAGES];
    char stat_names[MR_CC_MAX_STAGES][MR_CC_NAME];
} req;

static double remaining_ms(const req *r) {
    double g = mr_rpc_call_remaining_ms(r->call);
    if (g >= MR_RPC_NO_DEADLINE_MS) g = INFINITY;
    return mr_cascade_remaining_ms(g, r->co->cfg.tiers[r->tier].budget_ms, now_ms() - r->t0);
}

static mr_cost_arch arch_of(const mr_cc_stage *st) {
    return (mr_cost_arch){st->depth, st->ratio, st->n_compress, st->compress_layers};
}

/* The wire form of a stage's sub-architecture; cl and ad are the caller's backing arrays. */
static void fill_subarch(Mrank__V1__SubArch *arch, const mr_cc_stage *st, uint32_t *cl,
                         char **ad) {
    arch->depth = (uint32_t)st->depth;
    arch->compress_ratio = (uint32_t)st->ratio;
    for (int i = 0; i < st->n_compress; i++) cl[i] = (uint32_t)st->compress_layers[i];
    arch->n_compress_layers = (size_t)st->n_compress;
    arch->compress_layers = cl;
    arch->pooling = (char *)st->pooling;
    for (int i = 0; i < st->n_adapters; i++) ad[i] = (char *)st->adapters[i];
    arch->n_adapters = (size_t)st->n_adapters;
    arch->adapters = ad;
}

static int pack_score(const req *r, const mr_cc_stage *st, slot *s) {
    Mrank__V1__ScoreRequest sr = MRANK__V1__SCORE_REQUEST__INIT;
    Mrank__V1__SubArch arch = MRANK__V1__SUB_ARCH__INIT;
    uint32_t cl[MR_CC_MAX_COMPRESS];
    char *ad[MR_CC_MAX_ADAPTERS];
    fill_subarch(&arch, st, cl, ad);
    sr.query = r->in->query;
    sr.arch = &arch;
    sr.max_len = (uint32_t)r->co->cfg.max_tokens_per_pair;
    sr.truncate = r->in->truncate;
    char **pass = malloc((size_t)s->n * sizeof *pass);
    if (!pass) return -1;
    for (int i = 0; i < s->n; i++) pass[i] = r->in->documents[s->members[i]]->text;
    sr.n_passages = (size_t)s->n;
    sr.passages = pass;
    s->req_len = mrank__v1__score_request__get_packed_size(&sr);
    s->req = malloc(s->req_len ? s->req_len : 1);
    if (s->req) mrank__v1__score_request__pack(&sr, s->req);
    free(pass);
    return s->req ? 0 : -1;
}

static int launch(req *r, int p, slot *s, double timeout_ms) {
    mr_coord *c = r->co;
    mr_rpc_opts o = {.timeout_ms = timeout_ms, .wait_for_ready = 0, .traceparent = NULL};
    s->t_start = now_ms();
    s->attempts++;
    pthread_mutex_lock(&s->b->mu);
    s->b->pending++;
    pthread_mutex_unlock(&s->b->mu);
    if (mr_rpc_unary_async(c->pools[p].ep[s->ep].ch, M_SCORE, s->req, s->req_len, &o,
                           on_score_done, s)) {
        pthread_mutex_lock(&s->b->mu);
        s->b->pending--;
        pthread_mutex_unlock(&s->b->mu);
        s->status = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(s->msg, sizeof s->msg, "coordinator: cannot start a Score call");
        return -1;
    }
    return 0;
}

static void wait_all(batch *b) {
    pthread_mutex_lock(&b->mu);
    while (b->pending > 0) pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
}

/* Folds the responses into the request state. */
static int absorb(req *r, int pos, const mr_cc_stage *st, slot *s, int n_slots, int first,
                  grpc_status_code *code, char *msg, size_t cap) {
    for (int k = 0; k < n_slots; k++) {
        Mrank__V1__ScoreResponse *resp =
            mrank__v1__score_response__unpack(NULL, s[k].resp_len, s[k].resp);
        if (!resp || resp->n_passages != (size_t)s[k].n) {
            if (resp) mrank__v1__score_response__free_unpacked(resp, NULL);
            *code = GRPC_STATUS_INTERNAL;
            snprintf(msg, cap, "stage '%s': malformed Score response from %s", st->name,
                     r->co->pools[st->pool].ep[s[k].ep].target);
            return -1;
        }
        for (int i = 0; i < s[k].n; i++) {
            const Mrank__V1__PassageScores *ps = resp->passages[i];
            int d = s[k].members[i];
            r->stage[d] = pos;
            r->score[d] = ps->n_scores ? ps->scores[ps->n_scores - 1] : NAN;
            r->depth[d] = ps->depth ? (int)ps->depth : st->depth;
            r->truncated[d] |= ps->truncated;
            if (ps->tokens) {
                if (first) {
                    r->prompt_tokens += ps->tokens;
                    int pt = (int)ps->tokens - r->n_fixed;
                    r->passage_tokens[d] = pt > 1 ? pt : 1;
                }
                r->total_tokens += ps->tokens;
            }
        }
        int si = (int)(st - r->co->cfg.stages);
        pthread_mutex_lock(&r->co->mu);
        mr_cost_model_observe(&r->co->cost[si], s[k].token_layers, resp->compute_ms,
                              s[k].wall_ms);
        double ns = r->co->cost[si].ns_per_tl;
        pthread_mutex_unlock(&r->co->mu);
        mr_coord_metrics_cost(r->co->metrics, si, ns);
        mrank__v1__score_response__free_unpacked(resp, NULL);
    }
    return 0;
}

static int retryable(grpc_status_code st) {
    return st == GRPC_STATUS_UNAVAILABLE || st == GRPC_STATUS_DEADLINE_EXCEEDED ||
           st == GRPC_STATUS_RESOURCE_EXHAUSTED || st == GRPC_STATUS_CANCELLED ||
           st == GRPC_STATUS_UNKNOWN || st == GRPC_STATUS_ABORTED;
}

/* Scores active[0..n_active) with profile stage pos. 0 on success; else *code/msg say why
 * (DEADLINE_EXCEEDED when the budget ran out). */
static int run_stage(req *r, int pos, const int *active, int n_active, double est_ms,
                     grpc_status_code *code, char *msg, size_t cap) {
    mr_coord *c = r->co;
    const mr_cc_stage *st = &c->cfg.stages[c->cfg.profiles[r->profile].stages[pos].stage];
    const mr_cc_pool *pc = &c->cfg.pools[st->pool];
    const pool_rt *prt = &c->pools[st->pool];
    mr_cost_arch arch = arch_of(st);
    long tokens = 0;
    for (int i = 0; i < n_active; i++) tokens += r->n_fixed + r->passage_tokens[active[i]];
    long max_call = pc->max_call_tokens;
    if (max_call <= 0) {
        pthread_mutex_lock(&c->mu);
        for (int e = 0; e < prt->n_ep; e++)
            if (prt->ep[e].info_ok && prt->ep[e].max_batch_tokens > 0 &&
                (max_call <= 0 || prt->ep[e].max_batch_tokens < max_call))
                max_call = prt->ep[e].max_batch_tokens;
        pthread_mutex_unlock(&c->mu);
    }
    int n_calls = mr_cascade_n_calls(n_active, tokens, pool_parallelism(c, st->pool), max_call,
                                     pc->min_per_call);
    batch b = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    slot *s = calloc((size_t)n_calls, sizeof *s);
    int *members = malloc((size_t)n_active * sizeof *members);
    int rc = -1;
    if (!s || !members) {
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, cap, "coordinator: out of memory");
        goto done;
    }
    /* Interleaved split: each call gets a similar mix of long and short candidates. */
    for (int k = 0, off = 0; k < n_calls; k++) {
        s[k].b = &b;
        s[k].members = members + off;
        for (int i = k; i < n_active; i += n_calls) {
            s[k].members[s[k].n++] = active[i];
            s[k].token_layers += mr_cascade_token_layers(r->n_fixed,
                                                         r->passage_tokens[active[i]], &arch);
        }
        off += s[k].n;
        if (pack_score(r, st, &s[k])) {
            *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            snprintf(msg, cap, "coordinator: out of memory");
            goto done;
        }
        s[k].ep = pick_endpoint(c, st->pool, (unsigned)k, -1);
        s[k].status = GRPC_STATUS_UNKNOWN;
    }
    /* A replica gets a bounded slice of the budget when another one could take over. */
    int can_failover = prt->n_ep > 1 || *pc->dns;
    int max_attempts = (prt->n_ep > 1 ? prt->n_ep : 2) + 2;
    for (int round = 0;; round++) {
        double rem = remaining_ms(r);
        if (!isfinite(rem)) rem = NO_BUDGET_TIMEOUT_MS;
        double t_call = rem;
        if (can_failover) {
            /* half the budget (at least 4x the estimate) so a retry still has time */
            double slice = rem / 2 > 4 * est_ms + 500 ? rem / 2 : 4 * est_ms + 500;
            if (slice < t_call) t_call = slice;
        }
        int launched = 0;
        for (int k = 0; k < n_calls; k++) {
            if (round > 0 && s[k].status == GRPC_STATUS_OK) continue;
            if (rem <= 1) break;
            if (launch(r, st->pool, &s[k], t_call) == 0) launched++;
        }
        if (launched) wait_all(&b);
        int failed = 0, fatal = -1;
        for (int k = 0; k < n_calls; k++) {
            if (s[k].status == GRPC_STATUS_OK) continue;
            if (getenv("MRANK_COORD_DEBUG"))
                fprintf(stderr, "mrank coordinator: stage '%s' call %d on %s: status %d after "
                        "%.1f ms (timeout %.0f ms): %s\n", st->name, k,
                        prt->ep[s[k].ep].target, (int)s[k].status, s[k].wall_ms, t_call,
                        s[k].msg);
            failed++;
            if (!retryable(s[k].status) && fatal < 0) fatal = k;
        }
        if (!failed) break;
        if (fatal >= 0) {
            *code = s[fatal].status;
            snprintf(msg, cap, "stage '%s' (%.100s): %.200s", st->name,
                     prt->ep[s[fatal].ep].target, s[fatal].msg);
            goto done;
        }
        if (mr_rpc_call_cancelled(r->call)) {
            *code = GRPC_STATUS_CANCELLED;
            snprintf(msg, cap, "cancelled by the client");
            goto done;
        }
        rem = remaining_ms(r);
        int k_failed = -1;
        for (int k = 0; k < n_calls; k++)
            if (s[k].status != GRPC_STATUS_OK) {
                k_failed = k;
                if (s[k].status == GRPC_STATUS_UNAVAILABLE && prt->n_ep > 1)
                    mark_down(c, st->pool, s[k].ep);
            }
        if (rem <= 1 || s[k_failed].attempts >= max_attempts) {
            *code = rem <= 1 ? GRPC_STATUS_DEADLINE_EXCEEDED : s[k_failed].status;
            snprintf(msg, cap, "stage '%s': %s after %d attempts (%s)", st->name,
                     rem <= 1 ? "deadline budget spent" : "no replica answered",
                     s[k_failed].attempts, s[k_failed].msg);
            goto done;
        }
        for (int k = 0; k < n_calls; k++)
            if (s[k].status != GRPC_STATUS_OK) {
                s[k].ep = pick_endpoint(c, st->pool, (unsigned)k, s[k].ep);
                mr_coord_metrics_retry(c->metrics, st->pool);
            }
    }
    rc = absorb(r, pos, st, s, n_calls, pos == 0, code, msg, cap);
done:
    for (int k = 0; s && k < n_calls; k++) {
        free(s[k].req);
        free(s[k].resp);
    }
    free(s);
    free(members);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* request handling                                                                           */

static void req_free(req *r) {
    free(r->stage);
    free(r->score);
    free(r->depth);
    free(r->passage_tokens);
    free(r->truncated);
    if (r->in) mrank__v1__rerank_request__free_unpacked(r->in, NULL);
}

/* Validates the request and resolves tier, profile and keep rules. MR_EINVAL/MR_ERANGE with a
 * message for the client. */
static int req_validate(req *r, size_t bytes, mr_err *err) {
    const mr_coord_config *cfg = &r->co->cfg;
    const Mrank__V1__RerankRequest *in = r->in;
    if (bytes > (size_t)cfg->max_request_bytes)
        return mr_err_set(err, MR_ERANGE, "request is %zu bytes, the limit is %d "
                          "(Info.max_request_bytes)", bytes, cfg->max_request_bytes);
    if (!in->query || !*in->query) return mr_err_set(err, MR_EINVAL, "query is empty");
    if (in->n_documents == 0) return mr_err_set(err, MR_EINVAL, "documents is empty");
    if (in->n_documents > (size_t)cfg->max_documents)
        return mr_err_set(err, MR_ERANGE, "%zu documents, the limit is %d (Info.max_documents)",
                          in->n_documents, cfg->max_documents);
    if (in->truncate != MRANK__V1__TRUNCATE__TRUNCATE_END &&
        in->truncate != MRANK__V1__TRUNCATE__TRUNCATE_NONE)
        return mr_err_set(err, MR_EINVAL, "truncate: unknown value %d", (int)in->truncate);
    r->tier = cfg->default_tier;
    if (in->tier && *in->tier && (r->tier = mr_coord_config_tier(cfg, in->tier)) < 0) {
        char known[256] = "";
        for (int i = 0; i < cfg->n_tiers; i++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "",
                     cfg->tiers[i].name);
        return mr_err_set(err, MR_EINVAL, "tier '%.64s' is unknown (known: %s)", in->tier,
                          known);
    }
    r->profile = cfg->tiers[r->tier].profile;
    if (in->profile && *in->profile &&
        (r->profile = mr_coord_config_profile(cfg, in->profile)) < 0) {
        char known[256] = "";
        for (int i = 0; i < cfg->n_profiles; i++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "",
                     cfg->profiles[i].name);
        return mr_err_set(err, MR_EINVAL, "profile '%.64s' is unknown (known: %s)",
                          in->profile, known);
    }
    const mr_cc_profile *pr = &cfg->profiles[r->profile];
    for (int i = 0; i < pr->n_stages; i++) r->keep[i] = pr->stages[i].keep;
    for (size_t i = 0; i < in->n_overrides; i++) {
        const Mrank__V1__StageOverride *ov = in->overrides[i];
        char what[64];
        snprintf(what, sizeof what, "overrides[%zu]", i);
        if (ov->stage >= (uint32_t)pr->n_stages)
            return mr_err_set(err, MR_ERANGE, "%s.stage: %u is not a stage of profile '%s' "
                              "(%d stages)", what, ov->stage, pr->name, pr->n_stages);
        if (ov->keep_top_k > (uint32_t)cfg->max_documents)
            return mr_err_set(err, MR_ERANGE, "%s.keep_top_k: %u is above the bound %d", what,
                              ov->keep_top_k, pr->stages[ov->stage].bounds.max_top_k);
        mr_keep_override k = {(int)ov->keep_top_k, ov->keep_fraction, ov->has_min_score,
                              ov->min_score};
        int rc = mr_cascade_override(&r->keep[ov->stage], &pr->stages[ov->stage].bounds, &k,
                                     what, err);
        if (rc) return rc;
    }
    return 0;
}

static void add_stat(req *r, int pos, int in, int kept, double ms, int skipped) {
    const mr_coord_config *cfg = &r->co->cfg;
    int si = cfg->profiles[r->profile].stages[pos].stage;
    Mrank__V1__StageStats *s = &r->stats[r->n_stats];
    mrank__v1__stage_stats__init(s);
    snprintf(r->stat_names[r->n_stats], MR_CC_NAME, "%s", cfg->stages[si].name);
    s->name = r->stat_names[r->n_stats];
    s->candidates_in = (uint32_t)in;
    s->kept = (uint32_t)kept;
    s->ms = ms;
    s->skipped = skipped;
    r->n_stats++;
    mr_coord_metrics_stage(r->co->metrics, si, r->tier, in, kept, pos > 0 && !skipped, skipped,
                           ms);
}

/* Packs the current merged ranking; returns a malloc'd buffer (NULL on OOM). */
static uint8_t *pack_ranking(req *r, int final, int degraded, size_t *len) {
    const mr_coord_config *cfg = &r->co->cfg;
    const mr_cc_profile *pr = &cfg->profiles[r->profile];
    mr_cand *cand = malloc((size_t)r->n * sizeof *cand);
    int n_out = r->n;
    if (r->in->top_n && r->in->top_n < (uint32_t)n_out) n_out = (int)r->in->top_n;
    Mrank__V1__RerankResult *res = calloc((size_t)n_out, sizeof *res);
    Mrank__V1__RerankResult **resp_res = calloc((size_t)n_out, sizeof *resp_res);
    Mrank__V1__Document *docs = calloc((size_t)n_out, sizeof *docs);
    Mrank__V1__StageStats *stp[MR_CC_MAX_STAGES];
    uint8_t *buf = NULL;
    if (!cand || !res || !resp_res || !docs) goto done;
    for (int i = 0; i < r->n; i++) cand[i] = (mr_cand){i, r->stage[i], r->score[i]};
    mr_cascade_sort(cand, r->n);
    for (int k = 0; k < n_out; k++) {
        Mrank__V1__RerankResult *x = &res[k];
        int d = cand[k].index;
        mrank__v1__rerank_result__init(x);
        x->index = (uint32_t)d;
        x->id = r->in->documents[d]->id;
        x->raw_score = cand[k].score;
        x->relevance_score = mr_cascade_sigmoid(cand[k].score);
        if (cand[k].stage >= 0) {
            const mr_cc_stage *st = &cfg->stages[pr->stages[cand[k].stage].stage];
            x->stage = (uint32_t)cand[k].stage;
            x->depth = (uint32_t)r->depth[d];
            x->compress_ratio = (uint32_t)st->ratio;
        }
        x->truncated = r->truncated[d];
        if (r->in->return_documents) {
            mrank__v1__document__init(&docs[k]);
            docs[k].text = r->in->documents[d]->text;
            docs[k].id = r->in->documents[d]->id;
            x->document = &docs[k];
        }
        resp_res[k] = x;
    }
    Mrank__V1__RerankResponse out = MRANK__V1__RERANK_RESPONSE__INIT;
    Mrank__V1__Usage usage = MRANK__V1__USAGE__INIT;
    usage.prompt_tokens = (uint32_t)r->prompt_tokens;
    usage.total_tokens = (uint32_t)r->total_tokens;
    for (int i = 0; i < r->n_stats; i++) stp[i] = &r->stats[i];
    out.n_results = (size_t)n_out;
    out.results = resp_res;
    out.degraded = degraded;
    out.n_stages = (size_t)r->n_stats;
    out.stages = stp;
    out.usage = &usage;
    out.total_ms = now_ms() - r->t0;
    out.request_id = r->in->request_id;
    out.final = final;
    out.profile = (char *)pr->name;
    out.tier = (char *)cfg->tiers[r->tier].name;
    *len = mrank__v1__rerank_response__get_packed_size(&out);
    buf = malloc(*len ? *len : 1);
    if (buf) mrank__v1__rerank_response__pack(&out, buf);
done:
    free(cand);
    free(res);
    free(resp_res);
    free(docs);
    return buf;
}

/* Admission by tier priority: the most important tiers may fill every slot, the others 3/4. */
static int admit(mr_coord *c, int tier) {
    int limit = c->cfg.max_inflight;
    if (c->cfg.tiers[tier].priority < c->max_priority) limit = limit * 3 / 4 > 0 ? limit * 3 / 4 : 1;
    pthread_mutex_lock(&c->mu);
    int ok = c->inflight < limit;
    if (ok) c->inflight++;
    pthread_mutex_unlock(&c->mu);
    if (ok) mr_coord_metrics_inflight(c->metrics, 1);
    return ok;
}

static void release(mr_coord *c) {
    pthread_mutex_lock(&c->mu);
    c->inflight--;
    pthread_mutex_unlock(&c->mu);
    mr_coord_metrics_inflight(c->metrics, -1);
}

static mr_outcome outcome_of(grpc_status_code st) {
    switch (st) {
    case GRPC_STATUS_OK: return MR_OUT_OK;
    case GRPC_STATUS_INVALID_ARGUMENT: return MR_OUT_INVALID;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return MR_OUT_DEADLINE;
    case GRPC_STATUS_UNAVAILABLE: return MR_OUT_UNAVAILABLE;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return MR_OUT_REJECTED;
    default: return MR_OUT_ERROR;
    }
}

static void serve_rerank(mr_rpc_call *call, mr_coord *c, int stream) {
    req r = {.co = c, .call = call, .t0 = now_ms()};
    size_t len;
    const uint8_t *body = mr_rpc_call_request(call, &len);
    mr_err err = {0};
    grpc_status_code code = GRPC_STATUS_OK;
    char msg[400] = "";
    int admitted = 0, degraded = 0, miss = 0, *active = NULL;
    mr_cand *cand = NULL;
    if (!(r.in = mrank__v1__rerank_request__unpack(NULL, len, body))) {
        code = GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(msg, sizeof msg, "malformed RerankRequest");
        goto fail;
    }
    if (req_validate(&r, len, &err)) {
        code = mr_rpc_status_of(err.code);
        snprintf(msg, sizeof msg, "%s", err.msg);
        goto fail;
    }
    if (!(admitted = admit(c, r.tier))) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, sizeof msg, "coordinator busy: %d requests in flight (tier '%s')",
                 c->cfg.max_inflight, c->cfg.tiers[r.tier].name);
        goto fail;
    }
    r.n = (int)r.in->n_documents;
    r.stage = malloc((size_t)r.n * sizeof *r.stage);
    r.score = malloc((size_t)r.n * sizeof *r.score);
    r.depth = calloc((size_t)r.n, sizeof *r.depth);
    r.passage_tokens = malloc((size_t)r.n * sizeof *r.passage_tokens);
    r.truncated = calloc((size_t)r.n, sizeof *r.truncated);
    active = malloc((size_t)r.n * sizeof *active);
    cand = malloc((size_t)r.n * sizeof *cand);
    if (!r.stage || !r.score || !r.depth || !r.passage_tokens || !r.truncated || !active ||
        !cand) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, sizeof msg, "coordinator: out of memory");
        goto fail;
    }
    /* Token estimates until stage 0 reports exact counts: ~3.5 bytes per token, prompt ~16. */
    int maxp = c->cfg.max_tokens_per_pair;
    r.n_fixed = (int)(strlen(r.in->query) / 3.5) + 20;
    if (r.n_fixed > maxp * 3 / 4 + 20) r.n_fixed = maxp * 3 / 4 + 20;
    for (int i = 0; i < r.n; i++) {
        r.stage[i] = -1;
        r.score[i] = NAN;
        long pt = (long)(strlen(r.in->documents[i]->text) / 3.5) + 3;
        long cap = maxp - (r.n_fixed - 16) > 1 ? maxp - (r.n_fixed - 16) : 1;
        r.passage_tokens[i] = (int)(pt < cap ? pt : cap);
        active[i] = i;
    }
    const mr_cc_profile *pr = &c->cfg.profiles[r.profile];
    const mr_cc_tier *tier = &c->cfg.tiers[r.tier];
    int n_active = r.n;
    for (int pos = 0; pos < pr->n_stages && n_active > 0; pos++) {
        int si = pr->stages[pos].stage;
        const mr_cc_stage *st = &c->cfg.stages[si];
        if (mr_rpc_call_cancelled(call)) {
            code = GRPC_STATUS_CANCELLED;
            snprintf(msg, sizeof msg, "cancelled by the client");
            goto fail;
        }
        mr_cost_arch arch = arch_of(st);
        double tl = 0;
        for (int i = 0; i < n_active; i++)
            tl += mr_cascade_token_layers(r.n_fixed, r.passage_tokens[active[i]], &arch);
        pthread_mutex_lock(&c->mu);
        double est = mr_cost_model_estimate_ms(&c->cost[si], tl, pool_parallelism(c, st->pool));
        pthread_mutex_unlock(&c->mu);
        double rem = remaining_ms(&r);
        mr_stage_decision dec =
            mr_cascade_decide(pos, est, rem, c->cfg.safety, tier->allow_degraded);
        if (dec != MR_STAGE_RUN) {
            miss = 1;
            pthread_mutex_lock(&c->mu);
            mr_cost_model_relax(&c->cost[si]);
            pthread_mutex_unlock(&c->mu);
            if (dec == MR_STAGE_FAIL) {
                code = GRPC_STATUS_DEADLINE_EXCEEDED;
                snprintf(msg, sizeof msg, "stage '%s' needs about %.1f ms, %.1f ms of the budget "
                         "left%s", st->name, est, rem > 0 ? rem : 0.0,
                         pos > 0 ? " (tier does not allow degraded answers)" : "");
                goto fail;
            }
            degraded = 1;
            for (int q = pos; q < pr->n_stages; q++)
                add_stat(&r, q, q == pos ? n_active : 0, 0, 0, 1);
            break;
        }
        double t_stage = now_ms();
        if (run_stage(&r, pos, active, n_active, est, &code, msg, sizeof msg)) {
            if (pos > 0 && tier->allow_degraded &&
                (code == GRPC_STATUS_DEADLINE_EXCEEDED || code == GRPC_STATUS_UNAVAILABLE)) {
                /* the ranking of the previous stages stands: candidates of this stage keep
                 * their earlier scores (run_stage only writes on success) */
                miss |= code == GRPC_STATUS_DEADLINE_EXCEEDED;
                degraded = 1;
                code = GRPC_STATUS_OK;
                for (int q = pos; q < pr->n_stages; q++)
                    add_stat(&r, q, q == pos ? n_active : 0, 0, q == pos ? now_ms() - t_stage : 0,
                             1);
                break;
            }
            miss |= code == GRPC_STATUS_DEADLINE_EXCEEDED;
            goto fail;
        }
        double ms = now_ms() - t_stage;
        int kept = n_active;
        if (pos + 1 < pr->n_stages) {
            for (int i = 0; i < n_active; i++)
                cand[i] = (mr_cand){active[i], pos, r.score[active[i]]};
            kept = mr_cascade_select(cand, n_active, &r.keep[pos]);
            for (int i = 0; i < kept; i++) active[i] = cand[i].index;
        }
        add_stat(&r, pos, n_active, kept, ms, 0);
        n_active = kept;
        if (stream && pos + 1 < pr->n_stages) {
            size_t blen;
            uint8_t *buf = pack_ranking(&r, 0, 0, &blen);
            if (buf) {
                int wrc = mr_rpc_call_write(call, buf, blen);
                free(buf);
                if (wrc) {
                    code = GRPC_STATUS_CANCELLED;
                    snprintf(msg, sizeof msg, "client went away");
                    goto fail;
                }
            }
        }
    }
    size_t blen;
    uint8_t *buf = pack_ranking(&r, 1, degraded, &blen);
    if (!buf) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, sizeof msg, "coordinator: out of memory");
        goto fail;
    }
    mr_rpc_call_finish(call, buf, blen);
    free(buf);
    mr_coord_metrics_request(c->metrics, r.tier, degraded ? MR_OUT_DEGRADED : MR_OUT_OK, miss,
                             now_ms() - r.t0);
    goto done;
fail:
    mr_rpc_call_fail(call, code, msg);
    if (r.in) mr_coord_metrics_request(c->metrics, r.tier, outcome_of(code), miss,
                                       now_ms() - r.t0);
done:
    if (admitted) release(c);
    free(active);
    free(cand);
    req_free(&r);
}

static void on_rerank(mr_rpc_call *call, void *user) { serve_rerank(call, user, 0); }
static void on_rerank_stream(mr_rpc_call *call, void *user) { serve_rerank(call, user, 1); }

static void on_info(mr_rpc_call *call, void *user) {
    mr_coord *c = user;
    const mr_coord_config *cfg = &c->cfg;
    Mrank__V1__InfoResponse out = MRANK__V1__INFO_RESPONSE__INIT;
    Mrank__V1__StageInfo si[MR_CC_MAX_STAGES], *sip[MR_CC_MAX_STAGES];
    Mrank__V1__SubArch sa[MR_CC_MAX_STAGES];
    uint32_t cl[MR_CC_MAX_STAGES][MR_CC_MAX_COMPRESS];
    char *ad[MR_CC_MAX_STAGES][MR_CC_MAX_ADAPTERS];
    Mrank__V1__ProfileInfo pi[MR_CC_MAX_PROFILES], *pip[MR_CC_MAX_PROFILES];
    char *pst[MR_CC_MAX_PROFILES][MR_CC_MAX_STAGES];
    char *tiers[MR_CC_MAX_TIERS];
    char model[512];
    pthread_mutex_lock(&c->mu);
    snprintf(model, sizeof model, "%s", *c->model ? c->model : cfg->model);
    out.untrained = c->untrained;
    pthread_mutex_unlock(&c->mu);
    out.version = MR_COORD_VERSION;
    out.model = model;
    out.dtype = "";
    out.max_documents = (uint32_t)cfg->max_documents;
    out.max_tokens_per_pair = (uint32_t)cfg->max_tokens_per_pair;
    out.max_request_bytes = (uint32_t)cfg->max_request_bytes;
    for (int i = 0; i < cfg->n_stages; i++) {
        const mr_cc_stage *st = &cfg->stages[i];
        mrank__v1__stage_info__init(&si[i]);
        mrank__v1__sub_arch__init(&sa[i]);
        si[i].name = (char *)st->name;
        si[i].pool = (char *)cfg->pools[st->pool].name;
        sa[i].depth = (uint32_t)st->depth;
        sa[i].compress_ratio = (uint32_t)st->ratio;
        for (int k = 0; k < st->n_compress; k++) cl[i][k] = (uint32_t)st->compress_layers[k];
        sa[i].n_compress_layers = (size_t)st->n_compress;
        sa[i].compress_layers = cl[i];
        sa[i].pooling = (char *)st->pooling;
        for (int k = 0; k < st->n_adapters; k++) ad[i][k] = (char *)st->adapters[k];
        sa[i].n_adapters = (size_t)st->n_adapters;
        sa[i].adapters = ad[i];
        si[i].arch = &sa[i];
        sip[i] = &si[i];
    }
    out.n_stages = (size_t)cfg->n_stages;
    out.stages = sip;
    for (int i = 0; i < cfg->n_profiles; i++) {
        mrank__v1__profile_info__init(&pi[i]);
        pi[i].name = (char *)cfg->profiles[i].name;
        for (int k = 0; k < cfg->profiles[i].n_stages; k++)
            pst[i][k] = (char *)cfg->stages[cfg->profiles[i].stages[k].stage].name;
        pi[i].n_stages = (size_t)cfg->profiles[i].n_stages;
        pi[i].stages = pst[i];
        pip[i] = &pi[i];
    }
    out.n_profiles = (size_t)cfg->n_profiles;
    out.profiles = pip;
    for (int i = 0; i < cfg->n_tiers; i++) tiers[i] = (char *)cfg->tiers[i].name;
    out.n_tiers = (size_t)cfg->n_tiers;
    out.tiers = tiers;
    size_t len = mrank__v1__info_response__get_packed_size(&out);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        mr_rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    mrank__v1__info_response__pack(&out, buf);
    mr_rpc_call_finish(call, buf, len);
    free(buf);
}

/* ------------------------------------------------------------------------------------------ */
/* prober: Worker Info of every replica, health                                                */

/* Sends two small Score calls per stage of pool p to endpoint e: the first pays the worker's
 * lazy start-up (kernels, buffers) before a client does, the second seeds the stage's cost
 * model with a measured speed. 0 when every call succeeded. */
static int warm_up(mr_coord *c, int p, int e) {
    static char *const passages[] = {
        "Warm-up passage one: the coordinator checks this replica before serving.",
        "Warm-up passage two, a little longer than the first, so rows differ in length.",
        "Three.", "Warm-up passage four closes the batch."};
    for (int s = 0; s < c->cfg.n_stages; s++) {
        const mr_cc_stage *st = &c->cfg.stages[s];
        if (st->pool != p) continue;
        Mrank__V1__ScoreRequest sr = MRANK__V1__SCORE_REQUEST__INIT;
        Mrank__V1__SubArch arch = MRANK__V1__SUB_ARCH__INIT;
        uint32_t cl[MR_CC_MAX_COMPRESS];
        char *ad[MR_CC_MAX_ADAPTERS];
        fill_subarch(&arch, st, cl, ad);
        sr.query = "what does the warm-up check?";
        sr.arch = &arch;
        sr.n_passages = 4;
        sr.passages = (char **)passages;
        uint8_t buf[2048];
        size_t len = mrank__v1__score_request__get_packed_size(&sr);
        if (len > sizeof buf) return -1;
        mrank__v1__score_request__pack(&sr, buf);
        for (int round = 0; round < 2; round++) {
            uint8_t *resp = NULL;
            size_t rlen = 0;
            grpc_status_code code;
            char msg[256];
            double t0 = now_ms();
            if (mr_rpc_unary(c->pools[p].ep[e].ch, M_SCORE, buf, len, 60000, &resp, &rlen, &code,
                             msg, sizeof msg)) {
                fprintf(stderr, "mrank coordinator: warm-up of stage '%s' on %s: %s\n", st->name,
                        c->pools[p].ep[e].target, msg);
                return -1;
            }
            double wall = now_ms() - t0;
            Mrank__V1__ScoreResponse *r = mrank__v1__score_response__unpack(NULL, rlen, resp);
            free(resp);
            if (!r) return -1;
            if (round == 1) {
                mr_cost_arch a = arch_of(st);
                double tl = 0;
                for (size_t i = 0; i < r->n_passages; i++) {
                    int tok = (int)r->passages[i]->tokens, fixed = tok > 20 ? tok - 16 : tok;
                    tl += mr_cascade_token_layers(fixed, tok - fixed, &a);
                }
                pthread_mutex_lock(&c->mu);
                if (c->cost[s].n_obs == 0 && tl > 0 && r->compute_ms > 0) {
                    c->cost[s].ns_per_tl = r->compute_ms * 1e6 / tl;
                    c->cost[s].overhead_ms = wall > r->compute_ms ? wall - r->compute_ms : 0;
                    c->cost[s].n_obs = 1;
                }
                pthread_mutex_unlock(&c->mu);
            }
            mrank__v1__score_response__free_unpacked(r, NULL);
        }
    }
    return 0;
}

/* One replica's probe: Worker Info, then the warm-up until it succeeds once. */
typedef struct probe_job {
    mr_coord *c;
    int p, e;
    pthread_t th;
    int started;
} probe_job;

static void *probe_endpoint(void *arg) {
    probe_job *j = arg;
    mr_coord *c = j->c;
    pool_rt *pr = &c->pools[j->p];
    endpoint *ep = &pr->ep[j->e];
    uint8_t *resp = NULL;
    size_t rlen = 0;
    grpc_status_code st;
    char msg[128];
    int rc = mr_rpc_unary(ep->ch, M_WINFO, NULL, 0, 1000, &resp, &rlen, &st, msg, sizeof msg);
    Mrank__V1__WorkerInfoResponse *wi =
        rc ? NULL : mrank__v1__worker_info_response__unpack(NULL, rlen, resp);
    free(resp);
    pthread_mutex_lock(&c->mu);
    int warmed = wi ? ep->warmed : 0;
    pthread_mutex_unlock(&c->mu);
    if (wi && !warmed) warmed = warm_up(c, j->p, j->e) == 0;
    pthread_mutex_lock(&c->mu);
    ep->info_ok = wi != NULL;
    ep->warmed = warmed;
    if (wi) {
        ep->ns_per_tl = wi->ns_per_token_layer;
        ep->num_layers = (int)wi->num_layers;
        ep->max_batch_tokens = (int)wi->max_batch_tokens;
        if (!*c->model && wi->model) snprintf(c->model, sizeof c->model, "%s", wi->model);
        c->untrained = wi->untrained;
    }
    pthread_mutex_unlock(&c->mu);
    if (wi) {
        for (int s = 0; s < c->cfg.n_stages; s++)
            if (c->cfg.stages[s].pool == j->p && wi->num_layers &&
                (uint32_t)c->cfg.stages[s].depth > wi->num_layers && !c->ready)
                fprintf(stderr, "mrank coordinator: %s: stages[%d] '%s': depth %d > the %u "
                        "layers of the model at %s\n", c->cfg.path, s, c->cfg.stages[s].name,
                        c->cfg.stages[s].depth, wi->num_layers, ep->target);
        mrank__v1__worker_info_response__free_unpacked(wi, NULL);
    }
    return NULL;
}

/* Probes every replica in parallel, seeds cost models from Worker Info until observations
 * exist, and sets health: SERVING iff every pool has a replica that answered and warmed up. */
static void probe_once(mr_coord *c) {
    probe_job jobs[MR_CC_MAX_POOLS * MR_CC_MAX_ADDRS];
    int n = 0;
    for (int p = 0; p < c->cfg.n_pools; p++)
        for (int e = 0; e < c->pools[p].n_ep; e++) {
            jobs[n] = (probe_job){c, p, e, 0, 0};
            jobs[n].started = pthread_create(&jobs[n].th, NULL, probe_endpoint, &jobs[n]) == 0;
            if (!jobs[n].started) probe_endpoint(&jobs[n]);
            n++;
        }
    for (int i = 0; i < n; i++)
        if (jobs[i].started) pthread_join(jobs[i].th, NULL);
    int all_ok = 1;
    pthread_mutex_lock(&c->mu);
    for (int p = 0; p < c->cfg.n_pools; p++) {
        pool_rt *pr = &c->pools[p];
        int any = 0, ns_n = 0;
        double ns_sum = 0;
        for (int e = 0; e < pr->n_ep; e++) {
            if (pr->ep[e].info_ok && pr->ep[e].warmed) any = 1;
            if (pr->ep[e].info_ok && pr->ep[e].ns_per_tl > 0) {
                ns_sum += pr->ep[e].ns_per_tl;
                ns_n++;
            }
        }
        if (ns_n)
            for (int s = 0; s < c->cfg.n_stages; s++)
                if (c->cfg.stages[s].pool == p && c->cost[s].n_obs == 0)
                    c->cost[s].ns_per_tl = ns_sum / ns_n;
        all_ok &= any;
    }
    int was = c->ready, stopping = c->stopping;
    c->ready = all_ok;
    pthread_mutex_unlock(&c->mu);
    if (!stopping && was != all_ok) {
        mr_rpc_server_set_health(c->srv, "", all_ok);
        mr_rpc_server_set_health(c->srv, "mrank.v1.Ranker", all_ok);
        fprintf(stderr, "mrank coordinator: %s\n",
                all_ok ? "every pool answered: SERVING" : "a pool has no live replica: NOT_SERVING");
    }
}

static void *prober_main(void *arg) {
    mr_coord *c = arg;
    for (;;) {
        probe_once(c);
        pthread_mutex_lock(&c->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long step_ms = c->ready ? 2000 : 200;
        ts.tv_nsec += step_ms % 1000 * 1000000L;
        ts.tv_sec += step_ms / 1000 + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        while (!c->stopping && pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0) {}
        int stop = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (stop) return NULL;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* lifecycle                                                                                  */

int mr_coord_new(mr_coord **out, const mr_coord_config *cfg, const char *listen,
                 int metrics_port, mr_err *err) {
    mr_coord *c = calloc(1, sizeof *c);
    int rc;
    if (!c) return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    c->cfg = *cfg;
    snprintf(c->listen, sizeof c->listen, "%s", listen ? listen : cfg->listen);
    c->metrics_port = metrics_port;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    for (int t = 0; t < cfg->n_tiers; t++)
        if (cfg->tiers[t].priority > c->max_priority) c->max_priority = cfg->tiers[t].priority;
    for (int s = 0; s < cfg->n_stages; s++)
        mr_cost_model_init(&c->cost[s], 0, 0.2, cfg->call_overhead_ms);
    for (int p = 0; p < cfg->n_pools; p++) {
        const mr_cc_pool *pc = &cfg->pools[p];
        pool_rt *pr = &c->pools[p];
        pr->n_ep = *pc->dns ? 1 : pc->n_addrs;
        if (!(pr->ep = calloc((size_t)pr->n_ep, sizeof *pr->ep))) {
            rc = mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
            goto fail;
        }
        for (int e = 0; e < pr->n_ep; e++) {
            snprintf(pr->ep[e].target, sizeof pr->ep[e].target, "%s",
                     *pc->dns ? pc->dns : pc->addrs[e]);
            if ((rc = mr_rpc_channel_new(&pr->ep[e].ch, pr->ep[e].target, err))) goto fail;
        }
    }
    if ((rc = mr_coord_metrics_new(&c->metrics, &c->cfg, err)) ||
        (rc = mr_rpc_server_new(&c->srv, c->listen, 32, err)))
        goto fail;
    if ((rc = mr_rpc_server_add_unary(c->srv, "/mrank.v1.Ranker/Rerank", on_rerank, c)) ||
        (rc = mr_rpc_server_add_stream(c->srv, "/mrank.v1.Ranker/RerankStream",
                                       on_rerank_stream, c)) ||
        (rc = mr_rpc_server_add_unary(c->srv, "/mrank.v1.Ranker/Info", on_info, c))) {
        mr_err_set(err, rc, "coordinator: cannot register the Ranker methods");
        goto fail;
    }
    *out = c;
    return 0;
fail:
    mr_coord_free(c);
    return rc;
}

int mr_coord_start(mr_coord *c, int *port, mr_err *err) {
    int rc;
    if ((rc = mr_coord_metrics_serve(c->metrics, c->metrics_port, err)) ||
        (rc = mr_rpc_server_start(c->srv, port, err)))
        return rc;
    if (pthread_create(&c->prober, NULL, prober_main, c))
        return mr_err_set(err, MR_ENOMEM, "coordinator: cannot start the prober thread");
    c->prober_started = 1;
    return 0;
}

int mr_coord_ready(mr_coord *c) {
    pthread_mutex_lock(&c->mu);
    int r = c->ready;
    pthread_mutex_unlock(&c->mu);
    return r;
}

void mr_coord_shutdown(mr_coord *c, int drain_ms) {
    if (!c || c->shut) return;
    c->shut = 1;
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->prober_started) pthread_join(c->prober, NULL);
    c->prober_started = 0;
    if (c->srv) mr_rpc_server_shutdown(c->srv, drain_ms);
}

void mr_coord_free(mr_coord *c) {
    if (!c) return;
    mr_coord_shutdown(c, 0);
    mr_rpc_server_free(c->srv);
    for (int p = 0; p < MR_CC_MAX_POOLS; p++) {
        for (int e = 0; c->pools[p].ep && e < c->pools[p].n_ep; e++)
            mr_rpc_channel_free(c->pools[p].ep[e].ch);
        free(c->pools[p].ep);
    }
    mr_coord_metrics_free(c->metrics);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}
