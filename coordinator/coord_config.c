/* coord_config.c: reads and validates the cluster configuration (see coord_config.h and
 * docs/cluster.md). Every check reports "file: json.path: problem"; unknown keys are errors too,
 * so a typo ("keep_topk") is caught at start instead of being silently ignored. */
#include "coord_config.h"

#include "bm25.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CC_MAX_BYTES (4u * 1024 * 1024)

/* Parsing context: the file name and the JSON path of the value being read. */
typedef struct ctx {
    const char *file;
    mr_err *err;
} ctx;

static int bad(const ctx *x, int code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad(const ctx *x, int code, const char *path, const char *fmt, ...) {
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return mr_err_set(x->err, code, "%s: %s: %s", x->file, path, what);
}

/* Rejects keys not in the NULL-terminated list `known`. */
static int check_keys(const ctx *x, const cJSON *obj, const char *path, const char *const *known) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        int ok = 0;
        for (const char *const *k = known; *k && !ok; k++) ok = !strcmp(it->string, *k);
        if (!ok) {
            char p[384];
            snprintf(p, sizeof p, "%.250s%s%.120s", path, *path ? "." : "", it->string);
            return bad(x, MR_EINVAL, p, "unknown key");
        }
    }
    return 0;
}

static void join(char *out, size_t cap, const char *path, const char *key) {
    snprintf(out, cap, "%s%s%s", path, *path ? "." : "", key);
}

/* Optional string into buf (cap bytes); absent leaves buf unchanged. */
static int get_str(const ctx *x, const cJSON *obj, const char *path, const char *key, char *buf,
                   size_t cap, int required) {
    char p[384];
    join(p, sizeof p, path, key);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return required ? bad(x, MR_EINVAL, p, "missing") : 0;
    if (!cJSON_IsString(v)) return bad(x, MR_EFORMAT, p, "expected a string");
    if (strlen(v->valuestring) >= cap)
        return bad(x, MR_ERANGE, p, "longer than %zu bytes", cap - 1);
    if (required && !*v->valuestring) return bad(x, MR_EINVAL, p, "empty");
    strcpy(buf, v->valuestring);
    return 0;
}

static int get_num(const ctx *x, const cJSON *obj, const char *path, const char *key, double *out,
                   double lo, double hi, int integer, int *present) {
    char p[384];
    join(p, sizeof p, path, key);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (present) *present = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return bad(x, MR_EFORMAT, p, "expected a number");
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi || (integer && d != floor(d)))
        return bad(x, MR_ERANGE, p, "%g is not %s in [%g, %g]", d,
                   integer ? "an integer" : "a number", lo, hi);
    *out = d;
    if (present) *present = 1;
    return 0;
}

static int get_int(const ctx *x, const cJSON *obj, const char *path, const char *key, int *out,
                   double lo, double hi) {
    double d = *out;
    int rc = get_num(x, obj, path, key, &d, lo, hi, 1, NULL);
    if (!rc) *out = (int)d;
    return rc;
}

