/* rpc_status.c: MR_E* to grpc_status_code (see rpc_status.h). */
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
