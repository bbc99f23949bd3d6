/* worker.c: the mrank worker's lifecycle (see worker.h): options, model and tokenizer
 * loading, the scoring backend, the warm-up that measures ns per token-layer, the gRPC server
 * with the Score (score.c) and Info handlers, the batcher thread (batch.c), the metrics
 * (worker_metrics.c), and the drain at shutdown. worker_internal.h maps the files. */
#define _GNU_SOURCE
#include "worker.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mrank.pb-c.h"
#include "prom.h"
#include "rpc_methods.h"
#include "tls.h"
#include "worker_internal.h"

double mr__now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void mr_worker_opts_default(mr_worker_opts *o) {
    memset(o, 0, sizeof *o);
    o->listen = "127.0.0.1:0";
    o->rpc_threads = MR_WORKER_RPC_THREADS;
    o->max_batch_tokens = MR_WORKER_MAX_BATCH_TOKENS;
    o->max_wait_ms = MR_WORKER_MAX_WAIT_MS;
    o->max_inflight_tokens = MR_WORKER_MAX_INFLIGHT_TOKENS;
    o->max_request_bytes = MR_WORKER_MAX_REQUEST_BYTES;
    o->metrics_port = -1;
    o->max_len = MR_DEFAULT_MAX_LEN;
}

long mr__wreq_row_tokens(const mr_worker *w, const wreq *r, int i) {
    return (long)(r->q.n + r->p[i].n + w->suffix.n);
}

