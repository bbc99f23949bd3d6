/* wire.c: the coordinator's protobuf packing (see coord_internal.h): the ScoreRequest of one
 * call, the merged ranking (RerankResponse, also the partial rankings of RerankStream) and the
 * Ranker's InfoResponse. Sub-architectures go through rpc/subarch_pb.h; relevance scores
 * through calib.c (calibrated per stage, then made non-increasing down the ranking). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "subarch_pb.h"
#include "version.h"

int mr__wire_score(const mr__req *r, const mr_cc_stage *st, const int *members, int n,
                   uint8_t **buf, size_t *len, mr_err *err) {
    return mr__wire_score_fused(r, st, 0, NULL, members, n, buf, len, err);
}

int mr__wire_score_fused(const mr__req *r, const mr_cc_stage *st, int shallow,
                         const mr_fused_prune *prune, const int *members, int n, uint8_t **buf,
                         size_t *len, mr_err *err) {
    Mrank__V1__ScoreRequest sr = MRANK__V1__SCORE_REQUEST__INIT;
    uint32_t exits[2] = {(uint32_t)shallow, (uint32_t)st->arch.depth};
    Mrank__V1__PruneStep step = MRANK__V1__PRUNE_STEP__INIT, *steps[1] = {&step};
    if (shallow > 0) {   /* a fused pair: both exits, the prune step at the shallower one */
        sr.n_exits = 2;
        sr.exits = exits;
        if (prune) {
            step.layer = (uint32_t)shallow;
            step.top_k = (uint32_t)prune->top_k;
            step.has_min_score = prune->top_k == 0 && prune->has_min_score;
            step.min_score = prune->min_score;
            sr.n_prune = 1;
            sr.prune = steps;
        }
    }
    mr_subarch_pb arch;
    mr_subarch_to_pb(&arch, &st->arch);
    sr.query = r->in->query;
    sr.arch = &arch.msg;
    sr.max_len = (uint32_t)r->co->cfg.max_tokens_per_pair;
    /* chunk windows are estimates: the worker cuts one that does not fit (truncated) */
    sr.truncate = r->chunks ? MRANK__V1__TRUNCATE__TRUNCATE_END : r->in->truncate;
    char **pass = malloc((size_t)(n ? n : 1) * sizeof *pass);
    *buf = NULL;
    if (!pass) return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    for (int i = 0; i < n; i++) pass[i] = (char *)mr__req_text(r, members[i]);
    sr.n_passages = (size_t)n;
    sr.passages = pass;
    *len = mrank__v1__score_request__get_packed_size(&sr);
    if ((*buf = malloc(*len ? *len : 1))) mrank__v1__score_request__pack(&sr, *buf);
    free(pass);
    return *buf ? 0 : mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
}

uint8_t *mr__wire_ranking(mr__req *r, int final, int degraded, size_t *len) {
    const mr_coord_config *cfg = &r->co->cfg;
    const mr_cc_profile *pr = &cfg->profiles[r->profile];
    mr_cand *cand = malloc((size_t)r->n * sizeof *cand);
    int n_out = r->n;
    if (r->in->top_n && r->in->top_n < (uint32_t)n_out) n_out = (int)r->in->top_n;
    Mrank__V1__RerankResult *res = calloc((size_t)n_out, sizeof *res);
    Mrank__V1__RerankResult **resp_res = calloc((size_t)n_out, sizeof *resp_res);
    Mrank__V1__Document *docs = calloc((size_t)n_out, sizeof *docs);
    Mrank__V1__StageStats *stp[MR_CC_MAX_STAGES];
    uint8_t *buf = NULL;
    if (!cand || !res || !resp_res || !docs) goto done;
    for (int i = 0; i < r->n; i++) cand[i] = (mr_cand){i, r->stage[i], r->score[i]};
    mr_cascade_sort(cand, r->n);
    float above = INFINITY;   /* calib.c's rule: scores never increase down the ranking */
    for (int k = 0; k < n_out; k++) {
        Mrank__V1__RerankResult *x = &res[k];
        int d = cand[k].index;
        mrank__v1__rerank_result__init(x);
        x->index = (uint32_t)d;
        x->id = r->in->documents[d]->id;
        int si = cand[k].stage >= 0 ? pr->stages[cand[k].stage].stage : -1;
        int fused = cand[k].stage >= 0 && cand[k].stage == r->fused_stage;
        /* raw_score stays the head's logit; a fused score is reported as it is (fusion.c's
         * scale, not a probability), the others calibrated; then calib.c's rule */
        x->raw_score = fused ? r->logit[d] : cand[k].score;
        above = x->relevance_score = mr__calib_report(
            fused ? cand[k].score : mr__calib_score(r->co->calib, si, cand[k].score), above);
        if (cand[k].stage >= 0) {
            const mr_cc_stage *st = &cfg->stages[si];
            x->stage = (uint32_t)cand[k].stage;
            x->depth = (uint32_t)r->depth[d];
            x->compress_ratio = (uint32_t)st->arch.ratio;
        }
        x->truncated = r->truncated[d];
        mr__chunk_result(r, d, &x->chunk, &x->chunk_offset, &x->chunk_length);
        if (r->in->return_documents) {
            mrank__v1__document__init(&docs[k]);
            docs[k].text = r->in->documents[d]->text;
            docs[k].id = r->in->documents[d]->id;
            x->document = &docs[k];
        }
        resp_res[k] = x;
    }
    Mrank__V1__RerankResponse out = MRANK__V1__RERANK_RESPONSE__INIT;
    Mrank__V1__Usage usage = MRANK__V1__USAGE__INIT;
    usage.prompt_tokens = (uint32_t)r->prompt_tokens;
    usage.total_tokens = (uint32_t)r->total_tokens;
    for (int i = 0; i < r->n_stats; i++) stp[i] = &r->stats[i];
    out.n_results = (size_t)n_out;
    out.results = resp_res;
    out.degraded = degraded;
    out.n_stages = (size_t)r->n_stats;
    out.stages = stp;
    out.usage = &usage;
    out.total_ms = mr__now_ms() - r->t0;
    out.request_id = r->in->request_id;
    out.final = final;
    out.profile = (char *)pr->name;
    out.tier = (char *)cfg->tiers[r->tier].name;
    *len = mrank__v1__rerank_response__get_packed_size(&out);
    buf = malloc(*len ? *len : 1);
    if (buf) mrank__v1__rerank_response__pack(&out, buf);
done:
    free(cand);
    free(res);
    free(resp_res);
    free(docs);
    return buf;
}

