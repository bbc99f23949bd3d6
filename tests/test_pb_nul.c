/* test_pb_nul.c: the NUL-byte walk over encoded requests (rpc/pb_nul.c). A NUL in each checked
 * string of RerankRequest and ScoreRequest, nested ones included, is reported with its field
 * path, occurrence index and offset; NUL bytes elsewhere (floats, varints, packed numbers,
 * unknown fields, sub-messages not in the spec) are not; truncated and malformed bytes give
 * MR_EFORMAT and never a read out of bounds (the sanitizer build checks that); and on every
 * input the walk calls malformed, protobuf-c's unpacker refuses too (seeded random bytes and
 * every prefix of valid requests). Requests are packed by protobuf-c with 0x7f standing for
 * the NUL (packing uses strlen), then that one byte is set to 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mrank.pb-c.h"
#include "pb_nul.h"

#define MARK 0x7f /* stands for the NUL in packed test requests: no tag or length here is 127 */

/* Replaces the one MARK byte of b[0, len) by 0 (fails when there is not exactly one). */
static void put_nul(uint8_t *b, size_t len) {
    int n = 0;
    for (size_t i = 0; i < len; i++)
        if (b[i] == MARK) {
            b[i] = 0;
            n++;
        }
    assert_int_equal(n, 1);
}

/* A RerankRequest with four documents (ids on 1 and 3), all strings set, two overrides with
 * float fields whose encodings hold zero bytes; the strings come from s[] (query, text0..3,
 * id1, id3, profile, tier, request_id) so a caller can put MARK in one. */
static uint8_t *pack_rerank(const char *const s[10], size_t *len) {
    Mrank__V1__RerankRequest rq = MRANK__V1__RERANK_REQUEST__INIT;
    Mrank__V1__Document d[4], *dp[4];
    Mrank__V1__StageOverride ov[2], *op[2];
    for (int i = 0; i < 4; i++) {
        mrank__v1__document__init(&d[i]);
        d[i].text = (char *)s[1 + i];
        dp[i] = &d[i];
    }
    d[1].id = (char *)s[5];
    d[3].id = (char *)s[6];
    for (int i = 0; i < 2; i++) {
        mrank__v1__stage_override__init(&ov[i]);
        ov[i].stage = (uint32_t)i;
        ov[i].keep_top_k = 256;      /* varint 0x80 0x02 */
        ov[i].keep_fraction = 0.5f;  /* 00 00 00 3f */
        ov[i].has_min_score = 1;
        ov[i].min_score = 2.0f;      /* 00 00 00 40 */
        op[i] = &ov[i];
    }
    rq.query = (char *)s[0];
    rq.n_documents = 4;
    rq.documents = dp;
    rq.top_n = 256;
    rq.return_documents = 1;
    rq.profile = (char *)s[7];
    rq.tier = (char *)s[8];
    rq.n_overrides = 2;
    rq.overrides = op;
    rq.truncate = MRANK__V1__TRUNCATE__TRUNCATE_NONE;
    rq.request_id = (char *)s[9];
    *len = mrank__v1__rerank_request__get_packed_size(&rq);
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    assert_int_equal(mrank__v1__rerank_request__pack(&rq, b), *len);
    return b;
}

/* A ScoreRequest with three passages, an arch with pooling and two adapters, packed exits
 * holding 0 and prune steps with zero bytes in their floats; s[]: query, passage0..2, pooling,
 * adapter0, adapter1. */
