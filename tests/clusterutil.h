/* clusterutil.h: helpers shared by the in-process cluster tests (static functions, included by
 * each test file that needs them): a worker serving the bundled models/mrank-tiny on a loopback
 * port, small enough for the sanitizer build. */
#ifndef MR_CLUSTERUTIL_H
#define MR_CLUSTERUTIL_H

#include "worker.h"

/* A worker on 127.0.0.1:0 over models/mrank-tiny with one compute thread; fails the test on
 * error. */
static mr_worker *start_tiny_worker(void) {
    mr_worker_opts o;
    mr_worker_opts_default(&o);
    o.model_dir = MR_SOURCE_DIR "/models/mrank-tiny";
    o.listen = "127.0.0.1:0";
    o.compute_threads = 1;
    o.max_wait_ms = 2;
    o.max_len = 64;               /* small batches keep the start-up warm-up short under ASan */
    o.max_batch_tokens = 256;
    o.max_inflight_tokens = 4096;
    mr_worker *w = NULL;
    mr_err err = {0};
    if (mr_worker_new(&w, &o, &err)) fail_msg("worker: %s", err.msg);
    return w;
}

#endif
