/* fuzz_http_json.c: libFuzzer target for the HTTP front end's JSON body parser
 * (coordinator/http_json.c).
 *
 * The first byte picks the shape (Cohere v2, v1, TEI), the rest is the body. A rejected body
 * must fill the error with a code and a message and leave no output; an accepted one must
 * yield a packed RerankRequest that unpacks, with a query and no NUL cut: every document's
 * text is a C string, and the answer rendering of an empty response must succeed. Must never
 * crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_json.h"
#include "mrank.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    mr_http_shape shape = (mr_http_shape)(data[0] % 3);
    uint8_t *pb = NULL;
    size_t len = 0;
    mr_http_answer a;
    mr_err err = {0};
    if (mr_http_json_request((const char *)data + 1, size - 1, shape, 1000, &pb, &len, &a, &err)) {
        if (pb || !err.code || !err.msg[0]) abort();
        return 0;
    }
    Mrank__V1__RerankRequest *r = mrank__v1__rerank_request__unpack(NULL, len, pb);
    if (!r || !r->query) abort();
    for (size_t i = 0; i < r->n_documents; i++)
        if (!r->documents[i]->text) abort();
    if ((r->return_documents != 0) != (a.return_documents != 0)) abort();
    mrank__v1__rerank_request__free_unpacked(r, NULL);
    free(pb);
    Mrank__V1__RerankResponse resp = MRANK__V1__RERANK_RESPONSE__INIT;
    uint8_t buf[16];
    size_t n = mrank__v1__rerank_response__pack(&resp, buf);
    char *txt = mr_http_json_response(buf, n, &a, "id");
    if (!txt) abort();
    free(txt);
    return 0;
}
