/* fanout.c: one stage's Score calls, or a fused stage pair's (see coord_internal.h).
 *
 * The stage's candidates are split into interleaved groups (each call gets a similar mix of
 * long and short documents), each group is packed into a ScoreRequest and sent asynchronously
 * to a replica from replicas.c's pick (round-robin, skipping ejected and full ones). The
 * handler thread then runs an event loop: it wakes on every completion, at every retry or
 * hedge due and at least every WAKE_MS, so a client that cancels or a deadline that passes is
 * noticed promptly. Each attempt has its own timeout from the cost model (cascade.h
 * mr_attempt_timeout_ms); a failed attempt is booked against its replica (replicas.c) and
 * retried after a jittered backoff on another replica when cascade.h's rules allow it
 * (retryable status, another replica, free ones for RESOURCE_EXHAUSTED, time left, a token of
 * the pool's retry budget, at most MR_RETRY_MAX_ATTEMPTS attempts), else the stage fails. In
 * short-budget tiers a call still unanswered after cascade.h's hedge delay is sent again to
 * another replica, paid from the retry budget; the first answer wins. Each copy of a call (a
 * slot: the call, or its hedge) has its own rpc cancel group: the loser of a hedge race is
 * cancelled alone, and when the stage ends every copy still in flight is cancelled, so no
 * Score call outlives its request. The answers are folded into the request (scores, depth,
 * exact token counts) and into the stage's cost model. Completions run on the channels'
 * polling threads and only copy and signal. A fused pair (stages that continue) goes out the
 * same way, each call with both exits and a prune step at the shallower one and its rows in
 * request order; the shallower exit's scores go into the request, the deeper one's into the
 * carry (mr__carry) that the cascade takes when it reaches the deeper stage. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coord_internal.h"
#include "rpc_methods.h"
#include "subarch.h"
#include "log.h"
#include "trace.h"

#define WAKE_MS 10.0            /* the loop looks at the client and the budget this often */
#define NO_BUDGET_TIMEOUT_MS 60000.0    /* an attempt's cap when nothing else bounds it */

/* ---- the carry of a fused pair (coord_internal.h) ---- */

/* Room for n rows in c (allocated once per request, kept for its later pairs); MR_ENOMEM. */
static int carry_alloc(mr__carry *c, int n) {
    c->pos = -1;
    if (c->n >= n) return 0;
    mr__carry_free(c);
    c->score = malloc((size_t)n * sizeof *c->score);
    c->depth = malloc((size_t)n * sizeof *c->depth);
    c->tokens = malloc((size_t)n * sizeof *c->tokens);
    c->truncated = malloc((size_t)n);
    c->have = calloc((size_t)n, 1);
    if (!c->score || !c->depth || !c->tokens || !c->truncated || !c->have) {
        mr__carry_free(c);
        return MR_ENOMEM;
    }
    c->n = n;
    return 0;
}

void mr__carry_free(mr__carry *c) {
    free(c->score);
    free(c->depth);
    free(c->tokens);
    free(c->truncated);
    free(c->have);
    *c = (mr__carry){.pos = -1};
}

int mr__carry_take(mr__req *r, mr__carry *c, int pos, const int *active, int n_active,
                   double *ms) {
    int ok = c->pos == pos && c->pos >= 0;
    c->pos = -1;
    for (int i = 0; ok && i < n_active; i++) ok = c->have[active[i]];
    if (!ok) return 0;   /* never expected (the prune step keeps every survivor): run it */
    for (int i = 0; i < n_active; i++) {
        int d = active[i];
        r->stage[d] = pos;
        r->score[d] = c->score[d];
        r->depth[d] = c->depth[d];
        r->truncated[d] |= c->truncated[d];
        r->total_tokens += c->tokens[d];
    }
    *ms = c->ms;
    return 1;
}

/* ---- calls ---- */

/* A slot is one copy of a call: the call itself (slots 0..n_calls) or its hedge (after). */
typedef enum slot_state {
    S_RUN,                      /* an attempt in flight */
    S_DONE,                     /* its completion arrived, not yet looked at */
    S_WAIT,                     /* the next attempt starts at retry_at */
    S_OK,                       /* answered */
    S_DEAD                      /* given up for its twin (a hedge race lost or left to it) */
} slot_state;

typedef struct batch {
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* CLOCK_MONOTONIC */
    int pending;                /* attempts in flight */
    int n_done;                 /* completions the loop has not looked at */
} batch;

