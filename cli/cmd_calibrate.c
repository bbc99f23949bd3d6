/* cmd_calibrate.c: `mrank calibrate`: fits the score calibration of every stage of a cluster
 * config (Platt: a, b per stage sub-architecture, coordinator/calib.h) from a jsonl of
 * labelled pairs ({"query", "passage", "label"}, label 1/true relevant, 0/false not) and
 * writes calibration.json beside the model (the config's "model" folder, or --out), where
 * the coordinator finds it at start (docs/cluster.md, "Scores").
 *
 * The pairs are scored by the cluster's own workers (the config's pools, running, e.g. under
 * `mrank up`) with each stage's sub-architecture, through the Worker Score call the
 * coordinator uses: the raw scores calibrated are exactly the ones the coordinator will see
 * (same engine, adapters, max_tokens_per_pair, truncation at the end). Stages with the same
 * sub-architecture share one fit. Pairs of one query go together, at most CALL_PAIRS a call. */
#define _GNU_SOURCE
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "calib.h"
#include "cli.h"
#include "coord_config.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "rpc_methods.h"
#include "subarch_pb.h"
#include "textfile.h"
#include "tls.h"

#define CALL_PAIRS 32
#define PAIRS_LIMIT (256L << 20)   /* bytes of the pairs file */
#define CALL_TIMEOUT_MS 120000.0

typedef struct pairs {
    int n;
    char **query, **passage;
    int *label;
} pairs;

static void pairs_free(pairs *p) {
    for (int i = 0; i < p->n; i++) {
        free(p->query[i]);
        free(p->passage[i]);
    }
    free(p->query);
    free(p->passage);
    free(p->label);
}

/* Reads the jsonl (blank lines skipped); -1 after a message naming the line. */
static int pairs_load(pairs *p, const char *path) {
    char *txt = NULL;
    size_t len = 0;
    mr_err err = {0};
    if (mr__read_text(path, PAIRS_LIMIT, &txt, &len, &err)) {
        fprintf(stderr, "mrank calibrate: %s\n", err.msg);
        return -1;
    }
    if (strlen(txt) != len) {   /* the lines after it would be dropped without a word */
        fprintf(stderr, "mrank calibrate: %s: a NUL byte at offset %zu\n", path, strlen(txt));
        free(txt);
        return -1;
    }
    int cap = 0, line = 0, rc = 0;
    for (char *s = txt, *nl; s && *s; s = nl ? nl + 1 : NULL) {
        nl = strchr(s, '\n');
        if (nl) *nl = 0;
        line++;
        if (strspn(s, " \t\r") == strlen(s)) continue;   /* blank */
        cJSON *o = cJSON_Parse(s);
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "query");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "passage");
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "label");
        int lab = cJSON_IsBool(l)                                  ? cJSON_IsTrue(l)
                  : cJSON_IsNumber(l) && l->valuedouble == 0 ? 0
                  : cJSON_IsNumber(l) && l->valuedouble == 1 ? 1
                                                             : -1;   /* 0.4 is neither */
        if (!cJSON_IsString(q) || !*q->valuestring || !cJSON_IsString(d) || lab < 0) {
            fprintf(stderr, "mrank calibrate: %s: line %d: expected {\"query\": string, "
                    "\"passage\": string, \"label\": 0/1 or true/false}\n", path, line);
            cJSON_Delete(o);
            rc = -1;
            break;
        }
        if (p->n == cap) {
            cap = cap ? cap * 2 : 1024;
            char **nq = realloc(p->query, (size_t)cap * sizeof *nq);
            if (nq) p->query = nq;
            char **np = realloc(p->passage, (size_t)cap * sizeof *np);
            if (np) p->passage = np;
            int *nlab = realloc(p->label, (size_t)cap * sizeof *nlab);
            if (nlab) p->label = nlab;
            if (!nq || !np || !nlab) {
                cJSON_Delete(o);
                rc = -1;
                fprintf(stderr, "mrank calibrate: out of memory\n");
                break;
            }
        }
        p->query[p->n] = strdup(q->valuestring);
        p->passage[p->n] = strdup(d->valuestring);
        p->label[p->n] = lab;
        p->n++;
        cJSON_Delete(o);
    }
    free(txt);
    return rc;
}

