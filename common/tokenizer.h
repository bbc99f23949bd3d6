/* tokenizer.h: Hugging Face tokenizer.json, exact.
 *
 * Two model families: SentencePiece-style BPE with byte fallback (Llama, Mistral, Gemma:
 * normalizer/pre-tokenizer that map spaces to U+2581 and optionally prepend it) and byte-level
 * BPE with the GPT-2/Qwen2 pre-tokenizer regex (PCRE2) and NFC normalization (utf8proc).
 * Added/special tokens in the text are matched as whole tokens first, as the HF library does.
 * Encoding never adds special tokens; callers add BOS themselves (see input.h).
 * Input text is untrusted: invalid UTF-8 gets MR_EINVAL, never a crash. */
#ifndef MR_TOKENIZER_H
#define MR_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "mr_err.h"

/* Growable id vector; zero-initialise, release with mr_ids_close. */
typedef struct mr_ids {
    int32_t *v;
    size_t n, cap;
} mr_ids;
/* 0, or MR_ENOMEM with ids unchanged (no mr_err: the caller names what it was building). */
int mr_ids_push(mr_ids *ids, int32_t id);
/* Frees the vector and zeroes it; accepts NULL and a zeroed vector. */
void mr_ids_close(mr_ids *ids);

typedef struct mr_tokenizer mr_tokenizer;

/* 1 when text[0..len) is valid UTF-8 (what every tokenizer accepts); 0 otherwise, with the
 * offset of the first bad byte in *bad_at (when not NULL). */
int mr_utf8_valid(const char *text, size_t len, size_t *bad_at);

/* A heap tokenizer from a tokenizer.json path (*out NULL on error); free with
 * mr_tokenizer_free, which accepts NULL. Immutable after load, shareable by threads. */
int mr_tokenizer_new(mr_tokenizer **out, const char *path, mr_err *err);
void mr_tokenizer_free(mr_tokenizer *t);
/* Appends the ids of text[0..len) to out (no special tokens added). */
int mr_tokenizer_encode(const mr_tokenizer *t, const char *text, size_t len, mr_ids *out,
                        mr_err *err);
/* Appends the first max_ids ids of text[0..len) to out and sets *truncated (when not NULL) to 1
 * if it has more, with the ids and the flag of a whole encode. The work is bounded by the budget,
 * not the text: only a prefix is encoded when the tokenizer's rules make a cut exact (see
 * mr_tokenizer_encode_max in tokenizer.c); the whole text is still checked for UTF-8.
 * *encoded (when not NULL) receives the bytes handed to the encoder, the work done. */
int mr_tokenizer_encode_max(const mr_tokenizer *t, const char *text, size_t len, size_t max_ids,
                            mr_ids *out, int *truncated, size_t *encoded, mr_err *err);
/* Id of a token string (added tokens first, then the vocab). A lookup, not an error signal:
 * -1 when absent or when t or token is NULL. */
int32_t mr_tokenizer_token_id(const mr_tokenizer *t, const char *token);
/* Token string of an id, or NULL when out of range. */
const char *mr_tokenizer_token(const mr_tokenizer *t, int32_t id);
int32_t mr_tokenizer_vocab_size(const mr_tokenizer *t);   /* largest id + 1 */

#endif