typedef struct slot {
    batch *b;
    mr_rpc_cancel *group;       /* this slot's attempts (a hedge race cancels the loser alone) */
    int owner;                  /* the call this slot answers (itself, or the hedged call) */
    int hedge;                  /* 1: a hedge slot */
    int twin;                   /* the other copy of the call, -1 none */
    int won;                    /* owners: the slot whose answer stands, -1 none yet */
    double hedge_at;            /* owners: when to send a hedge (INFINITY: never) */
    mr__endpoint *rt;           /* the replica of the attempt in flight */
    mr_coord *co;
    int *members;               /* request indices scored by this call */
    int n;
    uint8_t *req;
    size_t req_len;
    slot_state state;           /* S_RUN -> S_DONE under b->mu (the completion) */
    int ep, attempts;
    double t_start, wall_ms, timeout_ms, est_ms, retry_at;
    grpc_status_code status;
    char msg[256];
    uint8_t *resp;
    size_t resp_len;
    double token_layers;
} slot;

/* Takes s's call off its replica's in-flight work (launch added it): when it completes, or
 * when it could not start. */
static void release_inflight(slot *s) {
    pthread_mutex_lock(&s->co->mu);
    s->rt->inflight_tl -= s->token_layers;
    if (s->rt->inflight_tl < 0) s->rt->inflight_tl = 0;
    s->rt->inflight_calls--;
    pthread_mutex_unlock(&s->co->mu);
}

static void on_score_done(void *user, grpc_status_code status, const char *msg,
                          const uint8_t *resp, size_t resp_len) {
    slot *s = user;
    release_inflight(s);
    s->status = status;
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "");
    s->wall_ms = mr__now_ms() - s->t_start;
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
    s->state = S_DONE;
    s->b->pending--;
    s->b->n_done++;
    pthread_cond_signal(&s->b->cv);
    pthread_mutex_unlock(&s->b->mu);
}

/* Starts the next attempt of s on its replica, bounded by the cost model and the budget left
 * (rem_ms) minus what later stages need (reserve_ms). The estimate counts the work this
 * coordinator already has in flight on that replica (it queues ahead of this call). -1 when
 * it cannot even start. */
static int launch(mr__req *r, int p, int si, slot *s, double rem_ms, double reserve_ms) {
    mr_coord *c = r->co;
    const mr__pool *pr = &c->pools[p];
    s->co = c;
    s->rt = &pr->ep[s->ep];
    pthread_mutex_lock(&c->mu);
    s->est_ms = mr_cost_model_estimate_ms(&c->cost[si], s->token_layers + s->rt->inflight_tl, 1);
    s->rt->inflight_tl += s->token_layers;
    s->rt->inflight_calls++;
    if (s->attempts == 0 && !s->hedge) mr_retry_budget_call(&c->pools[p].retry);
    pthread_mutex_unlock(&c->mu);
    /* an attempt is cut short only where a retry has another replica to go to: a DNS pool
     * that resolves to one address gives its lone replica the whole budget (a slow replica is
     * not a failed one; a dead link is found by keepalive) */
    int can_retry = mr__pool_parallelism(c, p) > 1;
    s->timeout_ms = mr_attempt_timeout_ms(s->est_ms, rem_ms, reserve_ms, can_retry);
    if (!(s->timeout_ms < NO_BUDGET_TIMEOUT_MS)) s->timeout_ms = NO_BUDGET_TIMEOUT_MS;
    mr_rpc_opts o = {.timeout_ms = s->timeout_ms > 1 ? s->timeout_ms : 1, .cancel = s->group,
                     .trace = &r->stage_trace};
    if (s->attempts) mr_coord_metrics_retry(c->metrics, p);
    s->t_start = mr__now_ms();
    /* a call's first attempt may be hedged (not a hedge, not a retry; address pools) */
    double hd = !s->hedge && s->attempts == 0 && pr->n_ep > 1
                    ? mr_hedge_delay_ms(s->est_ms, c->cfg.tiers[r->tier].budget_ms, rem_ms)
                    : -1;
    s->hedge_at = hd >= 0 ? s->t_start + hd : INFINITY;
    s->attempts++;
    pthread_mutex_lock(&s->b->mu);
    s->state = S_RUN;
    s->b->pending++;
    pthread_mutex_unlock(&s->b->mu);
    if (mr_rpc_unary_async(pr->ep[s->ep].ch, MR_METHOD_SCORE, s->req, s->req_len, &o,
                           on_score_done, s)) {
        pthread_mutex_lock(&s->b->mu);
        s->b->pending--;
        s->state = S_WAIT;
        pthread_mutex_unlock(&s->b->mu);
        release_inflight(s);
        return -1;
    }
    return 0;
}

