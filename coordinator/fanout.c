/* fanout.c: one stage's Score calls (see coord_internal.h).
 *
 * The stage's candidates are split into interleaved groups (each call gets a similar mix of
 * long and short documents), each group is packed into a ScoreRequest and sent asynchronously
 * to a replica picked round-robin among those not marked down. The handler thread waits for
 * every call; calls that failed with a retryable status are sent again to another replica
 * while the budget lasts, each attempt bounded so a hung replica cannot take all of it. The
 * answers are folded into the request (scores, depth, exact token counts) and into the stage's
 * cost model. Completions run on the channels' polling threads and only copy and signal. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "rpc_methods.h"
#include "subarch.h"

#define NO_BUDGET_TIMEOUT_MS 60000.0
#define DOWN_MS 1000.0          /* a replica that answered UNAVAILABLE is avoided this long */

/* ---- replicas ---- */

/* Picks a replica of pool p for the next call, avoiding `avoid` and replicas marked down. The
 * counter moves one step per call, so the calls of a stage land on consecutive replicas. */
static int pick_endpoint(mr_coord *c, int p, int avoid) {
    mr__pool *pr = &c->pools[p];
    if (pr->n_ep == 1) return 0;
    unsigned base = atomic_fetch_add(&pr->rr, 1);
    double t = mr__now_ms();
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
    c->pools[p].ep[e].down_until = mr__now_ms() + DOWN_MS;
    pthread_mutex_unlock(&c->mu);
}

/* ---- calls ---- */

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
    s->b->pending--;
    pthread_cond_signal(&s->b->cv);
    pthread_mutex_unlock(&s->b->mu);
}

static int launch(mr__req *r, int p, slot *s, double timeout_ms) {
    mr_coord *c = r->co;
    mr_rpc_opts o = {.timeout_ms = timeout_ms, .wait_for_ready = 0, .traceparent = NULL};
    s->t_start = mr__now_ms();
    s->attempts++;
    pthread_mutex_lock(&s->b->mu);
    s->b->pending++;
    pthread_mutex_unlock(&s->b->mu);
    if (mr_rpc_unary_async(c->pools[p].ep[s->ep].ch, MR_METHOD_SCORE, s->req, s->req_len, &o,
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

/* Folds the answers of every call into the request: scores, depth, truncation and, on the
 * first stage, the exact token counts (later stages are planned with them). Checks every
 * answer before writing anything, so a malformed one leaves r unchanged. */
static int absorb(mr__req *r, int pos, const mr_cc_stage *st, slot *s, int n_slots,
                  grpc_status_code *code, char *msg, size_t cap) {
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
            fprintf(stderr, "mrank coordinator: stage '%s': malformed Score response from %s\n",
                    st->name, r->co->pools[st->pool].ep[s[k].ep].target);
            goto done;
        }
    }
    int si = (int)(st - r->co->cfg.stages);
    for (int k = 0; k < n_slots; k++) {
        for (int i = 0; i < s[k].n; i++) {
            const Mrank__V1__PassageScores *ps = resp[k]->passages[i];
            int d = s[k].members[i];
            r->stage[d] = pos;
            r->score[d] = ps->n_scores ? ps->scores[ps->n_scores - 1] : NAN;
            r->depth[d] = ps->depth ? (int)ps->depth : st->arch.depth;
            r->truncated[d] |= ps->truncated;
            if (pos == 0) {
                r->prompt_tokens += ps->tokens;
                if (ps->passage_tokens && ps->passage_tokens < ps->tokens) {
                    r->passage_tokens[d] = (int)ps->passage_tokens;
                    r->n_fixed = (int)(ps->tokens - ps->passage_tokens);
                }
            }
            r->total_tokens += ps->tokens;
        }
        pthread_mutex_lock(&r->co->mu);
        mr_cost_model_observe(&r->co->cost[si], s[k].token_layers, resp[k]->compute_ms,
                              s[k].wall_ms);
        double ns = r->co->cost[si].ns_per_tl;
        pthread_mutex_unlock(&r->co->mu);
        mr_coord_metrics_cost(r->co->metrics, si, ns);
    }
    rc = 0;
done:
    for (int k = 0; k < n_slots; k++)
        if (resp[k]) mrank__v1__score_response__free_unpacked(resp[k], NULL);
    free(resp);
    return rc;
}

static int retryable(grpc_status_code st) {
    return st == GRPC_STATUS_UNAVAILABLE || st == GRPC_STATUS_DEADLINE_EXCEEDED ||
           st == GRPC_STATUS_RESOURCE_EXHAUSTED || st == GRPC_STATUS_CANCELLED ||
           st == GRPC_STATUS_UNKNOWN || st == GRPC_STATUS_ABORTED;
}

int mr__fanout_stage(mr__req *r, int pos, const int *active, int n_active, double est_ms,
                     grpc_status_code *code, char *msg, size_t cap) {
    mr_coord *c = r->co;
    const mr_cc_stage *st = mr__req_stage(r, pos);
    const mr_cc_pool *pc = &c->cfg.pools[st->pool];
    const mr__pool *prt = &c->pools[st->pool];
    int n_calls = mr__plan_calls(r, st, active, n_active);
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
            s[k].token_layers += mr_subarch_token_layers(&st->arch, r->n_fixed,
                                                         r->passage_tokens[active[i]]);
        }
        off += s[k].n;
        mr_err err = {0};
        if (mr__wire_score(r, st, s[k].members, s[k].n, &s[k].req, &s[k].req_len, &err)) {
            *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            snprintf(msg, cap, "%s", err.msg);
            goto done;
        }
        s[k].ep = pick_endpoint(c, st->pool, -1);
        s[k].status = GRPC_STATUS_UNKNOWN;
    }
    /* A replica gets a bounded slice of the budget when another one could take over. */
    int can_failover = prt->n_ep > 1 || *pc->dns;
    int max_attempts = (prt->n_ep > 1 ? prt->n_ep : 2) + 2;
    for (int round = 0;; round++) {
        double rem = mr__req_remaining_ms(r);
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
            snprintf(msg, cap, "stage '%s' (pool '%s' replica %d): %.200s", st->name,
                     c->cfg.pools[st->pool].name, s[fatal].ep, s[fatal].msg);
            fprintf(stderr, "mrank coordinator: %s [replica %d is %s]\n", msg, s[fatal].ep,
                    prt->ep[s[fatal].ep].target);
            goto done;
        }
        if (mr_rpc_call_cancelled(r->call)) {
            *code = GRPC_STATUS_CANCELLED;
            snprintf(msg, cap, "cancelled by the client");
            goto done;
        }
        rem = mr__req_remaining_ms(r);
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
                s[k].ep = pick_endpoint(c, st->pool, s[k].ep);
                mr_coord_metrics_retry(c->metrics, st->pool);
            }
    }
    rc = absorb(r, pos, st, s, n_calls, code, msg, cap);
done:
    for (int k = 0; s && k < n_calls; k++) {
        free(s[k].req);
        free(s[k].resp);
    }
    free(s);
    free(members);
    return rc;
}