void mr__wreq_free(wreq *r) {
    if (!r) return;
    mr_ids_close(&r->q);
    for (int i = 0; r->p && i < r->n; i++) mr_ids_close(&r->p[i]);
    free(r->p);
    free(r->truncated);
    free(r->scores);
    free(r->depth);
    free(r);
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
    resp.ns_per_token_layer = atomic_load(&w->ns_per_tl);
    resp.backend = (char *)w->be->name;
    /* the CPU GEMM path; GPU backends run their own GEMMs */
    resp.gemm_path = (char *)(strcmp(w->be->name, "cpu") ? w->be->name
                                                          : mr_gemm_path_name(m->gemm));
    resp.untrained = w->m.untrained;
    resp.dtype = (char *)(m->cfg.dtype == MR_DT_BF16  ? "bf16"
                          : m->cfg.dtype == MR_DT_F16 ? "f16"
                                                      : "f32");
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

/* Scores a synthetic batch twice and measures the second run: ns per token per layer. At full
 * depth with 8 rows of ~240 tokens that is ~50 TFLOP on a 7B model: minutes on a small CPU,
 * hence --warm-up-rows. */
static int warm_up(mr_worker *w, mr_err *err) {
    const mr_model *m = &w->m;
    if (w->o.warm_up_rows < 0) return 0;
    mr_ids q = {0}, p = {0};
    int tr = 0, rc;
    char text[2048] = "";
    for (int i = 0; i < 24; i++) strcat(text, "the quick brown fox jumps over the lazy dog ");
    if ((rc = mr_input_query(m->tok, m->cfg.bos_token_id, "warm up query", w->o.max_len, &q, &tr,
                             err)) ||
        (rc = mr_input_passage(m->tok, text, w->o.max_len, q.n, &p, &tr, err)))
        goto done;
    long row = (long)(q.n + p.n + w->suffix.n);
    int n = (int)(w->o.max_batch_tokens / row), most = w->o.warm_up_rows ? w->o.warm_up_rows : 8;
    if (n > most) n = most;
    if (n > w->max_rows) n = w->max_rows;
    if (n < 1) {
        rc = mr_err_set(err, MR_EINVAL, "max-batch-tokens %d below one warm-up row (%ld tokens)",
                        w->o.max_batch_tokens, row);
        goto done;
    }
    for (int i = 0; i < n; i++)
        w->rows[i] = (mr_row){q.v, (int)q.n, p.v, (int)p.n, w->suffix.v, (int)w->suffix.n};
    mr_run_opts o;
    mr_run_opts_init(&o, m);
    o.adapter_mask = 0;
    double dt = 0;
    for (int it = 0; it < 2; it++) {
        double t0 = mr__now_s();
        if ((rc = mr_backend_score(w->be, w->bctx, w->rows, n, &o, w->bscores, w->bdepth, err))) goto done;
        dt = mr__now_s() - t0;
    }
    int layers = o.exits[o.n_exits - 1];
    atomic_store(&w->ns_per_tl, dt * 1e9 / ((double)row * n * (layers > 0 ? layers : 1)));
done:
    mr_ids_close(&q);
    mr_ids_close(&p);
    return rc;
}

/* mTLS on the gRPC port when --tls-cert is given (docs/security.md). */
static int setup_tls(mr_worker *w, mr_err *err) {
    if (!w->o.tls_cert || !*w->o.tls_cert) {
        if ((w->o.tls_key && *w->o.tls_key) || (w->o.tls_client_ca && *w->o.tls_client_ca))
            return mr_err_set(err, MR_EINVAL, "worker: --tls-key and --tls-client-ca need "
                              "--tls-cert");
        return 0;
    }
    mr_rpc_tls_server *t = NULL;
    int rc = mr_rpc_tls_server_new(&t, w->o.tls_cert, w->o.tls_key, w->o.tls_client_ca,
                                   "worker --tls", err);
    return rc ? rc : mr_rpc_server_set_tls(w->srv, t, err);
}

int mr_worker_new(mr_worker **out, const mr_worker_opts *opts, mr_err *err) {
    *out = NULL;
    mr_worker *w = calloc(1, sizeof *w);
    if (!w) return mr_err_set(err, MR_ENOMEM, "worker: out of memory");
    w->o = *opts;
    w->port = w->metrics_port = -1;
    if (!w->o.rpc_threads) w->o.rpc_threads = MR_WORKER_RPC_THREADS;
    if (!w->o.compute_threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        w->o.compute_threads = n > 0 ? (int)n : 1;
    }
    if (!w->o.max_batch_tokens) w->o.max_batch_tokens = MR_WORKER_MAX_BATCH_TOKENS;
    if (w->o.max_wait_ms < 0) w->o.max_wait_ms = MR_WORKER_MAX_WAIT_MS;
    if (!w->o.max_inflight_tokens) w->o.max_inflight_tokens = MR_WORKER_MAX_INFLIGHT_TOKENS;
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
    mr_model_opts mo = {.adapters = w->o.adapter_dirs, .n_adapters = w->o.n_adapters, .merge = 0,
                       .gemm = w->o.gemm};
    if ((rc = mr_model_load(&w->m, w->o.model_dir, &mo, err))) goto fail;
    w->loaded = 1;
    if (!w->m.tok) {
        rc = mr_err_set(err, MR_ENOTFOUND, "%s/tokenizer.json: no tokenizer in the model folder",
                        w->o.model_dir);
        goto fail;
    }
    if ((rc = mr_input_suffix(w->m.tok, w->prompt, &w->suffix, err)) ||
        (rc = mr_input_check_vocab(&w->suffix, w->m.cfg.vocab_size, "worker: the prompt", -1,
                                         err)))
        goto fail;
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
    w->bgroup = calloc((size_t)w->max_rows, sizeof *w->bgroup);
    if (!w->entries || !w->rows || !w->bscores || !w->bdepth || !w->bgroup) {
        rc = mr_err_set(err, MR_ENOMEM, "worker: out of memory");
        goto fail;
    }
    char host[128];
    mr_prom_host_of(w->o.listen, host, sizeof host);   /* metrics beside the gRPC listener */
    if ((rc = mr__wmetrics_new(&w->met, host, w->o.metrics_port, &w->metrics_port,
                               mr_backend_token_layers(w->be, w->bctx) >= 0, err)))
        goto fail;
    if ((rc = mr_rpc_server_new(&w->srv, w->o.listen, w->o.rpc_threads, err)) ||
        (rc = setup_tls(w, err)) ||
        (rc = mr_rpc_server_set_max_receive(w->srv, w->o.max_request_bytes ? w->o.max_request_bytes
                                                                            : MR_WORKER_MAX_REQUEST_BYTES, err)) ||
        (rc = mr_rpc_server_add_unary(w->srv, MR_METHOD_SCORE, mr__on_score, w)) ||
        (rc = mr_rpc_server_add_unary(w->srv, MR_METHOD_WORKER_INFO, info_handler, w)))
        goto fail;
    /* listening first (NOT_SERVING) lets probes see the process while it warms up */
    if ((rc = mr_rpc_server_start(w->srv, &w->port, err))) goto fail;
    if ((rc = warm_up(w, err))) goto fail;
    if (pthread_create(&w->batcher, NULL, mr__batcher_main, w)) {
        rc = mr_err_set(err, MR_ENOMEM, "worker: cannot start the batcher thread");
        goto fail;
    }
    w->batcher_started = 1;
    mr_rpc_server_set_health(w->srv, "", 1);
    mr_rpc_server_set_health(w->srv, MR_SERVICE_WORKER, 1);
    *out = w;
    return 0;
fail:
    mr_worker_free(w);
    return rc ? rc : MR_EINVAL;
}

int mr_worker_port(const mr_worker *w) { return w->port; }
int mr_worker_metrics_port(const mr_worker *w) { return w->metrics_port; }
double mr_worker_ns_per_token_layer(const mr_worker *w) {
    return atomic_load(&((mr_worker *)w)->ns_per_tl);
}

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
    mr_ids_close(&w->suffix);
    if (w->loaded) mr_model_close(&w->m);
    free(w->entries);
    free(w->rows);
    free(w->bscores);
    free(w->bdepth);
    free(w->bgroup);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
