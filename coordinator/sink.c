/* sink.c: the gRPC implementation of mr__sink (coord_internal.h), the answer sink of a Rerank:
 * the request reads its deadline, cancellation and metadata through it and answers through
 * it, so rerank.c, sched.c and fanout.c serve a gRPC call and an HTTP connection (http.c) by
 * one path. Overload refusals carry the trailing metadata "retry-after-ms". */
#include <math.h>
#include <stdio.h>

#include "coord_internal.h"

static double g_remaining(void *ctx) { return mr_rpc_call_remaining_ms(ctx); }
static int g_cancelled(void *ctx) { return mr_rpc_call_cancelled(ctx); }

static int g_metadata(void *ctx, const char *key, char *buf, size_t cap) {
    return mr_rpc_call_metadata(ctx, key, buf, cap);
}

static int g_write(void *ctx, const uint8_t *resp, size_t len) {
    return mr_rpc_call_write(ctx, resp, len);
}

static void g_finish(void *ctx, const uint8_t *resp, size_t len) {
    mr_rpc_call_finish(ctx, resp, len);
}

static void g_fail(void *ctx, grpc_status_code code, const char *msg, double retry_ms) {
    if (retry_ms > 0) {
        char v[32];
        snprintf(v, sizeof v, "%.0f", ceil(retry_ms));
        mr_rpc_call_fail_md(ctx, code, msg, "retry-after-ms", v);
    } else {
        mr_rpc_call_fail(ctx, code, msg);
    }
}

static const mr_trace_ctx *g_trace(void *ctx) { return mr_rpc_call_trace(ctx); }

static const mr__sink_ops k_grpc = {g_remaining, g_cancelled, g_metadata, g_write,
                                    g_finish,    g_fail,      g_trace};

mr__sink mr__sink_grpc(mr_rpc_call *call) { return (mr__sink){&k_grpc, call}; }
