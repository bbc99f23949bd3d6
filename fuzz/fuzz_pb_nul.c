/* fuzz_pb_nul.c: libFuzzer target for the NUL-byte walk over encoded requests (rpc/pb_nul.c).
 * The input is walked as a RerankRequest and as a ScoreRequest; for each it must
 *  - stay in bounds and answer 0, MR_EINVAL (a NUL) or MR_EFORMAT (malformed);
 *  - never call malformed what protobuf-c's unpacker accepts, apart from a length of 4 GiB or
 *    more (the walk refuses it on purpose, whatever the protobuf-c version does);
 *  - when it finds no NUL in bytes protobuf-c accepts, find exactly the one a field appended
 *    to them carries: a query "\0" (reported as "query ... offset 0") and a repeated string or
 *    document whose index is the count protobuf-c unpacked ("passages[7] ...",
 *    "documents[7].text ..."), which checks the framing and the occurrence counting to the
 *    last byte. Any failure aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mrank.pb-c.h"
#include "pb_nul.h"

static void fail(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_pb_nul: %s (walk says: %s)\n", what, msg);
    abort();
}

/* data + tail walked as spec must give MR_EINVAL with exactly want. */
static void expect_tail(const uint8_t *data, size_t size, const uint8_t *tail, size_t n,
                        const mr_pb_nul_spec *spec, const char *want) {
    uint8_t *b = malloc(size + n);
    if (!b) abort();
    if (size) memcpy(b, data, size);
    memcpy(b + size, tail, n);
    mr_err err = {0};
    int rc = mr_pb_find_nul(b, size + n, spec, &err);
    free(b);
    if (rc != MR_EINVAL || strcmp(err.msg, want)) fail(want, err.msg);
}

/* The walk's answer for spec; a malformed verdict on bytes protobuf-c accepted aborts. */
static int walk(const uint8_t *data, size_t size, const mr_pb_nul_spec *spec, int unpacked) {
    mr_err err = {0};
    int rc = mr_pb_find_nul(data, size, spec, &err);
    if (rc != 0 && rc != MR_EINVAL && rc != MR_EFORMAT) fail("unexpected return code", err.msg);
    if (rc && !err.msg[0]) fail("an error without a message", "");
    if (unpacked && rc == MR_EFORMAT && !strstr(err.msg, "4 GiB or more"))
        fail("malformed, yet protobuf-c accepts the bytes", err.msg);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint8_t query_nul[] = {0x0a, 0x01, 0x00};               /* query = "\0" */
    static const uint8_t doc_nul[] = {0x12, 0x03, 0x0a, 0x01, 0x00};     /* {text = "\0"} */
    static const uint8_t passage_nul[] = {0x12, 0x01, 0x00};             /* passages += "\0" */
    char want[96];

    Mrank__V1__RerankRequest *rr = mrank__v1__rerank_request__unpack(NULL, size, data);
    if (walk(data, size, &mr_pb_nul_rerank_request, rr != NULL) == 0 && rr) {
        expect_tail(data, size, query_nul, sizeof query_nul, &mr_pb_nul_rerank_request,
                    "query contains a NUL byte at offset 0");
        snprintf(want, sizeof want, "documents[%zu].text contains a NUL byte at offset 0",
                 rr->n_documents);
        expect_tail(data, size, doc_nul, sizeof doc_nul, &mr_pb_nul_rerank_request, want);
    }
    mrank__v1__rerank_request__free_unpacked(rr, NULL);

    Mrank__V1__ScoreRequest *sr = mrank__v1__score_request__unpack(NULL, size, data);
    if (walk(data, size, &mr_pb_nul_score_request, sr != NULL) == 0 && sr) {
        expect_tail(data, size, query_nul, sizeof query_nul, &mr_pb_nul_score_request,
                    "query contains a NUL byte at offset 0");
        snprintf(want, sizeof want, "passages[%zu] contains a NUL byte at offset 0",
                 sr->n_passages);
        expect_tail(data, size, passage_nul, sizeof passage_nul, &mr_pb_nul_score_request, want);
    }
    if (sr) mrank__v1__score_request__free_unpacked(sr, NULL);
    return 0;
}
