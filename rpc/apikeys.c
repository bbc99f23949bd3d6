/* apikeys.c: the API-key file parser and the constant-time key lookup (see apikeys.h). */
#define _GNU_SOURCE
#include "apikeys.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "json.h"

#define FILE_MAX (1 << 20)
#define KEY_MAX 4096

typedef struct entry {
    char name[MR_APIKEYS_NAME];
    unsigned char digest[32];
    int n_tiers;
    char tiers[MR_APIKEYS_MAX_TIERS][MR_APIKEYS_NAME];
} entry;

struct mr_apikeys {
    int n;
    entry *e;
};

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int is_name(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("-_.", *s)) return 0;
    return 1;
}

/* A name-like string at obj[key] into buf; `path` is the entry's JSON path. */
static int get_name(const char *file, const cJSON *v, const char *path, char *buf, mr_err *err) {
    if (!v) return mr_err_set(err, MR_EINVAL, "%s: %s: missing", file, path);
    if (!cJSON_IsString(v)) return mr_err_set(err, MR_EFORMAT, "%s: %s: expected a string", file,
                                              path);
    if (strlen(v->valuestring) >= MR_APIKEYS_NAME || !is_name(v->valuestring))
        return mr_err_set(err, MR_EINVAL, "%s: %s: expected 1..%d characters of A-Z a-z 0-9 - _ .",
                          file, path, MR_APIKEYS_NAME - 1);
    strcpy(buf, v->valuestring);
    return 0;
}

static int parse_entry(const char *file, const cJSON *o, int idx, entry *e, mr_err *err) {
    char p[96];
    snprintf(p, sizeof p, "[%d]", idx);
    if (!cJSON_IsObject(o)) return mr_err_set(err, MR_EFORMAT, "%s: %s: expected an object", file, p);
    for (const cJSON *it = o->child; it; it = it->next)
        if (strcmp(it->string, "name") && strcmp(it->string, "sha256") &&
            strcmp(it->string, "tiers"))
            return mr_err_set(err, MR_EINVAL, "%s: %s.%.60s: unknown key", file, p, it->string);
    snprintf(p, sizeof p, "[%d].name", idx);
    int rc = get_name(file, cJSON_GetObjectItemCaseSensitive(o, "name"), p, e->name, err);
    if (rc) return rc;
    snprintf(p, sizeof p, "[%d].sha256", idx);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "sha256");
    if (!h) return mr_err_set(err, MR_EINVAL, "%s: %s: missing", file, p);
    if (!cJSON_IsString(h) || strlen(h->valuestring) != 64)
        return mr_err_set(err, MR_EFORMAT, "%s: %s: expected 64 hex digits (sha256sum of the key)",
                          file, p);
    for (int i = 0; i < 32; i++) {
        int hi = hexval(h->valuestring[2 * i]), lo = hexval(h->valuestring[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return mr_err_set(err, MR_EFORMAT, "%s: %s: expected 64 hex digits (sha256sum of "
                              "the key)", file, p);
        e->digest[i] = (unsigned char)(hi << 4 | lo);
    }
    snprintf(p, sizeof p, "[%d].tiers", idx);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tiers");
    if (!t) return mr_err_set(err, MR_EINVAL, "%s: %s: missing", file, p);
    if (!cJSON_IsArray(t)) return mr_err_set(err, MR_EFORMAT, "%s: %s: expected an array", file, p);
    int n = cJSON_GetArraySize(t);
    if (n < 1 || n > MR_APIKEYS_MAX_TIERS)
        return mr_err_set(err, MR_ERANGE, "%s: %s: expected 1..%d tiers", file, p,
                          MR_APIKEYS_MAX_TIERS);
    const cJSON *it;
    cJSON_ArrayForEach(it, t) {
        snprintf(p, sizeof p, "[%d].tiers[%d]", idx, e->n_tiers);
        if ((rc = get_name(file, it, p, e->tiers[e->n_tiers], err))) return rc;
        e->n_tiers++;
    }
    return 0;
}

int mr_apikeys_parse(mr_apikeys **out, const char *name, const char *json, mr_err *err) {
    *out = NULL;
    cJSON *root = mr__json_parse(json, strlen(json), name, err);
    if (!root) return MR_EFORMAT;
    int rc = 0;
    mr_apikeys *k = calloc(1, sizeof *k);
    if (!k) {
        rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", name);
        goto done;
    }
    if (!cJSON_IsArray(root)) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: expected a JSON array of {\"name\", \"sha256\", "
                        "\"tiers\"}", name);
        goto done;
    }
    int n = cJSON_GetArraySize(root);
    if (n > MR_APIKEYS_MAX) {
        rc = mr_err_set(err, MR_ERANGE, "%s: more than %d keys", name, MR_APIKEYS_MAX);
        goto done;
    }
    if (n && !(k->e = calloc((size_t)n, sizeof *k->e))) {
        rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", name);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        entry *e = &k->e[k->n];
        if ((rc = parse_entry(name, it, k->n, e, err))) goto done;
        for (int j = 0; j < k->n; j++) {
            if (!strcmp(k->e[j].name, e->name)) {
                rc = mr_err_set(err, MR_EINVAL, "%s: [%d].name: '%s' again (also [%d])", name,
                                k->n, e->name, j);
                goto done;
            }
            if (!memcmp(k->e[j].digest, e->digest, 32)) {
                rc = mr_err_set(err, MR_EINVAL, "%s: [%d].sha256: the same key as [%d]", name,
                                k->n, j);
                goto done;
            }
        }
        k->n++;
    }
done:
    cJSON_Delete(root);
    if (rc) mr_apikeys_free(k);
    else *out = k;
    return rc;
}

