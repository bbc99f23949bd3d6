/* rerank.c: the Rerank and RerankStream handlers: the path of one request through the
 * coordinator (see coord_internal.h for the files it calls).
 *
 * At arrival (on the rpc queue thread) parse and validate, check the API key's tier, estimate
 * the request's work and hand it to the scheduler (sched.c), which refuses it at once or queues
 * it; once an executor starts it, for each stage of the profile: plan it against the remaining
 * budget (run, or skip with a degraded answer, or fail DEADLINE_EXCEEDED), fan its candidates
 * out to the pool, and keep the survivors for the next stage. The answer is the merged ranking
 * (cascade.h's merge rule); RerankStream also sends the ranking after every stage but the
 * last. A stage after the first that fails for time, availability or a full pool
 * (RESOURCE_EXHAUSTED) leaves the earlier ranking standing (degraded) when the tier allows it.
 * No internal address reaches a client (redact.c). Both front ends enter here
 * (mr__rerank_arrive): a request reads its deadline, cancellation and key and answers through
 * its sink (coord_internal.h: a gRPC call, sink.c, or an HTTP connection, http.c). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "rpc_status.h"

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

/* Records stages pos.. of the profile as skipped (the first with the candidates it had). */
static void skip_rest(mr__req *r, int pos, int n_active, double ms) {
    int n = r->co->cfg.profiles[r->profile].n_stages;
    for (int q = pos; q < n; q++)
        mr__req_stat(r, q, q == pos ? n_active : 0, 0, q == pos ? ms : 0, 1);
}

/* Scores active[0..n_active) with profile stage pos (of the first n_run): from the carry of
 * a fused pair that ended with it, else planned against the budget and sent, alone or fused
 * with stage pos + 1 (its scores then go into cy); *ms the stage's time. 0 when scored, 1 when
 * the cascade ends here (skipped: a degraded answer), -1 with code and msg on failure. */
static int score_stage(mr__req *r, int pos, int n_run, const int *active, int n_active,
                       mr__carry *cy, double *ms, int *degraded, int *miss,
                       grpc_status_code *code, char *msg, size_t cap) {
    const mr_cc_stage *st = mr__req_stage(r, pos);
    if (mr__carry_take(r, cy, pos, active, n_active, ms)) {
        r->stage_rows[pos] = n_active;
        return 0;
    }
    if (r->sink.ops->cancelled(r->sink.ctx)) {
        *code = GRPC_STATUS_CANCELLED;
        snprintf(msg, cap, "cancelled by the client");
        return -1;
    }
    double est, rem;
    mr_stage_decision dec = mr__plan_stage(r, pos, active, n_active, &est, &rem);
    if (dec == MR_STAGE_FAIL) {
        *miss = 1;
        *code = GRPC_STATUS_DEADLINE_EXCEEDED;
        snprintf(msg, cap,
                 "stage '%s' needs about %.1f ms (%.1f with the planning safety factor), "
                 "%.1f ms of the budget left%s",
                 st->name, est, est * r->co->cfg.safety, rem > 0 ? rem : 0.0,
                 pos > 0 ? " (tier does not allow degraded answers)" : "");
        return -1;
    }
    if (dec == MR_STAGE_SKIP) {
        *miss = *degraded = 1;
        skip_rest(r, pos, n_active, 0);
        return 1;
    }
    double t_stage = mr__now_ms(), share = 1;
    r->fanned_out = 1;
    mr__fuse_plan fp;
    /* a chunked request's rows are its chunks' (chunk.c maps them): never fused */
    int fused = pos + 1 < n_run && !r->chunks && mr__plan_fuse(r, pos, active, n_active, &fp);
    if (fused) r->stage_rows[pos] = n_active;
    int rc = st->kind == MR_CC_LEXICAL
                 ? mr__lexical_stage(r, pos, active, n_active, code, msg, cap)
             : fused ? mr__fanout_fused(r, pos, active, n_active, &fp, cy, &share, code, msg, cap)
                     : mr__chunk_stage(r, pos, active, n_active, code, msg, cap);
    *ms = mr__now_ms() - t_stage;
    if (rc) {
        *miss |= *code == GRPC_STATUS_DEADLINE_EXCEEDED;
        if (pos > 0 && r->co->cfg.tiers[r->tier].allow_degraded &&
            (*code == GRPC_STATUS_DEADLINE_EXCEEDED || *code == GRPC_STATUS_UNAVAILABLE ||
             *code == GRPC_STATUS_RESOURCE_EXHAUSTED)) {
            /* the ranking of the previous stages stands: this stage's candidates keep
             * their earlier scores (a failed fan-out writes nothing) */
            *degraded = 1;
            *code = GRPC_STATUS_OK;
            skip_rest(r, pos, n_active, *ms);
            return 1;
        }
        return -1;
    }
    cy->ms = *ms * (1 - share);   /* a fused pair's time, split by token-layers */
    *ms -= cy->ms;
    return 0;
}

