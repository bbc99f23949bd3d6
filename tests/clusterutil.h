/* clusterutil.h: helpers shared by the in-process cluster tests (static functions, included by
 * each test file that needs them, after cmocka.h): shared test documents, a Rerank request
 * over them, a worker serving the bundled models/mrank-tiny on a loopback port, small enough
 * for the sanitizer build, and a coordinator started from a config text with a channel to it. */
#ifndef MR_CLUSTERUTIL_H
#define MR_CLUSTERUTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "coordinator.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "worker.h"

/* Every helper is static and a test uses some of them: no warning for the others. */
#define CU_HELPER static __attribute__((unused))

/* Eight short documents and a query for them: four about boundary layers and heat transfer,
 * four off topic, so that a ranking of them by the tiny model is not a tie. */
#define K_TINY_N_DOCS 8
#define K_TINY_QUERY "boundary layer transition on a heated flat plate"
static const char *const k_tiny_docs[K_TINY_N_DOCS] = {
    "measurements of boundary layer transition on a flat plate with heat transfer .",
    "the opera season opened with a new production and a famous tenor .",
    "laminar boundary layers at supersonic speed with wall cooling .",
    "the committee voted to raise taxes on imported grain .",
    "heat transfer in a turbulent boundary layer on a heated plate .",
    "a recipe for bread with flour , water , salt and yeast .",
    "transition from laminar to turbulent flow in a pipe .",
    "the river flooded the valley after a week of rain ."};

/* A packed RerankRequest (malloc'd, *len its size) of K_TINY_QUERY over n_docs documents, the
 * eight of k_tiny_docs over and over, for tier ("" = the default). */
CU_HELPER uint8_t *tiny_rerank_request(const char *tier, int n_docs, size_t *len) {
    enum { MAX_DOCS = 64 };
    Mrank__V1__RerankRequest rq = MRANK__V1__RERANK_REQUEST__INIT;
    Mrank__V1__Document d[MAX_DOCS], *dp[MAX_DOCS];
    assert_true(n_docs >= 0 && n_docs <= MAX_DOCS);
    for (int i = 0; i < n_docs; i++) {
        mrank__v1__document__init(&d[i]);
        d[i].text = (char *)k_tiny_docs[i % K_TINY_N_DOCS];
        dp[i] = &d[i];
    }
    rq.query = K_TINY_QUERY;
    rq.tier = (char *)tier;
    rq.n_documents = (size_t)n_docs;
    rq.documents = dp;
    *len = mrank__v1__rerank_request__get_packed_size(&rq);
    uint8_t *buf = malloc(*len + 1);
    assert_non_null(buf);
    mrank__v1__rerank_request__pack(&rq, buf);
    return buf;
}

/* The options of start_tiny_worker, for a test that changes some before mr_worker_new. */
CU_HELPER void tiny_worker_opts(mr_worker_opts *o) {
    mr_worker_opts_default(o);
    o->model_dir = MR_SOURCE_DIR "/models/mrank-tiny";
    o->listen = "127.0.0.1:0";
    o->compute_threads = 1;
    o->max_wait_ms = 2;
    o->max_len = 64;              /* small batches keep the start-up warm-up short under ASan */
    o->max_batch_tokens = 256;
    o->max_inflight_tokens = 4096;
}

/* A worker on 127.0.0.1:0 over models/mrank-tiny with one compute thread; fails the test on
 * error. */
CU_HELPER mr_worker *start_tiny_worker(void) {
    mr_worker_opts o;
    tiny_worker_opts(&o);
    mr_worker *w = NULL;
    mr_err err = {0};
    if (mr_worker_new(&w, &o, &err)) fail_msg("worker: %s", err.msg);
    return w;
}

/* A port that was free a moment ago (the coordinator's metrics endpoint takes no port 0). */
CU_HELPER int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_true(s >= 0);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

/* Shuts down (draining up to 1 s) and frees the n workers of w. */
CU_HELPER void stop_workers(mr_worker **w, int n) {
    for (int i = 0; i < n; i++) {
        mr_worker_shutdown(w[i], 1000);
        mr_worker_free(w[i]);
    }
}

/* A started coordinator for the config text json, ready (every pool answered and warmed up,
 * waited for at most 30 s); *port is its gRPC port, *mport its metrics port (mport NULL:
 * none). */
CU_HELPER mr_coord *start_cluster_coord(const char *json, int *port, int *mport) {
    mr_coord_config *cfg = calloc(1, sizeof *cfg);
    mr_coord *c = NULL;
    mr_err err = {0};
    int metrics = mport ? (*mport = free_port()) : 0;
    assert_non_null(cfg);
    if (mr_coord_config_parse(cfg, "cluster.json", json, &err)) fail_msg("config: %s", err.msg);
    if (mr_coord_new(&c, cfg, "127.0.0.1:0", metrics, &err) || mr_coord_start(c, port, &err))
        fail_msg("coordinator: %s", err.msg);
    free(cfg);
    for (int i = 0; i < 600 && !mr_coord_ready(c); i++) usleep(50000);   /* at most 30 s */
    assert_true(mr_coord_ready(c));
    return c;
}

/* A channel to the coordinator on loopback port. */
CU_HELPER mr_rpc_channel *channel_to(int port) {
    char target[64];
    mr_rpc_channel *ch = NULL;
    mr_err err = {0};
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    assert_int_equal(mr_rpc_channel_new(&ch, target, &err), 0);
    return ch;
}

#endif
