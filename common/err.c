/* err.c: mr_strerror and the helpers that fill an mr_err record (mr_err.h).
 *
 * The codes and their texts come from the one X-macro table in mr_err.h; nothing here logs,
 * exits or allocates, so every module can call it on any error path. Mapping a code to a gRPC
 * status is not done here but in the RPC layer (mr_rpc_status_of). */
#include "mr_err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

const char *mr_strerror(int code) {
    switch (code) {
    case 0: return "ok";
#define MR__ERR_CASE(name, value, text) case name: return text;
    MR_ERRNO_MAP(MR__ERR_CASE)
#undef MR__ERR_CASE
    default: return "unknown error";
    }
}

static int err_vset(mr_err *err, int code, const char *fmt, va_list ap) {
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return code;
}

int mr_err_set(mr_err *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int mr_err_errno(mr_err *err, const char *fmt, ...) {
    int saved = errno;
    int code = saved == ENOMEM ? MR_ENOMEM : saved == ENOENT ? MR_ENOTFOUND : MR_EIO;
    if (err) {
        char prefix[MR_ERR_MSG_LEN];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(prefix, sizeof prefix, fmt, ap);
        va_end(ap);
        mr_err_set(err, code, "%s: %s", prefix, strerror(saved));
    }
    return code;
}
