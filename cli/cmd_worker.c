/* cmd_worker.c: `mrank worker`: serve one checkpoint (and its adapters) as mrank.v1.Worker.
 *
 * Parses flags into mr_worker_opts, blocks SIGTERM/SIGINT before any thread starts (so only
 * sigwait here sees them), runs the worker until a signal, then drains and exits 0. Prints one
 * line to stderr when serving: "mrank worker: serving on port P metrics-port M ..." (scripts
 * started with port 0 read the ports from it). */
#define _GNU_SOURCE
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "rpc.h"
#include "worker.h"
#include "log.h"
#include "trace.h"

static void worker_usage(FILE *f) {
    fprintf(f, "usage: mrank worker --model DIR --listen ADDR [options]\n"
          "  --model DIR               checkpoint folder (config.json, safetensors, tokenizer.json)\n"
          "  --adapter NAME=DIR        LoRA adapter kept unmerged, selected per request by NAME\n"
          "                            (SubArch.adapters); repeatable\n"
          "  --listen ADDR             gRPC address, e.g. 0.0.0.0:7001 or 127.0.0.1:0\n"
          "  --threads N               compute (OpenBLAS/OpenMP) threads (default: all CPUs)\n"
          "  --backend cpu|cuda|cuda-fp8  scorer backend (default cpu; cuda* need a CUDA build and a GPU)\n"
          "  --gemm auto|f32|bf16|int8|openblas  CPU GEMM path (default auto: bf16 on bf16\n"
          "                            weights where the CPU has AVX512-BF16; int8 only when\n"
          "                            asked; also env MR_GEMM)\n"
          "  --rpc-threads N           gRPC handler threads, which tokenize (default %d)\n"
          "  --max-batch-tokens N      tokens per model batch (default %d)\n"
          "  --max-wait-ms N           longest a request waits for a batch to fill (default %d)\n"
          "  --max-inflight-tokens N   admission budget, queued + running (default %d)\n"
          "  --max-request-bytes N     largest Score request; at least twice the coordinator's\n"
          "                            limits.max_request_bytes (default %d)\n"
          "  --metrics-port P          Prometheus /metrics over HTTP (0 = any free port)\n"
          "  --max-len N               token budget of query + passage (default 512)\n"
          "  --prompt TEXT             instruction appended to every pair\n"
          "  --warm-up-rows N          rows of the start-up speed measurement, 0..8 (default 8;\n"
          "                            0: none, for large models on small CPUs)\n"
          "  --no-prefix-share         compute the query prefix once per row instead of once\n"
          "                            per request (same scores; for measuring the sharing)\n"
          "  --drain-ms N              on SIGTERM, how long in-flight work may finish (default 10000)\n"
          "  --tls-cert FILE           serve TLS with this PEM certificate chain (re-read on change)\n"
          "  --tls-key FILE            its PEM private key\n"
          "  --tls-client-ca FILE      accept only clients with a certificate signed by this CA\n"
          "                            (mTLS; the cluster's security.internal.ca)\n"
          "  --otlp-endpoint URL       export spans as OTLP/HTTP JSON to URL\n"
          "                            (http://collector:4318/v1/traces)\n"
          MR_CLI_LOG_USAGE,
          MR_WORKER_RPC_THREADS, MR_WORKER_MAX_BATCH_TOKENS, MR_WORKER_MAX_WAIT_MS,
          MR_WORKER_MAX_INFLIGHT_TOKENS, MR_WORKER_MAX_REQUEST_BYTES);
}

