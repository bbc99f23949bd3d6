/* test_reflection.c: gRPC server reflection's answers (rpc/reflection.c) over the descriptor
 * set embedded at build time: list_services echoes the server's services; a service, a method,
 * a message, a nested field and an enum each lead to mrank.proto; a health symbol to
 * health.proto; file_by_filename returns the file first; unknown names and extensions are
 * NOT_FOUND, an empty request INVALID_ARGUMENT, bytes that are no request MR_EFORMAT; every
 * answer echoes the request and its host; seeded random bytes never crash (the sanitizer
 * build checks bounds). The stream itself is tested against a live server by
 * tests/protocol_conventions.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "prng.h"
#include "reflection.h"

static const char *const k_services[] = {"mrank.v1.Ranker", "grpc.health.v1.Health"};

/* Packs rq, answers it, returns the unpacked response (caller frees). */
static Grpc__Reflection__V1__ServerReflectionResponse *ask(
    Grpc__Reflection__V1__ServerReflectionRequest *rq) {
    size_t n = grpc__reflection__v1__server_reflection_request__get_packed_size(rq);
    uint8_t *b = malloc(n + 1), *out = NULL;
    assert_non_null(b);
    grpc__reflection__v1__server_reflection_request__pack(rq, b);
    size_t len = 0;
    assert_int_equal(mr__rpc_reflection_answer(b, n, k_services, 2, &out, &len), 0);
    free(b);
    Grpc__Reflection__V1__ServerReflectionResponse *r =
        grpc__reflection__v1__server_reflection_response__unpack(NULL, len, out);
    free(out);
    assert_non_null(r);
    assert_non_null(r->original_request);
    assert_int_equal(r->original_request->message_request_case, rq->message_request_case);
    assert_string_equal(r->valid_host, rq->host);
    return r;
}

