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

/* Resume state: trainable parameters, AdamW moments and step, one binary file. */
int mr_state_save(const char *path, const mr_tmodel *m, const mr_adamw *a, mr_err *err);
/* Loads into an already-initialised m and a (same shapes); checks sizes. */
int mr_state_load(const char *path, mr_tmodel *m, mr_adamw *a, mr_err *err);

/* Copies a file (tokenizer.json). */
int mr_copy_file(const char *src, const char *dst, mr_err *err);

#endif
