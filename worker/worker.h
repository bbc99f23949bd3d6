/* worker.h: the mrank worker: one checkpoint (plus unmerged adapters) served over gRPC as
 * mrank.v1.Worker (Score, Info) with grpc.health.v1, token-budget dynamic batching, token
 * admission control and Prometheus metrics.
 *
 * The files and the path of a Score call through them are listed in worker_internal.h;
 * cli/cmd_worker.c parses flags and handles signals. */
#ifndef MR_WORKER_H
#define MR_WORKER_H

#include "model.h"
#include "mr_err.h"

/* Defaults of mr_worker_opts (mr_worker_opts_default; a 0 field means the default too). */
#define MR_WORKER_RPC_THREADS 4
#define MR_WORKER_MAX_BATCH_TOKENS 16384
#define MR_WORKER_MAX_WAIT_MS 2
#define MR_WORKER_MAX_INFLIGHT_TOKENS 65536
/* Largest Score request. A Score carries at most the documents of one Rerank, which the
 * coordinator caps at limits.max_request_bytes (4 MiB by default), plus a few framing bytes per
 * document and the sub-architecture: twice the coordinator's default leaves room for both. An
 * operator who raises max_request_bytes raises --max-request-bytes to twice that. */
#define MR_WORKER_MAX_REQUEST_BYTES (8 * 1024 * 1024)

typedef struct mr_worker_opts {
    const char *model_dir;
    const char *adapter_names[MR_MAX_ADAPTERS];   /* adapter i -> bit i of adapter_mask */
    const char *adapter_dirs[MR_MAX_ADAPTERS];
    int n_adapters;
    const char *listen;          /* "127.0.0.1:0", "0.0.0.0:7001" */
    int rpc_threads;             /* gRPC handler threads (tokenization runs there); 0 -> 4 */
    int compute_threads;         /* OpenBLAS/OpenMP threads of the batcher; 0 -> all CPUs */
    int max_batch_tokens;        /* 0 -> MR_WORKER_MAX_BATCH_TOKENS */
    int max_wait_ms;             /* < 0 -> 2 */
    int max_inflight_tokens;     /* 0 -> 65536 */
    int max_request_bytes;       /* largest Score request; 0 -> MR_WORKER_MAX_REQUEST_BYTES */
    int metrics_port;            /* -1 off, 0 any free port */
    int max_len;                 /* 0 -> MR_DEFAULT_MAX_LEN */
    int warm_up_rows;            /* rows of the start-up speed measurement: 0 -> 8; < 0 none
                                    (Info then reports speed 0, unknown; the coordinator's own
                                    warm-up measures each stage) */
    const char *prompt;          /* NULL -> MR_DEFAULT_PROMPT */
    const char *backend;         /* scorer backend (backend.h): NULL -> "cpu", or "cuda" */
    const char *gemm;            /* CPU GEMM mode (gemm.h): auto, f32, bf16, int8, openblas; NULL ->
                                    the environment's MR_GEMM, else auto */
    const char *tls_cert, *tls_key;   /* PEM files: serve TLS (NULL: plaintext) */
    const char *tls_client_ca;   /* PEM CA bundle: clients must present a cert it signed */
    int no_prefix_share;         /* 1: every row computes its own copy of the query prefix
                                    (mr_run_opts.no_prefix_share; for measuring the sharing) */
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

#endif
