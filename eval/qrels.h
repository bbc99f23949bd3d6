/* qrels.h: the relevance judgements of a BEIR-format collection (qrels/test.tsv: query-id,
 * corpus-id, score), with the lookups the metrics need: the grade of one (query, document)
 * and a query's positive grades in decreasing order (the ideal ranking). Conventions of
 * ../shared/tools/bm25_eval.py (trec_eval): graded gains, gain > 0 is relevant.
 *
 * Not here: the texts (texts.h), runs (trec_run.h), the metrics themselves (metrics.h). */
#ifndef MR_QRELS_H
#define MR_QRELS_H

#include "mr_err.h"

/* qrels (query-id, corpus-id, score) sorted by (query, doc). */
typedef struct mr_qrels {
    char **q, **d;
    int *rel;
    int n;
} mr_qrels;
/* r is caller-owned; a first line starting "query-id" is a header; MR_EFORMAT names the bad
 * line; on error r holds nothing. */
int mr_qrels_load(mr_qrels *r, const char *path, mr_err *err);
/* Grade of (q, d); 0 when unjudged. */
int mr_qrels_get(const mr_qrels *r, const char *q, const char *d);
/* Gains > 0 of query q, sorted decreasing, into out (cap); returns their count. */
int mr_qrels_gains(const mr_qrels *r, const char *q, int *out, int cap);
void mr_qrels_close(mr_qrels *r); /* accepts NULL, idempotent */

#endif
