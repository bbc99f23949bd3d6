/* qrels.h: the relevance judgements of a BEIR-format collection (qrels/test.tsv: query-id,
 * corpus-id, score), with the lookups the metrics need: the grade of one (query, document)
 * and a query's positive grades in decreasing order (the ideal ranking). Conventions of
 * ../shared/tools/bm25_eval.py (trec_eval): graded gains, gain > 0 is relevant.
 *
 * Not here: the texts (texts.h), runs (trec_run.h), the metrics themselves (metrics.h). */
#ifndef MR_QRELS_H
#define MR_QRELS_H

#include "mr_err.h"

/* qrels (query-id, corpus-id, score) sorted by (query, doc), one entry per pair. */
typedef struct mr_qrels {
    char **q, **d;
    int *rel;
    int n;
    int max_gains; /* the most gains > 0 of one query: a mr_qrels_gains cap that always fits */
} mr_qrels;
/* r is caller-owned. Fields are split at spaces and tabs (ids hold neither). A first line whose
 * first field is "query-id" is a header (BEIR's "query-id corpus-id score"). Every other line
 * has 3 fields (query-id corpus-id score), or, in a file without a header, every line has 4
 * (TREC qrels: qid iteration docid grade; the iteration is not read); the score is an int.
 * Blank lines are skipped. A (query, doc) judged twice is refused, as trec_eval does
 * (../shared/tools/bm25_eval.py would keep the last grade). MR_EFORMAT names the bad line
 * (file:line, the field; a line over MR_EVAL_LINE_MAX, 64 KiB, is refused); on error r
 * holds nothing. */
int mr_qrels_load(mr_qrels *r, const char *path, mr_err *err);
/* Grade of (q, d); 0 when unjudged. */
int mr_qrels_get(const mr_qrels *r, const char *q, const char *d);
/* Gains > 0 of query q, sorted decreasing, into out (cap); returns their count, or MR_ERANGE
 * when there are more than cap (cap >= r->max_gains always fits). */
int mr_qrels_gains(const mr_qrels *r, const char *q, int *out, int cap);
void mr_qrels_close(mr_qrels *r); /* accepts NULL, idempotent */

#endif
