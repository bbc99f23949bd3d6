/* textfile.c: mr__read_text, the bounded whole-file read behind the engine's JSON parsers
 * (textfile.h). It checks the size with fstat before allocating and reads once; it parses
 * nothing and keeps no state. */
#include "textfile.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int mr__read_text(const char *path, size_t limit, char **out, size_t *len, mr_err *err) {
    *out = NULL;
    if (len)
        *len = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return mr_err_errno(err, "open %s", path);
    int rc = 0;
    struct stat st;
    char *buf = NULL;
    if (fstat(fileno(fp), &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > limit) {
        rc = mr_err_set(err, MR_EFORMAT, "%s: not a regular file of at most %zu bytes", path,
                        limit);
        goto cleanup;
    }
    if (!(buf = malloc((size_t)st.st_size + 1))) {
        rc = mr_err_set(err, MR_ENOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    size_t got = fread(buf, 1, (size_t)st.st_size, fp);
    if (got != (size_t)st.st_size) {
        rc = ferror(fp) ? mr_err_errno(err, "read %s", path)
                        : mr_err_set(err, MR_EIO, "%s: short read", path);
        goto cleanup;
    }
    buf[got] = 0;
    *out = buf;
    if (len)
        *len = got;
    buf = NULL;
cleanup:
    free(buf);
    fclose(fp);
    return rc;
}
