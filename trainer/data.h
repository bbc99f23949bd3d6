/* data.h: the training data of `mrank train` (cli/cmd_train.c), tokenized up front: LM text
 * (--stage lm) and re-ranking jsonl (--stage rerank, compensate), and the deterministic order
 * in which examples and candidate groups are drawn.
 *
 * Batch order is a pure function of (seed, example index): example i of the stream is
 * perm_e[i mod n] with perm_e a seeded permutation of epoch e = i / n, so a resumed run sees
 * exactly the batches an uninterrupted one would. The random state comes from common/prng.h.
 *
 * Not here: checkpoints and the resume state (checkpoint.h), the passes and losses. */
#ifndef MR_DATA_H
#define MR_DATA_H

#include <stdint.h>

#include "model.h"
#include "mr_err.h"
#include "tokenizer.h"

/* ---- LM text: one document per line, [BOS] + tokens, cut into sequences of seq_len ---- */
typedef struct mr_lm_data {
    int32_t *ids;         /* all sequences back to back */
    int64_t *off;         /* (n + 1) */
    int n;
} mr_lm_data;
/* d is caller-owned; on error it holds nothing. vocab_size > 0: a token id outside
 * [0, vocab_size) is refused with path:line (mr_input_check_vocab). */
int mr_lm_data_load(mr_lm_data *d, const char *path, const mr_tokenizer *t, int32_t bos,
                    int seq_len, int vocab_size, mr_err *err);
void mr_lm_data_close(mr_lm_data *d); /* accepts NULL, idempotent */

/* ---- re-ranking jsonl: {query, pos[], neg[], pos_scores?, neg_scores?, prompt?} ---- */
typedef struct mr_rr_example {
    mr_ids q, s;          /* query segment, suffix (input.h) */
    int n_pos, n_neg;
    mr_ids *p;            /* (n_pos + n_neg) passage segments, positives first */
    float *score;         /* (n_pos + n_neg) teacher scores, or NULL */
} mr_rr_example;
typedef struct mr_rr_data {
    mr_rr_example *ex;
    int n;
} mr_rr_data;
/* d is caller-owned; on error it holds nothing. max_len: token budget of query + passage
 * (input.h), query_max: cap on the query segment. Refused at load, with path:line, rather than
 * when a batch draws the example: malformed lines, teacher scores on some lines but not all
 * (the teacher term is per batch), a score that is not a finite float, a row (query + passage
 * + prompt) longer than row_max (the training pass's limit; 0: unchecked), a token id outside
 * [0, vocab_size) (vocab_size 0: unchecked). */
int mr_rr_data_load(mr_rr_data *d, const char *path, const mr_tokenizer *t, int32_t bos,
                    int query_max, int max_len, int row_max, int vocab_size, mr_err *err);
void mr_rr_data_close(mr_rr_data *d); /* accepts NULL, idempotent */

/* Index of the i-th example of the seeded stream over n examples. */
int mr_stream_index(uint64_t seed, int n, int64_t i);
/* splitmix64 of a tuple: per-(seed, step, micro) random state. */
uint64_t mr_seed_mix(uint64_t seed, uint64_t a, uint64_t b);

/* One group of G rows (positive first) from example ex; rows point into ex; teacher (G)
 * filled when ex has scores (returns 1 then, else 0). rng picks the positive and negatives
 * (without replacement while there are enough). */
int mr_rr_group(const mr_rr_example *ex, int G, uint64_t *rng, mr_row *rows, float *teacher);

#endif
