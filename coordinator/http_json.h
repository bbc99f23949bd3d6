/* http_json.h: the JSON bodies of the coordinator's HTTP front end (http.c): a request in one
 * of the shapes clients of other rerankers speak, turned into a packed mrank.v1.RerankRequest
 * (so it enters the one validation path, request.c), and a packed RerankResponse turned into
 * that shape's answer. Pure functions over bytes (no I/O, no coordinator state): the fuzz
 * target fuzz/fuzz_http_json.c drives the parser. The shapes are documented in
 * docs/cluster.md ("HTTP/JSON"). */
#ifndef MR_HTTP_JSON_H
#define MR_HTTP_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "mr_err.h"

typedef enum mr_http_shape {
    MR_HTTP_COHERE_V2,   /* POST /v2/rerank */
    MR_HTTP_COHERE_V1,   /* POST /v1/rerank (Cohere v1, Jina) */
    MR_HTTP_TEI,         /* POST /rerank (text-embeddings-inference) */
} mr_http_shape;

/* What the answer needs beyond the RerankResponse. */
typedef struct mr_http_answer {
    mr_http_shape shape;
    int return_documents;    /* v1/v2 return_documents, TEI return_text */
    int raw_scores;          /* TEI raw_scores: "score" is the head's logit */
    char model[128];         /* echoed (v1: Jina's "model") */
    int chunking;            /* the request asked for chunking: results name their chunk */
} mr_http_answer;

/* Parses body (len bytes, untrusted) of shape into a packed RerankRequest (*out malloc'd,
 * *out_len) and fills *a. MR_EFORMAT (not JSON, a NUL character), MR_EINVAL (a field of the
 * wrong type or value; the message names it), MR_ERANGE (more than max_documents documents:
 * refused before any is converted), MR_ENOMEM. Other counts and lengths are checked later, by
 * the coordinator's validation of the RerankRequest. */
int mr_http_json_request(const char *body, size_t len, mr_http_shape shape, int max_documents,
                         uint8_t **out, size_t *out_len, mr_http_answer *a, mr_err *err);

/* The answer of shape for a packed RerankResponse (resp, len) as a malloc'd JSON text; id
 * stands for the response id when the request had no request_id. NULL on OOM or a response
 * that does not unpack. */
char *mr_http_json_response(const uint8_t *resp, size_t len, const mr_http_answer *a,
                            const char *id);

/* {"message": msg, "status": status} as a malloc'd JSON text (NULL on OOM); with tei_type
 * (TEI's /rerank) also TEI's {"error": msg, "error_type": tei_type}. */
char *mr_http_json_error(const char *msg, const char *status, const char *tei_type);

#endif
