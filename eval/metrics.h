/* metrics.h: the ranking metrics of `mrank eval`, as ../shared/tools/bm25_eval.py computes
 * them (trec_eval conventions: graded gains, gain > 0 is relevant, discount log2(rank + 1),
 * ideal DCG over all judged documents of the query), plus their expected values under a
 * uniformly random order of the candidates. Pure functions of arrays of gains; nothing here
 * reads files or allocates.
 *
 * Not here: where the gains come from (qrels.h), the ranking (cli/cmd_eval.c). */
#ifndef MR_METRICS_H
#define MR_METRICS_H

/* gains: grades of the ranked list (n), ideal: gains > 0 of the query, decreasing (n_ideal). */
double mr_ndcg_at(const int *gains, int n, const int *ideal, int n_ideal, int k);
double mr_mrr_at(const int *gains, int n, int k);
/* Expected values when the n candidates are put in a uniformly random order. */
double mr_ndcg_at_random(const int *gains, int n, const int *ideal, int n_ideal, int k);
double mr_mrr_at_random(const int *gains, int n, int k);

#endif