static int get_bool(const ctx *x, const cJSON *obj, const char *path, const char *key, int *out) {
    char p[384];
    join(p, sizeof p, path, key);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return bad(x, MR_EFORMAT, p, "expected true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

/* The array at key: MR_EINVAL when required and absent or empty. */
static int get_array(const ctx *x, const cJSON *obj, const char *path, const char *key,
                     const cJSON **out, int required, int max) {
    char p[384];
    join(p, sizeof p, path, key);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return required ? bad(x, MR_EINVAL, p, "missing") : 0;
    if (!cJSON_IsArray(v)) return bad(x, MR_EFORMAT, p, "expected an array");
    int n = cJSON_GetArraySize(v);
    if (required && n == 0) return bad(x, MR_EINVAL, p, "empty");
    if (n > max) return bad(x, MR_ERANGE, p, "%d entries, at most %d", n, max);
    *out = v;
    return 0;
}

static int is_name(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.'))
            return 0;
    return 1;
}

static int get_name(const ctx *x, const cJSON *obj, const char *path, char *buf) {
    int rc = get_str(x, obj, path, "name", buf, MR_CC_NAME, 1);
    if (rc) return rc;
    char p[384];
    join(p, sizeof p, path, "name");
    if (!is_name(buf)) return bad(x, MR_EINVAL, p, "'%s' is not a name ([A-Za-z0-9_.-]+)", buf);
    return 0;
}

/* ---- sections ---- */

static int parse_limits(const ctx *x, const cJSON *root, mr_coord_config *c) {
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(root, "limits");
    if (!l || cJSON_IsNull(l)) return 0;
    if (!cJSON_IsObject(l)) return bad(x, MR_EFORMAT, "limits", "expected an object");
    static const char *const keys[] = {"max_documents", "max_tokens_per_pair",
                                       "max_request_bytes", "max_inflight", NULL};
    int rc;
    if ((rc = check_keys(x, l, "limits", keys)) ||
        (rc = get_int(x, l, "limits", "max_documents", &c->max_documents, 1, 100000)) ||
        (rc = get_int(x, l, "limits", "max_tokens_per_pair", &c->max_tokens_per_pair, 32,
                      131072)) ||
        (rc = get_int(x, l, "limits", "max_request_bytes", &c->max_request_bytes, 1024,
                      64.0 * 1024 * 1024)) ||
        (rc = get_int(x, l, "limits", "max_inflight", &c->max_inflight, 1, 100000)))
        return rc;
    return 0;
}

static int parse_pool(const ctx *x, const cJSON *o, const char *path, mr_cc_pool *p) {
    static const char *const keys[] = {"name", "addresses", "dns", "adapters", "max_call_tokens",
                                       "min_per_call", "metrics_port_base", NULL};
    char q[384];
    int rc;
    if (!cJSON_IsObject(o)) return bad(x, MR_EFORMAT, path, "expected an object");
    if ((rc = check_keys(x, o, path, keys)) || (rc = get_name(x, o, path, p->name))) return rc;
    const cJSON *addrs;
    if ((rc = get_array(x, o, path, "addresses", &addrs, 0, MR_CC_MAX_ADDRS)) ||
        (rc = get_str(x, o, path, "dns", p->dns, sizeof p->dns, 0)))
        return rc;
    if (addrs && cJSON_GetArraySize(addrs) > 0 && *p->dns)
        return bad(x, MR_EINVAL, path, "give either addresses or dns, not both");
    if ((!addrs || cJSON_GetArraySize(addrs) == 0) && !*p->dns)
        return bad(x, MR_EINVAL, path, "needs addresses (a non-empty list) or dns");
    for (int i = 0; addrs && i < cJSON_GetArraySize(addrs); i++) {
        const cJSON *a = cJSON_GetArrayItem(addrs, i);
        snprintf(q, sizeof q, "%s.addresses[%d]", path, i);
        if (!cJSON_IsString(a)) return bad(x, MR_EFORMAT, q, "expected a string");
        const char *colon = strrchr(a->valuestring, ':');
        if (!colon || colon == a->valuestring || atoi(colon + 1) <= 0 ||
            atoi(colon + 1) > 65535 || strlen(a->valuestring) >= sizeof p->addrs[0])
            return bad(x, MR_EINVAL, q, "'%s' is not host:port", a->valuestring);
        for (int j = 0; j < p->n_addrs; j++)
            if (!strcmp(p->addrs[j], a->valuestring))
                return bad(x, MR_EINVAL, q, "duplicate address '%s'", a->valuestring);
        strcpy(p->addrs[p->n_addrs++], a->valuestring);
    }
    const cJSON *ad = cJSON_GetObjectItemCaseSensitive(o, "adapters");
    snprintf(q, sizeof q, "%s.adapters", path);
    if (ad && !cJSON_IsNull(ad)) {
        if (!cJSON_IsObject(ad))
            return bad(x, MR_EFORMAT, q, "expected an object {\"name\": \"folder\"}");
        for (const cJSON *it = ad->child; it; it = it->next) {
            char qq[480];
            snprintf(qq, sizeof qq, "%s.%s", q, it->string);
            if (p->n_adapters == MR_CC_MAX_ADAPTERS)
                return bad(x, MR_ERANGE, q, "more than %d adapters", MR_CC_MAX_ADAPTERS);
            if (!is_name(it->string) || strlen(it->string) >= MR_CC_NAME)
                return bad(x, MR_EINVAL, qq, "'%s' is not an adapter name", it->string);
            if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof p->adapters[0].dir)
                return bad(x, MR_EFORMAT, qq, "expected a folder path string");
            mr_cc_adapter *a = &p->adapters[p->n_adapters++];
            strcpy(a->name, it->string);
            strcpy(a->dir, it->valuestring);
        }
    }
    double d = p->max_call_tokens;
    if ((rc = get_num(x, o, path, "max_call_tokens", &d, 0, 1e9, 1, NULL)) ||
        (rc = get_int(x, o, path, "min_per_call", &p->min_per_call, 1, 100000)) ||
        (rc = get_int(x, o, path, "metrics_port_base", &p->metrics_port_base, 0, 65535)))
        return rc;
    p->max_call_tokens = (long)d;
    return 0;
}

static int get_file(const ctx *x, const cJSON *obj, const char *path, const char *key, char *buf,
                    int required);

/* A lexical stage: BM25 in the coordinator; no pool, no sub-architecture. */
static int parse_lexical(const ctx *x, const cJSON *o, const char *path, mr_cc_stage *s) {
    static const char *const neural_only[] = {"pool", "depth", "compress_ratio",
                                              "compress_layers", "pooling", "adapters", NULL};
    char q[384];
    for (const char *const *k = neural_only; *k; k++)
        if (cJSON_GetObjectItemCaseSensitive(o, *k)) {
            join(q, sizeof q, path, *k);
            return bad(x, MR_EINVAL, q, "a lexical stage has no %s", *k);
        }
    s->kind = MR_CC_LEXICAL;
    s->pool = -1;
    s->k1 = MR_BM25_DEFAULT_K1;
    s->b = MR_BM25_DEFAULT_B;
    s->stem = -1;
    char stem[16] = "";
    int rc;
    if ((rc = get_num(x, o, path, "k1", &s->k1, 0, 100, 0, NULL)) ||
        (rc = get_num(x, o, path, "b", &s->b, 0, 1, 0, NULL)) ||
        (rc = get_file(x, o, path, "lexicon", s->lexicon, 0)) ||
        (rc = get_str(x, o, path, "stem", stem, sizeof stem, 0)))
        return rc;
    if (*stem) {
        mr_bm25_stem k;
        mr_err e = {0};
        join(q, sizeof q, path, "stem");
        if (mr_bm25_stem_parse(stem, &k, &e)) return bad(x, MR_EINVAL, q, "%s", e.msg);
        s->stem = (int)k;
    }
    return 0;
}

static int parse_stage(const ctx *x, const cJSON *o, const char *path, mr_coord_config *c,
                       mr_cc_stage *s) {
    static const char *const keys[] = {"name", "kind", "pool", "depth", "compress_ratio",
                                       "compress_layers", "pooling", "adapters", "k1", "b",
                                       "lexicon", "stem", NULL};
    char q[384], pool[MR_CC_NAME] = "", kind[16] = "neural";
    int rc;
    if (!cJSON_IsObject(o)) return bad(x, MR_EFORMAT, path, "expected an object");
    if ((rc = check_keys(x, o, path, keys)) || (rc = get_name(x, o, path, s->name)) ||
        (rc = get_str(x, o, path, "kind", kind, sizeof kind, 0)))
        return rc;
    snprintf(q, sizeof q, "%s.kind", path);
    if (!strcmp(kind, "lexical")) return parse_lexical(x, o, path, s);
    if (strcmp(kind, "neural")) return bad(x, MR_EINVAL, q, "'%s' is not neural or lexical", kind);
    static const char *const lexical_only[] = {"k1", "b", "lexicon", "stem", NULL};
    for (const char *const *k = lexical_only; *k; k++)
        if (cJSON_GetObjectItemCaseSensitive(o, *k)) {
            join(q, sizeof q, path, *k);
            return bad(x, MR_EINVAL, q, "only a lexical stage takes it");
        }
    if ((rc = get_str(x, o, path, "pool", pool, sizeof pool, 1))) return rc;
    snprintf(q, sizeof q, "%s.pool", path);
    if ((s->pool = mr_coord_config_pool(c, pool)) < 0)
        return bad(x, MR_EINVAL, q, "unknown pool '%s'", pool);
    mr_subarch *a = &s->arch;
    mr_subarch_default(a);
    if ((rc = get_int(x, o, path, "depth", &a->depth, 1, 1024))) return rc;
    snprintf(q, sizeof q, "%s.depth", path);
    if (a->depth == 0) return bad(x, MR_EINVAL, q, "missing");
    if ((rc = get_int(x, o, path, "compress_ratio", &a->ratio, 1, 8))) return rc;
    snprintf(q, sizeof q, "%s.compress_ratio", path);
    if (a->ratio != 1 && a->ratio != 2 && a->ratio != 4 && a->ratio != 8)
        return bad(x, MR_EINVAL, q, "%d is not 1, 2, 4 or 8", a->ratio);
    const cJSON *cl;
    if ((rc = get_array(x, o, path, "compress_layers", &cl, 0, MR_MAX_COMPRESS))) return rc;
    for (int i = 0; cl && i < cJSON_GetArraySize(cl); i++) {
        const cJSON *v = cJSON_GetArrayItem(cl, i);
        snprintf(q, sizeof q, "%s.compress_layers[%d]", path, i);
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
            return bad(x, MR_EFORMAT, q, "expected an integer layer");
        if (v->valuedouble < 0 || v->valuedouble >= a->depth) /* before the (int) cast */
            return bad(x, MR_ERANGE, q, "layer %g is not in [0, depth %d)", v->valuedouble,
                       a->depth);
        int l = (int)v->valuedouble;
        if (a->n_compress && l <= a->compress_layers[a->n_compress - 1])
            return bad(x, MR_EINVAL, q, "layers must be strictly increasing");
        a->compress_layers[a->n_compress++] = l;
    }
    snprintf(q, sizeof q, "%s.compress_layers", path);
    if (a->ratio > 1 && a->n_compress == 0)
        return bad(x, MR_EINVAL, q, "compress_ratio %d needs at least one compress layer",
                   a->ratio);
    char pooling[16] = "mean";
    if ((rc = get_str(x, o, path, "pooling", pooling, sizeof pooling, 0))) return rc;
    snprintf(q, sizeof q, "%s.pooling", path);
    mr_err perr = {0};
    if (mr_pooling_parse(pooling, &a->pooling, &perr))
        return bad(x, MR_EINVAL, q, "'%s' is not mean or attention", pooling);
    const cJSON *ad;
    if ((rc = get_array(x, o, path, "adapters", &ad, 0, MR_CC_MAX_ADAPTERS))) return rc;
    const mr_cc_pool *p = &c->pools[s->pool];
    for (int i = 0; ad && i < cJSON_GetArraySize(ad); i++) {
        const cJSON *v = cJSON_GetArrayItem(ad, i);
        snprintf(q, sizeof q, "%s.adapters[%d]", path, i);
        if (!cJSON_IsString(v)) return bad(x, MR_EFORMAT, q, "expected an adapter name");
        int found = 0;
        for (int j = 0; j < p->n_adapters && !found; j++)
            found = !strcmp(p->adapters[j].name, v->valuestring);
        if (!found)
            return bad(x, MR_EINVAL, q, "adapter '%s' is not loaded by pool '%s'",
                       v->valuestring, p->name);
        snprintf(a->adapters[a->n_adapters++], MR_SUBARCH_NAME, "%s", v->valuestring);
    }
    return 0;
}

static int parse_profile_stage(const ctx *x, const cJSON *o, const char *path,
                               const mr_coord_config *c, mr_cc_profile_stage *ps) {
    static const char *const keys[] = {"stage", "keep_top_k", "keep_fraction", "min_score",
                                       "max_keep_top_k", "max_keep_fraction", NULL};
    char q[512], name[MR_CC_NAME] = "";
    int rc, has;
    if (!cJSON_IsObject(o)) return bad(x, MR_EFORMAT, path, "expected an object");
    if ((rc = check_keys(x, o, path, keys)) ||
        (rc = get_str(x, o, path, "stage", name, sizeof name, 1)))
        return rc;
    snprintf(q, sizeof q, "%s.stage", path);
    if ((ps->stage = mr_coord_config_stage(c, name)) < 0)
        return bad(x, MR_EINVAL, q, "unknown stage '%s'", name);
    double d = 0;
    if ((rc = get_int(x, o, path, "keep_top_k", &ps->keep.top_k, 1, c->max_documents)) ||
        (rc = get_num(x, o, path, "keep_fraction", &d, 1e-6, 1, 0, &has)))
        return rc;
    if (has) ps->keep.fraction = (float)d;
    if ((rc = get_num(x, o, path, "min_score", &d, -1e6, 1e6, 0, &has))) return rc;
    if (has) {
        ps->keep.has_min_score = 1;
        ps->keep.min_score = (float)d;
    }
    /* Overrides may ask for at most as many survivors as the profile keeps unless the config
     * allows more: an expensive stage is protected from a client escalating everything. */
    ps->bounds.max_top_k = ps->keep.top_k > 0 ? ps->keep.top_k : c->max_documents;
    ps->bounds.max_fraction = ps->keep.fraction > 0 ? ps->keep.fraction : 1.0f;
    if ((rc = get_int(x, o, path, "max_keep_top_k", &ps->bounds.max_top_k, 1,
                      c->max_documents)))
        return rc;
    d = ps->bounds.max_fraction;
    if ((rc = get_num(x, o, path, "max_keep_fraction", &d, 1e-6, 1, 0, NULL))) return rc;
    ps->bounds.max_fraction = (float)d;
    snprintf(q, sizeof q, "%s.max_keep_top_k", path);
    if (ps->keep.top_k > ps->bounds.max_top_k)
        return bad(x, MR_EINVAL, q, "%d is below keep_top_k %d", ps->bounds.max_top_k,
                   ps->keep.top_k);
    snprintf(q, sizeof q, "%s.max_keep_fraction", path);
    if (ps->keep.fraction > ps->bounds.max_fraction)
        return bad(x, MR_EINVAL, q, "%g is below keep_fraction %g",
                   (double)ps->bounds.max_fraction, (double)ps->keep.fraction);
    return 0;
}

/* "fusion": {"method": "weighted" | "rrf", "normalize": "minmax" | "zscore", "k": K,
 * "weights": {"stage": w, ...}, "input_order": w} (fusion.h); the stages named are the
 * profile's; input_order weighs the request's own order. */
static int parse_fusion(const ctx *x, const cJSON *o, const char *path,
                        const mr_coord_config *c, mr_cc_profile *pr) {
    static const char *const keys[] = {"method", "normalize", "k", "weights", "input_order",
                                       NULL};
    char q[640], method[16] = "", norm[16] = "minmax";
    mr_fusion *f = &pr->fusion;
    int rc;
    if (!cJSON_IsObject(o)) return bad(x, MR_EFORMAT, path, "expected an object");
    if ((rc = check_keys(x, o, path, keys)) ||
        (rc = get_str(x, o, path, "method", method, sizeof method, 1)) ||
        (rc = get_str(x, o, path, "normalize", norm, sizeof norm, 0)))
        return rc;
    join(q, sizeof q, path, "method");
    if (!strcmp(method, "weighted")) f->method = MR_FUSION_WEIGHTED;
    else if (!strcmp(method, "rrf")) f->method = MR_FUSION_RRF;
    else return bad(x, MR_EINVAL, q, "'%s' is not weighted or rrf", method);
    join(q, sizeof q, path, "normalize");
    if (!strcmp(norm, "minmax")) f->norm = MR_FUSION_MINMAX;
    else if (!strcmp(norm, "zscore")) f->norm = MR_FUSION_ZSCORE;
    else return bad(x, MR_EINVAL, q, "'%s' is not minmax or zscore", norm);
    if (f->method == MR_FUSION_RRF && cJSON_GetObjectItemCaseSensitive(o, "normalize"))
        return bad(x, MR_EINVAL, q, "rrf fuses ranks: no normalize");
    f->k = MR_FUSION_DEFAULT_K;
    if ((rc = get_num(x, o, path, "k", &f->k, 1e-3, 1e6, 0, NULL))) return rc;
    join(q, sizeof q, path, "k");
    if (f->method != MR_FUSION_RRF && cJSON_GetObjectItemCaseSensitive(o, "k"))
        return bad(x, MR_EINVAL, q, "only rrf takes k");
    if ((rc = get_num(x, o, path, "input_order", &f->input_weight, 0, 1e6, 0, NULL))) return rc;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "weights");
    join(q, sizeof q, path, "weights");
    if (!w || cJSON_IsNull(w)) {
        if (f->method == MR_FUSION_WEIGHTED) return bad(x, MR_EINVAL, q, "missing");
        for (int p = 0; p < pr->n_stages; p++) f->pos[f->n] = p, f->weight[f->n++] = 1;
        return 0;
    }
    if (!cJSON_IsObject(w) || !w->child)
        return bad(x, MR_EFORMAT, q, "expected an object {\"stage\": weight, ...}");
    for (const cJSON *it = w->child; it; it = it->next) {
        char qq[720];
        snprintf(qq, sizeof qq, "%s.%.60s", q, it->string);
        int si = mr_coord_config_stage(c, it->string), p = -1;
        for (int j = 0; si >= 0 && j < pr->n_stages; j++)
            if (pr->stages[j].stage == si) p = j;
        if (p < 0) return bad(x, MR_EINVAL, qq, "not a stage of profile '%s'", pr->name);
        for (int j = 0; j < f->n; j++)
            if (f->pos[j] == p) return bad(x, MR_EINVAL, qq, "named twice");
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < 0 ||
            it->valuedouble > 1e6)
            return bad(x, MR_ERANGE, qq, "expected a weight in [0, 1e6]");
        f->pos[f->n] = p;
        f->weight[f->n++] = it->valuedouble;
    }
    double sum = f->input_weight;
    for (int j = 0; j < f->n; j++) sum += f->weight[j];
    if (!(sum > 0))   /* every fused score 0: the group would come back in request order */
        return bad(x, MR_EINVAL, q, "every weight is 0 (and input_order too): nothing to fuse");
    return 0;
}

