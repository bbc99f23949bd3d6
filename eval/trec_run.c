/* trec_run.c: TREC run files (see trec_run.h): read, grouped by query in the order of each
 * query's first line, and ordered within a query by score (see trec_run.h for the rules and
 * how they differ from trec_eval's). Not here: writing runs (cli/cmd_eval.c). */
#include "trec_run.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval_internal.h"

typedef struct re {
    char *q, *d;
    double score;
    int rank, line, qfirst; /* qfirst: the first line of the query */
} re;

static int cmp_int(int a, int b) { return (a > b) - (a < b); }

/* (query, document, line): a query's lines together, repeated documents side by side */
static int re_cmp_qd(const void *a, const void *b) {
    const re *x = a, *y = b;
    int c = strcmp(x->q, y->q);
    if (!c) c = strcmp(x->d, y->d);
    return c ? c : cmp_int(x->line, y->line);
}

/* (query's first line, score decreasing, rank, line): the order of mr_trec_run */
static int re_cmp_order(const void *a, const void *b) {
    const re *x = a, *y = b;
    if (x->qfirst != y->qfirst) return cmp_int(x->qfirst, y->qfirst);
    if (x->score != y->score) return x->score < y->score ? 1 : -1; /* finite: checked */
    if (x->rank != y->rank) return cmp_int(x->rank, y->rank);
    return cmp_int(x->line, y->line);
}

/* Frees the n entries of v (either string may be NULL) and v. */
static void re_free(re *v, int n) {
    for (int i = 0; i < n; i++) free(v[i].q), free(v[i].d);
    free(v);
}

/* Parses the fields of line ln of path into *e (strings not yet made). */
static int parse_line(char **f, int nf, const char *path, int ln, re *e, mr_err *err) {
    if (nf != 6)
        return mr_err_set(err, MR_EFORMAT,
                          "%s:%d: not a TREC run line (qid Q0 docid rank score tag): %s%d fields",
                          path, ln, nf > 6 ? "more than " : "", nf > 6 ? 6 : nf);
    char *end;
    errno = 0;
    long rank = strtol(f[3], &end, 10);
    if (errno || end == f[3] || *end || rank < INT_MIN || rank > INT_MAX)
        return mr_err_set(err, MR_EFORMAT, "%s:%d: rank '%.40s' is not an integer", path, ln,
                          f[3]);
    double s = strtod(f[4], &end);
    if (end == f[4] || *end || !isfinite(s))
        return mr_err_set(err, MR_EFORMAT, "%s:%d: score '%.40s' is not a finite number", path,
                          ln, f[4]);
    e->rank = (int)rank, e->score = s, e->line = ln;
    return 0;
}

int mr_trec_run_load(mr_trec_run *r, const char *path, mr_err *err) {
    memset(r, 0, sizeof *r);
    mr__eval_lines in;
    int rc = mr__eval_lines_open(&in, path, err);
    if (rc) return rc;
    int n = 0, nq = 0;
    size_t cap = 0;
    re *v = NULL;
    while ((rc = mr__eval_lines_next(&in, err)) > 0) {
        char *f[6];
        int nf = mr__eval_fields(in.buf, f, 6);
        if (nf == 0) continue; /* blank */
        re e = {0};
        if ((rc = parse_line(f, nf, path, in.line, &e, err))) break;
        if ((size_t)n == cap) {
            cap = cap ? 2 * cap : 4096;
            re *nv = n < INT_MAX / 2 ? realloc(v, sizeof *v * cap) : NULL;
            if (!nv) {
                rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
                break;
            }
            v = nv;
        }
        e.q = strdup(f[0]), e.d = strdup(f[2]);
        v[n++] = e; /* counted first: the clean-up frees whichever string was made */
        if (!e.q || !e.d) {
            rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
            break;
        }
    }
    mr__eval_lines_close(&in);
    if (!rc && v) {
        /* per query: its first line, and no document twice (the first repeat in the file) */
        qsort(v, (size_t)n, sizeof *v, re_cmp_qd);
        int dup = -1;
        for (int i = 0, j; i < n; i = j) {
            int first = v[i].line;
            for (j = i + 1; j < n && !strcmp(v[j].q, v[i].q); j++) {
                if (v[j].line < first) first = v[j].line;
                if (!strcmp(v[j].d, v[j - 1].d) && (dup < 0 || v[j].line < v[dup].line))
                    dup = j;
            }
            for (int k = i; k < j; k++) v[k].qfirst = first;
            nq++;
        }
        if (dup >= 0)
            rc = mr_err_set(err, MR_EFORMAT,
                            "%s:%d: document %.60s repeated for query %.60s (first at line %d)",
                            path, v[dup].line, v[dup].d, v[dup].q, v[dup - 1].line);
    }
    if (!rc) {
        r->qid = calloc((size_t)(nq ? nq : 1), sizeof(char *));
        r->first = calloc((size_t)(nq ? nq : 1), sizeof(int));
        r->count = calloc((size_t)(nq ? nq : 1), sizeof(int));
        r->doc = calloc((size_t)(n ? n : 1), sizeof(char *));
        if (!r->qid || !r->first || !r->count || !r->doc)
            rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    }
    if (rc) {
        re_free(v, n);
        free(r->qid), free(r->first), free(r->count), free(r->doc);
        memset(r, 0, sizeof *r);
        return rc;
    }
    if (v) qsort(v, (size_t)n, sizeof *v, re_cmp_order);
    int k = -1;
    for (int i = 0; i < n; i++) {
        if (!i || v[i].qfirst != v[i - 1].qfirst) k++, r->first[k] = i, r->qid[k] = v[i].q;
        else free(v[i].q);
        r->count[k]++;
        r->doc[i] = v[i].d;
    }
    r->n_q = nq, r->n_doc = n;
    free(v);
    return 0;
}

void mr_trec_run_close(mr_trec_run *r) {
    if (!r) return;
    for (int i = 0; i < r->n_q && r->qid; i++) free(r->qid[i]);
    for (int i = 0; i < r->n_doc && r->doc; i++) free(r->doc[i]);
    free(r->qid), free(r->first), free(r->count), free(r->doc);
    memset(r, 0, sizeof *r);
}
