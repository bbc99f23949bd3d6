/* fuzz_worker_request.c: libFuzzer target for the worker's request path. The input bytes are
 * sent as a /mrank.v1.Worker/Score request to an in-process worker (4-layer seeded model,
 * loopback, port chosen by the kernel): protobuf decoding, validation, tokenization of the
 * query and passages, batching and scoring. Every input must get an answer (OK or a status
 * with a message) within the deadline; never a crash, hang or sanitizer report.
 * The tokenizer comes from MR_FUZZ_TOKENIZER (scripts/fuzz.sh sets it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "rpc.h"
#include "rpc_methods.h"
#include "seeded.h"
#include "tokenizer.h"
#include "worker.h"

static mr_worker *g_worker;
static mr_rpc_channel *g_ch;

static void die(const char *what, const mr_err *err) {
    fprintf(stderr, "fuzz_worker_request: %s: %s\n", what, err ? err->msg : "");
    abort();
}

static void start(void) {
    static char dir[64], cmd[512];
    mr_err err = {0};
    mr_tokenizer *tok = NULL;
    const char *tj = getenv("MR_FUZZ_TOKENIZER");
    if (!tj || mr_tokenizer_new(&tok, tj, &err)) die("MR_FUZZ_TOKENIZER", &err);
    mr_config c = {.arch = MR_ARCH_LLAMA, .n_layers = 4, .d_model = 32, .n_heads = 4,
                   .n_kv_heads = 2, .head_dim = 8, .d_ff = 48, .max_pos = 4096,
                   .rope_theta = 10000, .rms_eps = 1e-6f, .bos_token_id = 1, .layer_wise = 1,
                   .start_layer = 1, .layer_sep = 1, .dtype = MR_DT_F32,
                   .vocab_size = mr_tokenizer_vocab_size(tok)};
    mr_tokenizer_free(tok);
    snprintf(dir, sizeof dir, "/tmp/mrank-fuzz-worker-XXXXXX");
    if (!mkdtemp(dir)) die("mkdtemp", NULL);
    snprintf(cmd, sizeof cmd, "cp '%s' %s/tokenizer.json", tj, dir);
    if (system(cmd) || mr_seeded_write(&c, dir, 1, &err)) die("model", &err);
    mr_worker_opts o;
    mr_worker_opts_default(&o);
    o.model_dir = dir;
    o.listen = "127.0.0.1:0";
    o.compute_threads = 1;
    o.metrics_port = -1;
    o.max_len = 128;
    o.max_wait_ms = 0;
    if (mr_worker_new(&g_worker, &o, &err)) die("worker", &err);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir); /* loaded: the files are no longer read */
    if (system(cmd)) die("rm", NULL);
    snprintf(cmd, sizeof cmd, "127.0.0.1:%d", mr_worker_port(g_worker));
    if (mr_rpc_channel_new(&g_ch, cmd, &err)) die("channel", &err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_worker) start();
    uint8_t *resp = NULL;
    size_t resp_len = 0;
    grpc_status_code st;
    char msg[256];
    /* 15 s: a hang, not a slow sanitized run beside another fuzzer (the scoring of one
     * request of this 4-layer model takes milliseconds); below fuzz.sh's -timeout of 20 s */
    mr_rpc_unary(g_ch, MR_METHOD_SCORE, data, size, 15000, &resp, &resp_len, &st, msg,
                 sizeof msg);
    if (st == GRPC_STATUS_DEADLINE_EXCEEDED) {
        fprintf(stderr, "no answer within 15 s\n");
        abort();
    }
    free(resp);
    return 0;
}