static uint8_t *pack_score(const char *const s[7], size_t *len) {
    Mrank__V1__ScoreRequest rq = MRANK__V1__SCORE_REQUEST__INIT;
    Mrank__V1__SubArch arch = MRANK__V1__SUB_ARCH__INIT;
    Mrank__V1__PruneStep pr = MRANK__V1__PRUNE_STEP__INIT, *pp = &pr;
    char *passages[3] = {(char *)s[1], (char *)s[2], (char *)s[3]};
    char *adapters[2] = {(char *)s[5], (char *)s[6]};
    uint32_t exits[3] = {0, 256, 4}, layers[2] = {0, 1};
    arch.depth = 4;
    arch.compress_ratio = 2;
    arch.n_compress_layers = 2;
    arch.compress_layers = layers;
    arch.pooling = (char *)s[4];
    arch.n_adapters = 2;
    arch.adapters = adapters;
    pr.layer = 2;
    pr.has_min_score = 1;
    pr.min_score = 2.0f;
    rq.query = (char *)s[0];
    rq.n_passages = 3;
    rq.passages = passages;
    rq.arch = &arch;
    rq.n_exits = 3;
    rq.exits = exits;
    rq.n_prune = 1;
    rq.prune = &pp;
    rq.max_len = 256;
    *len = mrank__v1__score_request__get_packed_size(&rq);
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    assert_int_equal(mrank__v1__score_request__pack(&rq, b), *len);
    return b;
}

static const char *const k_rerank_strings[10] = {
    "boundary layer", "first text", "second text", "third text", "fourth text",
    "id-1", "id-3", "fast", "interactive", "req-42"};
static const char *const k_rerank_names[10] = {
    "query", "documents[0].text", "documents[1].text", "documents[2].text",
    "documents[3].text", "documents[1].id", "documents[3].id", "profile", "tier", "request_id"};
static const char *const k_score_strings[7] = {
    "boundary layer", "first passage", "second passage", "third passage", "attention",
    "legal", "medical"};
static const char *const k_score_names[7] = {
    "query", "passages[0]", "passages[1]", "passages[2]", "arch.pooling", "arch.adapters[0]",
    "arch.adapters[1]"};

/* Walks b as spec; checks the rc and, for rc != 0, that the message holds want. */
static void expect(const uint8_t *b, size_t len, const mr_pb_nul_spec *spec, int rc,
                   const char *want) {
    mr_err err = {0};
    int got = mr_pb_find_nul(b, len, spec, &err);
    if (got != rc || (want && !strstr(err.msg, want)))
        fail_msg("expected %d '%s', got %d '%s'", rc, want ? want : "", got, err.msg);
}

/* Clean requests pass although their floats, varints and packed numbers hold zero bytes. */
static void test_clean_requests_pass(void **state) {
    size_t len;
    uint8_t *b = pack_rerank(k_rerank_strings, &len);
    assert_non_null(memchr(b, 0, len)); /* the test means something: zero bytes are there */
    expect(b, len, &mr_pb_nul_rerank_request, 0, NULL);
    free(b);
    b = pack_score(k_score_strings, &len);
    assert_non_null(memchr(b, 0, len));
    expect(b, len, &mr_pb_nul_score_request, 0, NULL);
    free(b);
    expect(NULL, 0, &mr_pb_nul_rerank_request, 0, NULL);
    expect((const uint8_t *)"", 0, &mr_pb_nul_score_request, 0, NULL);
}