/* Waits until a completion arrives or until `until` (monotonic ms), whichever is first. */
static void wait_event(batch *b, double until) {
    pthread_mutex_lock(&b->mu);
    while (!b->n_done) {
        double left = until - mr__now_ms();
        if (left <= 0) break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long ns = ts.tv_nsec + (long)(left * 1e6);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&b->cv, &b->mu, &ts);
    }
    b->n_done = 0;
    pthread_mutex_unlock(&b->mu);
}

static void wait_all(batch *b) {
    pthread_mutex_lock(&b->mu);
    while (b->pending > 0) pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
}

/* Folds the answers of every call into the request: scores, depth, truncation and, on the
 * first stage, the exact token counts (later stages are planned with them). Checks every
 * answer before writing anything, so a malformed one leaves r unchanged. A fused pair (deep:
 * the deeper stage, else NULL) writes its shallower exit's scores into r as stage pos and its
 * deeper exit's into *carry, and *share receives the shallower stage's share of the
 * token-layers computed. */
static int absorb(mr__req *r, int pos, const mr_cc_stage *st, const mr_cc_stage *deep,
                  mr__carry *carry, double *share, slot *s, int n_slots, grpc_status_code *code,
                  char *msg, size_t cap) {
    Mrank__V1__ScoreResponse **resp = calloc((size_t)n_slots, sizeof *resp);
    int rc = -1;
    if (!resp) {
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, cap, "coordinator: out of memory");
        return -1;
    }
    for (int k = 0; k < n_slots; k++) {
        resp[k] = mrank__v1__score_response__unpack(NULL, s[k].resp_len, s[k].resp);
        if (!resp[k] || resp[k]->n_passages != (size_t)s[k].n) {
            *code = GRPC_STATUS_INTERNAL;
            snprintf(msg, cap, "stage '%s': malformed Score response from pool '%s'", st->name,
                     r->co->cfg.pools[st->pool].name);
            mr_log(MR_LOG_WARN, "malformed_score_response", "stage '%s': malformed Score response from %s\n",
                    st->name, r->co->pools[st->pool].ep[s[k].ep].target);
            goto done;
        }
    }
    int si = (int)(st - r->co->cfg.stages), first = mr__first_neural(r);
    int sd = deep ? (int)(deep - r->co->cfg.stages) : si;
    double tl_shallow = 0, tl_all = 0;
    if (carry) carry->pos = pos + 1;
    for (int k = 0; k < n_slots; k++) {
        double tl_call = 0;     /* token-layers the call computed (a fused pass: exact) */
        for (int i = 0; i < s[k].n; i++) {
            const Mrank__V1__PassageScores *ps = resp[k]->passages[i];
            int d = s[k].members[i];
            r->stage[d] = pos;
            if (deep) {   /* the shallower exit is the first of the two */
                r->score[d] = ps->n_scores ? ps->scores[0] : NAN;
                r->depth[d] = st->arch.depth;
            } else {
                r->score[d] = ps->n_scores ? ps->scores[ps->n_scores - 1] : NAN;
                r->depth[d] = ps->depth ? (int)ps->depth : st->arch.depth;
            }
            r->truncated[d] |= ps->truncated;
            if (pos == first) {   /* the first stage that tokenized */
                r->prompt_tokens += ps->tokens;
                if (ps->passage_tokens && ps->passage_tokens < ps->tokens) {
                    r->passage_tokens[d] = (int)ps->passage_tokens;
                    r->n_fixed = (int)(ps->tokens - ps->passage_tokens);
                }
            }
            r->total_tokens += ps->tokens;
            if (!deep) continue;
            double a = mr_subarch_token_layers(&st->arch, r->n_fixed, r->passage_tokens[d]);
            int on = ps->n_scores == 2 && ps->depth >= (uint32_t)deep->arch.depth;
            carry->have[d] = (char)on;
            carry->score[d] = on ? ps->scores[1] : NAN;
            carry->depth[d] = (int)ps->depth;
            carry->tokens[d] = (int)ps->tokens;
            carry->truncated[d] = (char)ps->truncated;
            tl_shallow += a;
            tl_call += on ? mr_subarch_token_layers(&deep->arch, r->n_fixed, r->passage_tokens[d])
                          : a;
        }
        if (!deep) tl_call = s[k].token_layers;
        tl_all += tl_call;
        /* a fused call is one pass of both stages' sub-architectures on one pool: its speed
         * per token-layer is an observation of both cost models */
        for (int m = si;; m = sd) {
            pthread_mutex_lock(&r->co->mu);
            mr_cost_model_observe(&r->co->cost[m], tl_call, resp[k]->compute_ms, s[k].wall_ms);
            double ns = r->co->cost[m].ns_per_tl;
            pthread_mutex_unlock(&r->co->mu);
            mr_coord_metrics_cost(r->co->metrics, m, ns);
            if (m == sd) break;
        }
    }
    if (share) *share = tl_all > 0 ? tl_shallow / tl_all : 1;
    rc = 0;
