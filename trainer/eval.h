/* eval.h: re-ranking evaluation on BEIR-format collections (`mrank eval`): loaders for
 * corpus.jsonl / queries.jsonl, qrels/test.tsv and TREC runs, and the metrics of
 * ../shared/tools/bm25_eval.py (trec_eval conventions: graded gains, gain > 0 is relevant,
 * discount log2(rank + 1), ideal DCG over all judged documents of the query), plus their
 * expected values under a uniformly random order of the candidates. */
#ifndef MR_EVAL_H
#define MR_EVAL_H

#include "mr_err.h"

/* id -> text map of a jsonl file with "_id" and "text" (and optional "title", prepended
 * unless the text already starts with it). Sorted by id. */
typedef struct mr_texts {
    char **id, **text;
    int n;
} mr_texts;
int mr_texts_load(mr_texts *t, const char *path, mr_err *err);
const char *mr_texts_get(const mr_texts *t, const char *id); /* NULL when absent */
void mr_texts_free(mr_texts *t);

/* qrels (query-id, corpus-id, score) sorted by (query, doc). */
typedef struct mr_qrels {
    char **q, **d;
    int *rel;
    int n;
} mr_qrels;
int mr_qrels_load(mr_qrels *r, const char *path, mr_err *err);
/* Grade of (q, d); 0 when unjudged. */
int mr_qrels_get(const mr_qrels *r, const char *q, const char *d);
/* Gains > 0 of query q, sorted decreasing, into out (cap); returns their count. */
int mr_qrels_gains(const mr_qrels *r, const char *q, int *out, int cap);
void mr_qrels_free(mr_qrels *r);

/* TREC run: per query (in file order) its documents by increasing rank. */
typedef struct mr_run {
    char **qid;          /* (n_q) */
    int *first, *count;  /* (n_q) into doc */
    char **doc;
    int n_q, n_doc;
} mr_run;
int mr_run_load(mr_run *r, const char *path, mr_err *err);
void mr_run_free(mr_run *r);

/* gains: grades of the ranked list (n), ideal: gains > 0 of the query, decreasing (n_ideal). */
double mr_ndcg_at(const int *gains, int n, const int *ideal, int n_ideal, int k);
double mr_mrr_at(const int *gains, int n, int k);
/* Expected values when the n candidates are put in a uniformly random order. */
double mr_ndcg_at_random(const int *gains, int n, const int *ideal, int n_ideal, int k);
double mr_mrr_at_random(const int *gains, int n, int k);

#endif