/* Runs the first n_run stages of the cascade over the documents of r (the rest are skipped:
 * a degraded answer): 0 (with *degraded and *miss set) or -1 with code and msg. */
static int run_cascade(mr__req *r, int n_run, int stream, int *degraded, int *miss,
                       grpc_status_code *code, char *msg, size_t cap) {
    const mr_cc_profile *pr = &r->co->cfg.profiles[r->profile];
    int *active = malloc((size_t)r->n * sizeof *active);
    mr_cand *cand = malloc((size_t)r->n * sizeof *cand);
    mr__fuse *fu = mr__fuse_begin(r);    /* NULL: no fusion phase */
    mr__carry cy = {.pos = -1};          /* a fused pair's deeper scores */
    int rc = -1;
    if (!active || !cand) {
        *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, cap, "coordinator: out of memory");
        goto done;
    }
    for (int i = 0; i < r->n; i++) active[i] = i;
    int n_active = r->n;
    int pos = 0;
    for (; pos < pr->n_stages && n_active > 0; pos++) {
        if (pos == n_run) {
            *miss = *degraded = 1;
            skip_rest(r, pos, n_active, 0);
            break;
        }
        double ms;
        int sr = score_stage(r, pos, n_run, active, n_active, &cy, &ms, degraded, miss, code,
                             msg, cap);
        if (sr < 0) goto done;
        if (sr > 0) break;
        mr__fuse_record(fu, r, pos, active, n_active);
        int kept = n_active;
        if (pos + 1 < pr->n_stages) {
            for (int i = 0; i < n_active; i++)
                cand[i] = (mr_cand){active[i], pos, r->score[active[i]]};
            kept = mr_cascade_select(cand, n_active, &r->keep[pos]);
            for (int i = 0; i < kept; i++) active[i] = cand[i].index;
        }
        mr__req_stat(r, pos, n_active, kept, ms, 0);
        n_active = kept;
        if (stream && pos + 1 < pr->n_stages) {
            size_t blen;
            uint8_t *buf = mr__wire_ranking(r, 0, 0, &blen);
            if (buf) {
                int wrc = r->sink.ops->write(r->sink.ctx, buf, blen);
                free(buf);
                if (wrc) {
                    *code = GRPC_STATUS_CANCELLED;
                    snprintf(msg, cap, "client went away");
                    goto done;
                }
            }
        }
    }
    /* a keep rule that kept none: every stage still has its entry */
    for (; n_active == 0 && pos < pr->n_stages; pos++) mr__req_stat_unreached(r, pos);
    mr__fuse_finish(fu, r);   /* out of memory: the unfused ranking stands */
    rc = 0;
done:
    mr__fuse_free(fu);
    mr__carry_free(&cy);
    free(active);
    free(cand);
    return rc;
}

void mr__rerank_refuse(mr__req *r, grpc_status_code code, const char *msg, double retry_ms) {
    r->sink.ops->fail(r->sink.ctx, code, msg, retry_ms);
    if (r->in) mr_coord_metrics_request(r->co->metrics, r->tier, outcome_of(code), 0,
                                       mr__now_ms() - r->t0);
}