done:
    for (int k = 0; k < n_slots; k++)
        if (resp[k]) mrank__v1__score_response__free_unpacked(resp[k], NULL);
    free(resp);
    return rc;
}

/* A uniform number in [0, 1) for the backoff jitter (per-thread xorshift). */
static double jitter_u01(void) {
    static _Thread_local unsigned long long x;
    if (!x) x = (unsigned long long)(mr__now_ms() * 1e3) ^ (unsigned long long)(uintptr_t)&x;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return (double)(x >> 11) / 9007199254740992.0;
}

/* Books a failed attempt of s against its replica and decides whether it is retried; on a
 * retry, schedules it (s->retry_at) on another replica. */
static mr_retry_verdict on_failure(mr__req *r, int p, slot *s, double rem_ms) {
    mr_coord *c = r->co;
    mr__pool *pr = &c->pools[p];
    int dns = *c->cfg.pools[p].dns != 0, n_other = dns ? 1 : pr->n_ep - 1;
    mr__replica_failed(c, p, s->ep, s->status, s->wall_ms, s->est_ms);
    double now = mr__now_ms();
    pthread_mutex_lock(&c->mu);
    int n_free = mr__replica_n_free(c, p, s->ep, now);
    mr_retry_budget_refill(&pr->retry, now);
    mr_retry_verdict v = mr_retry_decide(mr__call_failure(s->status), s->attempts, n_other,
                                         n_free, rem_ms, s->est_ms, &pr->retry);
    pthread_mutex_unlock(&c->mu);
    if (v != MR_RETRY_OK) {
        if (v != MR_RETRY_STATUS) mr_coord_metrics_retry_refused(c->metrics, p, v);
        return v;
    }
    s->retry_at = now + mr_retry_backoff_ms(s->attempts, rem_ms - s->est_ms, jitter_u01());
    s->ep = mr__replica_pick(c, p, dns ? -1 : s->ep);
    s->state = S_WAIT;
    return MR_RETRY_OK;
}

/* Sends a hedge of call k (slot k, its first attempt in flight since before its hedge_at) as
 * slot h to another free replica, paid from the pool's retry budget. 0 when sent; 1 when not
 * (no free replica, no token: the call is not hedged); -1 when it cannot start. */
static int send_hedge(mr__req *r, int p, int si, slot *s, int k, int h, double rem,
                      double reserve) {
    mr_coord *c = r->co;
    double now = mr__now_ms();
    s[k].hedge_at = INFINITY;
    pthread_mutex_lock(&c->mu);
    mr_retry_budget_refill(&c->pools[p].retry, now);
    int ok = mr__replica_n_free(c, p, s[k].ep, now) > 0 &&
             mr_retry_budget_take_hedge(&c->pools[p].retry);
    pthread_mutex_unlock(&c->mu);
    if (!ok) return 1;
    slot *x = &s[h];
    *x = (slot){.b = s[k].b, .owner = k, .hedge = 1, .twin = k, .won = -1,
                .members = s[k].members, .n = s[k].n, .req = s[k].req,
                .req_len = s[k].req_len, .token_layers = s[k].token_layers,
                .hedge_at = INFINITY, .status = GRPC_STATUS_UNKNOWN};
    if (mr_rpc_cancel_new(&x->group)) return -1;
    x->ep = mr__replica_pick(c, p, s[k].ep);
    s[k].twin = h;
    mr_coord_metrics_hedge(c->metrics, p);
    return launch(r, p, si, x, rem, reserve);
}

