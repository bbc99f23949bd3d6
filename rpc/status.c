/* status.c: MR_E* to gRPC status codes, and status names (see rpc_status.h). */
#include "rpc_status.h"

#include "mr_err.h"

grpc_status_code mr_rpc_status_of(int mr_code) {
    switch (mr_code) {
    case 0: return GRPC_STATUS_OK;
    case MR_EINVAL:
    case MR_EFORMAT:
    case MR_ERANGE: return GRPC_STATUS_INVALID_ARGUMENT;
    case MR_ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case MR_ENOTFOUND: return GRPC_STATUS_NOT_FOUND;
    case MR_EUNSUPPORTED: return GRPC_STATUS_UNIMPLEMENTED;
    case MR_ESTATE: return GRPC_STATUS_UNAVAILABLE;
    default: return GRPC_STATUS_INTERNAL;
    }
}

static const char *const k_names[MR_RPC_N_STATUS] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *mr_rpc_status_name(int code) {
    return code >= 0 && code < MR_RPC_N_STATUS ? k_names[code] : "UNKNOWN";
}
