/* batch.c: the worker's batcher thread (see worker_internal.h).
 *
 * The single batcher owns the one scoring context (sized for max_batch_tokens at start). It
 * drops the queued rows of calls whose client cancelled or whose deadline passed (their tokens
 * leave the in-flight count at once; it looks before each batch, every SWEEP_S while it waits,
 * and between the layers of a running pass through the engine's stop check, which also stops
 * the pass when every call in the batch is cancelled), then takes the oldest
 * request's run options as the batch key and waits until the same-key queued tokens reach
 * max_batch_tokens or the oldest has waited max_wait_ms; it packs rows FIFO up to the budget
 * (a large request may be split over several batches, rows being independent), runs one
 * backend score and hands the scores back. The key includes the prune schedule: requests
 * with one (a fused stage pair's calls) batch only with others of the same schedule, each
 * whole (top-k pruning ranks the rows of one request against each other) and each its own
 * prune group of the pass (mr_run_opts.prune_group), so each is pruned as if alone; they wait
 * for a batch to fill like any other. The batcher answers the calls it completes. */
#define _GNU_SOURCE
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mrank.pb-c.h"
#include "rpc_status.h"
#include "worker_internal.h"

/* Longest wait of the batcher with requests queued before it looks for cancelled calls. */
#define SWEEP_S 0.01

/* ---- answering ---- */

/* Ends r's call with an error; caller holds w->mu and has unlinked r. */
static void req_fail_locked(mr_worker *w, wreq *r, grpc_status_code code, const char *msg) {
    mr_rpc_call_fail(r->call, code, msg);
    w->inflight -= r->tokens;
    mr__wmetrics_inflight(w->met, w->inflight);
    mr__wmetrics_request(w->met, code, 0, 0, mr__now_s() - r->t_admit);
    mr__wreq_free(r);
}