/* A slot's state, read under the batch lock (its completion may be writing it). */
static slot_state state_of(slot *s) {
    pthread_mutex_lock(&s->b->mu);
    slot_state st = s->state;
    pthread_mutex_unlock(&s->b->mu);
    return st;
}

/* Looks at the completion of slot k: an answer settles its call (a twin still running is
 * cancelled, and booked as a failure of its replica: a lost race); a failure is booked, and
 * retried or ends the stage, unless its twin is still at it. 0, or -1 with code/msg set. */
static int on_done(mr__req *r, int p, const mr_cc_stage *st, slot *s, int k, double rem,
                   int *n_ok, grpc_status_code *code, char *msg, size_t cap) {
    mr_coord *c = r->co;
    int o = s[k].owner, t = s[k].twin;
    if (s[o].won >= 0) {                /* its twin answered first: this copy was cancelled */
        s[k].state = S_DEAD;
        return 0;
    }
    if (s[k].status == GRPC_STATUS_OK) {
        s[k].state = S_OK;
        s[o].won = k;
        (*n_ok)++;
        slot_state ts = t >= 0 ? state_of(&s[t]) : S_DEAD;
        mr__replica_answered(c, p, s[k].ep);
        if (ts == S_RUN) {          /* a lost race counts as a timeout of its replica */
            mr__replica_failed(c, p, s[t].ep, GRPC_STATUS_DEADLINE_EXCEEDED,
                               mr__now_ms() - s[t].t_start, s[t].est_ms);
            mr_coord_metrics_cancelled(c->metrics, p, mr_rpc_cancel_fire(s[t].group));
        } else if (ts == S_WAIT) {
            s[t].state = S_DEAD;
        }
        return 0;
    }
    if (getenv("MRANK_COORD_DEBUG"))
        mr_log(MR_LOG_WARN, "score_call_failed", "stage '%s' call %d%s on %s: status %d after %.1f ms "
                "(timeout %.0f ms): %s\n", st->name, o, s[k].hedge ? " (hedge)" : "",
                c->pools[p].ep[s[k].ep].target, (int)s[k].status, s[k].wall_ms,
                s[k].timeout_ms, s[k].msg);
    slot_state ts = t >= 0 ? state_of(&s[t]) : S_DEAD;
    if (ts == S_RUN || ts == S_WAIT || ts == S_DONE) {
        /* the twin may still answer: book this failure, leave the call to it */
        mr__replica_failed(c, p, s[k].ep, s[k].status, s[k].wall_ms, s[k].est_ms);
        s[k].state = S_DEAD;
        return 0;
    }
    int failed_ep = s[k].ep;
    mr_retry_verdict v = on_failure(r, p, &s[k], rem);
    if (v == MR_RETRY_OK) return 0;
    *code = v == MR_RETRY_DEADLINE ? GRPC_STATUS_DEADLINE_EXCEEDED : s[k].status;
    if (v == MR_RETRY_STATUS) {
        /* the client sees the pool and replica index; the address goes to the log only */
        snprintf(msg, cap, "stage '%s' (pool '%s' replica %d): %.200s", st->name,
                 c->cfg.pools[p].name, failed_ep, s[k].msg);
        char tid[33] = "";
        const mr_trace_ctx *tc = r->sink.ops->trace ? r->sink.ops->trace(r->sink.ctx) : NULL;
        if (tc) mr_trace_id_hex(tc, tid);
        mr_log_req(MR_LOG_WARN, "stage_failed", r->in ? r->in->request_id : NULL, tid,
                   "%s [replica %d is %s]\n", msg, failed_ep,
                c->pools[p].ep[failed_ep].target);
    } else
        snprintf(msg, cap, "stage '%s': not retried (%s) after %d attempts: %.200s", st->name,
                 mr_retry_reason(v), s[k].attempts, s[k].msg);
    return -1;
}

