/* eval.c: collection loaders and ranking metrics (see eval.h). */
#include "eval.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ---- texts ---- */

typedef struct kv { char *id, *text; } kv;
static int kv_cmp(const void *a, const void *b) {
    return strcmp(((const kv *)a)->id, ((const kv *)b)->id);
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
        if (len <= 1) continue;
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
                rc = mr_err_set(err, MR_ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        const char *title = cJSON_IsString(ti) ? ti->valuestring : "";
        size_t tl = strlen(title);
        v[n].id = dupstr(id->valuestring);
        if (tl && strncmp(tx->valuestring, title, tl)) {
            size_t xl = strlen(tx->valuestring);
            v[n].text = malloc(tl + xl + 2);
            if (v[n].text) {
                memcpy(v[n].text, title, tl);
                v[n].text[tl] = ' ';
                memcpy(v[n].text + tl + 1, tx->valuestring, xl + 1);
            }
        } else {
            v[n].text = dupstr(tx->valuestring);
        }
        cJSON_Delete(j);
        n++;
        if (!v[n - 1].id || !v[n - 1].text) {
            rc = mr_err_set(err, MR_ENOMEM, "out of memory");
            break;
        }
    }
    free(line);
    fclose(f);
    if (v) qsort(v, (size_t)n, sizeof *v, kv_cmp);
    t->id = malloc(sizeof(char *) * (size_t)(n ? n : 1));
    t->text = malloc(sizeof(char *) * (size_t)(n ? n : 1));
    for (int i = 0; i < n && t->id && t->text; i++) t->id[i] = v[i].id, t->text[i] = v[i].text;
    t->n = n;
    free(v);
    if (!t->id || !t->text) rc = mr_err_set(err, MR_ENOMEM, "out of memory");
    if (rc) mr_texts_free(t);
    return rc;
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

void mr_texts_free(mr_texts *t) {
    for (int i = 0; i < t->n; i++) {
        if (t->id) free(t->id[i]);
        if (t->text) free(t->text[i]);
    }
    free(t->id);
    free(t->text);
    memset(t, 0, sizeof *t);
}

/* ---- qrels ---- */

typedef struct qr { char *q, *d; int rel; } qr;
static int qr_cmp(const void *a, const void *b) {
    const qr *x = a, *y = b;
    int c = strcmp(x->q, y->q);
    return c ? c : strcmp(x->d, y->d);
}

int mr_qrels_load(mr_qrels *r, const char *path, mr_err *err) {
    memset(r, 0, sizeof *r);
    FILE *f = fopen(path, "r");
    if (!f) return mr_err_errno(err, "%s", path);
    char q[256], d[256];
    int rel, n = 0, rc = 0;
    size_t cap = 0;
    qr *v = NULL;
    char line[1024];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (lineno == 1 && !strncmp(line, "query-id", 8)) continue;
        if (sscanf(line, "%255s %255s %d", q, d, &rel) != 3) {
            rc = mr_err_set(err, MR_EFORMAT, "%s:%d: need query-id corpus-id score", path,
                            lineno);
            break;
        }
        if ((size_t)n == cap) {
            cap = cap ? 2 * cap : 1024;
            qr *nv = realloc(v, sizeof *v * cap);
            if (!nv) {
                rc = mr_err_set(err, MR_ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        v[n].q = dupstr(q), v[n].d = dupstr(d), v[n].rel = rel;
        n++;
    }
    fclose(f);
    if (v) qsort(v, (size_t)n, sizeof *v, qr_cmp);
    r->q = malloc(sizeof(char *) * (size_t)(n ? n : 1));
    r->d = malloc(sizeof(char *) * (size_t)(n ? n : 1));
    r->rel = malloc(sizeof(int) * (size_t)(n ? n : 1));
    for (int i = 0; i < n && r->q && r->d && r->rel; i++)
        r->q[i] = v[i].q, r->d[i] = v[i].d, r->rel[i] = v[i].rel;
    r->n = n;
    free(v);
    if (rc) mr_qrels_free(r);
    return rc;
}

static int qrels_lower(const mr_qrels *r, const char *q) {
    int lo = 0, hi = r->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (strcmp(r->q[mid], q) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

int mr_qrels_get(const mr_qrels *r, const char *q, const char *d) {
    for (int i = qrels_lower(r, q); i < r->n && !strcmp(r->q[i], q); i++)
        if (!strcmp(r->d[i], d)) return r->rel[i];
    return 0;
}

static int int_desc(const void *a, const void *b) {
    return *(const int *)b - *(const int *)a;
}

int mr_qrels_gains(const mr_qrels *r, const char *q, int *out, int cap) {
    int n = 0;
    for (int i = qrels_lower(r, q); i < r->n && !strcmp(r->q[i], q); i++)
        if (r->rel[i] > 0 && n < cap) out[n++] = r->rel[i];
    qsort(out, (size_t)n, sizeof(int), int_desc);
    return n;
}

void mr_qrels_free(mr_qrels *r) {
    for (int i = 0; i < r->n; i++) {
        if (r->q) free(r->q[i]);
        if (r->d) free(r->d[i]);
    }
    free(r->q), free(r->d), free(r->rel);
    memset(r, 0, sizeof *r);
}

/* ---- runs ---- */

typedef struct re { char *q, *d; int rank, order; } re;
static int re_cmp(const void *a, const void *b) {
    const re *x = a, *y = b;
    if (x->order != y->order) return x->order - y->order;
    return x->rank - y->rank;
}

int mr_run_load(mr_run *r, const char *path, mr_err *err) {
    memset(r, 0, sizeof *r);
    FILE *f = fopen(path, "r");
    if (!f) return mr_err_errno(err, "%s", path);
    char q[256], q0[64], d[256], line[1024], last[256] = "";
    int rank, n = 0, rc = 0, nq = 0, lineno = 0;
    double score;
    size_t cap = 0;
    re *v = NULL;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (sscanf(line, "%255s %63s %255s %d %lf", q, q0, d, &rank, &score) != 5) {
            rc = mr_err_set(err, MR_EFORMAT, "%s:%d: not a TREC run line", path, lineno);
            break;
        }
        if (strcmp(q, last)) nq++, snprintf(last, sizeof last, "%s", q);
        if ((size_t)n == cap) {
            cap = cap ? 2 * cap : 4096;
            re *nv = realloc(v, sizeof *v * cap);
            if (!nv) {
                rc = mr_err_set(err, MR_ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        v[n].q = dupstr(q), v[n].d = dupstr(d), v[n].rank = rank, v[n].order = nq;
        n++;
    }
    fclose(f);
    if (!rc) {
        if (v) qsort(v, (size_t)n, sizeof *v, re_cmp);
        r->qid = calloc((size_t)(nq ? nq : 1), sizeof(char *));
        r->first = calloc((size_t)(nq ? nq : 1), sizeof(int));
        r->count = calloc((size_t)(nq ? nq : 1), sizeof(int));
        r->doc = calloc((size_t)(n ? n : 1), sizeof(char *));
        if (!r->qid || !r->first || !r->count || !r->doc)
            rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        for (int i = 0; i < n && !rc; i++) {
            int k = v[i].order - 1;
            if (!r->count[k]) r->first[k] = i, r->qid[k] = v[i].q;
            else free(v[i].q);
            r->count[k]++;
            r->doc[i] = v[i].d;
        }
        r->n_q = nq, r->n_doc = n;
    }
    free(v);
    if (rc) mr_run_free(r);
    return rc;
}

void mr_run_free(mr_run *r) {
    for (int i = 0; i < r->n_q && r->qid; i++) free(r->qid[i]);
    for (int i = 0; i < r->n_doc && r->doc; i++) free(r->doc[i]);
    free(r->qid), free(r->first), free(r->count), free(r->doc);
    memset(r, 0, sizeof *r);
}

/* ---- metrics ---- */

static double idcg(const int *ideal, int n_ideal, int k) {
    double s = 0;
    for (int i = 0; i < n_ideal && i < k; i++) s += ideal[i] / log2(i + 2.0);
    return s;
}

double mr_ndcg_at(const int *gains, int n, const int *ideal, int n_ideal, int k) {
    double id = idcg(ideal, n_ideal, k), s = 0;
    if (id <= 0) return 0;
    for (int i = 0; i < n && i < k; i++)
        if (gains[i] > 0) s += gains[i] / log2(i + 2.0);
    return s / id;
}

double mr_mrr_at(const int *gains, int n, int k) {
    for (int i = 0; i < n && i < k; i++)
        if (gains[i] > 0) return 1.0 / (i + 1);
    return 0;
}

double mr_ndcg_at_random(const int *gains, int n, const int *ideal, int n_ideal, int k) {
    double id = idcg(ideal, n_ideal, k), g = 0, disc = 0;
    if (id <= 0 || n == 0) return 0;
    for (int i = 0; i < n; i++) g += gains[i] > 0 ? gains[i] : 0;
    for (int i = 0; i < n && i < k; i++) disc += 1.0 / log2(i + 2.0);
    return g * disc / n / id; /* each document lands at each rank with probability 1/n */
}

double mr_mrr_at_random(const int *gains, int n, int k) {
    int R = 0;
    for (int i = 0; i < n; i++) R += gains[i] > 0;
    if (R == 0) return 0;
    /* P(first relevant at rank i) = prod_{j<i-1} (n-R-j)/(n-j) * R/(n-i+1) */
    double none = 1.0, s = 0;
    for (int i = 1; i <= k && i <= n; i++) {
        s += none * (double)R / (n - i + 1) / i;
        none *= (double)(n - R - (i - 1)) / (n - (i - 1));
        if (none <= 0) break;
    }
    return s;
}
