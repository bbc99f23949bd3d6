/* http_json.c: the JSON request and answer bodies of the HTTP front end (see http_json.h).
 *
 * Requests: Cohere v2 (`query`, `documents` as strings, `top_n`, `max_tokens_per_doc`,
 * `return_documents`, `model`), Cohere v1 / Jina (the same, documents also `{"text": ...}`),
 * TEI (`query`, `texts`, `raw_scores`, `return_text`, `truncate`, `truncation_direction`),
 * each with mrank's optional knobs (`profile`, `tier`, `overrides`, `request_id`, `chunking`:
 * its results then carry `chunk`, `chunk_offset`, `chunk_length`). Fields
 * other clients send that mrank has no use for (`rank_fields`, `max_chunks_per_doc`, ...) are
 * ignored; a known field of the wrong type is an error naming it. JSON strings cannot carry a
 * NUL character here (cJSON's strings end at it, which would silently cut a document): the
 * escape \u0000 and raw NUL bytes are refused. */
#include "http_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "json.h"

#include "mrank.pb-c.h"

static const cJSON *field(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* An optional string field into *out (NULL when absent). */
static int get_str(const cJSON *o, const char *k, const char **out, mr_err *err) {
    const cJSON *v = field(o, k);
    *out = NULL;
    if (!v) return 0;
    if (!cJSON_IsString(v)) return mr_err_set(err, MR_EINVAL, "%s: expected a string", k);
    *out = v->valuestring;
    return 0;
}

static int get_bool(const cJSON *o, const char *k, int *out, mr_err *err) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return mr_err_set(err, MR_EINVAL, "%s: expected true or false", k);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* An optional integer in [lo, hi] (unchanged when absent). */
static int get_int(const cJSON *o, const char *k, double lo, double hi, double *out,
                   mr_err *err) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return mr_err_set(err, MR_EINVAL, "%s: expected an integer in %.0f..%.0f", k, lo, hi);
    *out = v->valuedouble;
    return 0;
}

/* err's message (a field's, from get_int and the like) under the path prefix; MR_EINVAL. The
 * message is copied first: it is both the source and the destination. */
static int in_field(mr_err *err, const char *prefix) {
    char m[sizeof err->msg];
    snprintf(m, sizeof m, "%s", err->msg);
    return mr_err_set(err, MR_EINVAL, "%s.%s", prefix, m);
}

/* mrank's per-stage overrides: [{"stage", "keep_top_k", "keep_fraction", "min_score"}]. */
static int get_overrides(const cJSON *o, Mrank__V1__RerankRequest *rq,
                         Mrank__V1__StageOverride **ovp, Mrank__V1__StageOverride *ov,
                         int cap, mr_err *err) {
    const cJSON *v = field(o, "overrides");
    if (!v) return 0;
    if (!cJSON_IsArray(v)) return mr_err_set(err, MR_EINVAL, "overrides: expected an array");
    int n = cJSON_GetArraySize(v);
    if (n > cap) return mr_err_set(err, MR_EINVAL, "overrides: %d entries, at most %d", n, cap);
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        char k[48];
        if (!cJSON_IsObject(e))
            return mr_err_set(err, MR_EINVAL, "overrides[%d]: expected an object", i);
        mrank__v1__stage_override__init(&ov[i]);
        double stage = -1, top_k = 0;
        snprintf(k, sizeof k, "overrides[%d].stage", i);
        if (get_int(e, "stage", 0, 1e6, &stage, err) || stage < 0)
            return mr_err_set(err, MR_EINVAL, "%s: expected an integer in 0..1000000", k);
        if (get_int(e, "keep_top_k", 0, 1e9, &top_k, err)) {
            snprintf(k, sizeof k, "overrides[%d]", i);
            return in_field(err, k);
        }
        const cJSON *f = field(e, "keep_fraction"), *m = field(e, "min_score");
        if ((f && !cJSON_IsNumber(f)) || (m && !cJSON_IsNumber(m)))
            return mr_err_set(err, MR_EINVAL, "overrides[%d]: keep_fraction and min_score are "
                              "numbers", i);
        ov[i].stage = (uint32_t)stage;
        ov[i].keep_top_k = (uint32_t)top_k;
        ov[i].keep_fraction = f ? (float)f->valuedouble : 0;
        ov[i].has_min_score = m != NULL;
        ov[i].min_score = m ? (float)m->valuedouble : 0;
        ovp[i] = &ov[i];
    }
    rq->n_overrides = (size_t)n;
    rq->overrides = ovp;
    return 0;
}

