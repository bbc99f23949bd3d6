/* worker.h: the mrank worker: one checkpoint (plus unmerged adapters) served over gRPC as
 * mrank.v1.Worker (Score, Info) with grpc.health.v1, token-budget dynamic batching, token
 * admission control and Prometheus metrics.
 *
 * Files: worker.c (load, warm-up, Score/Info handlers, validation, admission, lifecycle),
 * worker_batch.c (the queue and the batcher thread that runs mr_model_score), worker_metrics.c
 * (counters, histograms and the /metrics HTTP endpoint). cli/cmd_worker.c parses flags and
 * handles signals. */
#ifndef MR_WORKER_H
#define MR_WORKER_H

#include "model.h"
#include "mr_err.h"

typedef struct mr_worker_opts {
    const char *model_dir;
    const char *adapter_names[MR_MAX_ADAPTERS];   /* adapter i -> bit i of adapter_mask */
    const char *adapter_dirs[MR_MAX_ADAPTERS];
    int n_adapters;
    const char *listen;          /* "127.0.0.1:0", "0.0.0.0:7001" */
    int rpc_threads;             /* gRPC handler threads (tokenization runs there); 0 -> 4 */
    int compute_threads;         /* OpenBLAS/OpenMP threads of the batcher; 0 -> all CPUs */
    int max_batch_tokens;        /* 0 -> 16384 */
    int max_wait_ms;             /* < 0 -> 2 */
    int max_inflight_tokens;     /* 0 -> 65536 */
    int metrics_port;            /* -1 off, 0 any free port */
    int max_len;                 /* 0 -> MR_DEFAULT_MAX_LEN */
    const char *prompt;          /* NULL -> MR_DEFAULT_PROMPT */
    const char *backend;         /* scorer backend (backend.h): NULL -> "cpu", or "cuda" */
} mr_worker_opts;

void mr_worker_opts_default(mr_worker_opts *o);

typedef struct mr_worker mr_worker;

/* Loads the model, creates the batch context, runs the warm-up, starts the batcher, the gRPC
 * server and the metrics endpoint, then reports SERVING. */
int mr_worker_new(mr_worker **out, const mr_worker_opts *o, mr_err *err);
int mr_worker_port(const mr_worker *w);           /* bound gRPC port */
int mr_worker_metrics_port(const mr_worker *w);   /* bound metrics port, -1 when off */
double mr_worker_ns_per_token_layer(const mr_worker *w);
/* NOT_SERVING, refuse new calls, let admitted work finish (up to drain_ms, then cancel),
 * stop the batcher and the metrics endpoint. Idempotent. */
void mr_worker_shutdown(mr_worker *w, int drain_ms);
void mr_worker_free(mr_worker *w);

/* ---- internal, shared by the worker's files ---- */

typedef struct mr__wmetrics mr__wmetrics;
/* port -1: no HTTP endpoint (the counters still work); 0: any free port. */
int mr__wmetrics_new(mr__wmetrics **out, int port, int *bound_port, mr_err *err);
void mr__wmetrics_free(mr__wmetrics *m);
void mr__wmetrics_request(mr__wmetrics *m, int grpc_code, double queue_s, double compute_s,
                          double total_s);
void mr__wmetrics_batch(mr__wmetrics *m, int tokens);
void mr__wmetrics_rejected(mr__wmetrics *m);
void mr__wmetrics_inflight(mr__wmetrics *m, long tokens);
/* The exposition text (malloc'd, caller frees). */
char *mr__wmetrics_render(mr__wmetrics *m);

#endif