static int by_index(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* One stage's calls, or a fused pair's (fp, carry and share set: see mr__fanout_fused). */
static int fanout_stage(mr__req *r, int pos, const int *active, int n_active,
                        const mr__fuse_plan *fp, mr__carry *carry, double *share,
                        grpc_status_code *code, char *msg, size_t cap) {
    mr_coord *c = r->co;
    const mr_cc_stage *st = mr__req_stage(r, pos), *deep = fp ? mr__req_stage(r, pos + 1) : NULL;
    const int p = st->pool, si = (int)(st - c->cfg.stages);
    int n_calls = fp ? fp->n_calls : mr__plan_calls(r, st, active, n_active), n_slots = n_calls;
    batch b = {.pending = 0};
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, &ca);
    pthread_condattr_destroy(&ca);
    slot *s = calloc(2 * (size_t)n_calls, sizeof *s);   /* the calls, then their hedges */
    int *members = malloc((size_t)n_active * sizeof *members);
    int rc = -1, n_ok = 0, answered = 0;
    /* a fused pair's budget left alone is what the stages after its deeper one need */
    double reserve = mr__plan_rest_ms(r, fp ? pos + 1 : pos, active, n_active);
    if (!s || !members || (fp && carry_alloc(carry, r->n))) {
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, cap, "coordinator: out of memory");
        goto done;
    }
    /* Interleaved split: each call gets a similar mix of long and short candidates. */
    for (int k = 0, off = 0; k < n_calls; k++) {
        s[k] = (slot){.b = &b, .owner = k, .twin = -1, .won = -1, .members = members + off,
                      .state = S_WAIT, .retry_at = 0, .hedge_at = INFINITY,
                      .status = GRPC_STATUS_UNKNOWN};
        double deeper = 0;      /* a fused call: the deeper stage's token-layers of its rows */
        for (int i = k; i < n_active; i += n_calls) {
            s[k].members[s[k].n++] = active[i];
            s[k].token_layers += mr_subarch_token_layers(&st->arch, r->n_fixed,
                                                         r->passage_tokens[active[i]]);
            if (fp)
                deeper += mr_subarch_token_layers(&deep->arch, r->n_fixed,
                                                  r->passage_tokens[active[i]]);
        }
        off += s[k].n;
        mr_err err = {0};
        if (mr_rpc_cancel_new(&s[k].group)) {
            *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            snprintf(msg, cap, "coordinator: out of memory");
            goto done;
        }
        mr_fused_prune step;
        int has_step = 0;
        if (fp) {
            /* request order within the call: the worker's prune breaks ties by lower row, as
             * the merge rule does by lower index (cascade.h mr_cascade_fused_prune) */
            qsort(s[k].members, (size_t)s[k].n, sizeof *s[k].members, by_index);
            has_step = mr_cascade_fused_prune(&r->keep[pos], n_active, s[k].n, &step);
            int on = mr_cascade_fused_rows(&r->keep[pos], n_active, s[k].n);
            s[k].token_layers += (deeper - s[k].token_layers) * on / s[k].n;
        }
        if (fp ? mr__wire_score_fused(r, deep, st->arch.depth, has_step ? &step : NULL,
                                      s[k].members, s[k].n, &s[k].req, &s[k].req_len, &err)
               : mr__wire_score(r, st, s[k].members, s[k].n, &s[k].req, &s[k].req_len, &err)) {
            *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            snprintf(msg, cap, "%s", err.msg);
            goto done;
        }
        s[k].ep = mr__replica_pick(c, p, -1);
    }
    for (;;) {
        double now = mr__now_ms(), rem = mr__req_remaining_ms(r);
        if (r->sink.ops->cancelled(r->sink.ctx)) {
            int gone = r->sink.ops->remaining_ms(r->sink.ctx) > 0;
            *code = gone ? GRPC_STATUS_CANCELLED : GRPC_STATUS_DEADLINE_EXCEEDED;
            snprintf(msg, cap, "stage '%s': %s", st->name,
                     gone ? "cancelled by the client" : "the client's deadline passed");
            goto done;
        }
        if (rem <= 0) {
            *code = GRPC_STATUS_DEADLINE_EXCEEDED;
            snprintf(msg, cap, "stage '%s': deadline budget spent", st->name);
            goto done;
        }
        /* answers and failures */
        for (int k = 0; k < n_slots; k++)
            if (state_of(&s[k]) == S_DONE &&
                on_done(r, p, st, s, k, rem, &n_ok, code, msg, cap))
                goto done;
        if (n_ok == n_calls) break;
        /* attempts and hedges due */
        double wake = now + (rem < WAKE_MS ? rem : WAKE_MS);   /* the budget's end on time */
        for (int k = 0; k < n_slots; k++) {
            slot_state ks = state_of(&s[k]);
            if (ks == S_WAIT && s[k].retry_at <= now) {
                if (launch(r, p, si, &s[k], rem, reserve)) {
                    *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
                    snprintf(msg, cap, "coordinator: cannot start a Score call");
                    goto done;
                }
            } else if (ks == S_WAIT && s[k].retry_at < wake) {
                wake = s[k].retry_at;
            } else if (ks == S_RUN && k < n_calls && s[k].twin < 0 && s[k].won < 0) {
                if (s[k].hedge_at <= now) {
                    int hr = send_hedge(r, p, si, s, k, n_slots, rem, reserve);
                    if (s[k].twin == n_slots) n_slots++;
                    if (hr < 0) {
                        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
                        snprintf(msg, cap, "coordinator: cannot start a Score call");
                        goto done;
                    }
                } else if (s[k].hedge_at < wake) {
                    wake = s[k].hedge_at;
                }
            }
        }
        wait_event(&b, wake);
    }
    answered = 1;
