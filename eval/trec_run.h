/* trec_run.h: TREC run files ("qid Q0 docid rank score tag" per line): the candidate lists
 * `mrank eval` re-ranks (a collection's bm25_top100.run) and the reference runs it compares
 * against (--reference). Named mr_trec_run so as not to be confused with the engine's run
 * options (mr_run_opts, common/model.h).
 *
 * Not here: writing runs (cli/cmd_eval.c prints its own), texts, qrels, metrics. */
#ifndef MR_TREC_RUN_H
#define MR_TREC_RUN_H

#include "mr_err.h"

/* TREC run: per query, in the order of the queries' first lines (a query's lines need not be
 * contiguous), its documents by decreasing score, then increasing rank, then file order.
 * trec_eval orders by score too (read as a float) but breaks ties by docid, decreasing, and
 * ignores the rank column; here the rank breaks them, so a run's own tie order holds (the runs
 * of ../shared/tools/bm25_eval.py print 6 decimals and rank ties by docid, increasing, which is
 * the order its figures are computed in). */
typedef struct mr_trec_run {
    char **qid;          /* (n_q) */
    int *first, *count;  /* (n_q) into doc */
    char **doc;
    int n_q, n_doc;
} mr_trec_run;
/* r is caller-owned. Lines: 6 fields split at spaces and tabs ("qid Q0 docid rank score tag";
 * Q0 and tag are not read), rank an int, score a finite number; blank lines are skipped. A
 * line over MR_EVAL_LINE_MAX (64 KiB), another line, or a document repeated for a query
 * (trec_eval refuses it too) is MR_EFORMAT naming file:line; on error r holds nothing. */
int mr_trec_run_load(mr_trec_run *r, const char *path, mr_err *err);
void mr_trec_run_close(mr_trec_run *r); /* accepts NULL, idempotent */

#endif
