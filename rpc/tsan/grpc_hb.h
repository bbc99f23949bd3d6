/* grpc_hb.h: happens-before annotations for ThreadSanitizer around gRPC core's completion
 * queues.
 *
 * A tag given to gRPC (grpc_call_start_batch, grpc_server_request_*_call,
 * grpc_server_shutdown_and_notify) comes back out of grpc_completion_queue_next on another
 * thread, and everything the first thread wrote before handing it over belongs to the second.
 * gRPC synchronises that inside libgrpc, which is not instrumented, so TSan sees two threads
 * touching the same memory with no order between them. MR_GRPC_HANDOFF(tag) just before a tag
 * goes to gRPC and MR_GRPC_TAKEN(tag) just after it comes out tell TSan about that edge, and
 * nothing else: real races in mrank code are still reported. In builds without MR_TSAN both are
 * no-ops; with it they call grpc_hb.c (compiled only then). */
#ifndef MR_GRPC_HB_H
#define MR_GRPC_HB_H

#ifdef MR_TSAN
void mr_grpc_hb_handoff(const void *tag);
void mr_grpc_hb_taken(const void *tag);
#define MR_GRPC_HANDOFF(tag) mr_grpc_hb_handoff(tag)
#define MR_GRPC_TAKEN(tag) mr_grpc_hb_taken(tag)
#else
#define MR_GRPC_HANDOFF(tag) ((void)(tag))
#define MR_GRPC_TAKEN(tag) ((void)(tag))
#endif

#endif