static int parse_profile(const ctx *x, const cJSON *o, const char *path, const mr_coord_config *c,
                         mr_cc_profile *pr) {
    static const char *const keys[] = {"name", "stages", "fusion", "fuse", NULL};
    static const char *const fuse[] = {"auto", "never", "always"};   /* mr_cc_fuse order */
    char q[384], fz[16] = "auto";
    int rc;
    if (!cJSON_IsObject(o)) return bad(x, MR_EFORMAT, path, "expected an object");
    if ((rc = check_keys(x, o, path, keys)) || (rc = get_name(x, o, path, pr->name)) ||
        (rc = get_str(x, o, path, "fuse", fz, sizeof fz, 0)))
        return rc;
    for (pr->fuse = MR_CC_FUSE_AUTO; pr->fuse <= MR_CC_FUSE_ALWAYS; pr->fuse++)
        if (!strcmp(fz, fuse[pr->fuse])) break;
    snprintf(q, sizeof q, "%s.fuse", path);
    if (pr->fuse > MR_CC_FUSE_ALWAYS)
        return bad(x, MR_EINVAL, q, "expected \"auto\", \"never\" or \"always\", not '%s'", fz);
    const cJSON *st;
    if ((rc = get_array(x, o, path, "stages", &st, 1, MR_CC_MAX_STAGES))) return rc;
    for (int i = 0; i < cJSON_GetArraySize(st); i++) {
        snprintf(q, sizeof q, "%s.stages[%d]", path, i);
        mr_cc_profile_stage *ps = &pr->stages[pr->n_stages];
        if ((rc = parse_profile_stage(x, cJSON_GetArrayItem(st, i), q, c, ps))) return rc;
        for (int j = 0; j < pr->n_stages; j++)
            if (pr->stages[j].stage == ps->stage)
                return bad(x, MR_EINVAL, q, "stage '%s' appears twice",
                           c->stages[ps->stage].name);
        pr->n_stages++;
    }
    const cJSON *fu = cJSON_GetObjectItemCaseSensitive(o, "fusion");
    snprintf(q, sizeof q, "%s.fusion", path);
    if (fu && !cJSON_IsNull(fu)) return parse_fusion(x, fu, q, c, pr);
    return 0;
}

