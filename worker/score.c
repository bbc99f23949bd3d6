/* score.c: the worker's Score handler (see worker_internal.h): runs on a gRPC handler thread.
 * It unpacks the request, refuses NUL bytes in its strings (rpc/pb_nul.h), turns its
 * sub-architecture (rpc/subarch_pb.h) and exits/prune steps into run options checked once
 * against the model, tokenizes the query segment once and each passage (input.h), admits the
 * request against the in-flight token budget (RESOURCE_EXHAUSTED at once when over, with a
 * retry hint) and queues it for the batcher. The handler never blocks on compute or on the
 * batcher: it takes the worker lock only for the admission check and the enqueue. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mrank.pb-c.h"
#include "pb_nul.h"
#include "rpc_status.h"
#include "subarch_pb.h"
#include "worker_internal.h"

/* The request's run options (checked once against the model) and max_len into r. MR_EINVAL /
 * MR_ERANGE with a message for the client. */
static int parse_request(mr_worker *w, const Mrank__V1__ScoreRequest *rq, wreq *r, int *max_len,
                         mr_err *err) {
    const mr_model *m = &w->m;
    int rc;
    if (!rq->query || !*rq->query) return mr_err_set(err, MR_EINVAL, "query is empty");
    if (rq->n_passages == 0) return mr_err_set(err, MR_EINVAL, "no passages");
    for (size_t i = 0; i < rq->n_passages; i++)
        if (!rq->passages[i]) return mr_err_set(err, MR_EINVAL, "passage %zu is missing", i);
    mr_run_opts *o = &r->run;
    mr_subarch a;
    if ((rc = mr_subarch_from_pb(&a, rq->arch, err)) ||
        (rc = mr_subarch_to_run_opts(&a, m, w->o.adapter_names, w->o.n_adapters, o, err)))
        return rc;
    o->no_prefix_share = w->o.no_prefix_share;
    if (rq->n_exits > MR_MAX_EXITS)
        return mr_err_set(err, MR_EINVAL, "%zu exits, at most %d", rq->n_exits, MR_MAX_EXITS);
    if (rq->n_exits) {
        for (size_t i = 0; i < rq->n_exits; i++) {
            if (rq->exits[i] > 100000)
                return mr_err_set(err, MR_EINVAL, "exit %u out of range", rq->exits[i]);
            o->exits[i] = (int)rq->exits[i];
        }
        o->n_exits = (int)rq->n_exits;
        if (a.depth && o->exits[o->n_exits - 1] != a.depth)
            return mr_err_set(err, MR_EINVAL, "last exit %d differs from arch.depth %d",
                            o->exits[o->n_exits - 1], a.depth);
    }
    if (rq->n_prune > MR_MAX_PRUNE)
        return mr_err_set(err, MR_EINVAL, "%zu prune steps, at most %d", rq->n_prune, MR_MAX_PRUNE);
    for (size_t i = 0; i < rq->n_prune; i++) {
        const Mrank__V1__PruneStep *p = rq->prune[i];
        if (!p->top_k && !p->has_min_score)
            return mr_err_set(err, MR_EINVAL, "prune step %zu has neither top_k nor min_score", i);
        if (p->has_min_score && !isfinite(p->min_score))
            return mr_err_set(err, MR_EINVAL, "prune step %zu: min_score is not finite", i);
        o->prune[i] = (mr_prune){.layer = (int)(p->layer > 100000 ? 100000 : p->layer),
                                 .top_k = p->top_k > 1000000000u ? 1000000000 : (int)p->top_k,
                                 .min_score = p->min_score};
        o->n_prune++;
    }
    r->alone = o->n_prune > 0;
    if ((rc = mr_run_opts_check(o, m, err))) return rc;
    *max_len = rq->max_len ? (int)(rq->max_len > 1000000 ? 1000000 : rq->max_len) : w->o.max_len;
    if (*max_len > w->o.max_len || *max_len < 8)
        return mr_err_set(err, MR_EINVAL, "max_len %u outside [8, %d]", rq->max_len, w->o.max_len);
    return 0;
}