/* mrank's chunking: {"window", "stride", "max_chunks"} (request.c/chunk.c validate them). */
static int get_chunking(const cJSON *o, Mrank__V1__RerankRequest *rq, Mrank__V1__Chunking *ch,
                        mr_http_answer *a, mr_err *err) {
    const cJSON *v = field(o, "chunking");
    if (!v) return 0;
    if (!cJSON_IsObject(v))
        return mr_err_set(err, MR_EINVAL, "chunking: expected an object {\"window\", "
                          "\"stride\", \"max_chunks\"}");
    static const char *const keys[3] = {"window", "stride", "max_chunks"};
    double x[3] = {0, 0, 0};
    for (int i = 0; i < 3; i++)
        if (get_int(v, keys[i], 0, 4294967295.0, &x[i], err))
            return in_field(err, "chunking");
    mrank__v1__chunking__init(ch);
    ch->window = (uint32_t)x[0];
    ch->stride = (uint32_t)x[1];
    ch->max_chunks = (uint32_t)x[2];
    rq->chunking = ch;
    a->chunking = ch->window || ch->stride || ch->max_chunks;
    return 0;
}

#define MAX_OVERRIDES 16

int mr_http_json_request(const char *body, size_t len, mr_http_shape shape, int max_documents,
                         uint8_t **out, size_t *out_len, mr_http_answer *a, mr_err *err) {
    *out = NULL;
    *out_len = 0;
    memset(a, 0, sizeof *a);
    a->shape = shape;
    cJSON *root = mr__json_parse(body, len, "request body", err);
    if (!root) return MR_EFORMAT;
    Mrank__V1__RerankRequest rq = MRANK__V1__RERANK_REQUEST__INIT;
    Mrank__V1__StageOverride ov[MAX_OVERRIDES], *ovp[MAX_OVERRIDES];
    Mrank__V1__Chunking chunking;
    Mrank__V1__Document *docs = NULL, **docp = NULL;
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = mr_err_set(err, MR_EINVAL, "request body: expected a JSON object");
        goto done;
    }
    const char *query, *model, *profile, *tier, *rid;
    double top_n = 0, max_tok = 0;
    int trunc = 0;
    const char *list = shape == MR_HTTP_TEI ? "texts" : "documents";
    if ((rc = get_str(root, "query", &query, err)) || (rc = get_str(root, "model", &model, err)) ||
        (rc = get_str(root, "profile", &profile, err)) ||
        (rc = get_str(root, "tier", &tier, err)) ||
        (rc = get_str(root, "request_id", &rid, err)) ||
        (rc = get_overrides(root, &rq, ovp, ov, MAX_OVERRIDES, err)) ||
        (rc = get_chunking(root, &rq, &chunking, a, err)))
        goto done;
    if (!query) {
        rc = mr_err_set(err, MR_EINVAL, "query: missing");
        goto done;
    }
    if (shape == MR_HTTP_TEI) {
        const char *dir;
        if ((rc = get_bool(root, "raw_scores", &a->raw_scores, err)) ||
            (rc = get_bool(root, "return_text", &a->return_documents, err)) ||
            (rc = get_bool(root, "truncate", &trunc, err)) ||
            (rc = get_str(root, "truncation_direction", &dir, err)))
            goto done;
        if (dir && strcmp(dir, "Right") && strcmp(dir, "right")) {
            rc = mr_err_set(err, MR_EINVAL, "truncation_direction: only \"Right\" is supported "
                            "(the passage's end is cut, never the query)");
            goto done;
        }
        /* TEI: without truncate a pair that does not fit is an error */
        rq.truncate = trunc ? MRANK__V1__TRUNCATE__TRUNCATE_END
                            : MRANK__V1__TRUNCATE__TRUNCATE_NONE;
    } else {
        if ((rc = get_bool(root, "return_documents", &a->return_documents, err)) ||
            (rc = get_int(root, "top_n", 0, 4294967295.0, &top_n, err)) ||
            (rc = get_int(root, "max_tokens_per_doc", 1, 4294967295.0, &max_tok, err)))
            goto done;
        rq.truncate = MRANK__V1__TRUNCATE__TRUNCATE_END;
    }
    const cJSON *dl = field(root, list);
    if (!dl || !cJSON_IsArray(dl)) {
        rc = mr_err_set(err, MR_EINVAL, "%s: expected an array of %s", list,
                        shape == MR_HTTP_COHERE_V1 ? "strings or {\"text\": ...} objects"
                                                   : "strings");
        goto done;
    }
    int n = cJSON_GetArraySize(dl);
    if (n > max_documents) {   /* the message the gRPC path gives (request.c) */
        rc = mr_err_set(err, MR_ERANGE, "%d documents, the limit is %d (Info.max_documents)", n,
                        max_documents);
        goto done;
    }
    docs = calloc((size_t)(n ? n : 1), sizeof *docs);
    docp = calloc((size_t)(n ? n : 1), sizeof *docp);
    if (!docs || !docp) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        goto done;
    }
    int i = 0;
    for (const cJSON *d = dl->child; d; d = d->next, i++) {
        mrank__v1__document__init(&docs[i]);
        const cJSON *t = d;
        if (shape != MR_HTTP_TEI && cJSON_IsObject(d)) t = field(d, "text");
        if (!t || !cJSON_IsString(t)) {
            rc = mr_err_set(err, MR_EINVAL, "%s[%d]: expected a string%s", list, i,
                            shape == MR_HTTP_TEI ? "" : " or {\"text\": string}");
            goto done;
        }
        docs[i].text = t->valuestring;
        docp[i] = &docs[i];
    }
    rq.query = (char *)query;
    rq.n_documents = (size_t)n;
    rq.documents = docp;
    rq.top_n = (uint32_t)top_n;
    rq.return_documents = a->return_documents;
    rq.profile = (char *)(profile ? profile : "");
    rq.tier = (char *)(tier ? tier : "");
    rq.request_id = (char *)(rid ? rid : "");
    snprintf(a->model, sizeof a->model, "%s", model ? model : "");
    *out_len = mrank__v1__rerank_request__get_packed_size(&rq);
    if (!(*out = malloc(*out_len ? *out_len : 1))) {
        rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        goto done;
    }
    mrank__v1__rerank_request__pack(&rq, *out);