static int parse_tier(const ctx *x, const cJSON *o, const char *path, const mr_coord_config *c,
                      mr_cc_tier *t) {
    static const char *const keys[] = {"name", "budget_ms", "priority", "profile",
                                       "allow_degraded", NULL};
    char q[384], prof[MR_CC_NAME] = "";
    int rc;
    if (!cJSON_IsObject(o)) return bad(x, MR_EFORMAT, path, "expected an object");
    if ((rc = check_keys(x, o, path, keys)) || (rc = get_name(x, o, path, t->name)) ||
        (rc = get_num(x, o, path, "budget_ms", &t->budget_ms, 0, 3.6e6, 0, NULL)) ||
        (rc = get_int(x, o, path, "priority", &t->priority, 0, 9)) ||
        (rc = get_str(x, o, path, "profile", prof, sizeof prof, 1)) ||
        (rc = get_bool(x, o, path, "allow_degraded", &t->allow_degraded)))
        return rc;
    snprintf(q, sizeof q, "%s.profile", path);
    if ((t->profile = mr_coord_config_profile(c, prof)) < 0)
        return bad(x, MR_EINVAL, q, "unknown profile '%s'", prof);
    return 0;
}

/* Parses the array at key with one parser per entry and checks names are unique. */
#define PARSE_LIST(key, arr, count, max, call)                                                \
    do {                                                                                      \
        const cJSON *list_;                                                                   \
        if ((rc = get_array(&x, root, "", key, &list_, 1, max))) goto done;                   \
        for (int i_ = 0; i_ < cJSON_GetArraySize(list_); i_++) {                              \
            char path_[64];                                                                   \
            snprintf(path_, sizeof path_, "%s[%d]", key, i_);                                 \
            const cJSON *o_ = cJSON_GetArrayItem(list_, i_);                                  \
            if ((rc = (call))) goto done;                                                     \
            for (int j_ = 0; j_ < c->count; j_++)                                             \
                if (!strcmp(c->arr[j_].name, c->arr[c->count].name)) {                        \
                    char np_[80];                                                             \
                    snprintf(np_, sizeof np_, "%s.name", path_);                              \
                    rc = bad(&x, MR_EINVAL, np_, "duplicate name '%s'", c->arr[j_].name);     \
                    goto done;                                                                \
                }                                                                             \
            c->count++;                                                                       \
        }                                                                                     \
    } while (0)

