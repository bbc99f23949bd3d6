/* request.c: one Rerank request's state: unpacking, the NUL-byte check of its strings
 * (rpc/pb_nul.h) and validation against the published limits, the tier/profile/keep-rule
 * resolution, the per-candidate arrays with their token estimates (a row per document, then one
 * per chunk when the request asks for chunking: chunk.c), the remaining budget and the
 * per-stage statistics (see coord_internal.h). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "pb_nul.h"
#include "tokenizer.h"

/* Token estimates until stage 0 reports exact counts: ~3.5 bytes per token, and the fixed part
 * of a pair (BOS, "A: ", "\n", "B: ", the suffix and prompt) ~20 tokens, 16 of them suffix. */
#define BYTES_PER_TOKEN 3.5
#define FIXED_TOKENS 20
#define SUFFIX_TOKENS 16

double mr__est_tokens(size_t bytes) { return (double)bytes / BYTES_PER_TOKEN; }

int mr__req_fixed_tokens(const mr__req *r) {
    int maxp = r->co->cfg.max_tokens_per_pair;
    int f = (int)mr__est_tokens(strlen(r->in->query)) + FIXED_TOKENS;
    return f > maxp * 3 / 4 + FIXED_TOKENS ? maxp * 3 / 4 + FIXED_TOKENS : f;
}

int mr__req_passage_room(const mr__req *r, int n_fixed) {
    int room = r->co->cfg.max_tokens_per_pair - (n_fixed - SUFFIX_TOKENS);
    return room > 1 ? room : 1;
}

int mr__req_est_passage(const mr__req *r, size_t bytes) {
    long pt = (long)mr__est_tokens(bytes) + 3, cap = mr__req_passage_room(r, r->n_fixed);
    return (int)(pt < cap ? pt : cap);
}

