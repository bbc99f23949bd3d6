/* calib.c: score calibration per stage sub-architecture and the reporting rule that makes
 * relevance_score sort like the ranking (see coord_internal.h, docs/cluster.md "Scores").
 *
 * calibration.json, beside the model (written by `mrank calibrate`), maps a sub-architecture
 * key (mr_calib_stage_key: depth, width, compress layers, pooling, adapter folders) to Platt parameters
 * a, b: calibrated = sigmoid(a * raw + b). A stage whose sub-architecture has no entry, or a
 * model folder without the file, uses a = 1, b = 0 (the head's logit through a sigmoid).
 *
 * The rule: the ranking is the cascade's (deeper survivors first, cascade.h), so a shallow
 * stage's calibrated score may exceed a deeper survivor's above it. Walking down the ranking,
 * each reported score is min(its own calibrated score, the score reported just above it):
 * relevance_score never increases down a response, a document never reports more than any
 * document ranked above it, and within one stage (where the ranking is by raw score and
 * calibration is increasing in it) scores are exactly the calibrated ones. raw_score stays
 * the head's logit. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "coord_internal.h"
#include "json.h"
#include "log.h"
#include "textfile.h"

#define CALIB_LIMIT (1 << 20)

struct mr__calib {
    int has[MR_CC_MAX_STAGES];
    double a[MR_CC_MAX_STAGES], b[MR_CC_MAX_STAGES];
};

void mr_calib_key(const mr_subarch *s, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "depth=%d ratio=%d compress=", s->depth,
                                s->ratio ? s->ratio : 1);
    for (int i = 0; i < s->n_compress && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%d", i ? "," : "", s->compress_layers[i]);
    if (n < cap)
        n += (size_t)snprintf(buf + n, cap - n, " pooling=%s adapters=",
                              mr_pooling_name(s->pooling));
    for (int i = 0; i < s->n_adapters && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", i ? "," : "", s->adapters[i]);
}

void mr_calib_stage_key(const mr_coord_config *cfg, int stage, char *buf, size_t cap) {
    if (cfg->stages[stage].kind == MR_CC_LEXICAL) {   /* no pool, no head: never in the file */
        snprintf(buf, cap, "lexical");
        return;
    }
    mr_subarch a = cfg->stages[stage].arch;
    const mr_cc_pool *p = &cfg->pools[cfg->stages[stage].pool];
    for (int i = 0; i < a.n_adapters; i++)
        for (int j = 0; j < p->n_adapters; j++) {
            if (strcmp(p->adapters[j].name, a.adapters[i]) || !*p->adapters[j].dir) continue;
            char dir[sizeof p->adapters[j].dir];
            snprintf(dir, sizeof dir, "%s", p->adapters[j].dir);
            size_t n = strlen(dir);
            while (n > 1 && dir[n - 1] == '/') dir[--n] = 0;
            const char *base = strrchr(dir, '/');
            snprintf(a.adapters[i], sizeof a.adapters[i], "%s", base ? base + 1 : dir);
        }
    mr_calib_key(&a, buf, cap);
}

int mr__calib_parse(struct mr__calib **out, const mr_coord_config *cfg, const char *name,
                    const char *json, mr_err *err) {
    *out = NULL;
    cJSON *root = mr__json_parse(json, strlen(json), name, err);
    if (!root) return MR_EFORMAT;
    const cJSON *ent = root ? cJSON_GetObjectItemCaseSensitive(root, "subarchs") : NULL;
    if (!ent || !cJSON_IsObject(ent)) {
        cJSON_Delete(root);
        return mr_err_set(err, MR_EFORMAT, "%s: expected {\"subarchs\": {KEY: {\"a\": A, \"b\": "
                          "B}}}", name);
    }
    struct mr__calib *k = calloc(1, sizeof *k);
    if (!k) {
        cJSON_Delete(root);
        return mr_err_set(err, MR_ENOMEM, "out of memory");
    }
    int rc = 0;
    for (const cJSON *e = ent->child; e; e = e->next) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(e, "a");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(e, "b");
        if (!cJSON_IsNumber(a) || !cJSON_IsNumber(b) || !(a->valuedouble > 0) ||
            !isfinite(a->valuedouble) || !isfinite(b->valuedouble)) {
            rc = mr_err_set(err, MR_EFORMAT, "%s: subarchs['%.100s']: expected finite numbers "
                            "a > 0 (the calibration must increase with the raw score) and b",
                            name, e->string);
            break;
        }
        for (int s = 0; s < cfg->n_stages; s++) {
            char key[512];
            mr_calib_stage_key(cfg, s, key, sizeof key);
            if (strcmp(key, e->string)) continue;
            k->has[s] = 1;
            k->a[s] = a->valuedouble;
            k->b[s] = b->valuedouble;
        }
    }
    cJSON_Delete(root);
    if (rc) {
        free(k);
        return rc;
    }
    *out = k;
    return 0;
}

int mr__calib_load(mr_coord *c, mr_err *err) {
    if (!*c->cfg.model) return 0;
    char path[600];
    snprintf(path, sizeof path, "%s/calibration.json", c->cfg.model);
    char *txt = NULL;
    mr_err e2 = {0};
    if (mr__read_text(path, CALIB_LIMIT, &txt, NULL, &e2)) {
        if (e2.code == MR_ENOTFOUND) {   /* none: identity, said once at start */
            mr_log(MR_LOG_WARN, "calibration", "%s: not found: relevance scores are "
                   "sigmoid(raw), uncalibrated (`mrank calibrate` writes it)\n", path);
            return 0;
        }
        return mr_err_set(err, e2.code, "%s", e2.msg);
    }
    int rc = mr__calib_parse(&c->calib, &c->cfg, path, txt, err);
    free(txt);
    if (!rc) {
        int n = 0;
        for (int s = 0; s < c->cfg.n_stages; s++) n += c->calib->has[s];
        mr_log(MR_LOG_INFO, "calibration", "%s: calibration of %d of %d stages\n", path, n,
               c->cfg.n_stages);
    }
    return rc;
}

void mr__calib_free(mr_coord *c) {
    free(c->calib);
    c->calib = NULL;
}

float mr__calib_score(const struct mr__calib *k, int stage, float raw) {
    if (isnan(raw)) return 0;
    double a = 1, b = 0;
    if (k && stage >= 0 && stage < MR_CC_MAX_STAGES && k->has[stage]) {
        a = k->a[stage];
        b = k->b[stage];
    }
    return (float)(1.0 / (1.0 + exp(-(a * raw + b))));
}

float mr__calib_report(float calibrated, float above) {
    return calibrated < above ? calibrated : above;
}