done:
    /* nothing outlives the stage: every copy still in flight is cancelled and waited for */
    for (int k = 0; s && k < n_slots; k++)
        if (s[k].group) mr_coord_metrics_cancelled(c->metrics, p, mr_rpc_cancel_fire(s[k].group));
    wait_all(&b);
    if (answered) {
        for (int k = 0; k < n_calls; k++) {   /* the winning copy's answer into the call */
            slot *w = &s[s[k].won];
            if (w == &s[k]) continue;
            uint8_t *resp = s[k].resp;
            s[k].resp = w->resp, s[k].resp_len = w->resp_len;
            s[k].ep = w->ep, s[k].wall_ms = w->wall_ms;
            w->resp = resp;
        }
        rc = absorb(r, pos, st, deep, carry, share, s, n_calls, code, msg, cap);
    }
    for (int k = 0; s && k < n_slots; k++) {
        if (!s[k].hedge) free(s[k].req);
        free(s[k].resp);
        mr_rpc_cancel_free(s[k].group);
    }
    free(s);
    free(members);
    pthread_mutex_destroy(&b.mu);
    pthread_cond_destroy(&b.cv);
    return rc;
}

/* The stage (or fused pair) as one INTERNAL span (trace.h) under the request's; its Score
 * calls are CLIENT spans under it (launch passes r->stage_trace). */
static int traced(mr__req *r, int pos, const int *active, int n_active, const mr__fuse_plan *fp,
                  mr__carry *carry, double *share, grpc_status_code *code, char *msg,
                  size_t cap) {
    mr_trace_child(r->sink.ops->trace ? r->sink.ops->trace(r->sink.ctx) : NULL, &r->stage_trace);
    uint64_t t0 = mr_trace_now_ns();
    int rc = fanout_stage(r, pos, active, n_active, fp, carry, share, code, msg, cap);
    if (mr_trace_exporting()) {
        const mr_cc_stage *st = mr__req_stage(r, pos);
        char name[2 * MR_CC_NAME + 8];
        snprintf(name, sizeof name, "stage %s%s%s", st->name, fp ? "+" : "",
                 fp ? mr__req_stage(r, pos + 1)->name : "");
        const char *attrs[] = {"mrank.stage", st->name, "mrank.request_id",
                               r->in && r->in->request_id ? r->in->request_id : "", NULL};
        mr_trace_span(&r->stage_trace, MR_SPAN_INTERNAL, name, t0, mr_trace_now_ns(),
                      rc ? msg : NULL, attrs);
    }
    return rc;
}

int mr__fanout_stage(mr__req *r, int pos, const int *active, int n_active,
                     grpc_status_code *code, char *msg, size_t cap) {
    return traced(r, pos, active, n_active, NULL, NULL, NULL, code, msg, cap);
}

int mr__fanout_fused(mr__req *r, int pos, const int *active, int n_active,
                     const mr__fuse_plan *fp, mr__carry *carry, double *share_pos,
                     grpc_status_code *code, char *msg, size_t cap) {
    int rc = traced(r, pos, active, n_active, fp, carry, share_pos, code, msg, cap);
    if (rc == 0) mr_coord_metrics_fused(r->co->metrics, r->profile);
    else carry->pos = -1;   /* a failed pair carries nothing */
    return rc;
}
