/* rpc_methods.h: the full gRPC method paths and health service names of mrank, in one place.
 *
 * Paths follow proto/mrank.proto (package mrank.v1) and grpc.health.v1. Servers register them,
 * clients call them; nobody spells a path anywhere else. */
#ifndef MR_RPC_METHODS_H
#define MR_RPC_METHODS_H

/* mrank.v1.Ranker: the public API (the coordinator) */
#define MR_SERVICE_RANKER "mrank.v1.Ranker"
#define MR_METHOD_RERANK "/mrank.v1.Ranker/Rerank"
#define MR_METHOD_RERANK_STREAM "/mrank.v1.Ranker/RerankStream"
#define MR_METHOD_RANKER_INFO "/mrank.v1.Ranker/Info"

/* mrank.v1.Worker: the internal API (workers) */
#define MR_SERVICE_WORKER "mrank.v1.Worker"
#define MR_METHOD_SCORE "/mrank.v1.Worker/Score"
#define MR_METHOD_WORKER_INFO "/mrank.v1.Worker/Info"

/* grpc.health.v1.Health, answered by rpc/server.c itself */
#define MR_METHOD_HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define MR_METHOD_HEALTH_WATCH "/grpc.health.v1.Health/Watch"

/* gRPC server reflection, answered by rpc/reflection.c (both versions, one handler) */
#define MR_METHOD_REFLECTION_V1 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#define MR_METHOD_REFLECTION_V1ALPHA \
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

#endif
