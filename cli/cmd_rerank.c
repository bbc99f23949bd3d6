/* cmd_rerank.c: `mrank rerank`: a command-line client of mrank.v1.Ranker/Rerank. Reads the
 * candidates from a file (one document per line, or a JSON array of strings or of
 * {"text", "id"} objects), sends one request and prints the ranking: rank, index, calibrated
 * score, raw score and the stage (with its depth and width) that produced it. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "tls.h"
#include "rpc_methods.h"
#include "rpc_status.h"

#define DOCS_MAX_BYTES (64u * 1024 * 1024)

typedef struct docs {
    int n;
    char **text, **id;
    char *raw;
    cJSON *json;
} docs;

static void docs_free(docs *d) {
    if (!d->json)
        free(d->text);
    else {
        free(d->text);
        cJSON_Delete(d->json);
    }
    free(d->id);
    free(d->raw);
}

static int read_docs(const char *path, docs *d) {
    memset(d, 0, sizeof *d);
    FILE *fp = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!fp) {
        fprintf(stderr, "mrank rerank: --docs %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    d->raw = malloc(cap + 1);
    for (size_t k; d->raw && (k = fread(d->raw + n, 1, cap - n, fp)) > 0;) {
        n += k;
        if (n == cap) {
            if (cap >= DOCS_MAX_BYTES) break;
            cap *= 2;
            char *p = realloc(d->raw, cap + 1);
            if (!p) { free(d->raw); d->raw = NULL; }
            else d->raw = p;
        }
    }
    if (fp != stdin) fclose(fp);
    if (!d->raw) {
        fprintf(stderr, "mrank rerank: --docs %s: out of memory\n", path);
        return -1;
    }
    d->raw[n] = 0;
    const char *s = d->raw;
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r') s++;
    if (*s == '[') {
        if (!(d->json = cJSON_Parse(d->raw)) || !cJSON_IsArray(d->json)) {
            fprintf(stderr, "mrank rerank: --docs %s: not a valid JSON array\n", path);
            return -1;
        }
        d->n = cJSON_GetArraySize(d->json);
        d->text = calloc((size_t)d->n + 1, sizeof *d->text);
        d->id = calloc((size_t)d->n + 1, sizeof *d->id);
        if (!d->text || !d->id) {
            fprintf(stderr, "mrank rerank: --docs %s: out of memory for %d documents\n", path,
                    d->n);
            return -1;
        }
        for (int i = 0; i < d->n; i++) {
            cJSON *it = cJSON_GetArrayItem(d->json, i);
            cJSON *t = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "text") : it;
            cJSON *id = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "id") : NULL;
            if (!cJSON_IsString(t)) {
                fprintf(stderr, "mrank rerank: --docs %s: [%d]: expected a string or "
                                "{\"text\": ..., \"id\": ...}\n", path, i);
                return -1;
            }
            d->text[i] = t->valuestring;
            d->id[i] = cJSON_IsString(id) ? id->valuestring : "";
        }
        return 0;
    }
    int lines = 1;
    for (char *p = d->raw; *p; p++) lines += *p == '\n';
    d->text = calloc((size_t)lines, sizeof *d->text);
    d->id = calloc((size_t)lines, sizeof *d->id);
    if (!d->text || !d->id) {
        fprintf(stderr, "mrank rerank: --docs %s: out of memory for %d lines\n", path, lines);
        return -1;
    }
    for (char *p = d->raw, *e; p && *p; p = e ? e + 1 : NULL) {
        e = strchr(p, '\n');
        if (e) *e = 0;
        size_t len = strlen(p);
        if (len && p[len - 1] == '\r') p[len - 1] = 0;
        if (*p) {
            d->id[d->n] = "";
            d->text[d->n++] = p;
        }
    }
    return 0;
}

static void print_json(const Mrank__V1__RerankResponse *r) {
    cJSON *o = cJSON_CreateObject(), *res = cJSON_AddArrayToObject(o, "results");
    for (size_t i = 0; i < r->n_results; i++) {
        const Mrank__V1__RerankResult *x = r->results[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "rank", (double)(i + 1));
        cJSON_AddNumberToObject(e, "index", x->index);
        if (x->id && *x->id) cJSON_AddStringToObject(e, "id", x->id);
        cJSON_AddNumberToObject(e, "relevance_score", x->relevance_score);
        cJSON_AddNumberToObject(e, "raw_score", x->raw_score);
        cJSON_AddNumberToObject(e, "stage", x->stage);
        cJSON_AddNumberToObject(e, "depth", x->depth);
        cJSON_AddNumberToObject(e, "compress_ratio", x->compress_ratio);
        cJSON_AddBoolToObject(e, "truncated", x->truncated);
        if (x->document) cJSON_AddStringToObject(e, "document", x->document->text);
        cJSON_AddItemToArray(res, e);
    }
    cJSON_AddBoolToObject(o, "degraded", r->degraded);
    cJSON_AddStringToObject(o, "profile", r->profile ? r->profile : "");
    cJSON_AddStringToObject(o, "tier", r->tier ? r->tier : "");
    cJSON *st = cJSON_AddArrayToObject(o, "stages");
    for (size_t i = 0; i < r->n_stages; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", r->stages[i]->name);
        cJSON_AddNumberToObject(e, "candidates_in", r->stages[i]->candidates_in);
        cJSON_AddNumberToObject(e, "kept", r->stages[i]->kept);
        cJSON_AddNumberToObject(e, "ms", r->stages[i]->ms);
        cJSON_AddBoolToObject(e, "skipped", r->stages[i]->skipped);
        cJSON_AddItemToArray(st, e);
    }
    if (r->usage) {
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", r->usage->prompt_tokens);
        cJSON_AddNumberToObject(u, "total_tokens", r->usage->total_tokens);
    }
    cJSON_AddNumberToObject(o, "total_ms", r->total_ms);
    if (r->request_id && *r->request_id) cJSON_AddStringToObject(o, "request_id", r->request_id);
    char *s = cJSON_PrintUnformatted(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
}

static void print_table(const Mrank__V1__RerankResponse *r, const docs *d, int show_docs) {
    printf("%-5s %-6s %-9s %-10s %s\n", "rank", "index", "score", "raw", "stage (depth, width)");
    for (size_t i = 0; i < r->n_results; i++) {
        const Mrank__V1__RerankResult *x = r->results[i];
        const char *name = x->stage < r->n_stages ? r->stages[x->stage]->name : "?";
        printf("%-5zu %-6u %-9.6f %-10.5g %u:%s (%u, %u)%s", i + 1, x->index,
               (double)x->relevance_score, (double)x->raw_score, x->stage, name, x->depth,
               x->compress_ratio, x->truncated ? " truncated" : "");
        if (show_docs && x->index < (uint32_t)d->n) {
            const char *t = d->text[x->index];
            printf("  %.60s%s", t, strlen(t) > 60 ? "..." : "");
        }
        putchar('\n');
    }
    fprintf(stderr, "profile %s, tier %s, %.1f ms%s;", r->profile, r->tier, r->total_ms,
            r->degraded ? ", DEGRADED (a stage was skipped for the deadline)" : "");
    for (size_t i = 0; i < r->n_stages; i++)
        fprintf(stderr, " %s %u->%u%s%s", r->stages[i]->name, r->stages[i]->candidates_in,
                r->stages[i]->kept, r->stages[i]->skipped ? " (skipped)" : "",
                i + 1 < r->n_stages ? "," : "\n");
}

static void rerank_usage(FILE *f) {
    fputs("usage: mrank rerank --addr HOST:PORT --query Q --docs FILE [options]\n"
          "  --docs FILE        one document per line, or a JSON array of strings or\n"
          "                     {\"text\", \"id\"} objects ('-' = stdin)\n"
          "  --profile P        cascade profile (default: the tier's)\n"
          "  --tier T           tier (default: the coordinator's default)\n"
          "  --top-n N          return the best N only\n"
          "  --timeout-ms N     gRPC deadline (default 30000)\n"
          "  --override S:K[:F] keep top K (and fraction F) at profile stage S (repeatable)\n"
          "  --no-truncate      INVALID_ARGUMENT instead of cutting long passages\n"
          "  --show-docs        print the start of each document\n"
          "  --json             JSON output\n"
          "  --ca FILE          connect with TLS, verifying the server with this PEM CA\n"
          "  --cert FILE        client certificate (mTLS), with --key FILE its private key\n"
          "  --api-key KEY      sent as 'authorization: Bearer KEY' (default: $MRANK_API_KEY)\n", f);
}

int mr_cmd_rerank(int argc, char **argv) {
    static const struct option opts[] = {
        {"addr", 1, 0, 'a'},       {"query", 1, 0, 'q'},      {"docs", 1, 0, 'd'},
        {"profile", 1, 0, 'p'},    {"tier", 1, 0, 't'},       {"top-n", 1, 0, 'n'},
        {"json", 0, 0, 'j'},       {"timeout-ms", 1, 0, 'T'}, {"override", 1, 0, 'o'},
        {"no-truncate", 0, 0, 'N'}, {"show-docs", 0, 0, 's'}, {"help", 0, 0, 'h'},
        {"ca", 1, 0, 'C'},         {"cert", 1, 0, 'E'},       {"key", 1, 0, 'K'},
        {"api-key", 1, 0, 'A'},
        {0, 0, 0, 0}};
    const char *addr = NULL, *query = NULL, *path = NULL, *profile = "", *tier = "";
    const char *api_key = getenv("MRANK_API_KEY");
    mr_rpc_tls_client tls = {0};
    int top_n = 0, json = 0, timeout_ms = 30000, ch, rc = 2, no_trunc = 0, show = 0, n_ov = 0;
    Mrank__V1__StageOverride ov[16], *ovp[16];
    docs d = {0};
    mr_rpc_channel *chn = NULL;
    uint8_t *req = NULL, *resp = NULL;
    Mrank__V1__RerankResponse *out = NULL;
    Mrank__V1__Document *dv = NULL, **dp = NULL;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'a': addr = optarg; break;
        case 'q': query = optarg; break;
        case 'd': path = optarg; break;
        case 'p': profile = optarg; break;
        case 't': tier = optarg; break;
        case 'n': if (mr_cli_parse_int("--top-n", optarg, &top_n) || top_n < 0) goto done; break;
        case 'j': json = 1; break;
        case 'T': if (mr_cli_parse_int("--timeout-ms", optarg, &timeout_ms)) goto done; break;
        case 'N': no_trunc = 1; break;
        case 's': show = 1; break;
        case 'C': tls.ca = optarg; break;
        case 'E': tls.cert = optarg; break;
        case 'K': tls.key = optarg; break;
        case 'A': api_key = optarg; break;
        case 'o': {
            unsigned s, k;
            float f = 0;
            int got = sscanf(optarg, "%u:%u:%f", &s, &k, &f);
            if (got < 2 || n_ov == 16) {
                fprintf(stderr, "mrank rerank: --override: '%s' is not STAGE:TOP_K[:FRACTION]\n",
                        optarg);
                goto done;
            }
            mrank__v1__stage_override__init(&ov[n_ov]);
            ov[n_ov].stage = s;
            ov[n_ov].keep_top_k = k;
            ov[n_ov].keep_fraction = f;
            ovp[n_ov] = &ov[n_ov];
            n_ov++;
            break;
        }
        case 'h': rerank_usage(stdout); rc = 0; goto done;
        default: rerank_usage(stderr); goto done;
        }
    }
    if (!addr || !query || !path || optind < argc) {
        rerank_usage(stderr);
        goto done;
    }
    rc = 1;
    if (read_docs(path, &d)) goto done;
    dv = calloc((size_t)d.n + 1, sizeof *dv);
    dp = calloc((size_t)d.n + 1, sizeof *dp);
    if (!dv || !dp) {
        fprintf(stderr, "mrank rerank: out of memory for %d documents\n", d.n);
        goto done;
    }
    for (int i = 0; i < d.n; i++) {
        mrank__v1__document__init(&dv[i]);
        dv[i].text = d.text[i];
        dv[i].id = d.id[i];
        dp[i] = &dv[i];
    }
    Mrank__V1__RerankRequest rq = MRANK__V1__RERANK_REQUEST__INIT;
    rq.query = (char *)query;
    rq.n_documents = (size_t)d.n;
    rq.documents = dp;
    rq.top_n = (uint32_t)top_n;
    rq.profile = (char *)profile;
    rq.tier = (char *)tier;
    rq.n_overrides = (size_t)n_ov;
    rq.overrides = ovp;
    rq.truncate = no_trunc ? MRANK__V1__TRUNCATE__TRUNCATE_NONE : MRANK__V1__TRUNCATE__TRUNCATE_END;
    size_t len = mrank__v1__rerank_request__get_packed_size(&rq), rlen = 0;
    if (!(req = malloc(len ? len : 1))) {
        fprintf(stderr, "mrank rerank: out of memory for a %zu-byte request\n", len);
        goto done;
    }
    mrank__v1__rerank_request__pack(&rq, req);
    if (mr_cli_connect(&chn, "rerank", addr, &tls, api_key)) goto done;
    grpc_status_code st;
    char msg[512];
    if (mr_rpc_unary(chn, MR_METHOD_RERANK, req, len, timeout_ms, &resp, &rlen, &st,
                     msg, sizeof msg)) {
        fprintf(stderr, "mrank rerank: %s: %s\n", mr_rpc_status_name(st), msg);
        rc = st == GRPC_STATUS_INVALID_ARGUMENT ? 3 : 1;
        goto done;
    }
    if (!(out = mrank__v1__rerank_response__unpack(NULL, rlen, resp))) {
        fprintf(stderr, "mrank rerank: malformed response\n");
        goto done;
    }
    if (json) print_json(out);
    else print_table(out, &d, show);
    rc = 0;
done:
    if (out) mrank__v1__rerank_response__free_unpacked(out, NULL);
    mr_rpc_channel_free(chn);
    free(req);
    free(resp);
    free(dv);
    free(dp);
    docs_free(&d);
    return rc;
}
