/* mr_err.h: error codes and the error record shared by every mrank module.
 *
 * Functions that can fail return 0 or a negative MR_E* code and, when the
 * caller passes a non-NULL mr_err, fill it with the code and a message that
 * names the file, field or value at fault. Only main() exits; the gRPC layer
 * maps MR_E* to a status code in one place. */
#ifndef MR_ERR_H
#define MR_ERR_H

#include <stdarg.h>

/* X(name, value, text) */
#define MR_ERRNO_MAP(X)                                                   \
    X(MR_EINVAL, -1, "invalid argument")                                  \
    X(MR_ENOMEM, -2, "out of memory")                                     \
    X(MR_EIO, -3, "i/o error")                                            \
    X(MR_EFORMAT, -4, "malformed file")                                   \
    X(MR_ENOTFOUND, -5, "not found")                                      \
    X(MR_EUNSUPPORTED, -6, "unsupported")                                 \
    X(MR_ERANGE, -7, "value out of range")                                \
    X(MR_ESTATE, -8, "invalid state")                                     \
    X(MR_ENUMERIC, -9, "non-finite result")

enum {
#define MR__ERR_ENUM(name, value, text) name = value,
    MR_ERRNO_MAP(MR__ERR_ENUM)
#undef MR__ERR_ENUM
};

#define MR_ERR_MSG_LEN 256

typedef struct mr_err {
    int code;                   /* 0 or MR_E* */
    char msg[MR_ERR_MSG_LEN];   /* human-readable, names file/field/value */
} mr_err;

/* Static text for a code ("unknown error" for anything else). */
const char *mr_strerror(int code);

/* Records code and a printf-style message in err (err may be NULL) and
 * returns code, so callers can write `return mr_err_set(err, MR_EINVAL, ...)`. */
int mr_err_set(mr_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the current errno (translated to MR_EIO/MR_ENOMEM/MR_ENOTFOUND)
 * with a message prefix, e.g. mr_err_errno(err, "open %s", path). */
int mr_err_errno(mr_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
