/* pb_nul.h: finds NUL bytes inside the string fields of an encoded request, on the raw wire
 * bytes. protobuf-c hands a string field over as a NUL-terminated char *, so a NUL inside it
 * would silently cut the text the server reads; servers call this on the request bytes (after
 * protobuf-c has accepted them, before any field is used) and refuse such a request.
 *
 * A spec lists, for one message type, the field numbers (from proto/mrank.proto) that are
 * strings to check or messages to descend into; every other field is skipped by its wire type,
 * so bytes fields, numbers and unknown fields never give a false positive. The walk is one pass
 * over the bytes (nesting only as deep as the spec), bounds-checked on arbitrary input, with no
 * allocation. What it calls malformed, protobuf-c's unpacker refuses too (tests/test_pb_nul.c
 * and fuzz/fuzz_pb_nul.c check it), so a server may refuse such bytes without losing a valid
 * request. Not here: which fields a server uses or any other validation. */
#ifndef MR_PB_NUL_H
#define MR_PB_NUL_H

#include <stddef.h>
#include <stdint.h>

#include "mr_err.h"

typedef struct mr_pb_nul_spec mr_pb_nul_spec;

/* One checked field of a message. */
typedef struct mr_pb_nul_field {
    uint32_t number;              /* field number in the .proto */
    const char *name;             /* as in the .proto; messages say "documents[3].text" */
    int repeated;                 /* the name gets the occurrence index: passages[2] */
    const mr_pb_nul_spec *msg;    /* a message field: walked with this spec; NULL: a string */
} mr_pb_nul_field;

struct mr_pb_nul_spec {
    const char *type;             /* message name for errors ("RerankRequest") */
    const mr_pb_nul_field *fields;
    int n_fields;
};

/* mrank.v1.RerankRequest: query, documents[i].text, documents[i].id, profile, tier,
 * request_id (every string of the message). */
extern const mr_pb_nul_spec mr_pb_nul_rerank_request;
/* mrank.v1.ScoreRequest: query, passages[i], arch.pooling, arch.adapters[i]. */
extern const mr_pb_nul_spec mr_pb_nul_score_request;

/* Walks buf[0, len) as a message of spec. 0 when no checked string holds a NUL byte;
 * MR_EINVAL with "documents[3].text contains a NUL byte at offset 5" (the first NUL in wire
 * order; the offset counts bytes from the start of that string); MR_EFORMAT with
 * "malformed RerankRequest: ..." (the byte offset and what is wrong) when the bytes are not
 * the wire format, which a caller refuses as well (fail closed). */
int mr_pb_find_nul(const uint8_t *buf, size_t len, const mr_pb_nul_spec *spec, mr_err *err);

#endif
