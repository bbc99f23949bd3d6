/* lora.h: PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors).
 *
 * Loads an adapter folder and looks up the low-rank pair of a module of the base model, e.g.
 * "model.layers.3.self_attn.q_proj" or "lm_head.5.linear_head": tensors
 * "base_model.model.<module>.lora_A.weight" (rank, in) and "...lora_B.weight" (out, rank);
 * the ".default" infix some PEFT versions write is accepted too. scale = lora_alpha / r
 * (lora_alpha / sqrt(r) with use_rslora). This file only reads and writes adapters: the model
 * (model.c) merges or applies them. */
#ifndef MR_LORA_H
#define MR_LORA_H

#include "mr_err.h"
#include "safetensors.h"

typedef struct mr_adapter {
    char path[512];       /* folder */
    int rank;             /* r */
    float alpha;          /* lora_alpha */
    float scale;          /* alpha / r, or alpha / sqrt(r) with use_rslora */
    mr_st_set st;         /* adapter_model.safetensors */
} mr_adapter;

/* Loads DIR (caller-owned a; on error nothing is held); release with mr_adapter_close. */
int mr_adapter_load(mr_adapter *a, const char *dir, mr_err *err);
/* *A (rank, in) and *B (out, rank) for module, shapes checked against in/out and rank;
 * returns 0 and sets both NULL when the adapter does not touch the module; MR_EFORMAT on a
 * half-present pair or a wrong shape (message names the file and tensor). */
int mr_adapter_find(const mr_adapter *a, const char *module, int64_t in, int64_t out,
                    const mr_tensor **A, const mr_tensor **B, mr_err *err);
/* Number of lora_A tensors in the adapter (to check every one was used). */
size_t mr_adapter_count(const mr_adapter *a);
/* Unmaps the adapter's tensors; idempotent, accepts NULL. */
void mr_adapter_close(mr_adapter *a);

/* Writes an adapter folder (adapter_config.json with r, lora_alpha, target_modules,
 * peft_type LORA) from f32 arrays; used by tests and the trainer. Each module i gets
 * A[i] (rank, in[i]) and B[i] (out[i], rank), stored as dt. dropout: the training LoRA
 * dropout p in [0, 1), recorded as lora_dropout. */
int mr_adapter_save(const char *dir, int rank, float alpha, float dropout, int n,
                    const char *const *modules, const int64_t *in, const int64_t *out,
                    const float *const *A, const float *const *B, mr_dtype dt, mr_err *err);

#endif
