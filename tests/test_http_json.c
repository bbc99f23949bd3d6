/* test_http_json.c: the HTTP front end's JSON bodies (coordinator/http_json.c): each shape's
 * request becomes the RerankRequest it means (Cohere v2 strings, v1 {"text"} objects, TEI
 * texts with its truncate default, mrank's knobs, chunking included), mistyped fields and NUL
 * characters are refused naming the field, and a RerankResponse renders in each shape's answer
 * form (with a result's chunk only when chunking was asked). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "http_json.h"
#include "mrank.pb-c.h"

static Mrank__V1__RerankRequest *parse(const char *body, mr_http_shape shape, mr_http_answer *a,
                                       mr_err *err) {
    uint8_t *pb = NULL;
    size_t len = 0;
    if (mr_http_json_request(body, strlen(body), shape, 1000, &pb, &len, a, err)) {
        assert_null(pb);
        return NULL;
    }
    Mrank__V1__RerankRequest *r = mrank__v1__rerank_request__unpack(NULL, len, pb);
    free(pb);
    assert_non_null(r);
    return r;
}

static void test_shapes(void **state) {
    (void)state;
    mr_http_answer a;
    mr_err err = {0};
    Mrank__V1__RerankRequest *r =
        parse("{\"model\": \"m\", \"query\": \"q\", \"documents\": [\"x\", \"y\"], \"top_n\": 1, "
              "\"return_documents\": true, \"tier\": \"t\", \"profile\": \"p\", \"request_id\": "
              "\"r1\", \"overrides\": [{\"stage\": 1, \"keep_top_k\": 3, \"min_score\": -2}], "
              "\"rank_fields\": [\"ignored\"]}",
              MR_HTTP_COHERE_V2, &a, &err);
    assert_non_null(r);
    assert_string_equal(r->query, "q");
    assert_int_equal(r->n_documents, 2);
    assert_string_equal(r->documents[1]->text, "y");
    assert_int_equal(r->top_n, 1);
    assert_true(r->return_documents && a.return_documents);
    assert_string_equal(r->tier, "t");
    assert_string_equal(r->profile, "p");
    assert_string_equal(r->request_id, "r1");
    assert_int_equal(r->n_overrides, 1);
    assert_int_equal(r->overrides[0]->stage, 1);
    assert_int_equal(r->overrides[0]->keep_top_k, 3);
    assert_true(r->overrides[0]->has_min_score);
    assert_int_equal(r->truncate, MRANK__V1__TRUNCATE__TRUNCATE_END);
    assert_string_equal(a.model, "m");
    assert_null(r->chunking);
    assert_false(a.chunking);
    mrank__v1__rerank_request__free_unpacked(r, NULL);
    /* mrank's chunking, in every shape (the coordinator validates the values) */
    static const char *const chunked[3] = {
        "{\"query\": \"q\", \"documents\": [\"x\"], \"chunking\": "
        "{\"window\": 24, \"stride\": 12, \"max_chunks\": 4}}",
        "{\"query\": \"q\", \"documents\": [{\"text\": \"x\"}], \"chunking\": "
        "{\"window\": 24, \"stride\": 12, \"max_chunks\": 4}}",
        "{\"query\": \"q\", \"texts\": [\"x\"], \"chunking\": "
        "{\"window\": 24, \"stride\": 12, \"max_chunks\": 4}}"};
    const mr_http_shape shapes[3] = {MR_HTTP_COHERE_V2, MR_HTTP_COHERE_V1, MR_HTTP_TEI};
    for (int i = 0; i < 3; i++) {
        r = parse(chunked[i], shapes[i], &a, &err);
        assert_non_null(r);
        assert_non_null(r->chunking);
        assert_int_equal(r->chunking->window, 24);
        assert_int_equal(r->chunking->stride, 12);
        assert_int_equal(r->chunking->max_chunks, 4);
        assert_true(a.chunking);
        mrank__v1__rerank_request__free_unpacked(r, NULL);
    }
    r = parse("{\"query\": \"q\", \"documents\": [{\"text\": \"x\"}, \"y\"]}", MR_HTTP_COHERE_V1,
              &a, &err);
    assert_non_null(r);
    assert_string_equal(r->documents[0]->text, "x");
    mrank__v1__rerank_request__free_unpacked(r, NULL);
    /* TEI: texts; without truncate a pair that does not fit is an error (TRUNCATE_NONE) */
    r = parse("{\"query\": \"q\", \"texts\": [\"x\"], \"raw_scores\": true}", MR_HTTP_TEI, &a,
              &err);
    assert_non_null(r);
    assert_int_equal(r->truncate, MRANK__V1__TRUNCATE__TRUNCATE_NONE);
    assert_true(a.raw_scores);
    mrank__v1__rerank_request__free_unpacked(r, NULL);
    r = parse("{\"query\": \"q\", \"texts\": [\"x\"], \"truncate\": true}", MR_HTTP_TEI, &a, &err);
    assert_int_equal(r->truncate, MRANK__V1__TRUNCATE__TRUNCATE_END);
    mrank__v1__rerank_request__free_unpacked(r, NULL);
}

