/* rpc_status.h: gRPC status codes in mrank: the one place where MR_E* error codes become
 * gRPC statuses, and the one table of status names (for metrics labels and messages). */
#ifndef MR_RPC_STATUS_H
#define MR_RPC_STATUS_H

#include <grpc/status.h>

/* MR_EINVAL/MR_EFORMAT/MR_ERANGE -> INVALID_ARGUMENT, MR_ENOMEM -> RESOURCE_EXHAUSTED,
 * MR_ENOTFOUND -> NOT_FOUND, MR_EUNSUPPORTED -> UNIMPLEMENTED, MR_ESTATE -> UNAVAILABLE,
 * anything else -> INTERNAL; 0 -> OK. */
grpc_status_code mr_rpc_status_of(int mr_code);

/* Number of gRPC status codes (OK .. UNAUTHENTICATED). */
#define MR_RPC_N_STATUS 17
/* The canonical name of a status ("OK", "RESOURCE_EXHAUSTED"); "UNKNOWN" for a code outside
 * [0, MR_RPC_N_STATUS). Never NULL. */
const char *mr_rpc_status_name(int code);

#endif
