/* release.h: the two released BAAI re-rankers mrank serves by name, and seeded stand-ins for
 * them (`mrank init-checkpoint --release NAME`).
 *
 * A release is described by its config.json text (the published file byte for byte where it
 * could be found, otherwise a reconstruction that says so), the storage dtype and shard count
 * of its published weights, its PEFT compensation adapters (folder inside the download, rank,
 * alpha, dropout, target modules) and the local tokenizer used as a stand-in for the release's
 * own (no download is possible here). Sources for every fact are in release.c and
 * docs/checkpoints.md. Writing reuses seeded.c for the weights and lora.c for the adapters. */
#ifndef MR_RELEASE_H
#define MR_RELEASE_H

#include <stdint.h>

#include "mr_err.h"
#include "safetensors.h"

typedef struct mr_release_adapter {
    const char *name;     /* serving name (`mrank worker --adapter NAME=DIR`) */
    const char *subdir;   /* folder inside the release download */
    int rank;
    float alpha, dropout;
} mr_release_adapter;

typedef struct mr_release {
    const char *name;           /* e.g. "bge-reranker-v2.5-gemma2-lightweight" */
    const char *repo;           /* Hugging Face repository id */
    const char *config_json;    /* config.json text */
    const char *config_source;  /* where the text comes from (URL), or why it is reconstructed */
    int config_published;       /* 1: the published file; 0: reconstructed */
    mr_dtype dtype;             /* storage dtype of the published weights */
    int shards;                 /* published shard count (0: not found; 1 written) */
    const char *tokenizer;      /* stand-in tokenizer.json, relative to the repository root */
    const char *tokenizer_note; /* what the stand-in means for ids */
    int n_adapters;
    mr_release_adapter adapters[2];
} mr_release;

/* The release called name (case-sensitive), or NULL. */
const mr_release *mr_release_find(const char *name);
/* "a|b": the known names, for usage messages. */
const char *mr_release_names(void);

/* Writes a seeded stand-in of r into DIR (created if missing): config.json (r->config_json
 * verbatim), weights stored as dt in `shards` files (0: r->shards, or 1 when unknown) with the
 * release's tensor names, the compensation adapters in PEFT format under their subdirs, a copy
 * of tokenizer_json (whose BOS id must equal the config's bos_token_id) and the SEEDED marker
 * listing every way the stand-in differs from the release. */
int mr_release_write(const mr_release *r, const char *dir, const char *tokenizer_json,
                     uint64_t seed, mr_dtype dt, int shards, mr_err *err);

#endif