/* A NUL in each checked string of each request, at the start, the middle and the end. */
static void test_nul_in_each_field(void **state) {
    static const char *const forms[3] = {"\x7f" "abc", "ab\x7f" "cdef", "abcde\x7f"};
    static const size_t offsets[3] = {0, 2, 5};
    for (int f = 0; f < 10; f++)
        for (int k = 0; k < 3; k++) {
            const char *s[10];
            memcpy(s, k_rerank_strings, sizeof s);
            s[f] = forms[k];
            size_t len;
            uint8_t *b = pack_rerank(s, &len);
            put_nul(b, len);
            char want[96];
            snprintf(want, sizeof want, "%s contains a NUL byte at offset %zu",
                     k_rerank_names[f], offsets[k]);
            mr_err err = {0};
            assert_int_equal(mr_pb_find_nul(b, len, &mr_pb_nul_rerank_request, &err), MR_EINVAL);
            assert_string_equal(err.msg, want);
            /* protobuf-c takes the same bytes and cuts the string: what the walk prevents */
            Mrank__V1__RerankRequest *u = mrank__v1__rerank_request__unpack(NULL, len, b);
            assert_non_null(u);
            mrank__v1__rerank_request__free_unpacked(u, NULL);
            free(b);
        }
    for (int f = 0; f < 7; f++)
        for (int k = 0; k < 3; k++) {
            const char *s[7];
            memcpy(s, k_score_strings, sizeof s);
            s[f] = forms[k];
            size_t len;
            uint8_t *b = pack_score(s, &len);
            put_nul(b, len);
            char want[96];
            snprintf(want, sizeof want, "%s contains a NUL byte at offset %zu",
                     k_score_names[f], offsets[k]);
            mr_err err = {0};
            assert_int_equal(mr_pb_find_nul(b, len, &mr_pb_nul_score_request, &err), MR_EINVAL);
            assert_string_equal(err.msg, want);
            free(b);
        }
    /* the example of docs/cluster.md, byte for byte */
    const char *s[10];
    memcpy(s, k_rerank_strings, sizeof s);
    s[4] = "fifth\x7f";
    size_t len;
    uint8_t *b = pack_rerank(s, &len);
    put_nul(b, len);
    expect(b, len, &mr_pb_nul_rerank_request, MR_EINVAL,
           "documents[3].text contains a NUL byte at offset 5");
    free(b);
}

/* Hand-written bytes: occurrence indices count per field across interleaving, the first NUL in
 * wire order is reported, and NULs in unknown fields, in an unknown field of a Document, in a
 * length-delimited field that is not a checked string (packed exits) are not. */
static void test_wire_order_and_no_false_positives(void **state) {
    /* documents{text "a"}, query "q", documents{id "x", unknown field 9 = "\0\0"},
     * unknown field 15 = "\0", documents{text "b\0"} */
    static const uint8_t a[] = {0x12, 0x03, 0x0a, 0x01, 'a',
                                0x0a, 0x01, 'q',
                                0x12, 0x07, 0x12, 0x01, 'x', 0x4a, 0x02, 0x00, 0x00,
                                0x7a, 0x01, 0x00,
                                0x12, 0x04, 0x0a, 0x02, 'b', 0x00};
    expect(a, sizeof a, &mr_pb_nul_rerank_request, MR_EINVAL,
           "documents[2].text contains a NUL byte at offset 1");
    Mrank__V1__RerankRequest *u = mrank__v1__rerank_request__unpack(NULL, sizeof a, a);
    assert_non_null(u); /* protobuf-c accepts it (and would read documents[2].text as "b") */
    assert_int_equal(u->n_documents, 3);
    assert_string_equal(u->documents[2]->text, "b");
    mrank__v1__rerank_request__free_unpacked(u, NULL);
    expect(a, sizeof a - 6, &mr_pb_nul_rerank_request, 0, NULL); /* without the last document */
    /* two NULs: query's comes first on the wire */
    static const uint8_t b[] = {0x0a, 0x02, 'q', 0x00, 0x12, 0x03, 0x0a, 0x01, 0x00};
    expect(b, sizeof b, &mr_pb_nul_rerank_request, MR_EINVAL,
           "query contains a NUL byte at offset 1");
    /* ScoreRequest: packed exits {0, 0} (field 4) and a bytes-like unknown field 20 with NULs */
    static const uint8_t c[] = {0x0a, 0x01, 'q', 0x22, 0x02, 0x00, 0x00,
                                0xa2, 0x01, 0x03, 0x00, 0x00, 0x00, 0x12, 0x01, 'p'};
    expect(c, sizeof c, &mr_pb_nul_score_request, 0, NULL);
    /* a second arch message (protobuf-c merges them): its pooling is checked too */
    static const uint8_t d[] = {0x1a, 0x02, 0x08, 0x04, 0x1a, 0x04, 0x22, 0x02, 'm', 0x00};
    expect(d, sizeof d, &mr_pb_nul_score_request, MR_EINVAL,
           "arch.pooling contains a NUL byte at offset 1");
}