/* "a, b, c" of n names at stride bytes apart, into buf. */
static const char *known_names(char *buf, size_t cap, const char *first, size_t stride, int n) {
    buf[0] = 0;
    size_t len = 0;
    for (int i = 0; i < n && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", first + stride * i);
    return buf;
}

int mr__req_parse(mr__req *r, const uint8_t *body, size_t len, mr_err *err) {
    const mr_coord_config *cfg = &r->co->cfg;
    if (!(r->in = mrank__v1__rerank_request__unpack(NULL, len, body)))
        return mr_err_set(err, MR_EINVAL, "malformed RerankRequest");
    const Mrank__V1__RerankRequest *in = r->in;
    char known[256];
    /* the size limit is the transport's: gRPC's max receive size, the HTTP body's (http.c);
     * a JSON body becomes a RerankRequest of a different size */
    /* before any string is read: protobuf-c's strings end at the first NUL of the wire's */
    int nul = mr_pb_find_nul(body, len, &mr_pb_nul_rerank_request, err);
    if (nul) return nul;
    if (!in->query || !*in->query) return mr_err_set(err, MR_EINVAL, "query is empty");
    if (in->n_documents == 0) return mr_err_set(err, MR_EINVAL, "documents is empty");
    if (in->n_documents > (size_t)cfg->max_documents)
        return mr_err_set(err, MR_ERANGE, "%zu documents, the limit is %d (Info.max_documents)",
                          in->n_documents, cfg->max_documents);
    /* text that no tokenizer accepts is refused here, whatever stages run: a lexical-only or
     * degraded answer would otherwise echo the bytes back (and JSON cannot carry them) */
    size_t bad;
    if (!mr_utf8_valid(in->query, strlen(in->query), &bad))
        return mr_err_set(err, MR_EINVAL, "query is not valid UTF-8 (byte %zu)", bad);
    for (size_t i = 0; i < in->n_documents; i++) {
        const char *t = in->documents[i]->text ? in->documents[i]->text : "";
        if (!mr_utf8_valid(t, strlen(t), &bad))
            return mr_err_set(err, MR_EINVAL, "documents[%zu] is not valid UTF-8 (byte %zu)", i,
                              bad);
    }
    if (in->truncate != MRANK__V1__TRUNCATE__TRUNCATE_END &&
        in->truncate != MRANK__V1__TRUNCATE__TRUNCATE_NONE)
        return mr_err_set(err, MR_EINVAL, "truncate: unknown value %d", (int)in->truncate);
    r->tier = cfg->default_tier;
    if (in->tier && *in->tier && (r->tier = mr_coord_config_tier(cfg, in->tier)) < 0)
        return mr_err_set(err, MR_EINVAL, "tier '%.64s' is unknown (known: %s)", in->tier,
                          known_names(known, sizeof known, cfg->tiers[0].name,
                                      sizeof cfg->tiers[0], cfg->n_tiers));
    r->profile = cfg->tiers[r->tier].profile;
    if (in->profile && *in->profile &&
        (r->profile = mr_coord_config_profile(cfg, in->profile)) < 0)
        return mr_err_set(err, MR_EINVAL, "profile '%.64s' is unknown (known: %s)",
                          in->profile,
                          known_names(known, sizeof known, cfg->profiles[0].name,
                                      sizeof cfg->profiles[0], cfg->n_profiles));
    const mr_cc_profile *pr = &cfg->profiles[r->profile];
    for (int i = 0; i < pr->n_stages; i++) r->keep[i] = pr->stages[i].keep;
    for (size_t i = 0; i < in->n_overrides; i++) {
        const Mrank__V1__StageOverride *ov = in->overrides[i];
        char what[64];
        snprintf(what, sizeof what, "overrides[%zu]", i);
        if (ov->stage >= (uint32_t)pr->n_stages)
            return mr_err_set(err, MR_ERANGE, "%s.stage: %u is not a stage of profile '%s' "
                              "(%d stages)", what, ov->stage, pr->name, pr->n_stages);
        if (ov->keep_top_k > (uint32_t)cfg->max_documents)
            return mr_err_set(err, MR_ERANGE, "%s.keep_top_k: %u is above the bound %d", what,
                              ov->keep_top_k, pr->stages[ov->stage].bounds.max_top_k);
        mr_keep_override k = {(int)ov->keep_top_k, ov->keep_fraction, ov->has_min_score,
                              ov->min_score};
        int rc = mr_cascade_override(&r->keep[ov->stage], &pr->stages[ov->stage].bounds, &k,
                                     what, err);
        if (rc) return rc;
    }
    return mr__chunk_check(r, err);
}

int mr__req_start(mr__req *r, mr_err *err) {
    r->n = (int)r->in->n_documents;
    r->n_fixed = mr__req_fixed_tokens(r);
    int rows = r->n, rc = mr__chunk_start(r, &rows, err);   /* documents, then their chunks */
    if (rc) return rc;
    r->stage = malloc((size_t)rows * sizeof *r->stage);
    r->score = malloc((size_t)rows * sizeof *r->score);
    r->depth = calloc((size_t)rows, sizeof *r->depth);
    r->passage_tokens = malloc((size_t)rows * sizeof *r->passage_tokens);
    r->truncated = calloc((size_t)rows, sizeof *r->truncated);
    r->fused_stage = -1;
    if (!r->stage || !r->score || !r->depth || !r->passage_tokens || !r->truncated)
        return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    for (int i = 0; i < rows; i++) {
        r->stage[i] = -1;
        r->score[i] = NAN;
        r->passage_tokens[i] = mr__req_est_passage(r, strlen(mr__req_text(r, i)));
    }
    mr__chunk_rows(r);
    return 0;
}

const char *mr__req_text(const mr__req *r, int row) {
    return row < r->n ? r->in->documents[row]->text : mr__chunk_text(r, row);
}

void mr__req_close(mr__req *r) {
    free(r->stage);
    free(r->score);
    free(r->logit);
    free(r->depth);
    free(r->passage_tokens);
    free(r->truncated);
    mr__chunk_free(r);
    if (r->in) mrank__v1__rerank_request__free_unpacked(r->in, NULL);
    r->in = NULL;
}

const mr_cc_stage *mr__req_stage(const mr__req *r, int pos) {
    const mr_coord_config *cfg = &r->co->cfg;
    return &cfg->stages[cfg->profiles[r->profile].stages[pos].stage];
}

double mr__req_remaining_ms(const mr__req *r) {
    double g = r->sink.ops->remaining_ms(r->sink.ctx);
    if (g >= MR_RPC_NO_DEADLINE_MS) g = INFINITY;
    return mr_cascade_remaining_ms(g, r->co->cfg.tiers[r->tier].budget_ms, mr__now_ms() - r->t0);
}

/* Appends stage pos's entry to the answer's stages; returns its index in cfg->stages. */
static int stat_entry(mr__req *r, int pos, int in, int kept, double ms, int skipped) {
    const mr_coord_config *cfg = &r->co->cfg;
    int si = cfg->profiles[r->profile].stages[pos].stage;
    Mrank__V1__StageStats *s = &r->stats[r->n_stats];
    mrank__v1__stage_stats__init(s);
    snprintf(r->stat_names[r->n_stats], MR_CC_NAME, "%s", cfg->stages[si].name);
    s->name = r->stat_names[r->n_stats];
    s->candidates_in = (uint32_t)in;
    s->kept = (uint32_t)kept;
    s->ms = ms;
    s->skipped = skipped;
    s->rows = (uint32_t)r->stage_rows[pos];
    r->n_stats++;
    return si;
}

void mr__req_stat(mr__req *r, int pos, int in, int kept, double ms, int skipped) {
    int si = stat_entry(r, pos, in, kept, ms, skipped);
    mr_coord_metrics_stage(r->co->metrics, si, r->tier, in, kept, pos > 0 && !skipped, skipped,
                           ms);
}

void mr__req_stat_unreached(mr__req *r, int pos) { stat_entry(r, pos, 0, 0, 0, 0); }
