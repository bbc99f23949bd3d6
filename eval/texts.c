/* texts.c: id -> text maps of BEIR jsonl files (see texts.h). Loads every line, then sorts
 * by id once, so lookups are binary searches. Not here: tokenizing the texts
 * (common/input.c). */
#include "texts.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct kv { char *id, *text; int line; } kv;
static int kv_cmp(const void *a, const void *b) {
    const kv *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* Whether s (len bytes) is JSON whitespace only: a blank line. */
static int blank(const char *s, ssize_t len) {
    for (ssize_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

/* Frees the n entries of v (either string may be NULL) and v. */
static void kv_free(kv *v, int n) {
    for (int i = 0; i < n; i++) free(v[i].id), free(v[i].text);
    free(v);
}

int mr_texts_load(mr_texts *t, const char *path, mr_err *err) {
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "r");
    if (!f) return mr_err_errno(err, "%s", path);
    kv *v = NULL;
    size_t cap = 0, lcap = 0;
    char *line = NULL;
    ssize_t len;
    int n = 0, rc = 0, lineno = 0;
    while ((len = getline(&line, &lcap, f)) > 0) {
        lineno++;
        if (blank(line, len)) continue;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "_id");
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(j, "text");
        const cJSON *ti = cJSON_GetObjectItemCaseSensitive(j, "title");
        if (!j || !cJSON_IsString(id) || !cJSON_IsString(tx)) {
            cJSON_Delete(j);
            rc = mr_err_set(err, MR_EFORMAT, "%s:%d: need \"_id\" and \"text\" strings", path,
                            lineno);
            break;
        }
        if ((size_t)n == cap) {
            cap = cap ? 2 * cap : 1024;
            kv *nv = realloc(v, sizeof *v * cap);
            if (!nv) {
                cJSON_Delete(j);
                rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
                break;
            }
            v = nv;
        }
        const char *title = cJSON_IsString(ti) ? ti->valuestring : "";
        size_t tl = strlen(title);
        v[n].id = strdup(id->valuestring), v[n].line = lineno;
        if (tl && strncmp(tx->valuestring, title, tl)) {
            size_t xl = strlen(tx->valuestring);
            v[n].text = malloc(tl + xl + 2);
            if (v[n].text) {
                memcpy(v[n].text, title, tl);
                v[n].text[tl] = ' ';
                memcpy(v[n].text + tl + 1, tx->valuestring, xl + 1);
            }
        } else {
            v[n].text = strdup(tx->valuestring);
        }
        cJSON_Delete(j);
        n++;
        if (!v[n - 1].id || !v[n - 1].text) {
            rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
            break;
        }
    }
    if (!rc && ferror(f)) rc = mr_err_errno(err, "%s:%d: read", path, lineno + 1);
    free(line);
    fclose(f);
    if (!rc && v) { /* one text per id: the first repeat in the file is named */
        qsort(v, (size_t)n, sizeof *v, kv_cmp);
        int dup = -1;
        for (int i = 1; i < n; i++)
            if (!strcmp(v[i].id, v[i - 1].id) && (dup < 0 || v[i].line < v[dup].line)) dup = i;
        if (dup >= 0)
            rc = mr_err_set(err, MR_EFORMAT, "%s:%d: _id %.60s repeated (first at line %d)", path,
                            v[dup].line, v[dup].id, v[dup - 1].line);
    }
    if (!rc) {
        t->id = malloc(sizeof(char *) * (size_t)(n ? n : 1));
        t->text = malloc(sizeof(char *) * (size_t)(n ? n : 1));
        if (!t->id || !t->text) rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    }
    if (rc) {
        kv_free(v, n);
        free(t->id), free(t->text);
        memset(t, 0, sizeof *t);
        return rc;
    }
    for (int i = 0; i < n; i++) t->id[i] = v[i].id, t->text[i] = v[i].text;
    t->n = n;
    free(v);
    return 0;
}

const char *mr_texts_get(const mr_texts *t, const char *id) {
    int lo = 0, hi = t->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(t->id[mid], id);
        if (!c) return t->text[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

void mr_texts_close(mr_texts *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        if (t->id) free(t->id[i]);
        if (t->text) free(t->text[i]);
    }
    free(t->id);
    free(t->text);
    memset(t, 0, sizeof *t);
}
