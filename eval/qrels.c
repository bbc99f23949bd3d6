/* qrels.c: relevance judgements of a BEIR collection (see qrels.h), sorted by (query,
 * document) so that a query's judgements are one binary search away. Not here: the metrics
 * (metrics.c). */
#include "qrels.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval_internal.h"

typedef struct qr { char *q, *d; int rel, line; } qr;

static int cmp_int(int a, int b) { return (a > b) - (a < b); }

static int qr_cmp(const void *a, const void *b) {
    const qr *x = a, *y = b;
    int c = strcmp(x->q, y->q);
    if (!c) c = strcmp(x->d, y->d);
    return c ? c : cmp_int(x->line, y->line);
}

/* Frees the n entries of v (either string may be NULL) and v. */
static void qr_free(qr *v, int n) {
    for (int i = 0; i < n; i++) free(v[i].q), free(v[i].d);
    free(v);
}

/* The fields of a data line into q, d, rel: nf is 3 (BEIR: query-id corpus-id score) or 4
 * (TREC: qid iteration docid grade), the same in every line of a file (*fmt, 0 until the
 * first data line); a header means 3. */
static int parse_line(char **f, int nf, int *fmt, const char *path, int ln, qr *e, mr_err *err) {
    if (*fmt == 0 && (nf == 3 || nf == 4)) *fmt = nf;
    if (nf != *fmt) {
        char got[32];
        snprintf(got, sizeof got, "%s%d fields", nf > 4 ? "more than " : "", nf > 4 ? 4 : nf);
        if (*fmt == 0)
            return mr_err_set(err, MR_EFORMAT, "%s:%d: %s; need 3 (query-id corpus-id score) "
                              "or, in a file without a header, 4 (TREC: qid iteration docid "
                              "grade)", path, ln, got);
        if (*fmt == 3)
            return mr_err_set(err, MR_EFORMAT, "%s:%d: %s; this file's lines have 3 (query-id "
                              "corpus-id score)%s", path, ln, got, nf == 4 ? "; 4-column TREC "
                              "qrels are read only as a whole file of them, without a header"
                              : "");
        return mr_err_set(err, MR_EFORMAT, "%s:%d: %s; this file's lines have 4 (TREC: qid "
                          "iteration docid grade)", path, ln, got);
    }
    const char *g = f[nf - 1];
    char *end;
    errno = 0;
    long rel = strtol(g, &end, 10);
    if (errno || end == g || *end || rel < INT_MIN || rel > INT_MAX)
        return mr_err_set(err, MR_EFORMAT, "%s:%d: %s '%.40s' is not an integer", path, ln,
                          nf == 3 ? "score" : "grade", g);
    e->q = f[0], e->d = f[nf == 3 ? 1 : 2], e->rel = (int)rel, e->line = ln;
    return 0;
}

int mr_qrels_load(mr_qrels *r, const char *path, mr_err *err) {
    memset(r, 0, sizeof *r);
    mr__eval_lines in;
    int rc = mr__eval_lines_open(&in, path, err);
    if (rc) return rc;
    int n = 0, fmt = 0;
    size_t cap = 0;
    qr *v = NULL;
    while ((rc = mr__eval_lines_next(&in, err)) > 0) {
        char *f[4];
        int nf = mr__eval_fields(in.buf, f, 4);
        if (nf == 0) continue; /* blank */
        if (in.line == 1 && !strcmp(f[0], "query-id")) {
            fmt = 3;
            continue;
        }
        qr e;
        if ((rc = parse_line(f, nf, &fmt, path, in.line, &e, err))) break;
        if ((size_t)n == cap) {
            cap = cap ? 2 * cap : 1024;
            qr *nv = n < INT_MAX / 2 ? realloc(v, sizeof *v * cap) : NULL;
            if (!nv) {
                rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
                break;
            }
            v = nv;
        }
        e.q = strdup(e.q), e.d = strdup(e.d);
        v[n++] = e; /* counted first: the clean-up frees whichever string was made */
        if (!e.q || !e.d) {
            rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
            break;
        }
    }
    mr__eval_lines_close(&in);
    int max_gains = 0;
    if (!rc && v) {
        /* no (query, document) twice: the first repeat in the file; a query's gains > 0 */
        qsort(v, (size_t)n, sizeof *v, qr_cmp);
        int dup = -1;
        for (int i = 0, j; i < n; i = j) {
            int g = v[i].rel > 0;
            for (j = i + 1; j < n && !strcmp(v[j].q, v[i].q); j++) {
                g += v[j].rel > 0;
                if (!strcmp(v[j].d, v[j - 1].d) && (dup < 0 || v[j].line < v[dup].line))
                    dup = j;
            }
            if (g > max_gains) max_gains = g;
        }
        if (dup >= 0)
            rc = mr_err_set(err, MR_EFORMAT,
                            "%s:%d: query %.60s, document %.60s judged again (first at line %d)",
                            path, v[dup].line, v[dup].q, v[dup].d, v[dup - 1].line);
    }
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
    for (int i = 0; i < n; i++) r->q[i] = v[i].q, r->d[i] = v[i].d, r->rel[i] = v[i].rel;
    r->n = n, r->max_gains = max_gains;
    free(v);
    return 0;
}

static int qrels_lower(const mr_qrels *r, const char *q) {
    int lo = 0, hi = r->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
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
    int x = *(const int *)a, y = *(const int *)b;
    return (x < y) - (x > y);
}

int mr_qrels_gains(const mr_qrels *r, const char *q, int *out, int cap) {
    int n = 0, lo = qrels_lower(r, q);
    for (int i = lo; i < r->n && !strcmp(r->q[i], q); i++) n += r->rel[i] > 0;
    if (n > cap) return MR_ERANGE;
    n = 0;
    for (int i = lo; i < r->n && !strcmp(r->q[i], q); i++)
        if (r->rel[i] > 0) out[n++] = r->rel[i];
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