static int parse_security(const ctx *x, const cJSON *root, mr_cc_security *s);

int mr_coord_config_parse(mr_coord_config *c, const char *name, const char *json, mr_err *err) {
    ctx x = {name, err};
    int rc = 0;
    memset(c, 0, sizeof *c);
    snprintf(c->path, sizeof c->path, "%s", name);
    c->max_documents = 1000;
    c->max_tokens_per_pair = 512;
    c->max_request_bytes = 4 * 1024 * 1024;
    c->max_inflight = 256;
    c->safety = 1.2;
    c->call_overhead_ms = 2.0;
    c->warmup_timeout_ms = 60000;
    strcpy(c->listen, "127.0.0.1:7100");
    cJSON *root = mr__json_parse(json, strlen(json), name, err);
    if (!root) return MR_EFORMAT;
    if (!cJSON_IsObject(root)) {
        rc = bad(&x, MR_EFORMAT, "$", "expected a JSON object");
        goto done;
    }
    static const char *const keys[] = {"model", "coordinator", "limits", "pools", "stages",
                                       "profiles", "tiers", "default_tier", "planning",
                                       "security", NULL};
    if ((rc = check_keys(&x, root, "", keys)) ||
        (rc = get_str(&x, root, "", "model", c->model, sizeof c->model, 0)) ||
        (rc = parse_limits(&x, root, c)))
        goto done;
    const cJSON *co = cJSON_GetObjectItemCaseSensitive(root, "coordinator");
    if (co && !cJSON_IsNull(co)) {
        static const char *const ck[] = {"listen", "metrics_port", "http_listen",
                                         "otlp_endpoint", NULL};
        if (!cJSON_IsObject(co)) {
            rc = bad(&x, MR_EFORMAT, "coordinator", "expected an object");
            goto done;
        }
        if ((rc = check_keys(&x, co, "coordinator", ck)) ||
            (rc = get_str(&x, co, "coordinator", "listen", c->listen, sizeof c->listen, 0)) ||
            (rc = get_int(&x, co, "coordinator", "metrics_port", &c->metrics_port, 0, 65535)) ||
            (rc = get_str(&x, co, "coordinator", "http_listen", c->http_listen,
                          sizeof c->http_listen, 0)) ||
            (rc = get_str(&x, co, "coordinator", "otlp_endpoint", c->otlp_endpoint,
                          sizeof c->otlp_endpoint, 0)))
            goto done;
    }
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(root, "planning");
    if (pl && !cJSON_IsNull(pl)) {
        static const char *const pk[] = {"safety", "call_overhead_ms", "warmup_timeout_ms",
                                         NULL};
        if (!cJSON_IsObject(pl)) {
            rc = bad(&x, MR_EFORMAT, "planning", "expected an object");
            goto done;
        }
        if ((rc = check_keys(&x, pl, "planning", pk)) ||
            (rc = get_num(&x, pl, "planning", "safety", &c->safety, 1, 100, 0, NULL)) ||
            (rc = get_num(&x, pl, "planning", "call_overhead_ms", &c->call_overhead_ms, 0, 1e4,
                          0, NULL)) ||
            (rc = get_int(&x, pl, "planning", "warmup_timeout_ms", &c->warmup_timeout_ms, 1000,
                          3600000)))
            goto done;
    }
    PARSE_LIST("pools", pools, n_pools, MR_CC_MAX_POOLS,
               parse_pool(&x, o_, path_, &c->pools[c->n_pools]));
    PARSE_LIST("stages", stages, n_stages, MR_CC_MAX_STAGES,
               parse_stage(&x, o_, path_, c, &c->stages[c->n_stages]));
    PARSE_LIST("profiles", profiles, n_profiles, MR_CC_MAX_PROFILES,
               parse_profile(&x, o_, path_, c, &c->profiles[c->n_profiles]));
    PARSE_LIST("tiers", tiers, n_tiers, MR_CC_MAX_TIERS,
               parse_tier(&x, o_, path_, c, &c->tiers[c->n_tiers]));
    char dt[MR_CC_NAME] = "";
    if ((rc = get_str(&x, root, "", "default_tier", dt, sizeof dt, 0))) goto done;
    if (*dt && (c->default_tier = mr_coord_config_tier(c, dt)) < 0) {
        rc = bad(&x, MR_EINVAL, "default_tier", "unknown tier '%s'", dt);
        goto done;
    }
    rc = parse_security(&x, root, &c->security);
done:
    cJSON_Delete(root);
    return rc;
}