/* The file names of a file_descriptor_response, in order, joined by spaces. */
static void file_names(const Grpc__Reflection__V1__ServerReflectionResponse *r, char *buf,
                       size_t cap) {
    assert_int_equal(r->message_response_case,
                     GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
    buf[0] = 0;
    for (size_t i = 0; i < r->file_descriptor_response->n_file_descriptor_proto; i++) {
        const ProtobufCBinaryData *d = &r->file_descriptor_response->file_descriptor_proto[i];
        Google__Protobuf__FileDescriptorProto *f =
            google__protobuf__file_descriptor_proto__unpack(NULL, d->len, d->data);
        assert_non_null(f);
        strncat(buf, f->name, cap - strlen(buf) - 2);
        strcat(buf, " ");
        google__protobuf__file_descriptor_proto__free_unpacked(f, NULL);
    }
}

static void test_list_services(void **state) {
    Grpc__Reflection__V1__ServerReflectionRequest rq =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.host = "example:1";
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    rq.list_services = "";
    Grpc__Reflection__V1__ServerReflectionResponse *r = ask(&rq);
    assert_int_equal(r->message_response_case,
                     GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
    assert_int_equal(r->list_services_response->n_service, 2);
    assert_string_equal(r->list_services_response->service[0]->name, "mrank.v1.Ranker");
    assert_string_equal(r->list_services_response->service[1]->name, "grpc.health.v1.Health");
    grpc__reflection__v1__server_reflection_response__free_unpacked(r, NULL);
}

static void symbol_file(const char *sym, const char *want_first) {
    Grpc__Reflection__V1__ServerReflectionRequest rq =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    rq.file_containing_symbol = (char *)sym;
    Grpc__Reflection__V1__ServerReflectionResponse *r = ask(&rq);
    char names[512];
    file_names(r, names, sizeof names);
    assert_int_equal(strncmp(names, want_first, strlen(want_first)), 0);
    grpc__reflection__v1__server_reflection_response__free_unpacked(r, NULL);
}

static void not_found(Grpc__Reflection__V1__ServerReflectionRequest *rq, int code) {
    Grpc__Reflection__V1__ServerReflectionResponse *r = ask(rq);
    assert_int_equal(r->message_response_case,
                     GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    assert_int_equal(r->error_response->error_code, code);
    grpc__reflection__v1__server_reflection_response__free_unpacked(r, NULL);
}

static void test_symbols(void **state) {
    symbol_file("mrank.v1.Ranker", "mrank.proto ");
    symbol_file("mrank.v1.Ranker.RerankStream", "mrank.proto ");
    symbol_file("mrank.v1.Worker.Score", "mrank.proto ");
    symbol_file("mrank.v1.RerankRequest", "mrank.proto ");
    symbol_file("mrank.v1.RerankRequest.query", "mrank.proto ");
    symbol_file("mrank.v1.Truncate", "mrank.proto ");
    symbol_file("grpc.health.v1.Health.Watch", "grpc/health/v1/health.proto ");
    symbol_file("grpc.health.v1.HealthCheckResponse.ServingStatus",
                "grpc/health/v1/health.proto ");
    Grpc__Reflection__V1__ServerReflectionRequest rq =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    const char *bad[] = {"mrank.v1.Nope", "mrank.v1", "mrank.v1.Ranker.Nope", "mrank.v1.Rank",
                         "", ".", "mrank.v1.Ranker.", "x.mrank.v1.Ranker"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rq.file_containing_symbol = (char *)bad[i];
        not_found(&rq, 5);
    }
}

static void test_files(void **state) {
    Grpc__Reflection__V1__ServerReflectionRequest rq =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
    rq.file_by_filename = "mrank.proto";
    Grpc__Reflection__V1__ServerReflectionResponse *r = ask(&rq);
    char names[512];
    file_names(r, names, sizeof names);
    assert_string_equal(names, "mrank.proto ");   /* it imports nothing */
    grpc__reflection__v1__server_reflection_response__free_unpacked(r, NULL);
    rq.file_by_filename = "nope.proto";
    not_found(&rq, 5);
    /* extensions: none declared */
    Grpc__Reflection__V1__ExtensionRequest ext = GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
    ext.containing_type = "mrank.v1.RerankRequest";
    ext.extension_number = 100;
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION;
    rq.file_containing_extension = &ext;
    not_found(&rq, 5);
    rq.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE;
    rq.all_extension_numbers_of_type = "mrank.v1.RerankRequest";
    r = ask(&rq);
    assert_int_equal(r->message_response_case,
                     GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE);
    assert_string_equal(r->all_extension_numbers_response->base_type_name,
                        "mrank.v1.RerankRequest");
    assert_int_equal(r->all_extension_numbers_response->n_extension_number, 0);
    grpc__reflection__v1__server_reflection_response__free_unpacked(r, NULL);
    rq.all_extension_numbers_of_type = "mrank.v1.Nope";
    not_found(&rq, 5);
    rq.message_request_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST__NOT_SET;
    not_found(&rq, 3);
}

static void test_garbage(void **state) {
    uint8_t *out = NULL;
    size_t len = 0;
    const uint8_t bad[] = {0x0a, 0x05, 'a'};   /* host: 5 bytes announced, 1 there */
    assert_int_equal(mr__rpc_reflection_answer(bad, sizeof bad, k_services, 2, &out, &len),
                     MR_EFORMAT);
    assert_null(out);
    /* unknown fields are not echoed: this request is one fixed32 field numbered 0 (a
     * non-minimal tag protobuf-c accepts); packed back, protobuf-c refused the answer */
    const uint8_t field0[] = {0x85, 0x00, 0x2a, 0x00, 0x2a, 0x00};
    assert_int_equal(mr__rpc_reflection_answer(field0, sizeof field0, k_services, 2, &out, &len),
                     0);
    Grpc__Reflection__V1__ServerReflectionResponse *r =
        grpc__reflection__v1__server_reflection_response__unpack(NULL, len, out);
    assert_non_null(r);
    assert_non_null(r->original_request);
    assert_int_equal(r->original_request->base.n_unknown_fields, 0);
    assert_int_equal(r->error_response->error_code, 3);
    grpc__reflection__v1__server_reflection_response__free_unpacked(r, NULL);
    free(out);
    out = NULL;
    /* seeded random bytes: any outcome but a crash; 0 or MR_EFORMAT only */
    uint64_t seed = 7;
    uint8_t buf[64];
    for (int it = 0; it < 2000; it++) {
        size_t n = (uint32_t)mr_prng_next(&seed) % sizeof buf;
        for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)(uint32_t)mr_prng_next(&seed);
        int rc = mr__rpc_reflection_answer(buf, n, k_services, 2, &out, &len);
        assert_true(rc == 0 || rc == MR_EFORMAT);
        if (!rc) {   /* every answer unpacks */
            r = grpc__reflection__v1__server_reflection_response__unpack(NULL, len, out);
            assert_non_null(r);
            grpc__reflection__v1__server_reflection_response__free_unpacked(r, NULL);
        }
        free(out);
        out = NULL;
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_services),
        cmocka_unit_test(test_symbols),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
