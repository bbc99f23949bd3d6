/* pb_nul.c: the NUL-byte walk over encoded requests (see pb_nul.h), and the specs of the two
 * request messages servers receive. The framing follows protobuf-c's unpacker: tags are
 * varints of at most 5 bytes with a 32-bit field number, varint values at most 10 bytes,
 * lengths at most 5 bytes; wire types 3, 4, 6 and 7 are refused. A length of 4 GiB or more is
 * refused, as protobuf-c 1.4.1 refuses it. */
#define _GNU_SOURCE
#include "pb_nul.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Field numbers below are those of proto/mrank.proto. */
static const mr_pb_nul_field k_document[] = {
    {1, "text", 0, NULL},
    {2, "id", 0, NULL},
};
static const mr_pb_nul_spec k_document_spec = {"Document", k_document, 2};

static const mr_pb_nul_field k_rerank[] = {
    {1, "query", 0, NULL},
    {2, "documents", 1, &k_document_spec},
    {5, "profile", 0, NULL},
    {6, "tier", 0, NULL},
    {9, "request_id", 0, NULL},
};
const mr_pb_nul_spec mr_pb_nul_rerank_request = {"RerankRequest", k_rerank, 5};

static const mr_pb_nul_field k_subarch[] = {
    {4, "pooling", 0, NULL},
    {5, "adapters", 1, NULL},
};
static const mr_pb_nul_spec k_subarch_spec = {"SubArch", k_subarch, 2};

static const mr_pb_nul_field k_score[] = {
    {1, "query", 0, NULL},
    {2, "passages", 1, NULL},
    {3, "arch", 0, &k_subarch_spec},
};
const mr_pb_nul_spec mr_pb_nul_score_request = {"ScoreRequest", k_score, 3};

/* Checked fields per message: the occurrence counters live on the stack. */
#define MAX_FIELDS 16
/* "documents[4294967295].text" and the like, with room to spare. */
#define PATH_CAP 128

typedef struct walk {
    const uint8_t *base;   /* the whole request, for byte offsets in messages */
    const char *type;      /* the top-level message name */
    mr_err *err;
} walk;

/* A varint of at most max bytes at p (rem bytes readable) into *v: its length, or 0 when it
 * is cut short or longer than max. */
static size_t varint(const uint8_t *p, size_t rem, size_t max, uint64_t *v) {
    uint64_t x = 0;
    for (size_t i = 0; i < max && i < rem; i++) {
        x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = x;
            return i + 1;
        }
    }
    return 0;
}

static int bad(const walk *w, const uint8_t *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(const walk *w, const uint8_t *at, const char *fmt, ...) {
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return mr_err_set(w->err, MR_EFORMAT, "malformed %s: %s at byte %zu", w->type, what,
                      (size_t)(at - w->base));
}

/* The message of spec in p[0, len); prefix ("" or "documents[3].") names its fields. */
static int walk_msg(const walk *w, const uint8_t *p, size_t len, const mr_pb_nul_spec *spec,
                    const char *prefix) {
    unsigned count[MAX_FIELDS] = {0};
    const uint8_t *end = p + len;
    while (p < end) {
        const uint8_t *at = p;
        uint64_t key, v;
        size_t k = varint(p, (size_t)(end - p), 5, &key);
        if (!k) return bad(w, at, "field tag cut short or longer than 5 bytes");
        p += k;
        uint32_t number = (uint32_t)(key >> 3); /* protobuf-c keeps 32 bits too */
        unsigned wire = (unsigned)(key & 7);
        int fi = -1;
        for (int i = 0; i < spec->n_fields && i < MAX_FIELDS; i++)
            if (spec->fields[i].number == number) fi = i;
        if (fi >= 0 && wire != 2)
            return bad(w, at, "field %u (%s) has wire type %u, not length-delimited", number,
                       spec->fields[fi].name, wire);
        switch (wire) {
        case 0:
            if (!(k = varint(p, (size_t)(end - p), 10, &v)))
                return bad(w, at, "varint of field %u cut short or longer than 10 bytes", number);
            p += k;
            break;
        case 1:
        case 5: {
            size_t n = wire == 1 ? 8 : 4;
            if ((size_t)(end - p) < n)
                return bad(w, at, "field %u needs %zu bytes, %zu left", number, n,
                           (size_t)(end - p));
            p += n;
            break;
        }
        case 2:
            if (!(k = varint(p, (size_t)(end - p), 5, &v)))
                return bad(w, at, "length of field %u cut short or longer than 5 bytes", number);
            p += k;
            if (v >> 32) return bad(w, at, "length of field %u is 4 GiB or more", number);
            if (v > (uint64_t)(end - p))
                return bad(w, at, "field %u is %llu bytes, %zu left", number,
                           (unsigned long long)v, (size_t)(end - p));
            if (fi >= 0) {
                const mr_pb_nul_field *f = &spec->fields[fi];
                char name[PATH_CAP];
                if (f->repeated)
                    snprintf(name, sizeof name, "%s%s[%u]", prefix, f->name, count[fi]);
                else
                    snprintf(name, sizeof name, "%s%s", prefix, f->name);
                count[fi]++;
                if (f->msg) {
                    char sub[PATH_CAP + 1];
                    snprintf(sub, sizeof sub, "%s.", name);
                    int rc = walk_msg(w, p, (size_t)v, f->msg, sub);
                    if (rc) return rc;
                } else {
                    const uint8_t *nul = memchr(p, 0, (size_t)v);
                    if (nul)
                        return mr_err_set(w->err, MR_EINVAL,
                                          "%s contains a NUL byte at offset %zu", name,
                                          (size_t)(nul - p));
                }
            }
            p += v;
            break;
        default:
            return bad(w, at, "field %u has wire type %u (groups and 6, 7 are not supported)",
                       number, wire);
        }
    }
    return 0;
}

int mr_pb_find_nul(const uint8_t *buf, size_t len, const mr_pb_nul_spec *spec, mr_err *err) {
    walk w = {buf, spec->type, err};
    if (!len) return 0;
    if (!buf) return bad(&w, buf, "no bytes");
    return walk_msg(&w, buf, len, spec, "");
}
