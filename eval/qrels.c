/* qrels.c: relevance judgements of a BEIR collection (see qrels.h), sorted by (query,
 * document) so that a query's judgements are one binary search away. Not here: the metrics
 * (metrics.c). */
#include "qrels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct qr { char *q, *d; int rel; } qr;
static int qr_cmp(const void *a, const void *b) {
    const qr *x = a, *y = b;
    int c = strcmp(x->q, y->q);
    return c ? c : strcmp(x->d, y->d);
}

/* Frees the n entries of v (either string may be NULL) and v. */
static void qr_free(qr *v, int n) {
    for (int i = 0; i < n; i++) free(v[i].q), free(v[i].d);
    free(v);
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
                rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
                break;
            }
            v = nv;
        }
        v[n].q = strdup(q), v[n].d = strdup(d), v[n].rel = rel;
        n++; /* counted first: the clean-up frees whichever string was made */
        if (!v[n - 1].q || !v[n - 1].d) {
            rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
            break;
        }
    }
    fclose(f);
    if (!rc) {
        r->q = malloc(sizeof(char *) * (size_t)(n ? n : 1));
        r->d = malloc(sizeof(char *) * (size_t)(n ? n : 1));
        r->rel = malloc(sizeof(int) * (size_t)(n ? n : 1));
        if (!r->q || !r->d || !r->rel) rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    }
    if (rc) {
        qr_free(v, n);
        free(r->q), free(r->d), free(r->rel);
        memset(r, 0, sizeof *r);
        return rc;
    }
    if (v) qsort(v, (size_t)n, sizeof *v, qr_cmp);
    for (int i = 0; i < n; i++) r->q[i] = v[i].q, r->d[i] = v[i].d, r->rel[i] = v[i].rel;
    r->n = n;
    free(v);
    return 0;
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

void mr_qrels_close(mr_qrels *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        if (r->q) free(r->q[i]);
        if (r->d) free(r->d[i]);
    }
    free(r->q), free(r->d), free(r->rel);
    memset(r, 0, sizeof *r);
}