static void req_answer_locked(mr_worker *w, wreq *r) {
    Mrank__V1__ScoreResponse resp = MRANK__V1__SCORE_RESPONSE__INIT;
    Mrank__V1__PassageScores *ps = calloc((size_t)r->n, sizeof *ps);
    Mrank__V1__PassageScores **pp = calloc((size_t)r->n, sizeof *pp);
    uint32_t exits[MR_MAX_EXITS];
    uint8_t *buf = NULL;
    if (!ps || !pp) goto nomem;
    for (int e = 0; e < r->run.n_exits; e++) exits[e] = (uint32_t)r->run.exits[e];
    resp.n_exits = (size_t)r->run.n_exits;
    resp.exits = exits;
    resp.n_passages = (size_t)r->n;
    resp.passages = pp;
    for (int i = 0; i < r->n; i++) {
        mrank__v1__passage_scores__init(&ps[i]);
        ps[i].n_scores = (size_t)r->run.n_exits;
        ps[i].scores = r->scores + (size_t)i * r->run.n_exits;
        ps[i].depth = (uint32_t)r->depth[i];
        ps[i].tokens = (uint32_t)mr__wreq_row_tokens(w, r, i);
        ps[i].passage_tokens = (uint32_t)r->p[i].n;
        ps[i].truncated = r->truncated[i] != 0;
        pp[i] = &ps[i];
    }
    double t = mr__now_s();
    resp.queue_ms = (r->t_start - r->t_admit) * 1e3;
    resp.compute_ms = r->compute_s * 1e3;
    resp.batch_tokens = (uint32_t)r->batch_tokens;
    size_t len = mrank__v1__score_response__get_packed_size(&resp);
    if (!(buf = malloc(len ? len : 1))) goto nomem;
    mrank__v1__score_response__pack(&resp, buf);
    mr_rpc_call_finish(r->call, buf, len);
    w->inflight -= r->tokens;
    mr__wmetrics_inflight(w->met, w->inflight);
    mr__wmetrics_request(w->met, 0, r->t_start - r->t_admit, r->compute_s, t - r->t_admit);
    free(buf);
    free(ps);
    free(pp);
    mr__wreq_free(r);
    return;
nomem:
    free(ps);
    free(pp);
    req_fail_locked(w, r, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker out of memory");
}

/* Tokens of r's rows [from, to). */
static long rows_tokens(const mr_worker *w, const wreq *r, int from, int to) {
    long t = 0;
    for (int i = from; i < to; i++) t += mr__wreq_row_tokens(w, r, i);
    return t;
}

/* Fails r, whose call is cancelled, with CANCELLED or DEADLINE_EXCEEDED; caller holds w->mu and
 * has unlinked r. */
static void req_cancel_locked(mr_worker *w, wreq *r, const char *when) {
    int late = mr_rpc_call_remaining_ms(r->call) <= 0;
    char msg[96];
    snprintf(msg, sizeof msg, "%s %s", late ? "deadline passed" : "cancelled", when);
    req_fail_locked(w, r, late ? GRPC_STATUS_DEADLINE_EXCEEDED : GRPC_STATUS_CANCELLED, msg);
}

/* ---- the batcher ---- */

/* Prune schedules equal, step by step (min_score bit for bit). */
static int same_prune(const mr_run_opts *a, const mr_run_opts *b) {
    if (a->n_prune != b->n_prune) return 0;
    for (int i = 0; i < a->n_prune; i++)
        if (a->prune[i].layer != b->prune[i].layer || a->prune[i].top_k != b->prune[i].top_k ||
            memcmp(&a->prune[i].min_score, &b->prune[i].min_score, sizeof(float)))
            return 0;
    return 1;
}

/* The batch key: the sub-architecture, the exits and the prune schedule. */
static int same_key(const mr_run_opts *a, const mr_run_opts *b) {
    if (a->n_exits != b->n_exits || a->ratio != b->ratio || a->n_compress != b->n_compress ||
        a->pooling != b->pooling || a->adapter_mask != b->adapter_mask)
        return 0;
    return !memcmp(a->exits, b->exits, (size_t)a->n_exits * sizeof a->exits[0]) &&
           !memcmp(a->compress_layers, b->compress_layers,
                   (size_t)a->n_compress * sizeof a->compress_layers[0]) &&
           same_prune(a, b);
}

static void unlink_locked(mr_worker *w, wreq *r) {
    wreq *prev = NULL;
    for (wreq *x = w->qhead; x; prev = x, x = x->next) {
        if (x != r) continue;
        if (prev) prev->next = x->next;
        else w->qhead = x->next;
        if (w->qtail == x) w->qtail = prev;
        return;
    }
}

/* Unlinks r, whose call is cancelled, and drops its rows not yet taken into a batch: counted
 * as cancelled rows, their tokens out of the in-flight count at once. */
static void drop_untaken_locked(mr_worker *w, wreq *r) {
    unlink_locked(w, r);
    long tok = rows_tokens(w, r, r->next_row, r->n);
    mr__wmetrics_cancelled(w->met, r->n - r->next_row, (double)tok);
    r->next_row = r->n;
    r->tokens -= tok;
    w->inflight -= tok;
    mr__wmetrics_inflight(w->met, w->inflight);
}

/* Drops the queued rows of cancelled calls. A request with rows in the running batch (taken,
 * not done) is failed by run_batch when the pass ends; any other is failed here. */
static void drop_dead_locked(mr_worker *w) {
    for (wreq *r = w->qhead, *nx; r; r = nx) {
        nx = r->next;
        if (!mr_rpc_call_cancelled(r->call)) continue;
        int running = r->rows_done < r->next_row;
        drop_untaken_locked(w, r);
        if (!running) req_cancel_locked(w, r, "while queued");
    }
}

/* mr_run_opts.stop of a batch (batcher thread, between two layers): drops the queued rows of
 * cancelled calls now rather than after the pass, and stops the pass when every call in the
 * batch is cancelled. (The engine's in-pass pruning selects rows by score, not by caller, so a
 * batch shared with live calls runs to its end.) */
static int batch_stop(void *user, int layer) {
    mr_worker *w = user;
    pthread_mutex_lock(&w->mu);
    drop_dead_locked(w);
    pthread_mutex_unlock(&w->mu);
    for (int e = 0; e < w->n_entries; e++)
        if (!mr_rpc_call_cancelled(w->entries[e].r->call)) return 0;
    w->stopped_at = layer;
    return 1;
}

/* Packs rows FIFO from the queued requests with head's key up to max_batch_tokens and
 * max_rows; returns the number of entries. A head with a prune schedule is taken whole (its
 * size was checked at admission), then other queued requests with its key and schedule, each
 * whole where it fits. */
static int form_batch_locked(mr_worker *w, wreq *head, int *n_rows, long *n_tok) {
    int ne = 0, nr = 0;
    long tok = 0;
    double t = mr__now_s();
    for (wreq *r = w->qhead, *nx; r; r = nx) {
        nx = r->next;
        if (!same_key(&r->run, &head->run)) continue;
        if (head->alone && r != head &&
            (nr + r->n > w->max_rows || tok + rows_tokens(w, r, 0, r->n) > w->o.max_batch_tokens))
            continue; /* runs whole or not at all: maybe in the next batch */
        int row0 = r->next_row, k = 0;
        while (row0 + k < r->n && nr + k < w->max_rows) {
            long rt = mr__wreq_row_tokens(w, r, row0 + k);
            if (!r->alone && nr + k > 0 && tok + rt > w->o.max_batch_tokens) break;
            tok += rt;
            k++;
        }
        if (k == 0) break;
        if (row0 == 0) r->t_start = t;
        r->next_row += k;
        w->entries[ne++] = (bentry){r, row0, k};
        nr += k;
        if (r->next_row == r->n) unlink_locked(w, r);
        if (r->next_row < r->n) break;   /* the batch is full */
    }
    *n_rows = nr;
    *n_tok = tok;
    return ne;
}

static void run_batch(mr_worker *w, int ne, int nr, long ntok) {
    mr_run_opts o = w->entries[0].r->run;   /* the batch key, plus this batch's stop check */
    o.stop = batch_stop;
    o.stop_user = w;
    o.prune_group = o.n_prune ? w->bgroup : NULL; /* each request pruned as if alone */
    int k = 0;
    for (int e = 0; e < ne; e++) {
        const bentry *b = &w->entries[e];
        for (int i = 0; i < b->nrows; i++) {
            const mr_ids *p = &b->r->p[b->row0 + i];
            w->bgroup[k] = e;
            w->rows[k++] = (mr_row){b->r->q.v, (int)b->r->q.n, p->v, (int)p->n, w->suffix.v,
                                    (int)w->suffix.n};
        }
    }
    mr_err err = {0};
    w->n_entries = ne;
    w->stopped_at = 0;
    double t0 = mr__now_s();
    int rc = mr_backend_score(w->be, w->bctx, w->rows, nr, &o, w->bscores, w->bdepth, &err);
    double dt = mr__now_s() - t0;
    /* the share of the layers the pass ran: all of them, or those before the stop */
    int layers = o.exits[o.n_exits - 1];
    double ran = w->stopped_at ? (double)w->stopped_at / layers : 1.0;
    mr__wmetrics_batch(w->met, (int)ntok, (double)ntok * ran,
                       rc ? 0 : mr_backend_token_layers(w->be, w->bctx));
    pthread_mutex_lock(&w->mu);
    k = 0;
    for (int e = 0; e < ne; e++) {
        const bentry *b = &w->entries[e];
        wreq *r = b->r;
        int nx = r->run.n_exits;
        if (!rc) {
            memcpy(r->scores + (size_t)b->row0 * nx, w->bscores + (size_t)k * nx,
                   (size_t)b->nrows * nx * sizeof(float));
            memcpy(r->depth + b->row0, w->bdepth + k, (size_t)b->nrows * sizeof(int));
        }
        k += b->nrows;
        r->rows_done += b->nrows;
        r->compute_s += dt * b->nrows / nr;   /* its share of the batch, by rows */
        r->batch_tokens = (int)ntok;
        /* each request has one entry per batch: it is failed or answered here, once */
        if (rc) {
            if (r->next_row < r->n) unlink_locked(w, r);   /* still queued, partly taken */
            char msg[MR_ERR_MSG_LEN + 32];
            snprintf(msg, sizeof msg, "scoring failed: %s", err.msg);
            req_fail_locked(w, r, mr_rpc_status_of(rc), msg);
        } else if (w->stopped_at || mr_rpc_call_cancelled(r->call)) {
            /* a stopped pass means every call in it is cancelled (cancellation lasts) */
            if (w->stopped_at)
                mr__wmetrics_cancelled(w->met, b->nrows,
                                       (double)rows_tokens(w, r, b->row0, b->row0 + b->nrows) *
                                           (1.0 - ran));
            drop_untaken_locked(w, r);
            req_cancel_locked(w, r, "while running");
        } else if (r->rows_done == r->n) {
            req_answer_locked(w, r);
        }
    }
    w->n_entries = 0;
    pthread_mutex_unlock(&w->mu);
}

void *mr__batcher_main(void *arg) {
    mr_worker *w = arg;
    omp_set_num_threads(w->o.compute_threads);
    pthread_mutex_lock(&w->mu);
    for (;;) {
        drop_dead_locked(w);
        wreq *head = w->qhead;
        if (!head) {
            if (w->stopping) break;
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        if (!w->stopping) {
            long tok = 0;
            for (wreq *r = w->qhead; r && tok < w->o.max_batch_tokens; r = r->next)
                if (same_key(&r->run, &head->run))
                    for (int i = r->next_row; i < r->n; i++) tok += mr__wreq_row_tokens(w, r, i);
            double until = head->t_admit + w->o.max_wait_ms * 1e-3, now = mr__now_s();
            if (tok < w->o.max_batch_tokens && now < until) {
                /* wakes at least every SWEEP_S to drop the rows of cancelled calls */
                double t = until < now + SWEEP_S ? until : now + SWEEP_S;
                struct timespec ts = {(time_t)t, (long)((t - (time_t)t) * 1e9)};
                pthread_cond_timedwait(&w->cv, &w->mu, &ts);
                continue;
            }
        }
        int nr;
        long ntok;
        int ne = form_batch_locked(w, head, &nr, &ntok);
        pthread_mutex_unlock(&w->mu);
        if (ne > 0) run_batch(w, ne, nr, ntok);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

