/* eval_internal.h: pieces shared by the loaders of eval/ (qrels.c, trec_run.c), not part of
 * the library's API: one bounded line of a text file, and its whitespace-separated fields.
 *
 * Not here: jsonl (texts.c reads whole lines with getline and cJSON). */
#ifndef MR_EVAL_INTERNAL_H
#define MR_EVAL_INTERNAL_H

#include <stdio.h>

#include "mr_err.h"

/* The longest line a qrels or run file may have, in bytes without its newline: far beyond any
 * real one (a qid, a docid, a rank and a score), and what a reader holds at most. */
#define MR_EVAL_LINE_MAX 65536

/* A reader of one file's lines: buf holds the current line (NUL-terminated, without "\n" or a
 * final "\r"), line its number from 1. */
typedef struct mr__eval_lines {
    FILE *f;
    const char *path;
    char *buf;
    int line;
} mr__eval_lines;

/* Opens path; on error the reader holds nothing. */
int mr__eval_lines_open(mr__eval_lines *r, const char *path, mr_err *err);
/* The next line into r->buf: 1, 0 at the end of the file, or a negative MR_E* naming path:line
 * (a line longer than MR_EVAL_LINE_MAX, a NUL byte, a read error). */
int mr__eval_lines_next(mr__eval_lines *r, mr_err *err);
void mr__eval_lines_close(mr__eval_lines *r); /* accepts a closed or failed reader */

/* Splits s in place at runs of spaces and tabs into field[0..max); returns the number of
 * fields, max + 1 when there are more than max. A line of only spaces and tabs has 0. */
int mr__eval_fields(char *s, char **field, int max);

#endif