/* Answers r from the first n_run stages of its profile; returns r->fanned_out. */
static int serve(mr__req *r, int n_run) {
    mr_coord *c = r->co;
    grpc_status_code code = GRPC_STATUS_OK;
    char msg[400] = "";
    int degraded = 0, miss = 0;
    if (run_cascade(r, n_run, r->stream, &degraded, &miss, &code, msg, sizeof msg)) goto fail;
    size_t blen;
    uint8_t *buf = mr__wire_ranking(r, 1, degraded, &blen);
    if (!buf) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, sizeof msg, "coordinator: out of memory");
        goto fail;
    }
    r->sink.ops->finish(r->sink.ctx, buf, blen);
    free(buf);
    mr_coord_metrics_request(c->metrics, r->tier, degraded ? MR_OUT_DEGRADED : MR_OUT_OK, miss,
                             mr__now_ms() - r->t0);
    goto done;
fail:
    mr__redact(c, msg, sizeof msg);   /* no internal address reaches a client */
    r->sink.ops->fail(r->sink.ctx, code, msg, 0);
    mr_coord_metrics_request(c->metrics, r->tier, outcome_of(code), miss, mr__now_ms() - r->t0);
done:
    return r->fanned_out;
}

int mr__rerank_serve(mr__req *r) { return serve(r, r->co->cfg.profiles[r->profile].n_stages); }

int mr__rerank_pool_free(const mr__req *r) {
    int n = mr__first_neural(r);   /* the leading lexical stages */
    return r->co->cfg.tiers[r->tier].allow_degraded &&
                   n < r->co->cfg.profiles[r->profile].n_stages
               ? n
               : 0;
}

int mr__rerank_serve_pool_free(mr__req *r) {
    int n = mr__rerank_pool_free(r);
    if (n == 0 || r->sink.ops->cancelled(r->sink.ctx)) return 0;
    /* no partial rankings here: this runs on the thread that refused the request (the rpc
     * queue thread at arrival, the sweeper), and a stream's write waits for the queue thread
     * and the client's flow control; the lexical answer goes out whole, with finish */
    r->stream = 0;
    serve(r, n);
    return 1;
}

/* Arrival (rpc queue thread or the HTTP daemon's): parse, estimate, hand to the scheduler. */
void mr__rerank_arrive(mr_coord *c, mr__sink sink, double t0, const uint8_t *body, size_t len,
                       int stream) {
    mr__req *r = calloc(1, sizeof *r);
    if (!r) {
        sink.ops->fail(sink.ctx, GRPC_STATUS_RESOURCE_EXHAUSTED, "coordinator: out of memory", 0);
        return;
    }
    r->co = c;
    r->sink = sink;
    r->stream = stream;
    r->t0 = t0;
    mr_err err = {0};
    if (mr__req_parse(r, body, len, &err) || mr__req_start(r, &err)) {
        mr__rerank_refuse(r, mr_rpc_status_of(err.code), err.msg, 0);
        mr__req_close(r);
        free(r);
        return;
    }
    grpc_status_code code;
    char msg[300];
    if (mr__auth_tier(c, &r->sink, r->tier, &code, msg, sizeof msg)) {   /* the key's tiers */
        mr__rerank_refuse(r, code, msg, 0);
        mr__req_close(r);
        free(r);
        return;
    }
    double est, first, work = mr__plan_request(r, &est, &first);
    mr__sched_submit(r, work, est, first);
}

static void arrive(mr_rpc_call *call, mr_coord *c, int stream) {
    size_t len;
    const uint8_t *body = mr_rpc_call_request(call, &len);
    mr__rerank_arrive(c, mr__sink_grpc(call), mr_rpc_call_arrival_ms(call), body, len, stream);
}

void mr__on_rerank(mr_rpc_call *call, void *user) { arrive(call, user, 0); }
void mr__on_rerank_stream(mr_rpc_call *call, void *user) { arrive(call, user, 1); }
