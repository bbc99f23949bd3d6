/* fuzz_reflection.c: libFuzzer target for gRPC server reflection's request handling
 * (rpc/reflection.c, mr__rpc_reflection_answer). The input is a ServerReflectionRequest as a
 * client would send it; the answer must be 0 with a response that unpacks again and echoes the
 * request's case, or MR_EFORMAT exactly when protobuf-c refuses the bytes. Any other outcome
 * aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "grpc/reflection/v1/reflection.pb-c.h"
#include "reflection.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const services[] = {"mrank.v1.Ranker", "grpc.health.v1.Health"};
    uint8_t *out = NULL;
    size_t len = 0;
    int rc = mr__rpc_reflection_answer(data, size, services, 2, &out, &len);
    Grpc__Reflection__V1__ServerReflectionRequest *rq =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, size, data);
    if ((rc == MR_EFORMAT) != (rq == NULL) || (rc && rc != MR_EFORMAT)) {
        fprintf(stderr, "fuzz_reflection: answer %d, protobuf-c %s\n", rc, rq ? "ok" : "refused");
        abort();
    }
    if (!rc) {
        Grpc__Reflection__V1__ServerReflectionResponse *r =
            grpc__reflection__v1__server_reflection_response__unpack(NULL, len, out);
        if (!r || !r->original_request ||
            r->original_request->message_request_case != rq->message_request_case ||
            r->message_response_case ==
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE__NOT_SET) {
            fprintf(stderr, "fuzz_reflection: bad response\n");
            abort();
        }
        grpc__reflection__v1__server_reflection_response__free_unpacked(r, NULL);
    }
    if (rq) grpc__reflection__v1__server_reflection_request__free_unpacked(rq, NULL);
    free(out);
    return 0;
}
