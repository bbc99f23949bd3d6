/* trec_run.h: TREC run files ("qid Q0 docid rank score tag" per line): the candidate lists
 * `mrank eval` re-ranks (a collection's bm25_top100.run) and the reference runs it compares
 * against (--reference). Named mr_trec_run so as not to be confused with the engine's run
 * options (mr_run_opts, common/model.h).
 *
 * Not here: writing runs (cli/cmd_eval.c prints its own), texts, qrels, metrics. */
#ifndef MR_TREC_RUN_H
#define MR_TREC_RUN_H

#include "mr_err.h"

/* TREC run: per query (in file order) its documents by increasing rank. */
typedef struct mr_trec_run {
    char **qid;          /* (n_q) */
    int *first, *count;  /* (n_q) into doc */
    char **doc;
    int n_q, n_doc;
} mr_trec_run;
/* r is caller-owned; MR_EFORMAT names the bad line; on error r holds nothing. */
int mr_trec_run_load(mr_trec_run *r, const char *path, mr_err *err);
void mr_trec_run_close(mr_trec_run *r); /* accepts NULL, idempotent */

#endif