int mr_apikeys_load(mr_apikeys **out, const char *path, mr_err *err) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return mr_err_errno(err, "api keys %s", path);
    char *text = malloc(FILE_MAX + 1);
    if (!text) {
        fclose(fp);
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(text, 1, FILE_MAX + 1, fp);
    int rd = ferror(fp);
    fclose(fp);
    int rc;
    if (rd) rc = mr_err_set(err, MR_EIO, "%s: read error", path);
    else if (n > FILE_MAX) rc = mr_err_set(err, MR_ERANGE, "%s: larger than 1 MiB", path);
    else {
        text[n] = 0;
        rc = mr_apikeys_parse(out, path, text, err);
    }
    free(text);
    return rc;
}

void mr_apikeys_free(mr_apikeys *k) {
    if (!k) return;
    free(k->e);
    free(k);
}

int mr_apikeys_count(const mr_apikeys *k) { return k ? k->n : 0; }
const char *mr_apikeys_name(const mr_apikeys *k, int i) { return k->e[i].name; }
int mr_apikeys_n_tiers(const mr_apikeys *k, int i) { return k->e[i].n_tiers; }
const char *mr_apikeys_tier(const mr_apikeys *k, int i, int t) { return k->e[i].tiers[t]; }

int mr_apikeys_find(const mr_apikeys *k, const char *key, size_t len) {
    if (!k || !key || !len || len > KEY_MAX) return -1;
    unsigned char d[32];
    unsigned int dl = 0;
    if (!EVP_Digest(key, len, d, &dl, EVP_sha256(), NULL) || dl != 32) return -1;
    int found = -1;
    for (int i = 0; i < k->n; i++) {
        /* no early exit: every entry is compared; digests are unique (checked at parse) */
        int eq = CRYPTO_memcmp(d, k->e[i].digest, 32) == 0;
        found = eq ? i : found;
    }
    OPENSSL_cleanse(d, sizeof d);
    return found;
}

const char *mr_apikeys_bearer(const char *value, size_t *len) {
    *len = 0;
    if (!value || strncasecmp(value, "Bearer ", 7)) return NULL;
    const char *k = value + 7;
    while (*k == ' ') k++;
    size_t n = strlen(k);
    while (n && (k[n - 1] == ' ' || k[n - 1] == '\t')) n--;
    if (!n) return NULL;
    *len = n;
    return k;
}

int mr_apikeys_allows(const mr_apikeys *k, int i, const char *tier) {
    if (!k || i < 0 || i >= k->n || !tier) return 0;
    for (int t = 0; t < k->e[i].n_tiers; t++)
        if (!strcmp(k->e[i].tiers[t], tier)) return 1;
    return 0;
}