int mr_cmd_worker(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},          {"adapter", 1, 0, 'a'},
        {"listen", 1, 0, 'l'},         {"threads", 1, 0, 't'},        {"backend", 1, 0, 'B'},
        {"gemm", 1, 0, 'G'},
        {"rpc-threads", 1, 0, 'r'},    {"max-batch-tokens", 1, 0, 'b'},
        {"max-wait-ms", 1, 0, 'w'},    {"max-inflight-tokens", 1, 0, 'i'},
        {"metrics-port", 1, 0, 'M'},   {"max-len", 1, 0, 'L'},
        {"prompt", 1, 0, 'P'},         {"drain-ms", 1, 0, 'd'},
        {"max-request-bytes", 1, 0, 'R'},
        {"tls-cert", 1, 0, 'C'},       {"tls-key", 1, 0, 'K'},        {"tls-client-ca", 1, 0, 'A'},
        {"otlp-endpoint", 1, 0, 'O'},  {"warm-up-rows", 1, 0, 'W'},
        {"no-prefix-share", 0, 0, 'N'},
        {"help", 0, 0, 'h'},           MR_CLI_LOG_OPTIONS,            {0, 0, 0, 0}};
    mr_worker_opts o;
    mr_worker_opts_default(&o);
    o.listen = NULL;
    char *adapter_buf[MR_MAX_ADAPTERS] = {0};
    int drain_ms = 10000, ch, rc = 2;
    const char *otlp = NULL;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': o.model_dir = optarg; break;
        case 'l': o.listen = optarg; break;
        case 'a': {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || !eq[1]) {
                fprintf(stderr, "mrank worker: --adapter: '%s' is not NAME=DIR\n", optarg);
                goto done;
            }
            if (o.n_adapters == MR_MAX_ADAPTERS) {
                fprintf(stderr, "mrank worker: at most %d adapters\n", MR_MAX_ADAPTERS);
                goto done;
            }
            char *copy = strdup(optarg);
            if (!copy) goto done;
            copy[eq - optarg] = 0;
            adapter_buf[o.n_adapters] = copy;
            o.adapter_names[o.n_adapters] = copy;
            o.adapter_dirs[o.n_adapters] = copy + (eq - optarg) + 1;
            o.n_adapters++;
            break;
        }
        case 'B': o.backend = optarg; break;
        case 'G': o.gemm = optarg; break;
        case 't': if (mr_cli_parse_int("--threads", optarg, &o.compute_threads)) goto done; break;
        case 'r': if (mr_cli_parse_int("--rpc-threads", optarg, &o.rpc_threads)) goto done; break;
        case 'b':
            if (mr_cli_parse_int("--max-batch-tokens", optarg, &o.max_batch_tokens)) goto done;
            break;
        case 'w': if (mr_cli_parse_int("--max-wait-ms", optarg, &o.max_wait_ms)) goto done; break;
        case 'i':
            if (mr_cli_parse_int("--max-inflight-tokens", optarg, &o.max_inflight_tokens))
                goto done;
            break;
        case 'M': if (mr_cli_parse_int("--metrics-port", optarg, &o.metrics_port)) goto done; break;
        case 'L': if (mr_cli_parse_int("--max-len", optarg, &o.max_len)) goto done; break;
        case 'P': o.prompt = optarg; break;
        case 'W':
            if (mr_cli_parse_int("--warm-up-rows", optarg, &o.warm_up_rows)) goto done;
            if (o.warm_up_rows < 0 || o.warm_up_rows > 8) {
                fprintf(stderr, "mrank worker: --warm-up-rows: %d is not in 0..8\n",
                        o.warm_up_rows);
                goto done;
            }
            if (!o.warm_up_rows) o.warm_up_rows = -1;
            break;
        case 'R':
            if (mr_cli_parse_int("--max-request-bytes", optarg, &o.max_request_bytes)) goto done;
            break;
        case 'd': if (mr_cli_parse_int("--drain-ms", optarg, &drain_ms)) goto done; break;
        case 'C': o.tls_cert = optarg; break;
        case 'K': o.tls_key = optarg; break;
        case 'A': o.tls_client_ca = optarg; break;
        case 'O': otlp = optarg; break;
        case 'N': o.no_prefix_share = 1; break;
        case 'h': worker_usage(stdout); rc = 0; goto done;
        default:
            if (mr_cli_log_option(ch, optarg, "mrank worker") == 1) break;
            worker_usage(stderr);
            goto done;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mrank worker: unexpected argument '%s'\n", argv[optind]);
        goto done;
    }
    if (!o.model_dir || !o.listen) {
        fprintf(stderr, "mrank worker: --model and --listen are required\n");
        worker_usage(stderr);
        goto done;
    }
    if (o.metrics_port > 65535 || o.max_batch_tokens < 1 || o.max_inflight_tokens < 1 ||
        o.max_len < 1 || o.max_request_bytes < 1 ||
        o.max_request_bytes > MR_RPC_MAX_MESSAGE || o.compute_threads < 0 || o.rpc_threads < 1 || o.max_wait_ms < 0) {
        fprintf(stderr, "mrank worker: a numeric option is out of range\n");
        goto done;
    }

    mr_cli_log_start("mrank worker");
    mr_err err = {0};
    if (otlp && *otlp && mr_trace_export_start(otlp, "mrank-worker", &err)) {
        mr_log(MR_LOG_ERROR, "config_error", "%s", err.msg);
        goto done;
    }
    /* every thread created from here on inherits the blocked mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    mr_worker *w = NULL;
    if (mr_worker_new(&w, &o, &err)) {
        mr_log(MR_LOG_ERROR, "start_failed", "%s\n", err.msg);
        rc = 1;
        goto done;
    }
    mr_log(MR_LOG_INFO, "serving",
            "serving on port %d metrics-port %d (%.3g ns per token-layer, "
            "max-batch-tokens %d, max-inflight-tokens %d)\n",
            mr_worker_port(w), mr_worker_metrics_port(w), mr_worker_ns_per_token_layer(w),
            o.max_batch_tokens, o.max_inflight_tokens);
    int sig = 0;
    sigwait(&set, &sig);
    mr_log(MR_LOG_INFO, "draining", "%s: draining (up to %d ms)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", drain_ms);
    mr_worker_shutdown(w, drain_ms);
    mr_worker_free(w);
    mr_log(MR_LOG_INFO, "stopped", "stopped\n");
    rc = 0;
done:
    mr_trace_export_stop();
    for (int i = 0; i < MR_MAX_ADAPTERS; i++) free(adapter_buf[i]);
    return rc;
}
