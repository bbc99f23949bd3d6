/* grpc_hb.c: the ThreadSanitizer side of grpc_hb.h (built only with -DMR_TSAN=ON): a release on
 * the tag's address when it is handed to gRPC, an acquire when it comes out of the completion
 * queue, through TSan's public annotation interface. */
#include "grpc_hb.h"

void __tsan_acquire(void *addr);
void __tsan_release(void *addr);

void mr_grpc_hb_handoff(const void *tag) { __tsan_release((void *)tag); }

void mr_grpc_hb_taken(const void *tag) { __tsan_acquire((void *)tag); }
