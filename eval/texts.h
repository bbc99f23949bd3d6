/* texts.h: the text files of a BEIR-format collection (corpus.jsonl, queries.jsonl) as an id ->
 * text map, for `mrank eval` (cli/cmd_eval.c). Layout of the collections:
 * ../shared/data/ir/README.md.
 *
 * Not here: relevance judgements (qrels.h), candidate runs (trec_run.h), metrics (metrics.h),
 * tokenization (common/input.h). */
#ifndef MR_TEXTS_H
#define MR_TEXTS_H

#include "mr_err.h"

/* id -> text map of a jsonl file with "_id" and "text" (and optional "title", prepended
 * unless the text already starts with it). Sorted by id. */
typedef struct mr_texts {
    char **id, **text;
    int n;
} mr_texts;
/* t is caller-owned; lines of only whitespace are skipped; MR_EFORMAT names the bad line, or
 * an "_id" given twice (file:line, the id); on error t holds nothing. */
int mr_texts_load(mr_texts *t, const char *path, mr_err *err);
const char *mr_texts_get(const mr_texts *t, const char *id); /* NULL when absent */
void mr_texts_close(mr_texts *t); /* accepts NULL, idempotent */

#endif
