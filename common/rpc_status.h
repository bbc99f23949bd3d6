/* rpc_status.h: the one place where mrank error codes become gRPC status codes. */
#ifndef MR_RPC_STATUS_H
#define MR_RPC_STATUS_H

#include <grpc/status.h>

/* MR_EINVAL/MR_EFORMAT/MR_ERANGE -> INVALID_ARGUMENT, MR_ENOMEM -> RESOURCE_EXHAUSTED,
 * MR_ENOTFOUND -> NOT_FOUND, MR_EUNSUPPORTED -> UNIMPLEMENTED, MR_ESTATE -> UNAVAILABLE,
 * anything else -> INTERNAL; 0 -> OK. */
grpc_status_code mr_rpc_status_of(int mr_code);

#endif
