/* apikeys.h: API keys with entitlements, from a JSON file of SHA-256 digests.
 *
 * The file is a JSON array: [{"name": "team-a", "sha256": "<64 hex digits: SHA-256 of the
 * key>", "tiers": ["interactive", "standard"]}]. Only digests are stored, so the file itself
 * grants nothing to whoever reads it. A client presents the key itself ("authorization:
 * Bearer KEY"); mr_apikeys_find hashes it (OpenSSL SHA-256) and compares the digest with every
 * entry in constant time (CRYPTO_memcmp, no early exit), so neither the time nor any log line
 * reveals how much of a key matched. Names are what logs and metrics show; keys never are.
 * Validation is complete and every error names the file and the JSON path
 * ("keys.json: [2].sha256: expected 64 hex digits"). Generic: what a "tier" means is the
 * caller's business (coordinator/auth.c). */
#ifndef MR_APIKEYS_H
#define MR_APIKEYS_H

#include <stddef.h>

#include "mr_err.h"

#define MR_APIKEYS_MAX 1024
#define MR_APIKEYS_MAX_TIERS 16
#define MR_APIKEYS_NAME 64

typedef struct mr_apikeys mr_apikeys;

/* Parses json (the file's text; `name` stands for the file in messages). */
int mr_apikeys_parse(mr_apikeys **out, const char *name, const char *json, mr_err *err);
/* Reads and parses path (at most 1 MiB). MR_ENOTFOUND/MR_EIO/MR_EFORMAT/MR_EINVAL. */
int mr_apikeys_load(mr_apikeys **out, const char *path, mr_err *err);
void mr_apikeys_free(mr_apikeys *k);

int mr_apikeys_count(const mr_apikeys *k);
const char *mr_apikeys_name(const mr_apikeys *k, int i);
int mr_apikeys_n_tiers(const mr_apikeys *k, int i);
const char *mr_apikeys_tier(const mr_apikeys *k, int i, int t);

/* The entry whose digest is SHA-256(key[0..len)), or -1. Takes the same time whichever entry
 * matches or none. */
int mr_apikeys_find(const mr_apikeys *k, const char *key, size_t len);
/* The key inside an "authorization" value "Bearer KEY" (scheme case-insensitive): a pointer
 * into value and its length, or NULL when the value is not a bearer token. */
const char *mr_apikeys_bearer(const char *value, size_t *len);
/* 1 when entry i lists tier. */
int mr_apikeys_allows(const mr_apikeys *k, int i, const char *tier);

#endif
