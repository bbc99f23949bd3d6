/* trec_run.c: TREC run files (see trec_run.h): read, then grouped by query in file order and
 * sorted by rank within a query. Not here: writing runs (cli/cmd_eval.c). */
#include "trec_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct re { char *q, *d; int rank, order; } re;
static int re_cmp(const void *a, const void *b) {
    const re *x = a, *y = b;
    if (x->order != y->order) return x->order - y->order;
    return x->rank - y->rank;
}

/* Frees the n entries of v (either string may be NULL) and v. */
static void re_free(re *v, int n) {
    for (int i = 0; i < n; i++) free(v[i].q), free(v[i].d);
    free(v);
}

int mr_trec_run_load(mr_trec_run *r, const char *path, mr_err *err) {
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
                rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
                break;
            }
            v = nv;
        }
        v[n].q = strdup(q), v[n].d = strdup(d), v[n].rank = rank, v[n].order = nq;
        n++; /* counted first: the clean-up frees whichever string was made */
        if (!v[n - 1].q || !v[n - 1].d) {
            rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
            break;
        }
    }
    fclose(f);
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
    if (v) qsort(v, (size_t)n, sizeof *v, re_cmp);
    for (int i = 0; i < n; i++) {
        int k = v[i].order - 1;
        if (!r->count[k]) r->first[k] = i, r->qid[k] = v[i].q;
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
