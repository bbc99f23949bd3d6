/* worker.c: the mrank worker service: Score and Info over rpc.h, with token-budget batching.
 *
 * Flow of a Score call: a gRPC handler thread unpacks and validates the request, tokenizes
 * it (query segment per request, the suffix once per worker), admits it against the in-flight
 * token budget (RESOURCE_EXHAUSTED at once when over) and queues it. The single batcher thread
 * owns the one mr_ctx (sized for max_batch_tokens at start): it drops queued requests whose
 * client cancelled or whose deadline passed, then takes the oldest request's run options as
 * the batch key and waits until the same-key queued tokens reach max_batch_tokens or the
 * oldest has waited max_wait_ms; it packs rows FIFO up to the budget (a large request may be
 * split over several batches, rows being independent), runs one mr_model_score and hands the
 * scores back. Requests with a prune schedule run alone and whole (top-k pruning ranks the
 * rows of one request against each other). The batcher answers the calls it completes.
 *
 * Locking: w->mu guards the queue, the in-flight count and the stopping flag; it is released
 * while the model runs. It is never held while taking a lock of rpc.h except the call's own
 * (finishing a call takes no worker lock), so there is no lock-order cycle. */
#define _GNU_SOURCE
#include "worker.h"
#include "backend.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "input.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "rpc_status.h"

#define MR__SCORE "/mrank.v1.Worker/Score"
#define MR__INFO "/mrank.v1.Worker/Info"
#define MR__SERVICE "mrank.v1.Worker"
#define MR__VERSION "mrank-worker 0.1"

typedef struct wreq {
    mr_rpc_call *call;
    mr_run_opts run;
    int alone;                  /* prune schedule: runs alone and whole */
    mr_ids q;                   /* query segment */
    mr_ids *p;                  /* (n) passage segments */
    int *truncated;             /* (n) */
    int n;                      /* passages */
    long tokens;                /* all rows */
    float *scores;              /* (n, run.n_exits) */
    int *depth;                 /* (n) */
    int next_row, rows_done;
    double t_admit, t_start, compute_s;
    int batch_tokens;
    struct wreq *next;
} wreq;

typedef struct bentry {
    wreq *r;
    int row0, nrows;
} bentry;

struct mr_worker {
    mr_worker_opts o;
    char prompt[1024];
    mr_model m;
    int loaded;
    const mr_backend *be;        /* scorer backend and its context (batcher thread only) */
    void *bctx;
    mr_ids suffix;
    int max_rows;
    double ns_per_tl;
    mr_rpc_server *srv;
    int port, metrics_port;
    mr__wmetrics *met;
    pthread_t batcher;
    int batcher_started;
    int shut;

    pthread_mutex_t mu;
    pthread_cond_t cv;          /* queue changed or stopping; CLOCK_MONOTONIC */
    wreq *qhead, *qtail;
    long inflight;
    int stopping;

