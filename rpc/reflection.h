/* reflection.h: gRPC server reflection (grpc.reflection.v1 and v1alpha ServerReflectionInfo),
 * served by every mr_rpc_server (server.c registers it beside health).
 *
 * What it knows is the FileDescriptorSet compiled into the binary at build time (protoc
 * --descriptor_set_out --include_imports over proto/mrank.proto, grpc.health.v1 and the
 * reflection protos; CMakeLists.txt embeds it): list_services names the services of the
 * server's registered methods; file_by_filename and file_containing_symbol answer a file with
 * its transitive imports; extensions are answered NOT_FOUND (none are declared). */
#ifndef MR_REFLECTION_H
#define MR_REFLECTION_H

#include "rpc.h"

/* The bidi handler; user is the mr_rpc_server. Reads requests until the client closes its side
 * and answers each in order. */
void mr__rpc_reflection_info(mr_rpc_call *call, void *user);

/* Answers one serialized ServerReflectionRequest (req, len) for a server whose services are
 * services[0..n) into a malloc'd serialized ServerReflectionResponse (*out, *out_len).
 * MR_EFORMAT when req is not a ServerReflectionRequest, MR_ENOMEM, MR_EIO when the embedded
 * descriptor set does not parse. Separate from the stream for tests and fuzzing. */
int mr__rpc_reflection_answer(const uint8_t *req, size_t len, const char *const *services,
                              int n, uint8_t **out, size_t *out_len);

#endif