done:
    free(docs);
    free(docp);
    cJSON_Delete(root);
    return rc;
}

/* With chunking, the result's winning chunk (none when no neural stage scored it). */
static void add_chunk(cJSON *o, const Mrank__V1__RerankResult *x, const mr_http_answer *a) {
    if (!a->chunking || !x->chunk_length) return;
    cJSON_AddNumberToObject(o, "chunk", x->chunk);
    cJSON_AddNumberToObject(o, "chunk_offset", x->chunk_offset);
    cJSON_AddNumberToObject(o, "chunk_length", x->chunk_length);
}

/* v1/v2: {"index", "relevance_score", "document"?} plus mrank's figures. */
static cJSON *cohere_result(const Mrank__V1__RerankResult *x, const mr_http_answer *a) {
    int docs = a->return_documents;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", x->index);
    cJSON_AddNumberToObject(o, "relevance_score", x->relevance_score);
    if (docs && x->document) {
        cJSON *d = cJSON_AddObjectToObject(o, "document");
        cJSON_AddStringToObject(d, "text", x->document->text ? x->document->text : "");
    }
    cJSON_AddNumberToObject(o, "raw_score", x->raw_score);
    cJSON_AddNumberToObject(o, "stage", x->stage);
    add_chunk(o, x, a);
    return o;
}

