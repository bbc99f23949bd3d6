/* input.c: builds the query segment, passage segment and suffix of a model input (input.h).
 *
 * Each part is tok(prefix + text) with the tokenizer's own rules and no special tokens except
 * the BOS it is given; truncation keeps a prefix of a part's tokens. It does not pack rows or
 * know the model: its callers (`mrank score`, `mrank eval`, the worker) make mr_rows of them. */
#include "input.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends tok(prefix + text) to out, keeping at most limit of its tokens (limit < 0: all).
 * A limited part costs what its limit needs, not the length of text (mr_tokenizer_encode_max). */
static int encode_prefixed(const mr_tokenizer *t, const char *prefix, const char *text,
                           long limit, mr_ids *out, int *truncated, mr_err *err) {
    size_t lp = strlen(prefix), lt = strlen(text);
    char *buf = malloc(lp + lt + 1);
    if (!buf) return mr_err_set(err, MR_ENOMEM, "out of memory tokenizing %zu bytes", lt);
    memcpy(buf, prefix, lp);
    memcpy(buf + lp, text, lt + 1);
    int rc = limit < 0 ? mr_tokenizer_encode(t, buf, lp + lt, out, err)
                       : mr_tokenizer_encode_max(t, buf, lp + lt, (size_t)limit, out, truncated, NULL, err);
    free(buf);
    return rc;
}

int mr_input_query(const mr_tokenizer *t, int32_t bos, const char *query, int max_len,
                   mr_ids *out, int *truncated, mr_err *err) {
    if (max_len < 8) return mr_err_set(err, MR_EINVAL, "max_len %d is too small", max_len);
    int rc;
    out->n = 0;
    if (mr_ids_push(out, bos))
        return mr_err_set(err, MR_ENOMEM, "out of memory for the query segment");
    if ((rc = encode_prefixed(t, "A: ", query, (long)max_len * 3 / 4, out, truncated, err)))
        return rc;
    return encode_prefixed(t, "", "\n", -1, out, NULL, err);
}

int mr_input_passage(const mr_tokenizer *t, const char *passage, int max_len, size_t query_len,
                     mr_ids *out, int *truncated, mr_err *err) {
    out->n = 0;
    long budget = (long)max_len - (long)query_len;
    return encode_prefixed(t, "B: ", passage, budget > 0 ? budget : 0, out, truncated, err);
}

int mr_input_suffix(const mr_tokenizer *t, const char *prompt, mr_ids *out, mr_err *err) {
    out->n = 0;
    int rc = encode_prefixed(t, "", "\n", -1, out, NULL, err);
    return rc ? rc : encode_prefixed(t, "", prompt, -1, out, NULL, err);
}

int mr_input_check_vocab(const mr_ids *ids, int vocab_size, const char *what, int index,
                         mr_err *err) {
    for (size_t i = 0; i < ids->n; i++) {
        if (ids->v[i] >= 0 && ids->v[i] < vocab_size) continue;
        char name[64];
        if (index >= 0) snprintf(name, sizeof name, "%s %d", what, index);
        else snprintf(name, sizeof name, "%s", what);
        return mr_err_set(err, MR_EINVAL,
                          "%s: token %zu has id %d, outside the model's vocabulary 0..%d "
                          "(the tokenizer knows more pieces than the checkpoint embeds)",
                          name, i, (int)ids->v[i], vocab_size - 1);
    }
    return 0;
}
