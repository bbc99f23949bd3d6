/* batch.c: the worker's batcher thread (see worker_internal.h).
 *
 * The single batcher owns the one scoring context (sized for max_batch_tokens at start). It
 * drops queued requests whose client cancelled or whose deadline passed, then takes the oldest
 * request's run options as the batch key and waits until the same-key queued tokens reach
 * max_batch_tokens or the oldest has waited max_wait_ms; it packs rows FIFO up to the budget
 * (a large request may be split over several batches, rows being independent), runs one
 * backend score and hands the scores back. Requests with a prune schedule run alone and whole
 * (top-k pruning ranks the rows of one request against each other). The batcher answers the
 * calls it completes. */
#define _GNU_SOURCE
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mrank.pb-c.h"
#include "rpc_status.h"
#include "worker_internal.h"

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

/* ---- the batcher ---- */

static int same_key(const mr_run_opts *a, const mr_run_opts *b) {
    if (a->n_exits != b->n_exits || a->ratio != b->ratio || a->n_compress != b->n_compress ||
        a->pooling != b->pooling || a->adapter_mask != b->adapter_mask)
        return 0;
    return !memcmp(a->exits, b->exits, (size_t)a->n_exits * sizeof a->exits[0]) &&
           !memcmp(a->compress_layers, b->compress_layers,
                   (size_t)a->n_compress * sizeof a->compress_layers[0]);
}

/* Unlinks and fails queued requests that can no longer be useful. */
static void drop_dead_locked(mr_worker *w) {
    wreq *prev = NULL, *r = w->qhead;
    while (r) {
        wreq *nx = r->next;
        if (mr_rpc_call_cancelled(r->call)) {
            if (prev) prev->next = nx;
            else w->qhead = nx;
            if (w->qtail == r) w->qtail = prev;
            int late = mr_rpc_call_remaining_ms(r->call) <= 0;
            req_fail_locked(w, r, late ? GRPC_STATUS_DEADLINE_EXCEEDED : GRPC_STATUS_CANCELLED,
                            late ? "deadline passed while queued" : "cancelled while queued");
        } else {
            prev = r;
        }
        r = nx;
    }
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

/* Packs rows FIFO from the queued requests with head's key (head alone and whole when it has
 * a prune schedule) up to max_batch_tokens and max_rows; returns the number of entries. */
static int form_batch_locked(mr_worker *w, wreq *head, int *n_rows, long *n_tok) {
    int ne = 0, nr = 0;
    long tok = 0;
    double t = mr__now_s();
    for (wreq *r = w->qhead, *nx; r; r = nx) {
        nx = r->next;
        if (head->alone ? r != head : (r->alone || !same_key(&r->run, &head->run))) continue;
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
        if (head->alone || r->next_row < r->n) break;   /* alone, or the batch is full */
    }
    *n_rows = nr;
    *n_tok = tok;
    return ne;
}

static void run_batch(mr_worker *w, int ne, int nr, long ntok) {
    const mr_run_opts *o = &w->entries[0].r->run;
    int k = 0;
    for (int e = 0; e < ne; e++) {
        const bentry *b = &w->entries[e];
        for (int i = 0; i < b->nrows; i++) {
            const mr_ids *p = &b->r->p[b->row0 + i];
            w->rows[k++] = (mr_row){b->r->q.v, (int)b->r->q.n, p->v, (int)p->n, w->suffix.v,
                                    (int)w->suffix.n};
        }
    }
    mr_err err = {0};
    double t0 = mr__now_s();
    int rc = mr_backend_score(w->be, w->bctx, w->rows, nr, o, w->bscores, w->bdepth, &err);
    double dt = mr__now_s() - t0;
    mr__wmetrics_batch(w->met, (int)ntok);
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
        if (rc) {   /* each request has one entry per batch: fail it here, once */
            if (r->next_row < r->n) unlink_locked(w, r);   /* still queued, partly taken */
            char msg[MR_ERR_MSG_LEN + 32];
            snprintf(msg, sizeof msg, "scoring failed: %s", err.msg);
            req_fail_locked(w, r, mr_rpc_status_of(rc), msg);
        } else if (r->rows_done == r->n) {
            req_answer_locked(w, r);
        }
    }
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
        if (!head->alone && !w->stopping) {
            long tok = 0;
            for (wreq *r = w->qhead; r && tok < w->o.max_batch_tokens; r = r->next)
                if (!r->alone && same_key(&r->run, &head->run))
                    for (int i = r->next_row; i < r->n; i++) tok += mr__wreq_row_tokens(w, r, i);
            double until = head->t_admit + w->o.max_wait_ms * 1e-3;
            if (tok < w->o.max_batch_tokens && mr__now_s() < until) {
                struct timespec ts = {(time_t)until, (long)((until - (time_t)until) * 1e9)};
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

