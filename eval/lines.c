/* lines.c: bounded lines and whitespace-separated fields of the text files of eval/ (see
 * eval_internal.h): a line longer than MR_EVAL_LINE_MAX is refused where it is, never read as
 * two lines, and never held whole. Not here: jsonl (texts.c). */
#include "eval_internal.h"

#include <stdlib.h>
#include <string.h>

int mr__eval_lines_open(mr__eval_lines *r, const char *path, mr_err *err) {
    memset(r, 0, sizeof *r);
    r->path = path;
    if (!(r->buf = malloc(MR_EVAL_LINE_MAX + 1)))
        return mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
    if (!(r->f = fopen(path, "r"))) {
        int rc = mr_err_errno(err, "%s", path);
        free(r->buf);
        r->buf = NULL;
        return rc;
    }
    return 0;
}

int mr__eval_lines_next(mr__eval_lines *r, mr_err *err) {
    size_t n = 0;
    int c;
    while ((c = getc_unlocked(r->f)) != EOF && c != '\n') {
        if (n == MR_EVAL_LINE_MAX)
            return mr_err_set(err, MR_EFORMAT, "%s:%d: line longer than %d bytes", r->path,
                              r->line + 1, MR_EVAL_LINE_MAX);
        if (c == 0)
            return mr_err_set(err, MR_EFORMAT, "%s:%d: NUL byte", r->path, r->line + 1);
        r->buf[n++] = (char)c;
    }
    if (ferror(r->f))
        return mr_err_set(err, MR_EIO, "%s:%d: read error", r->path, r->line + 1);
    if (c == EOF && n == 0) return 0;
    if (n && r->buf[n - 1] == '\r') n--;
    r->buf[n] = 0;
    r->line++;
    return 1;
}

void mr__eval_lines_close(mr__eval_lines *r) {
    if (r->f) fclose(r->f);
    free(r->buf);
    memset(r, 0, sizeof *r);
}

int mr__eval_fields(char *s, char **field, int max) {
    int n = 0;
    for (;;) {
        while (*s == ' ' || *s == '\t') s++;
        if (!*s) return n;
        if (n == max) return max + 1;
        field[n++] = s;
        while (*s && *s != ' ' && *s != '\t') s++;
        if (*s) *s++ = 0;
    }
}