static void test_refusals(void **state) {
    (void)state;
    static const struct {
        mr_http_shape shape;
        const char *body, *names;
    } bad[] = {
        {MR_HTTP_COHERE_V2, "{\"query\": \"q\", \"documents\": [\"a\\u0000b\"]}", "NUL"},
        {MR_HTTP_COHERE_V2, "{\"query\": \"q\", \"documents\": [\"a\"]}x", "JSON"},
        {MR_HTTP_COHERE_V2, "[1]", "object"},
        {MR_HTTP_COHERE_V2, "{\"documents\": [\"a\"]}", "query"},
        {MR_HTTP_COHERE_V2, "{\"query\": 1, \"documents\": [\"a\"]}", "query"},
        {MR_HTTP_COHERE_V2, "{\"query\": \"q\", \"documents\": {}}", "documents"},
        {MR_HTTP_COHERE_V2, "{\"query\": \"q\", \"documents\": [\"a\"], \"top_n\": 1.5}", "top_n"},
        {MR_HTTP_COHERE_V2, "{\"query\": \"q\", \"documents\": [\"a\"], \"return_documents\": 1}",
         "return_documents"},
        {MR_HTTP_COHERE_V1, "{\"query\": \"q\", \"documents\": [{\"txt\": \"a\"}]}", "documents[0]"},
        {MR_HTTP_COHERE_V2, "{\"query\": \"q\", \"documents\": [\"a\"], \"overrides\": [{}]}",
         "overrides[0].stage"},
        {MR_HTTP_COHERE_V2, "{\"query\": \"q\", \"documents\": [\"a\"], \"overrides\": "
         "[{\"stage\": 0, \"keep_top_k\": \"x\"}]}", "overrides[0].keep_top_k: expected an integer"},
        {MR_HTTP_TEI, "{\"query\": \"q\", \"documents\": [\"a\"]}", "texts"},
        {MR_HTTP_COHERE_V2, "{\"query\": \"q\", \"documents\": [\"a\"], \"chunking\": 24}",
         "chunking: expected an object"},
        {MR_HTTP_TEI, "{\"query\": \"q\", \"texts\": [\"a\"], \"chunking\": "
         "{\"window\": 24, \"stride\": -1}}", "chunking.stride: expected an integer"},
        {MR_HTTP_TEI, "{\"query\": \"q\", \"texts\": [\"a\"], \"truncation_direction\": \"Left\"}",
         "truncation_direction"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        mr_http_answer a;
        mr_err err = {0};
        Mrank__V1__RerankRequest *r = parse(bad[i].body, bad[i].shape, &a, &err);
        if (r) fail_msg("accepted: %s", bad[i].body);
        assert_true(err.code == MR_EINVAL || err.code == MR_EFORMAT);
        if (!strstr(err.msg, bad[i].names)) fail_msg("%s: '%s'", bad[i].body, err.msg);
    }
    /* an escaped backslash before u0000 is text, not a NUL */
    mr_http_answer a;
    mr_err err = {0};
    Mrank__V1__RerankRequest *r =
        parse("{\"query\": \"q\", \"documents\": [\"a\\\\u0000\"]}", MR_HTTP_COHERE_V2, &a, &err);
    assert_non_null(r);
    assert_string_equal(r->documents[0]->text, "a\\u0000");
    mrank__v1__rerank_request__free_unpacked(r, NULL);
    /* more documents than the limit: refused by count before any is converted, with the
     * message the gRPC path gives */
    uint8_t *pb = (uint8_t *)"";
    size_t len = 1;
    const char *three = "{\"query\": \"q\", \"documents\": [\"a\", \"b\", \"c\"]}";
    assert_int_equal(mr_http_json_request(three, strlen(three), MR_HTTP_COHERE_V2, 2, &pb, &len,
                                          &a, &err), MR_ERANGE);
    assert_null(pb);
    assert_string_equal(err.msg, "3 documents, the limit is 2 (Info.max_documents)");
    assert_int_equal(mr_http_json_request(three, strlen(three), MR_HTTP_COHERE_V2, 3, &pb, &len,
                                          &a, &err), 0);
    free(pb);
}

static void test_answers(void **state) {
    (void)state;
    Mrank__V1__RerankResult x[2], *xp[2] = {&x[0], &x[1]};
    Mrank__V1__Document d[2];
    for (int i = 0; i < 2; i++) {
        mrank__v1__rerank_result__init(&x[i]);
        mrank__v1__document__init(&d[i]);
        d[i].text = i ? "second" : "first";
        x[i].document = &d[i];
        x[i].index = (uint32_t)(1 - i);
        x[i].relevance_score = i ? 0.25f : 0.5f;
        x[i].raw_score = i ? 3.0f : -1.0f;
    }
    Mrank__V1__RerankResponse resp = MRANK__V1__RERANK_RESPONSE__INIT;
    resp.n_results = 2;
    resp.results = xp;
    uint8_t buf[256];
    size_t n = mrank__v1__rerank_response__pack(&resp, buf);
    mr_http_answer a = {.shape = MR_HTTP_COHERE_V2, .return_documents = 1};
    char *txt = mr_http_json_response(buf, n, &a, "gen-id");
    cJSON *j = cJSON_Parse(txt);
    assert_string_equal(cJSON_GetObjectItem(j, "id")->valuestring, "gen-id");
    cJSON *r0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "results"), 0);
    assert_int_equal(cJSON_GetObjectItem(r0, "index")->valueint, 1);
    assert_float_equal(cJSON_GetObjectItem(r0, "relevance_score")->valuedouble, 0.5, 1e-9);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(r0, "document"), "text")
                            ->valuestring, "first");
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "meta"), "api_version"));
    assert_null(cJSON_GetObjectItem(r0, "chunk"));   /* no chunking asked */
    cJSON_Delete(j);
    free(txt);
    /* with chunking: each result names its winning chunk (none when no chunk scored it) */
    x[0].chunk = 3, x[0].chunk_offset = 40, x[0].chunk_length = 90;
    n = mrank__v1__rerank_response__pack(&resp, buf);
    for (int shape = 0; shape < 2; shape++) {
        a = (mr_http_answer){.shape = shape ? MR_HTTP_TEI : MR_HTTP_COHERE_V1, .chunking = 1};
        txt = mr_http_json_response(buf, n, &a, "gen-id");
        j = cJSON_Parse(txt);
        cJSON *list = shape ? j : cJSON_GetObjectItem(j, "results");
        cJSON *c0 = cJSON_GetArrayItem(list, 0), *c1 = cJSON_GetArrayItem(list, 1);
        assert_non_null(cJSON_GetObjectItem(c0, "chunk"));
        assert_int_equal(cJSON_GetObjectItem(c0, "chunk")->valueint, 3);
        assert_int_equal(cJSON_GetObjectItem(c0, "chunk_offset")->valueint, 40);
        assert_int_equal(cJSON_GetObjectItem(c0, "chunk_length")->valueint, 90);
        assert_null(cJSON_GetObjectItem(c1, "chunk"));
        cJSON_Delete(j);
        free(txt);
    }
    a = (mr_http_answer){.shape = MR_HTTP_TEI, .raw_scores = 1};
    txt = mr_http_json_response(buf, n, &a, "gen-id");
    j = cJSON_Parse(txt);
    assert_true(cJSON_IsArray(j));
    cJSON *t1 = cJSON_GetArrayItem(j, 1);
    assert_float_equal(cJSON_GetObjectItem(t1, "score")->valuedouble, 3.0, 1e-9);
    assert_null(cJSON_GetObjectItem(t1, "text"));   /* return_text was not asked */
    cJSON_Delete(j);
    free(txt);
    txt = mr_http_json_error("bad \"thing\"", "INVALID_ARGUMENT", NULL);
    j = cJSON_Parse(txt);
    assert_string_equal(cJSON_GetObjectItem(j, "message")->valuestring, "bad \"thing\"");
    assert_null(cJSON_GetObjectItem(j, "error"));
    cJSON_Delete(j);
    free(txt);
    txt = mr_http_json_error("too many", "RESOURCE_EXHAUSTED", "Overloaded");   /* TEI's too */
    j = cJSON_Parse(txt);
    assert_string_equal(cJSON_GetObjectItem(j, "error")->valuestring, "too many");
    assert_string_equal(cJSON_GetObjectItem(j, "error_type")->valuestring, "Overloaded");
    assert_string_equal(cJSON_GetObjectItem(j, "status")->valuestring, "RESOURCE_EXHAUSTED");
    cJSON_Delete(j);
    free(txt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