    /* batcher-only scratch */
    bentry *entries;            /* (max_rows) */
    mr_row *rows;               /* (max_rows) */
    float *bscores;             /* (max_rows, n_heads_exit) */
    int *bdepth;                /* (max_rows) */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void mr_worker_opts_default(mr_worker_opts *o) {
    memset(o, 0, sizeof *o);
    o->listen = "127.0.0.1:0";
    o->rpc_threads = 4;
    o->max_batch_tokens = 16384;
    o->max_wait_ms = 2;
    o->max_inflight_tokens = 65536;
    o->metrics_port = -1;
    o->max_len = MR_DEFAULT_MAX_LEN;
}

static void wreq_free(wreq *r) {
    if (!r) return;
    mr_ids_free(&r->q);
    for (int i = 0; r->p && i < r->n; i++) mr_ids_free(&r->p[i]);
    free(r->p);
    free(r->truncated);
    free(r->scores);
    free(r->depth);
    free(r);
}

/* ---- answering ---- */

/* Ends r's call with an error; caller holds w->mu and has unlinked r. */
static void req_fail_locked(mr_worker *w, wreq *r, grpc_status_code code, const char *msg) {
    mr_rpc_call_fail(r->call, code, msg);
    w->inflight -= r->tokens;
    mr__wmetrics_inflight(w->met, w->inflight);
    mr__wmetrics_request(w->met, code, 0, 0, now_s() - r->t_admit);
    wreq_free(r);
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
        ps[i].tokens = (uint32_t)(r->q.n + r->p[i].n + w->suffix.n);
        ps[i].truncated = r->truncated[i] != 0;
        pp[i] = &ps[i];
    }
    double t = now_s();
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
    wreq_free(r);
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

static long row_tokens(const mr_worker *w, const wreq *r, int i) {
    return (long)(r->q.n + r->p[i].n + w->suffix.n);
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
    double t = now_s();
    for (wreq *r = w->qhead, *nx; r; r = nx) {
        nx = r->next;
        if (head->alone ? r != head : (r->alone || !same_key(&r->run, &head->run))) continue;
        int row0 = r->next_row, k = 0;
        while (row0 + k < r->n && nr + k < w->max_rows) {
            long rt = row_tokens(w, r, row0 + k);
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
    double t0 = now_s();
    int rc = mr_backend_score(w->be, w->bctx, w->rows, nr, o, w->bscores, w->bdepth, &err);
    double dt = now_s() - t0;
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
            req_fail_locked(w, r, mr_rpc_status_of(rc) == GRPC_STATUS_INVALID_ARGUMENT
                                      ? GRPC_STATUS_INVALID_ARGUMENT
                                      : GRPC_STATUS_INTERNAL,
                            msg);
        } else if (r->rows_done == r->n) {
            req_answer_locked(w, r);
        }
    }
    pthread_mutex_unlock(&w->mu);
}

static void *batcher_main(void *arg) {
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
                    for (int i = r->next_row; i < r->n; i++) tok += row_tokens(w, r, i);
            double until = head->t_admit + w->o.max_wait_ms * 1e-3;
            if (tok < w->o.max_batch_tokens && now_s() < until) {
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

/* ---- Score ---- */

static int parse_request(mr_worker *w, const Mrank__V1__ScoreRequest *rq, wreq *r, int *max_len,
                         char *msg, size_t cap) {
    const mr_model *m = &w->m;
    if (!rq->query || !*rq->query) return snprintf(msg, cap, "query is empty"), -1;
    if (rq->n_passages == 0) return snprintf(msg, cap, "no passages"), -1;
    for (size_t i = 0; i < rq->n_passages; i++)
        if (!rq->passages[i]) return snprintf(msg, cap, "passage %zu is missing", i), -1;
    mr_run_opts *o = &r->run;
    memset(o, 0, sizeof *o);
    const Mrank__V1__SubArch *a = rq->arch;
    if (rq->n_exits > MR_MAX_EXITS)
        return snprintf(msg, cap, "%zu exits, at most %d", rq->n_exits, MR_MAX_EXITS), -1;
    if (rq->n_exits) {
        for (size_t i = 0; i < rq->n_exits; i++) {
            if (rq->exits[i] > 100000) return snprintf(msg, cap, "exit %u out of range", rq->exits[i]), -1;
            o->exits[i] = (int)rq->exits[i];
        }
        o->n_exits = (int)rq->n_exits;
        if (a && a->depth && (uint32_t)o->exits[o->n_exits - 1] != a->depth)
            return snprintf(msg, cap, "last exit %d differs from arch.depth %u",
                            o->exits[o->n_exits - 1], a->depth), -1;
    } else {
        o->n_exits = 1;
        o->exits[0] = a && a->depth ? (int)a->depth : mr_model_exit_layer(m, m->n_heads_exit - 1);
    }
    o->ratio = a && a->compress_ratio ? (int)a->compress_ratio : 1;
    if (a && a->n_compress_layers > MR_MAX_COMPRESS)
        return snprintf(msg, cap, "more than %d compress_layers", MR_MAX_COMPRESS), -1;
    for (size_t i = 0; a && i < a->n_compress_layers; i++)
        o->compress_layers[o->n_compress++] = (int)(a->compress_layers[i] > 100000 ? 100000 : a->compress_layers[i]);
    if (a && a->pooling && *a->pooling) {
        if (!strcmp(a->pooling, "mean")) o->pooling = MR_POOL_MEAN;
        else if (!strcmp(a->pooling, "attention")) o->pooling = MR_POOL_ATTENTION;
        else return snprintf(msg, cap, "pooling '%.64s' is not mean or attention", a->pooling), -1;
    }
    for (size_t i = 0; a && i < a->n_adapters; i++) {
        int found = -1;
        for (int k = 0; k < w->o.n_adapters; k++)
            if (a->adapters[i] && !strcmp(a->adapters[i], w->o.adapter_names[k])) found = k;
        if (found < 0) {
            int n = snprintf(msg, cap, "unknown adapter '%.64s' (worker has:", a->adapters[i]);
            for (int k = 0; k < w->o.n_adapters && n > 0 && (size_t)n < cap; k++)
                n += snprintf(msg + n, cap - (size_t)n, " %s", w->o.adapter_names[k]);
            if (n > 0 && (size_t)n < cap)
                snprintf(msg + n, cap - (size_t)n, "%s)", w->o.n_adapters ? "" : " none");
            return -1;
        }
        o->adapter_mask |= 1u << found;
    }
    if (rq->n_prune > MR_MAX_PRUNE)
        return snprintf(msg, cap, "%zu prune steps, at most %d", rq->n_prune, MR_MAX_PRUNE), -1;
    for (size_t i = 0; i < rq->n_prune; i++) {
        const Mrank__V1__PruneStep *p = rq->prune[i];
        if (!p->top_k && !p->has_min_score)
            return snprintf(msg, cap, "prune step %zu has neither top_k nor min_score", i), -1;
        if (p->has_min_score && !isfinite(p->min_score))
            return snprintf(msg, cap, "prune step %zu: min_score is not finite", i), -1;
        o->prune[i] = (mr_prune){.layer = (int)(p->layer > 100000 ? 100000 : p->layer),
                                 .top_k = p->top_k > 1000000000u ? 1000000000 : (int)p->top_k,
                                 .min_score = p->min_score};
        o->n_prune++;
    }
    r->alone = o->n_prune > 0;
    mr_err err = {0};
    if (mr_run_opts_check(o, m, &err)) return snprintf(msg, cap, "%s", err.msg), -1;
    *max_len = rq->max_len ? (int)(rq->max_len > 1000000 ? 1000000 : rq->max_len) : w->o.max_len;
    if (*max_len > w->o.max_len || *max_len < 8)
        return snprintf(msg, cap, "max_len %u outside [8, %d]", rq->max_len, w->o.max_len), -1;
    return 0;
}

static int tokenize(mr_worker *w, const Mrank__V1__ScoreRequest *rq, wreq *r, int max_len,
                    char *msg, size_t cap, grpc_status_code *code) {
    mr_err err = {0};
    int tq = 0;
    r->n = (int)rq->n_passages;
    r->p = calloc((size_t)r->n, sizeof *r->p);
    r->truncated = calloc((size_t)r->n, sizeof *r->truncated);
    r->scores = calloc((size_t)r->n * r->run.n_exits, sizeof *r->scores);
    r->depth = calloc((size_t)r->n, sizeof *r->depth);
    *code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    if (!r->p || !r->truncated || !r->scores || !r->depth)
        return snprintf(msg, cap, "worker out of memory"), -1;
    *code = GRPC_STATUS_INVALID_ARGUMENT;
    if (mr_input_query(w->m.tok, w->m.cfg.bos_token_id, rq->query, max_len, &r->q, &tq, &err))
        return snprintf(msg, cap, "query: %s", err.msg), -1;
    if (tq && rq->truncate == MRANK__V1__TRUNCATE__TRUNCATE_NONE)
        return snprintf(msg, cap, "query does not fit max_len %d (truncate=TRUNCATE_NONE)",
                        max_len), -1;
    r->tokens = 0;
    for (int i = 0; i < r->n; i++) {
        r->truncated[i] = tq;
        if (mr_input_passage(w->m.tok, rq->passages[i], max_len, r->q.n, &r->p[i],
                             &r->truncated[i], &err))
            return snprintf(msg, cap, "passage %d: %s", i, err.msg), -1;
        if (r->truncated[i] && rq->truncate == MRANK__V1__TRUNCATE__TRUNCATE_NONE)
            return snprintf(msg, cap,
                            "passage %d does not fit max_len %d with the query "
                            "(truncate=TRUNCATE_NONE)", i, max_len), -1;
        r->tokens += row_tokens(w, r, i);
    }
    if (r->alone && (r->tokens > w->o.max_batch_tokens || r->n > w->max_rows))
        return snprintf(msg, cap,
                        "a request with a prune schedule runs as one batch: %ld tokens, "
                        "%d passages exceed the worker's %d tokens / %d rows",
                        r->tokens, r->n, w->o.max_batch_tokens, w->max_rows), -1;
    return 0;
}

static void score_handler(mr_rpc_call *call, void *user) {
    mr_worker *w = user;
    double t0 = now_s();
    char msg[512];
    grpc_status_code code = GRPC_STATUS_INVALID_ARGUMENT;
    size_t len;
    const uint8_t *b = mr_rpc_call_request(call, &len);
    Mrank__V1__ScoreRequest *rq = mrank__v1__score_request__unpack(NULL, len, b);
    wreq *r = calloc(1, sizeof *r);
    int max_len = 0;
    if (!r) {
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        snprintf(msg, sizeof msg, "worker out of memory");
        goto fail;
    }
    if (!rq) {
        snprintf(msg, sizeof msg, "malformed ScoreRequest");
        goto fail;
    }
    if (parse_request(w, rq, r, &max_len, msg, sizeof msg) ||
        tokenize(w, rq, r, max_len, msg, sizeof msg, &code))
        goto fail;
    mrank__v1__score_request__free_unpacked(rq, NULL);
    rq = NULL;
    if (mr_rpc_call_remaining_ms(call) <= 0) {
        code = GRPC_STATUS_DEADLINE_EXCEEDED;
        snprintf(msg, sizeof msg, "deadline passed before queueing");
        goto fail;
    }
    r->call = call;
    r->t_admit = t0;
    pthread_mutex_lock(&w->mu);
    if (w->inflight + r->tokens > w->o.max_inflight_tokens) {
        long in = w->inflight;
        pthread_mutex_unlock(&w->mu);
        snprintf(msg, sizeof msg, "worker overloaded: %ld tokens in flight, budget %d (request %ld)",
                 in, w->o.max_inflight_tokens, r->tokens);
        mr__wmetrics_rejected(w->met);
        mr_rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
        wreq_free(r);
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
    wreq_free(r);
    mr__wmetrics_request(w->met, code, 0, 0, now_s() - t0);
    mr_rpc_call_fail(call, code, msg);
}

/* ---- Info ---- */

static void info_handler(mr_rpc_call *call, void *user) {
    mr_worker *w = user;
    const mr_model *m = &w->m;
    Mrank__V1__WorkerInfoResponse resp = MRANK__V1__WORKER_INFO_RESPONSE__INIT;
    int nh = m->n_heads_exit;
    Mrank__V1__SubArch *archs = calloc((size_t)nh + 1, sizeof *archs);
    Mrank__V1__SubArch **pa = calloc((size_t)nh + 1, sizeof *pa);
    uint8_t *buf = NULL;
    if (!archs || !pa) goto nomem;
    const char *slash = strrchr(w->o.model_dir, '/');
    resp.model = (char *)(slash && slash[1] ? slash + 1 : w->o.model_dir);
    resp.num_layers = (uint32_t)m->cfg.n_layers;
    resp.start_layer = (uint32_t)m->cfg.start_layer;
    for (int k = 0; k < nh; k++) {
        mrank__v1__sub_arch__init(&archs[k]);
        archs[k].depth = (uint32_t)mr_model_exit_layer(m, k);
        archs[k].compress_ratio = 1;
        archs[k].pooling = (char *)"mean";
        pa[k] = &archs[k];
    }
    resp.n_archs = (size_t)nh;
    resp.archs = pa;
    resp.max_batch_tokens = (uint32_t)w->o.max_batch_tokens;
    resp.max_inflight_tokens = (uint32_t)w->o.max_inflight_tokens;
    resp.ns_per_token_layer = w->ns_per_tl;
    resp.backend = (char *)w->be->name;
    resp.untrained = w->m.untrained;
    resp.n_adapters = (size_t)w->o.n_adapters;
    resp.adapters = (char **)w->o.adapter_names;
    size_t len = mrank__v1__worker_info_response__get_packed_size(&resp);
    if (!(buf = malloc(len ? len : 1))) goto nomem;
    mrank__v1__worker_info_response__pack(&resp, buf);
    mr_rpc_call_finish(call, buf, len);
    free(buf);
    free(archs);
    free(pa);
    return;
nomem:
    free(archs);
    free(pa);
    mr_rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker out of memory");
}

/* ---- lifecycle ---- */

/* Scores a synthetic batch twice and measures the second run: ns per token per layer. */
static int warm_up(mr_worker *w, mr_err *err) {
    const mr_model *m = &w->m;
    mr_ids q = {0}, p = {0};
    int tr = 0, rc;
    char text[2048] = "";
    for (int i = 0; i < 24; i++) strcat(text, "the quick brown fox jumps over the lazy dog ");
    if ((rc = mr_input_query(m->tok, m->cfg.bos_token_id, "warm up query", w->o.max_len, &q, &tr,
                             err)) ||
        (rc = mr_input_passage(m->tok, text, w->o.max_len, q.n, &p, &tr, err)))
        goto done;
    long row = (long)(q.n + p.n + w->suffix.n);
    int n = (int)(w->o.max_batch_tokens / row);
    if (n > 8) n = 8;
    if (n > w->max_rows) n = w->max_rows;
    if (n < 1) {
        rc = mr_err_set(err, MR_EINVAL, "max-batch-tokens %d below one warm-up row (%ld tokens)",
                        w->o.max_batch_tokens, row);
        goto done;
    }
    for (int i = 0; i < n; i++)
        w->rows[i] = (mr_row){q.v, (int)q.n, p.v, (int)p.n, w->suffix.v, (int)w->suffix.n};
    mr_run_opts o;
    mr_run_opts_default(&o, m);
    o.adapter_mask = 0;
    double dt = 0;
    for (int it = 0; it < 2; it++) {
        double t0 = now_s();
        if ((rc = mr_backend_score(w->be, w->bctx, w->rows, n, &o, w->bscores, w->bdepth, err))) goto done;
        dt = now_s() - t0;
    }
    int layers = o.exits[o.n_exits - 1];
    w->ns_per_tl = dt * 1e9 / ((double)row * n * (layers > 0 ? layers : 1));
done:
    mr_ids_free(&q);
    mr_ids_free(&p);
    return rc;
}

int mr_worker_new(mr_worker **out, const mr_worker_opts *opts, mr_err *err) {
    *out = NULL;
    mr_worker *w = calloc(1, sizeof *w);
    if (!w) return mr_err_set(err, MR_ENOMEM, "worker: out of memory");
    w->o = *opts;
    w->port = w->metrics_port = -1;
    if (!w->o.rpc_threads) w->o.rpc_threads = 4;
    if (!w->o.compute_threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        w->o.compute_threads = n > 0 ? (int)n : 1;
    }
    if (!w->o.max_batch_tokens) w->o.max_batch_tokens = 16384;
    if (w->o.max_wait_ms < 0) w->o.max_wait_ms = 2;
    if (!w->o.max_inflight_tokens) w->o.max_inflight_tokens = 65536;
    if (!w->o.max_len) w->o.max_len = MR_DEFAULT_MAX_LEN;
    snprintf(w->prompt, sizeof w->prompt, "%s", w->o.prompt ? w->o.prompt : MR_DEFAULT_PROMPT);
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    int rc;
    if (!w->o.model_dir || !w->o.listen || w->o.max_batch_tokens < 16 ||
        w->o.max_inflight_tokens < w->o.max_batch_tokens || w->o.max_len < 8 ||
        w->o.rpc_threads < 1 || w->o.compute_threads < 1) {
        rc = mr_err_set(err, MR_EINVAL,
                        "worker: need --model and --listen, max-batch-tokens >= 16, "
                        "max-inflight-tokens >= max-batch-tokens, max-len >= 8");
        goto fail;
    }
    for (int i = 0; i < w->o.n_adapters; i++)
        for (int k = 0; k < i; k++)
            if (!strcmp(w->o.adapter_names[i], w->o.adapter_names[k])) {
                rc = mr_err_set(err, MR_EINVAL, "worker: adapter name '%s' given twice",
                                w->o.adapter_names[i]);
                goto fail;
            }
    openblas_set_num_threads(w->o.compute_threads);
    omp_set_num_threads(w->o.compute_threads);
    mr_model_opts mo = {.adapters = w->o.adapter_dirs, .n_adapters = w->o.n_adapters, .merge = 0};
    if ((rc = mr_model_load(&w->m, w->o.model_dir, &mo, err))) goto fail;
    w->loaded = 1;
    if (!w->m.tok) {
        rc = mr_err_set(err, MR_ENOTFOUND, "%s/tokenizer.json: no tokenizer in the model folder",
                        w->o.model_dir);
        goto fail;
    }
    if ((rc = mr_input_suffix(w->m.tok, w->prompt, &w->suffix, err))) goto fail;
    /* a row is at most max_len + suffix tokens; every row has at least 2 + suffix */
    long row_max = w->o.max_len + (long)w->suffix.n + 2;
    if (w->o.max_batch_tokens < row_max) {
        rc = mr_err_set(err, MR_EINVAL,
                        "worker: max-batch-tokens %d is below one full row (max-len %d + %zu "
                        "suffix tokens)", w->o.max_batch_tokens, w->o.max_len, w->suffix.n);
        goto fail;
    }
    w->max_rows = (int)(w->o.max_batch_tokens / (long)(w->suffix.n + 2));
    if (w->max_rows > 4096) w->max_rows = 4096;
    w->be = mr_backend_get(w->o.backend ? w->o.backend : "cpu");
    if (!w->be) {
        rc = mr_err_set(err, MR_EINVAL, "--backend %s: not built in (have: %s)", w->o.backend,
                        mr_backend_names());
        goto fail;
    }
    if ((rc = mr_backend_available(w->be, err)) ||
        (rc = mr_backend_ctx_new(w->be, &w->m, w->o.max_batch_tokens, w->max_rows, (int)row_max,
                                 &w->bctx, err)))
        goto fail;
    int nh = w->m.n_heads_exit > 0 ? w->m.n_heads_exit : 1;
    w->entries = calloc((size_t)w->max_rows, sizeof *w->entries);
    w->rows = calloc((size_t)w->max_rows, sizeof *w->rows);
    w->bscores = calloc((size_t)w->max_rows * nh, sizeof *w->bscores);
    w->bdepth = calloc((size_t)w->max_rows, sizeof *w->bdepth);
    if (!w->entries || !w->rows || !w->bscores || !w->bdepth) {
        rc = mr_err_set(err, MR_ENOMEM, "worker: out of memory");
        goto fail;
    }
    if ((rc = mr__wmetrics_new(&w->met, w->o.metrics_port, &w->metrics_port, err))) goto fail;
    if ((rc = mr_rpc_server_new(&w->srv, w->o.listen, w->o.rpc_threads, err)) ||
        (rc = mr_rpc_server_add_unary(w->srv, MR__SCORE, score_handler, w)) ||
        (rc = mr_rpc_server_add_unary(w->srv, MR__INFO, info_handler, w)))
        goto fail;
    /* listening first (NOT_SERVING) lets probes see the process while it warms up */
    if ((rc = mr_rpc_server_start(w->srv, &w->port, err))) goto fail;
    if ((rc = warm_up(w, err))) goto fail;
    if (pthread_create(&w->batcher, NULL, batcher_main, w)) {
        rc = mr_err_set(err, MR_ENOMEM, "worker: cannot start the batcher thread");
        goto fail;
    }
    w->batcher_started = 1;
    mr_rpc_server_set_health(w->srv, "", 1);
    mr_rpc_server_set_health(w->srv, MR__SERVICE, 1);
    *out = w;
    return 0;
fail:
    mr_worker_free(w);
    return rc ? rc : MR_EINVAL;
}

int mr_worker_port(const mr_worker *w) { return w->port; }
int mr_worker_metrics_port(const mr_worker *w) { return w->metrics_port; }
double mr_worker_ns_per_token_layer(const mr_worker *w) { return w->ns_per_tl; }

void mr_worker_shutdown(mr_worker *w, int drain_ms) {
    if (!w || w->shut) return;
    w->shut = 1;
    /* health goes NOT_SERVING first, then admitted calls drain through the batcher */
    if (w->srv) mr_rpc_server_shutdown(w->srv, drain_ms);
    if (w->batcher_started) {
        pthread_mutex_lock(&w->mu);
        w->stopping = 1;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->batcher, NULL);
        w->batcher_started = 0;
    }
}

void mr_worker_free(mr_worker *w) {
    if (!w) return;
    mr_worker_shutdown(w, 0);
    mr_rpc_server_free(w->srv);
    mr__wmetrics_free(w->met);
    if (w->be) mr_backend_ctx_free(w->be, w->bctx);
    w->bctx = NULL;
    mr_ids_free(&w->suffix);
    if (w->loaded) mr_model_close(&w->m);
    free(w->entries);
    free(w->rows);
    free(w->bscores);
    free(w->bdepth);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