/* Malformed bytes: each kind is MR_EFORMAT with a message naming it, and protobuf-c refuses
 * every one of them too. */
static void test_malformed(void **state) {
    static const struct {
        uint8_t b[16];
        size_t len;
        const char *want;
    } cases[] = {
        {{0x0a, 0x05, 'a', 'b'}, 4, "field 1 is 5 bytes, 2 left at byte 0"},
        {{0x0a}, 1, "length of field 1 cut short"},
        {{0x08, 0x01}, 2, "field 1 (query) has wire type 0, not length-delimited"},
        {{0x18, 0x80}, 2, "varint of field 3 cut short"},
        {{0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 12,
         "longer than 10 bytes"},
        {{0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 6, "field tag cut short or longer than 5"},
        {{0x80}, 1, "field tag cut short"},
        {{0x1b, 0x1c}, 2, "wire type 3"},
        {{0x1e}, 1, "wire type 6"},
        {{0x1f}, 1, "wire type 7"},
        {{0x19, 1, 2, 3}, 4, "needs 8 bytes, 3 left"},
        {{0x1d, 1, 2}, 3, "needs 4 bytes, 2 left"},
        {{0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a'}, 7, "field 5 is 4294967295 bytes, 1 left"},
        {{0x2a, 0x80, 0x80, 0x80, 0x80, 0x10}, 6, "4 GiB or more"},   /* 2^32: low bits 0 */
        {{0x2a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 7, "length of field 5 cut short or longer"},
        {{0x12, 0x02, 0x08, 0x01}, 4, "field 1 (text) has wire type 0, not length-delimited"},
        {{0x0d, 1, 2, 3, 4}, 5, "field 1 (query) has wire type 5"},
        {{0x12, 0x03, 0x0a, 0x05, 'a'}, 5, "field 1 is 5 bytes, 1 left at byte 2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect(cases[i].b, cases[i].len, &mr_pb_nul_rerank_request, MR_EFORMAT, cases[i].want);
        Mrank__V1__RerankRequest *u =
            mrank__v1__rerank_request__unpack(NULL, cases[i].len, cases[i].b);
        if (u) fail_msg("case %zu: protobuf-c accepts what the walk calls malformed", i);
    }
    mr_err err = {0};
    mr_pb_find_nul(cases[0].b, cases[0].len, &mr_pb_nul_rerank_request, &err);
    assert_string_equal(err.msg, "malformed RerankRequest: field 1 is 5 bytes, 2 left at byte 0");
    /* the last case is nested: the Document's field is reported at its byte in the request */
}

/* Every prefix of the valid requests, and seeded random bytes: the walk stays in bounds, and
 * whenever protobuf-c accepts the bytes, the walk does not call them malformed. */
static void check_agrees(const uint8_t *b, size_t len) {
    mr_err err = {0};
    int r = mr_pb_find_nul(b, len, &mr_pb_nul_rerank_request, &err);
    assert_true(r == 0 || r == MR_EINVAL || r == MR_EFORMAT);
    Mrank__V1__RerankRequest *u = mrank__v1__rerank_request__unpack(NULL, len, b);
    if (u && r == MR_EFORMAT) fail_msg("protobuf-c accepts %zu bytes the walk refuses: %s", len,
                                       err.msg);
    mrank__v1__rerank_request__free_unpacked(u, NULL);
    int s = mr_pb_find_nul(b, len, &mr_pb_nul_score_request, &err);
    assert_true(s == 0 || s == MR_EINVAL || s == MR_EFORMAT);
    Mrank__V1__ScoreRequest *v = mrank__v1__score_request__unpack(NULL, len, b);
    if (v && s == MR_EFORMAT) fail_msg("protobuf-c accepts %zu bytes the walk refuses: %s", len,
                                       err.msg);
    if (v) mrank__v1__score_request__free_unpacked(v, NULL);
}

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t next(rng *r) {
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return r->s;
}

/* A random message of at most cap bytes into b (depth: how deep sub-messages may go). */
static size_t gen(rng *r, uint8_t *b, size_t cap, int depth) {
    static const unsigned wires[16] = {0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 5, 5, 3, 4, 6, 7};
    size_t n = 0;
    int fields = (int)(next(r) % 6);
    for (int i = 0; i < fields && n + 2 < cap; i++) {
        unsigned number = 1 + (unsigned)(next(r) % 10);
        unsigned wire = wires[next(r) % (next(r) % 8 ? 12 : 16)];
        b[n++] = (uint8_t)(number << 3 | wire);
        if (wire == 0) {
            b[n++] = (uint8_t)(next(r) % 128);
        } else if (wire == 1 || wire == 5) {
            size_t k = wire == 1 ? 8 : 4;
            for (size_t j = 0; j < k && n < cap; j++) b[n++] = (uint8_t)(next(r) % 3);
        } else if (wire == 2) {
            size_t room = cap - n - 1, len;
            if (depth > 0 && next(r) % 2) {
                len = gen(r, b + n + 1, room, depth - 1);
            } else {
                len = (size_t)(next(r) % 6);
                if (len > room) len = room;
                for (size_t j = 0; j < len; j++)
                    b[n + 1 + j] = next(r) % 8 ? (uint8_t)('a' + next(r) % 26) : 0;
            }
            b[n++] = (uint8_t)len; /* < 64: one byte */
            n += len;
        }
    }
    return n;
}

static void test_truncated_and_random(void **state) {
    size_t len;
    int malformed = 0;
    uint8_t *full = pack_rerank(k_rerank_strings, &len);
    for (size_t n = 0; n <= len; n++) {
        uint8_t *b = malloc(n ? n : 1); /* exactly n bytes: ASan sees any read past them */
        memcpy(b, full, n);
        check_agrees(b, n);
        malformed += mr_pb_find_nul(b, n, &mr_pb_nul_rerank_request, NULL) == MR_EFORMAT;
        free(b);
    }
    assert_true(malformed > 0); /* cuts inside a field were seen as such */
    free(full);
    full = pack_score(k_score_strings, &len);
    for (size_t n = 0; n <= len; n++) {
        uint8_t *b = malloc(n ? n : 1);
        memcpy(b, full, n);
        check_agrees(b, n);
        free(b);
    }
    free(full);
    /* seeded random messages: fields 1..10 (wire types mostly 0, 1, 2, 5; now and then 3, 4,
     * 6, 7), payloads of random bytes with zeros or nested random messages; a quarter of them
     * get one byte changed or are cut short */
    rng x = {0x9e3779b97f4a7c15ull};
    int accepted = 0, nul = 0;
    for (int it = 0; it < 20000; it++) {
        uint8_t b[64];
        size_t n = gen(&x, b, sizeof b, 2);
        if (n && next(&x) % 4 == 0) {
            if (next(&x) % 2) b[next(&x) % n] = (uint8_t)next(&x);
            else n = (size_t)(next(&x) % n);
        }
        uint8_t *h = malloc(n ? n : 1);
        memcpy(h, b, n);
        check_agrees(h, n);
        Mrank__V1__RerankRequest *u = mrank__v1__rerank_request__unpack(NULL, n, h);
        accepted += u != NULL;
        nul += u && mr_pb_find_nul(h, n, &mr_pb_nul_rerank_request, NULL) == MR_EINVAL;
        mrank__v1__rerank_request__free_unpacked(u, NULL);
        free(h);
    }
    fprintf(stderr, "# 20000 random messages: protobuf-c accepts %d, the walk finds a NUL in %d "
            "of those\n", accepted, nul);
    /* the generator reaches both sides, so the agreement check above checked something */
    assert_true(accepted >= 1000 && nul >= 100);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean_requests_pass),
        cmocka_unit_test(test_nul_in_each_field),
        cmocka_unit_test(test_wire_order_and_no_false_positives),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_truncated_and_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