uint8_t *mr__wire_info(mr_coord *c, size_t *len) {
    const mr_coord_config *cfg = &c->cfg;
    Mrank__V1__InfoResponse out = MRANK__V1__INFO_RESPONSE__INIT;
    Mrank__V1__StageInfo si[MR_CC_MAX_STAGES], *sip[MR_CC_MAX_STAGES];
    mr_subarch_pb sa[MR_CC_MAX_STAGES];
    Mrank__V1__ProfileInfo pi[MR_CC_MAX_PROFILES], *pip[MR_CC_MAX_PROFILES];
    char *pst[MR_CC_MAX_PROFILES][MR_CC_MAX_STAGES];
    char *tiers[MR_CC_MAX_TIERS];
    char model[512], dtype[sizeof c->dtype];
    pthread_mutex_lock(&c->mu);
    memcpy(model, *c->model ? c->model : cfg->model, sizeof model);
    model[sizeof model - 1] = 0;
    out.untrained = c->untrained;
    memcpy(dtype, c->dtype, sizeof dtype);
    pthread_mutex_unlock(&c->mu);
    char version[64];
    snprintf(version, sizeof version, "mrank-coordinator %s", mr_version());
    out.version = version;
    out.model = model;
    out.dtype = dtype;
    out.max_documents = (uint32_t)cfg->max_documents;
    out.max_tokens_per_pair = (uint32_t)cfg->max_tokens_per_pair;
    out.max_request_bytes = (uint32_t)cfg->max_request_bytes;
    for (int i = 0; i < cfg->n_stages; i++) {
        const mr_cc_stage *st = &cfg->stages[i];
        mrank__v1__stage_info__init(&si[i]);
        si[i].name = (char *)st->name;
        si[i].pool = st->pool >= 0 ? (char *)cfg->pools[st->pool].name : "";   /* lexical */
        mr_subarch_to_pb(&sa[i], &st->arch);
        si[i].arch = &sa[i].msg;
        sip[i] = &si[i];
    }
    out.n_stages = (size_t)cfg->n_stages;
    out.stages = sip;
    for (int i = 0; i < cfg->n_profiles; i++) {
        mrank__v1__profile_info__init(&pi[i]);
        pi[i].name = (char *)cfg->profiles[i].name;
        for (int k = 0; k < cfg->profiles[i].n_stages; k++)
            pst[i][k] = (char *)cfg->stages[cfg->profiles[i].stages[k].stage].name;
        pi[i].n_stages = (size_t)cfg->profiles[i].n_stages;
        pi[i].stages = pst[i];
        pip[i] = &pi[i];
    }
    out.n_profiles = (size_t)cfg->n_profiles;
    out.profiles = pip;
    for (int i = 0; i < cfg->n_tiers; i++) tiers[i] = (char *)cfg->tiers[i].name;
    out.n_tiers = (size_t)cfg->n_tiers;
    out.tiers = tiers;
    *len = mrank__v1__info_response__get_packed_size(&out);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf) mrank__v1__info_response__pack(&out, buf);
    return buf;
}
