/* run.h: the pieces of `mrank train` (cli/cmd_train.c) that are library code: training data
 * (LM text, re-ranking jsonl) tokenized up front, deterministic batch order, HF checkpoint
 * writing, and the resume state (trainable parameters + AdamW moments + step).
 *
 * Batch order is a pure function of (seed, example index): example i of the stream is
 * perm_e[i mod n] with perm_e a seeded permutation of epoch e = i / n, so a resumed run sees
 * exactly the batches an uninterrupted one would. */
#ifndef MR_RUN_H
#define MR_RUN_H

#include <stdint.h>

#include "tokenizer.h"
#include "adamw.h"
#include "tmodel.h"

/* ---- LM text: one document per line, [BOS] + tokens, cut into sequences of seq_len ---- */
typedef struct mr_lm_data {
    int32_t *ids;         /* all sequences back to back */
    int64_t *off;         /* (n + 1) */
    int n;
} mr_lm_data;
int mr_lm_data_load(mr_lm_data *d, const char *path, const mr_tokenizer *t, int32_t bos,
                    int seq_len, mr_err *err);
void mr_lm_data_free(mr_lm_data *d);

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
/* max_len: token budget of query + passage (input.h), query_max: cap on the query segment. */
int mr_rr_data_load(mr_rr_data *d, const char *path, const mr_tokenizer *t, int32_t bos,
                    int query_max, int max_len, mr_err *err);
void mr_rr_data_free(mr_rr_data *d);

/* Index of the i-th example of the seeded stream over n examples. */
int mr_stream_index(uint64_t seed, int n, int64_t i);
/* splitmix64 of a tuple: per-(seed, step, micro) random state. */
uint64_t mr_seed_mix(uint64_t seed, uint64_t a, uint64_t b);

/* One group of G rows (positive first) from example ex; rows point into ex; teacher (G)
 * filled when ex has scores (returns 1 then, else 0). rng picks the positive and negatives
 * (without replacement while there are enough). */
int mr_rr_group(const mr_rr_example *ex, int G, uint64_t *rng, mr_row *rows, float *teacher);

/* Writes DIR (created) as an HF checkpoint the engine loads: config.json (f32, tied
 * embeddings), model.safetensors (every tensor of a full-mode model), tokenizer.json copied
 * from tok_path when given. */
int mr_tmodel_save_hf(const mr_tmodel *m, const char *dir, const char *tok_path, mr_err *err);

/* Resume state: trainable parameters, AdamW moments and step, one binary file. */
int mr_state_save(const char *path, const mr_tmodel *m, const mr_adamw *a, mr_err *err);
/* Loads into an already-initialised m and a (same shapes); checks sizes. */
int mr_state_load(const char *path, mr_tmodel *m, mr_adamw *a, mr_err *err);

/* Copies a file (tokenizer.json). */
int mr_copy_file(const char *src, const char *dst, mr_err *err);

#endif