/* A request that can never be admitted: more tokens than the whole in-flight budget (or, with
 * a prune schedule, than one batch). Known from a lower bound before every passage is
 * tokenized, so a request of millions of empty passages costs no memory or time first. */
#define TOO_LARGE 1

/* The query segment (once) and every passage segment into r, with r->tokens. 0; TOO_LARGE
 * with r->tokens a lower bound over the budget; MR_ENOMEM, or MR_EINVAL / MR_ERANGE with a
 * message naming the passage. */
static int tokenize(mr_worker *w, const Mrank__V1__ScoreRequest *rq, wreq *r, int max_len,
                    mr_err *err) {
    mr_err e = {0};
    int tq = 0;
    r->n = (int)rq->n_passages;
    if (r->alone && r->n > w->max_rows)
        return mr_err_set(err, MR_EINVAL,
                          "a request with a prune schedule runs as one batch: %d passages "
                          "exceed the worker's %d rows", r->n, w->max_rows);
    r->p = calloc((size_t)r->n, sizeof *r->p);
    r->truncated = calloc((size_t)r->n, sizeof *r->truncated);
    r->scores = calloc((size_t)r->n * r->run.n_exits, sizeof *r->scores);
    r->depth = calloc((size_t)r->n, sizeof *r->depth);
    if (!r->p || !r->truncated || !r->scores || !r->depth)
        return mr_err_set(err, MR_ENOMEM, "worker out of memory");
    int rc = mr_input_query(w->m.tok, w->m.cfg.bos_token_id, rq->query, max_len, &r->q, &tq, &e);
    if (rc) return mr_err_set(err, rc, "query: %s", e.msg);
    if ((rc = mr_input_check_vocab(&r->q, w->m.cfg.vocab_size, "query", -1, err))) return rc;
    if (tq && rq->truncate == MRANK__V1__TRUNCATE__TRUNCATE_NONE)
        return mr_err_set(err, MR_EINVAL, "query does not fit max_len %d (truncate=TRUNCATE_NONE)",
                        max_len);
    /* every row holds the query segment and the suffix at least */
    r->tokens = (long)r->n * (long)(r->q.n + w->suffix.n);
    if (r->tokens > w->o.max_inflight_tokens) return TOO_LARGE;
    r->tokens = 0;
    for (int i = 0; i < r->n; i++) {
        r->truncated[i] = tq;
        if ((rc = mr_input_passage(w->m.tok, rq->passages[i], max_len, r->q.n, &r->p[i],
                                   &r->truncated[i], &e)))
            return mr_err_set(err, rc, "passage %d: %s", i, e.msg);
        if ((rc = mr_input_check_vocab(&r->p[i], w->m.cfg.vocab_size, "passage", i, err)))
            return rc;
        if (r->truncated[i] && rq->truncate == MRANK__V1__TRUNCATE__TRUNCATE_NONE)
            return mr_err_set(err, MR_EINVAL, "passage %d does not fit max_len %d with the query "
                            "(truncate=TRUNCATE_NONE)", i, max_len);
        r->tokens += mr__wreq_row_tokens(w, r, i);
        if (r->tokens > w->o.max_inflight_tokens && i + 1 < r->n) return TOO_LARGE;
    }
    if (r->alone && r->tokens > w->o.max_batch_tokens)   /* rows: refused above */
        return mr_err_set(err, MR_EINVAL,
                          "a request with a prune schedule runs as one batch: %ld tokens, "
                          "%d passages exceed the worker's %d tokens / %d rows",
                          r->tokens, r->n, w->o.max_batch_tokens, w->max_rows);
    return 0;
}

/* The refusal of r while in tokens are in flight, with a retry hint: the time the worker needs
 * to compute what is in flight (its warm-up rate x r's depth), or, for a request over the
 * whole budget, that retrying cannot help. partial: r->tokens only counts part of r (tokenize
 * stopped early: TOO_LARGE). */
