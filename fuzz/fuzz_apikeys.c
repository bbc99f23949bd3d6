/* fuzz_apikeys.c: libFuzzer target for the API-key file (rpc/apikeys.c).
 *
 * The input is split at its first newline: the line before it is the probe (what a client
 * sends: tried as a bearer header, "Bearer KEY", and else as the key itself), the bytes after
 * it the key file (so fuzz/corpus/fuzz_apikeys/bearer.txt, "Bearer abc" over a file holding
 * SHA-256("abc"), reaches a match). Without a newline the whole input is both the key file and
 * the probe. A rejected file must fill the error with the file's name; an accepted one must
 * hold sane entries (names and tiers non-empty, each tier allowed), and a lookup must answer
 * an entry index or -1. Must never crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apikeys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    const char *file = text, *probe = text;
    char *nl = memchr(text, '\n', size);
    if (nl) {                 /* the probe line, then the key file */
        *nl = 0;
        file = nl + 1;
    }
    mr_apikeys *k = NULL;
    mr_err err = {0};
    if (mr_apikeys_parse(&k, "keys.json", file, &err)) {
        if (k || err.code == 0 || !strstr(err.msg, "keys.json")) abort();
        free(text);
        return 0;
    }
    for (int i = 0; i < mr_apikeys_count(k); i++) {
        if (!*mr_apikeys_name(k, i) || mr_apikeys_n_tiers(k, i) < 1) abort();
        for (int t = 0; t < mr_apikeys_n_tiers(k, i); t++)
            if (!mr_apikeys_allows(k, i, mr_apikeys_tier(k, i, t))) abort();
    }
    size_t klen;
    const char *key = mr_apikeys_bearer(probe, &klen);
    int idx = key ? mr_apikeys_find(k, key, klen) : mr_apikeys_find(k, probe, strlen(probe));
    if (idx < -1 || idx >= mr_apikeys_count(k)) abort();
    mr_apikeys_free(k);
    free(text);
    return 0;
}
