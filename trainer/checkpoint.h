/* checkpoint.h: what `mrank train` writes to disk besides adapters: a full-mode model as an
 * HF checkpoint the engine loads, and the resume state (trainable parameters + AdamW moments +
 * step) that lets an interrupted run continue byte-identically.
 *
 * Not here: PEFT adapter folders (mr_tmodel_save_adapter, tmodel.h), the training data
 * (data.h). Callers: cli/cmd_train.c. */
#ifndef MR_CHECKPOINT_H
#define MR_CHECKPOINT_H

#include "adamw.h"
#include "mr_err.h"
#include "tmodel.h"

/* Writes DIR (created) as an HF checkpoint the engine loads: config.json (f32, tied
 * embeddings), model.safetensors (every tensor of a full-mode model), tokenizer.json copied
 * from tok_path when given. */
int mr_tmodel_save_hf(const mr_tmodel *m, const char *dir, const char *tok_path, mr_err *err);

/* What a resume state belongs to: the settings that decide a run's trajectory. A state is
 * resumed only by a run with the same ones (mr_state_load names the first that differs). */
typedef struct mr_state_meta {
    const char *stage;            /* "lm", "rerank", "compensate" */
    int adapter;                  /* compensate: 1 (vertical) or the ratio; else 0 */
    unsigned long long seed;
    int batch, accum, group, steps, warmup, seq_len, max_len, query_max;
    float lr, weight_decay, clip;
    int lora_rank;
    float lora_alpha, lora_dropout;
    int cascade, cascade_step, width_step, full_only, keep_heads, pooling;
    float cascade_weight;
    unsigned long long data_size, data_hash; /* mr_file_fingerprint of the data file */
    unsigned long long n_params;  /* floats of the model (trainable or not) */
} mr_state_meta;

/* Resume state (format 2): a text block of meta's fields (key=value lines), then step,
 * trainable parameters and AdamW moments, one binary file. Written to PATH.tmp, fsynced,
 * renamed over PATH and the folder fsynced, so that a crash leaves the old or the new state. */
int mr_state_save(const char *path, const mr_tmodel *m, const mr_adamw *a,
                  const mr_state_meta *meta, mr_err *err);
/* Loads into an already-initialised m and a (same shapes). Refuses, naming path and the field:
 * a state of another run (a field of meta differs: stage, seed, lr, data, ...), a step outside
 * 0..meta->steps, another count of trainable floats. A format-1 state (no settings recorded,
 * older mrank) is loaded after a warning on stderr that its settings cannot be checked. */
int mr_state_load(const char *path, mr_tmodel *m, mr_adamw *a, const mr_state_meta *meta,
                  mr_err *err);

/* Size and a 64-bit FNV-1a hash of a file's bytes (the data file, for mr_state_meta). */
int mr_file_fingerprint(const char *path, unsigned long long *size, unsigned long long *hash,
                        mr_err *err);

/* Copies a file (tokenizer.json). */
int mr_copy_file(const char *src, const char *dst, mr_err *err);

#endif
