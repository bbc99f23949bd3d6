/* json.c: mr__json_parse (json.h), cJSON's parse held to the whole text: no NUL byte or
 * \u0000 escape, nothing but whitespace after the value. Keeps no state; thread-safe (it reads
 * the parse's own end, not cJSON's global error pointer). */
#include "json.h"

#include <string.h>

/* 1-based line of text[at]. */
static int line_of(const char *text, size_t at) {
    int line = 1;
    for (size_t i = 0; i < at; i++) line += text[i] == '\n';
    return line;
}

/* The offset of the first NUL byte of text, or of a \u0000 escape inside a string (cJSON
 * would end the string there and drop the rest), or len when there is none. */
static size_t find_nul(const char *s, size_t n) {
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        if (!s[i]) return i;
        if (!in_str) {
            in_str = s[i] == '"';
            continue;
        }
        if (s[i] == '"') {
            in_str = 0;
        } else if (s[i] == '\\' && i + 1 < n) {
            if (s[i + 1] == 'u' && i + 5 < n && !strncmp(s + i + 2, "0000", 4)) return i;
            i++; /* the escaped character */
        }
    }
    return n;
}

cJSON *mr__json_parse(const char *text, size_t len, const char *name, mr_err *err) {
    size_t nul = find_nul(text, len);
    if (nul != len) {
        mr_err_set(err, MR_EFORMAT, "%s: line %d: a NUL character (byte or \\u0000)", name,
                   line_of(text, nul));
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
    if (!root) {
        mr_err_set(err, MR_EFORMAT, "%s: line %d: not valid JSON", name, line_of(text, at));
        return NULL;
    }
    while (at < len && strchr(" \t\r\n", text[at])) at++;
    if (at != len) {
        cJSON_Delete(root);
        mr_err_set(err, MR_EFORMAT, "%s: line %d: text after the JSON value", name,
                   line_of(text, at));
        return NULL;
    }
    return root;
}