/* A readable file path at obj[key] (optional unless required). */
static int get_file(const ctx *x, const cJSON *obj, const char *path, const char *key, char *buf,
                    int required) {
    int rc = get_str(x, obj, path, key, buf, MR_CC_PATH, required);
    if (rc || !*buf) {
        if (!rc && cJSON_GetObjectItemCaseSensitive(obj, key) && !cJSON_IsNull(
                cJSON_GetObjectItemCaseSensitive(obj, key))) {
            char p[384];
            join(p, sizeof p, path, key);
            return bad(x, MR_EINVAL, p, "empty");
        }
        return rc;
    }
    if (access(buf, R_OK)) {
        char p[384];
        join(p, sizeof p, path, key);
        return bad(x, MR_ENOTFOUND, p, "%.150s: cannot be read", buf);
    }
    return 0;
}

/* "security": {"tls": {"cert", "key", "client_ca"}, "internal": {"ca", "cert", "key"},
 * "api_keys": FILE}; see docs/security.md. */
static int parse_security(const ctx *x, const cJSON *root, mr_cc_security *s) {
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "security");
    if (!o || cJSON_IsNull(o)) return 0;
    if (!cJSON_IsObject(o)) return bad(x, MR_EFORMAT, "security", "expected an object");
    static const char *const keys[] = {"tls", "internal", "api_keys", NULL};
    int rc = check_keys(x, o, "security", keys);
    if (rc || (rc = get_file(x, o, "security", "api_keys", s->api_keys, 0))) return rc;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tls");
    if (t && !cJSON_IsNull(t)) {
        static const char *const tk[] = {"cert", "key", "client_ca", NULL};
        if (!cJSON_IsObject(t)) return bad(x, MR_EFORMAT, "security.tls", "expected an object");
        if ((rc = check_keys(x, t, "security.tls", tk)) ||
            (rc = get_file(x, t, "security.tls", "cert", s->tls_cert, 1)) ||
            (rc = get_file(x, t, "security.tls", "key", s->tls_key, 1)) ||
            (rc = get_file(x, t, "security.tls", "client_ca", s->tls_client_ca, 0)))
            return rc;
    }
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(o, "internal");
    if (in && !cJSON_IsNull(in)) {
        static const char *const ik[] = {"ca", "cert", "key", NULL};
        if (!cJSON_IsObject(in))
            return bad(x, MR_EFORMAT, "security.internal", "expected an object");
        if ((rc = check_keys(x, in, "security.internal", ik)) ||
            (rc = get_file(x, in, "security.internal", "ca", s->internal_ca, 1)) ||
            (rc = get_file(x, in, "security.internal", "cert", s->internal_cert, 1)) ||
            (rc = get_file(x, in, "security.internal", "key", s->internal_key, 1)))
            return rc;
    }
    return 0;
}

