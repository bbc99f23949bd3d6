/* worker_internal.h: the worker's shared state and the functions its files offer each other
 * (not a public API: worker.h is).
 *
 * The path of one Score call, file by file:
 *   score.c          the handler: unpack, sub-architecture -> run options, tokenize, admit, queue
 *   batch.c          the batcher thread: batches of one run-option key, scoring, the answers
 *   worker.c         lifecycle (load, warm-up, start, drain) and the Info handler
 *   worker_metrics.c counters and histograms behind /metrics (rpc/prom.h)
 *
 * Cancellation: a call whose client cancelled or whose deadline passed loses its queued rows at
 * once (their tokens leave the in-flight count) whenever the batcher looks: before each batch and
 * between the layers of a running one (the engine's stop check, mr_run_opts.stop); a running
 * batch stops between layers when every call in it is cancelled.
 *
 * Locking: mr_worker.mu guards the queue, the in-flight count and the stopping flag; it is
 * released while the model runs, and never held while taking a lock of rpc.h except the call's
 * own (finishing a call takes no worker lock), so there is no lock-order cycle. */
#ifndef MR_WORKER_INTERNAL_H
#define MR_WORKER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "backend.h"
#include "input.h"
#include "rpc.h"
#include "worker.h"

typedef struct mr__wmetrics mr__wmetrics;   /* worker_metrics.c */

/* One admitted Score request. */
typedef struct wreq {
    mr_rpc_call *call;
    mr_run_opts run;
    int alone;                  /* prune schedule: runs whole, each its own prune group */
    mr_ids q;                   /* query segment */
    mr_ids *p;                  /* (n) passage segments */
    int *truncated;             /* (n) */
    int n;                      /* passages */
    long tokens;                /* rows still counted in flight (all rows until rows of a
                                 * cancelled call are dropped from the queue) */
    float *scores;              /* (n, run.n_exits) */
    int *depth;                 /* (n) */
    int next_row, rows_done;
    double t_admit, t_start, compute_s;
    int batch_tokens;
    struct wreq *next;
} wreq;

/* One request's rows in a batch. */
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
    _Atomic double ns_per_tl;   /* the warm-up writes it while handlers may already run */
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
    int n_entries;              /* entries of the batch running */
    int stopped_at;             /* layer its pass stopped before (every call cancelled), or 0 */
    mr_row *rows;               /* (max_rows) */
    float *bscores;             /* (max_rows, n_heads_exit) */
    int *bdepth;                /* (max_rows) */
    int32_t *bgroup;            /* (max_rows) prune group of each row: its entry */
};

double mr__now_s(void);
void mr__wreq_free(wreq *r);
/* Tokens of row i of r (query + passage i + suffix). */
long mr__wreq_row_tokens(const mr_worker *w, const wreq *r, int i);

/* ---- score.c ---- */

/* rpc.h handler of Score (user: the mr_worker). */
void mr__on_score(mr_rpc_call *call, void *user);

/* ---- batch.c ---- */

/* The batcher thread (arg: the mr_worker): runs until stopping and the queue is empty. */
void *mr__batcher_main(void *arg);

/* ---- worker_metrics.c ---- */

/* port -1: no HTTP endpoint (the counters still work); 0: any free port. host: the address
 * to bind (the gRPC listener's host; NULL/"" all interfaces). counts_tl: the backend counts
 * token-layers (mrank_worker_token_layers_total is served, from 0). */
int mr__wmetrics_new(mr__wmetrics **out, const char *host, int port, int *bound_port,
                     int counts_tl, mr_err *err);
void mr__wmetrics_free(mr__wmetrics *m);
void mr__wmetrics_request(mr__wmetrics *m, int grpc_code, double queue_s, double compute_s,
                          double total_s);
/* A batch of tokens ran; computed: the tokens it computed (tokens x layers run / layers, less
 * when its pass stopped early); token_layers: the backend's count of its token-layers
 * (mr_backend_token_layers; < 0 when the backend does not count them). */
void mr__wmetrics_batch(mr__wmetrics *m, int tokens, double computed, long long token_layers);
/* rows of cancelled calls dropped (from the queue or a stopped pass), saved: the tokens they did
 * not compute (a row dropped after k of its D layers saves its tokens x (D - k) / D). */
void mr__wmetrics_cancelled(mr__wmetrics *m, long rows, double saved);
void mr__wmetrics_rejected(mr__wmetrics *m);
void mr__wmetrics_inflight(mr__wmetrics *m, long tokens);

#endif