static void overload_message(const mr_worker *w, const wreq *r, int partial, long in, char *msg,
                             size_t cap) {
    int n = snprintf(msg, cap, "worker overloaded: %ld tokens in flight, budget %d (request %s%ld)",
                     in, w->o.max_inflight_tokens, partial ? "at least " : "", r->tokens);
    if (n < 0 || (size_t)n >= cap) return;
    if (r->tokens > w->o.max_inflight_tokens) {
        snprintf(msg + n, cap - (size_t)n, "; larger than the whole budget: split it, retrying "
                 "cannot help");
        return;
    }
    double ns = atomic_load(&w->ns_per_tl);
    if (!(ns > 0)) {   /* no warm-up (--warm-up-rows 0): the speed is unknown, so no time */
        snprintf(msg + n, cap - (size_t)n, "; retry later or on another replica");
        return;
    }
    double ms = (double)in * r->run.exits[r->run.n_exits - 1] * ns * 1e-6;
    snprintf(msg + n, cap - (size_t)n, "; retry after ~%.0f ms or on another replica",
             ms < 1 ? 1 : ms);
}

void mr__on_score(mr_rpc_call *call, void *user) {
    mr_worker *w = user;
    double t0 = mr__now_s();
    char msg[MR_ERR_MSG_LEN];
    mr_err err = {0};
    grpc_status_code code = GRPC_STATUS_INVALID_ARGUMENT;
    size_t len;
    const uint8_t *b = mr_rpc_call_request(call, &len);
    Mrank__V1__ScoreRequest *rq = mrank__v1__score_request__unpack(NULL, len, b);
    wreq *r = calloc(1, sizeof *r);
    int max_len = 0, trc = 0;
    if (!r) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, sizeof msg, "worker out of memory");
        goto fail;
    }
    if (!rq) {
        snprintf(msg, sizeof msg, "malformed ScoreRequest");
        goto fail;
    }
    /* before any string is read: protobuf-c's strings end at the first NUL of the wire's */
    if (mr_pb_find_nul(b, len, &mr_pb_nul_score_request, &err)) {
        snprintf(msg, sizeof msg, "%s", err.msg);
        goto fail;
    }
    if (parse_request(w, rq, r, &max_len, &err) || (trc = tokenize(w, rq, r, max_len, &err))) {
        if (trc == TOO_LARGE) {
            code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            pthread_mutex_lock(&w->mu);
            long in = w->inflight;
            pthread_mutex_unlock(&w->mu);
            overload_message(w, r, 1, in, msg, sizeof msg);
        } else {
            code = mr_rpc_status_of(err.code);
            snprintf(msg, sizeof msg, "%s", err.msg);
        }
        goto fail;
    }
    mrank__v1__score_request__free_unpacked(rq, NULL);
    rq = NULL;
    if (mr_rpc_call_remaining_ms(call) <= 0) {
        code = GRPC_STATUS_DEADLINE_EXCEEDED;
        snprintf(msg, sizeof msg, "deadline passed before queueing");
        goto fail;
    }
    r->call = call;
    r->t_admit = t0;
    /* the handoff never waits: the lock guards a few list and counter updates, and a request
     * that does not fit the budget now is refused at once rather than queued unseen */
    pthread_mutex_lock(&w->mu);
    if (w->inflight + r->tokens > w->o.max_inflight_tokens) {
        long in = w->inflight;
        pthread_mutex_unlock(&w->mu);
        overload_message(w, r, 0, in, msg, sizeof msg);
        mr__wmetrics_rejected(w->met);
        mr_rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
        mr__wreq_free(r);
        return;
    }
    w->inflight += r->tokens;
    mr__wmetrics_inflight(w->met, w->inflight);
    if (w->qtail) w->qtail->next = r;
    else w->qhead = r;
    w->qtail = r;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return;
fail:
    if (rq) mrank__v1__score_request__free_unpacked(rq, NULL);
    mr__wreq_free(r);
    if (trc == TOO_LARGE) mr__wmetrics_rejected(w->met);   /* as an over-budget refusal */
    else mr__wmetrics_request(w->met, code, 0, 0, mr__now_s() - t0);
    mr_rpc_call_fail(call, code, msg);
}