char *mr_http_json_response(const uint8_t *resp, size_t len, const mr_http_answer *a,
                            const char *id) {
    Mrank__V1__RerankResponse *r = mrank__v1__rerank_response__unpack(NULL, len, resp);
    if (!r) return NULL;
    cJSON *root;
    if (a->shape == MR_HTTP_TEI) {
        root = cJSON_CreateArray();
        for (size_t k = 0; k < r->n_results; k++) {
            const Mrank__V1__RerankResult *x = r->results[k];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "index", x->index);
            cJSON_AddNumberToObject(o, "score", a->raw_scores ? x->raw_score
                                                              : x->relevance_score);
            if (a->return_documents && x->document)
                cJSON_AddStringToObject(o, "text", x->document->text ? x->document->text : "");
            add_chunk(o, x, a);
            cJSON_AddItemToArray(root, o);
        }
    } else {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "id", r->request_id && *r->request_id ? r->request_id
                                                                            : id);
        cJSON *res = cJSON_AddArrayToObject(root, "results");
        for (size_t k = 0; k < r->n_results; k++)
            cJSON_AddItemToArray(res, cohere_result(r->results[k], a));
        cJSON *meta = cJSON_AddObjectToObject(root, "meta");
        cJSON *ver = cJSON_AddObjectToObject(meta, "api_version");
        cJSON_AddStringToObject(ver, "version", a->shape == MR_HTTP_COHERE_V2 ? "2" : "1");
        cJSON *bu = cJSON_AddObjectToObject(meta, "billed_units");
        cJSON_AddNumberToObject(bu, "search_units", 1);
        unsigned pt = r->usage ? r->usage->prompt_tokens : 0;
        unsigned tt = r->usage ? r->usage->total_tokens : 0;
        if (a->shape == MR_HTTP_COHERE_V2) {
            cJSON *tok = cJSON_AddObjectToObject(meta, "tokens");
            cJSON_AddNumberToObject(tok, "input_tokens", tt);
            cJSON_AddNumberToObject(tok, "output_tokens", 0);
        } else {   /* Jina's fields */
            cJSON_AddStringToObject(root, "model", a->model);
            cJSON *u = cJSON_AddObjectToObject(root, "usage");
            cJSON_AddNumberToObject(u, "prompt_tokens", pt);
            cJSON_AddNumberToObject(u, "total_tokens", tt);
        }
        cJSON *m = cJSON_AddObjectToObject(root, "mrank");
        cJSON_AddBoolToObject(m, "degraded", r->degraded);
        cJSON_AddStringToObject(m, "profile", r->profile ? r->profile : "");
        cJSON_AddStringToObject(m, "tier", r->tier ? r->tier : "");
        cJSON_AddNumberToObject(m, "total_ms", r->total_ms);
        cJSON *st = cJSON_AddArrayToObject(m, "stages");
        for (size_t s = 0; s < r->n_stages; s++) {
            const Mrank__V1__StageStats *x = r->stages[s];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", x->name ? x->name : "");
            cJSON_AddNumberToObject(o, "candidates_in", x->candidates_in);
            cJSON_AddNumberToObject(o, "kept", x->kept);
            cJSON_AddNumberToObject(o, "ms", x->ms);
            cJSON_AddBoolToObject(o, "skipped", x->skipped);
            cJSON_AddItemToArray(st, o);
        }
    }
    mrank__v1__rerank_response__free_unpacked(r, NULL);
    char *txt = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return txt;
}

char *mr_http_json_error(const char *msg, const char *status, const char *tei_type) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "message", msg ? msg : "");
    cJSON_AddStringToObject(o, "status", status ? status : "");
    if (tei_type) {   /* TEI's own error fields, beside ours */
        cJSON_AddStringToObject(o, "error", msg ? msg : "");
        cJSON_AddStringToObject(o, "error_type", tei_type);
    }
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return txt;
}
