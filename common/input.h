/* input.h: the model input of one (query, passage) pair, as the spec's section 3 builds it.
 *
 *   query segment   [BOS] tok("A: " + query) tok("\n")     (never compressed)
 *   passage segment tok("B: " + passage)                    (compressed at width < full)
 *   suffix          tok("\n") tok(prompt)                   (never compressed; scored token last)
 *
 * Each part is tokenized separately without special tokens. Truncation: tok("A: " + query) keeps
 * at most max_len * 3 / 4 tokens; the passage segment keeps at most max_len minus the query
 * segment; the suffix is always appended in full, so a row has at most max_len + suffix tokens.
 * The query segment and suffix are built once per request and shared by its passages. */
#ifndef MR_INPUT_H
#define MR_INPUT_H

#include "mr_err.h"
#include "tokenizer.h"

#define MR_DEFAULT_PROMPT "Predict whether passage B contains an answer to query A."
#define MR_DEFAULT_MAX_LEN 512

int mr_input_query(const mr_tokenizer *t, int32_t bos, const char *query, int max_len,
                   mr_ids *out, int *truncated, mr_err *err);
int mr_input_passage(const mr_tokenizer *t, const char *passage, int max_len, size_t query_len,
                     mr_ids *out, int *truncated, mr_err *err);
int mr_input_suffix(const mr_tokenizer *t, const char *prompt, mr_ids *out, mr_err *err);
/* MR_EINVAL naming what, with index when it is >= 0 ("passage 3"), when a token id of ids is
 * outside the model's vocabulary [0, vocab_size): a tokenizer may know more pieces than the
 * checkpoint has embeddings (a newer tokenizer beside an older model), and such a row cannot
 * be scored. (The engine's mr_rows_check refuses such ids too, for a whole batch.) */
int mr_input_check_vocab(const mr_ids *ids, int vocab_size, const char *what, int index,
                         mr_err *err);

#endif