/* Raw scores of every pair at stage st's sub-architecture on its pool; -1 after a message. */
static int score_all(mr_rpc_channel *ch, const mr_coord_config *cfg, const mr_cc_stage *st,
                     const pairs *p, float *out) {
    mr_subarch_pb arch;
    mr_subarch_to_pb(&arch, &st->arch);
    for (int i = 0; i < p->n;) {
        int k = 1;
        while (i + k < p->n && k < CALL_PAIRS && !strcmp(p->query[i + k], p->query[i])) k++;
        Mrank__V1__ScoreRequest sr = MRANK__V1__SCORE_REQUEST__INIT;
        sr.query = p->query[i];
        sr.passages = p->passage + i;
        sr.n_passages = (size_t)k;
        sr.arch = &arch.msg;
        sr.max_len = (uint32_t)cfg->max_tokens_per_pair;
        sr.truncate = MRANK__V1__TRUNCATE__TRUNCATE_END;
        size_t len = mrank__v1__score_request__get_packed_size(&sr), rlen = 0;
        uint8_t *buf = malloc(len ? len : 1), *resp = NULL;
        if (!buf) return -1;
        mrank__v1__score_request__pack(&sr, buf);
        grpc_status_code code;
        char msg[300] = "";
        int rc = mr_rpc_unary(ch, MR_METHOD_SCORE, buf, len, CALL_TIMEOUT_MS, &resp, &rlen,
                              &code, msg, sizeof msg);
        free(buf);
        Mrank__V1__ScoreResponse *r =
            rc ? NULL : mrank__v1__score_response__unpack(NULL, rlen, resp);
        free(resp);
        if (!r || r->n_passages != (size_t)k) {
            fprintf(stderr, "mrank calibrate: stage '%s': Score: %s\n", st->name,
                    rc ? msg : "malformed answer");
            if (r) mrank__v1__score_response__free_unpacked(r, NULL);
            return -1;
        }
        for (int j = 0; j < k; j++)
            out[i + j] = r->passages[j]->n_scores ? r->passages[j]->scores[0] : NAN;
        mrank__v1__score_response__free_unpacked(r, NULL);
        i += k;
    }
    return 0;
}

static void usage(FILE *f) {
    fputs("usage: mrank calibrate --config CLUSTER.json --pairs PAIRS.jsonl [--out FILE]\n"
          "  fits sigmoid(a * raw + b) per stage sub-architecture of CLUSTER.json from labelled\n"
          "  pairs ({\"query\", \"passage\", \"label\"} per line), scored by the config's running\n"
          "  workers, and writes FILE (default: calibration.json in the config's model folder),\n"
          "  which the coordinator applies at start (docs/cluster.md, \"Scores\")\n",
          f);
}