int mr_coord_config_load(mr_coord_config *c, const char *path, mr_err *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return mr_err_errno(err, "%s", path);
    char *text = malloc(CC_MAX_BYTES + 1);
    if (!text) {
        fclose(fp);
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(text, 1, CC_MAX_BYTES + 1, fp);
    int rd_err = ferror(fp);
    fclose(fp);
    int rc;
    if (rd_err) rc = mr_err_set(err, MR_EIO, "%s: read error", path);
    else if (n > CC_MAX_BYTES) rc = mr_err_set(err, MR_ERANGE, "%s: larger than 4 MiB", path);
    else {
        text[n] = 0;
        rc = mr_coord_config_parse(c, path, text, err);
    }
    free(text);
    return rc;
}

#define FIND(arr, count)                                                                      \
    for (int i = 0; name && i < c->count; i++)                                                \
        if (!strcmp(c->arr[i].name, name)) return i;                                          \
    return -1

int mr_coord_config_profile(const mr_coord_config *c, const char *name) { FIND(profiles, n_profiles); }
int mr_coord_config_tier(const mr_coord_config *c, const char *name) { FIND(tiers, n_tiers); }
int mr_coord_config_stage(const mr_coord_config *c, const char *name) { FIND(stages, n_stages); }
int mr_coord_config_pool(const mr_coord_config *c, const char *name) { FIND(pools, n_pools); }