int mr_cmd_calibrate(int argc, char **argv) {
    static const struct option opts[] = {{"config", 1, 0, 'c'}, {"pairs", 1, 0, 'p'},
                                         {"out", 1, 0, 'o'},    {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *config = NULL, *pfile = NULL, *out = NULL;
    int ch, rc = 1;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'p': pfile = optarg; break;
        case 'o': out = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!config || !pfile || optind < argc) {
        usage(stderr);
        return 2;
    }
    mr_coord_config *cfg = calloc(1, sizeof *cfg);
    pairs p = {0};
    float *raw = NULL;
    cJSON *root = NULL;
    mr_rpc_channel *chans[MR_CC_MAX_POOLS] = {0};
    mr_err err = {0};
    char outp[600];
    if (!cfg) goto done;
    if (mr_coord_config_load(cfg, config, &err)) {
        fprintf(stderr, "mrank calibrate: %s\n", err.msg);
        goto done;
    }
    if (!out && !*cfg->model) {
        fprintf(stderr, "mrank calibrate: %s has no \"model\" folder: give --out\n", config);
        goto done;
    }
    snprintf(outp, sizeof outp, "%s", out ? out : "");
    if (!out) snprintf(outp, sizeof outp, "%s/calibration.json", cfg->model);
    if (pairs_load(&p, pfile)) goto done;
    if (!(raw = malloc((size_t)(p.n ? p.n : 1) * sizeof *raw))) goto done;
    const mr_cc_security *sec = &cfg->security;
    mr_rpc_tls_client tls = {0};   /* the workers' internal mTLS, when configured */
    if (*sec->internal_cert)
        tls = (mr_rpc_tls_client){.ca = sec->internal_ca, .cert = sec->internal_cert,
                                  .key = sec->internal_key};
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "mrank-calibration/1");
    cJSON_AddStringToObject(root, "method", "platt: relevance = sigmoid(a * raw + b)");
    cJSON_AddStringToObject(root, "pairs", pfile);
    cJSON_AddNumberToObject(root, "n_pairs", p.n);
    cJSON *subs = cJSON_AddObjectToObject(root, "subarchs");
    for (int s = 0; s < cfg->n_stages; s++) {
        const mr_cc_stage *st = &cfg->stages[s];
        if (st->kind == MR_CC_LEXICAL) continue;   /* BM25 in the coordinator: no head, no pool */
        char key[512];
        mr_calib_stage_key(cfg, s, key, sizeof key);
        cJSON *have = cJSON_GetObjectItemCaseSensitive(subs, key);
        if (have) {   /* a stage of the same sub-architecture: one fit */
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(have, "stages"),
                                 cJSON_CreateString(st->name));
            continue;
        }
        const mr_cc_pool *pool = &cfg->pools[st->pool];
        if (!chans[st->pool] &&
            mr_cli_connect(&chans[st->pool], "calibrate", *pool->dns ? pool->dns : pool->addrs[0],
                           &tls, NULL))
            goto done;
        if (score_all(chans[st->pool], cfg, st, &p, raw)) goto done;
        double a, b, l0, l1;
        if (mr_calib_fit(raw, p.label, p.n, &a, &b, &l0, &l1, &err)) {
            fprintf(stderr, "mrank calibrate: stage '%s': %s\n", st->name, err.msg);
            goto done;
        }
        cJSON *e = cJSON_AddObjectToObject(subs, key);
        cJSON_AddNumberToObject(e, "a", a);
        cJSON_AddNumberToObject(e, "b", b);
        cJSON_AddNumberToObject(e, "logloss_identity", l0);
        cJSON_AddNumberToObject(e, "logloss_fit", l1);
        cJSON *names = cJSON_AddArrayToObject(e, "stages");
        cJSON_AddItemToArray(names, cJSON_CreateString(st->name));
        printf("stage %-10s %s: a %.4f b %.4f, log loss %.4f -> %.4f (%d pairs)\n", st->name,
               key, a, b, l0, l1, p.n);
    }
    char *txt = cJSON_Print(root);
    FILE *f = txt ? fopen(outp, "w") : NULL;
    if (!f || fputs(txt, f) < 0 || fputc('\n', f) < 0 || fclose(f)) {
        fprintf(stderr, "mrank calibrate: cannot write %s\n", outp);
        free(txt);
        goto done;
    }
    free(txt);
    printf("wrote %s\n", outp);
    rc = 0;
done:
    for (int i = 0; i < MR_CC_MAX_POOLS; i++) mr_rpc_channel_free(chans[i]);
    cJSON_Delete(root);
    free(raw);
    pairs_free(&p);
    free(cfg);
    return rc;
}
