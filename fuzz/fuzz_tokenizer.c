/* fuzz_tokenizer.c: libFuzzer target for mr_tokenizer_encode on untrusted text.
 *
 * The tokenizer is loaded once, from $MR_FUZZ_TOKENIZER or else the qwen3 tokenizer.json under
 * third_party/ (found relative to this source file, since fuzz targets get no MR_SOURCE_DIR).
 * Every input is encoded; invalid UTF-8 must come back as MR_EINVAL, valid text must encode
 * (rc 0) to ids inside the vocabulary. Anything else aborts, which libFuzzer reports. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static mr_tokenizer *tok;

/* <repo>/third_party/tokenizers/qwen3/tokenizer.json, with <repo> taken from __FILE__. */
static const char *default_path(void) {
    static char path[4096];
    const char *file = __FILE__, *cut = strstr(file, "fuzz/fuzz_tokenizer.c");
    int dir = cut ? (int)(cut - file) : 0;
    snprintf(path, sizeof path, "%.*sthird_party/tokenizers/qwen3/tokenizer.json", dir, file);
    return path;
}

static void load_once(void) {
    const char *path = getenv("MR_FUZZ_TOKENIZER");
    if (!path || !*path) path = default_path();
    mr_err err = {0};
    if (mr_tokenizer_new(&tok, path, &err) != 0) {
        fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s (set MR_FUZZ_TOKENIZER)\n", path, err.msg);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) load_once();
    mr_ids ids = {0};
    mr_err err = {0};
    int rc = mr_tokenizer_encode(tok, (const char *)data, size, &ids, &err);
    if (rc != 0 && rc != MR_EINVAL) {
        fprintf(stderr, "fuzz_tokenizer: unexpected rc %d: %s\n", rc, err.msg);
        abort();
    }
    if (rc == MR_EINVAL && !strstr(err.msg, "UTF-8")) abort();   /* only bad UTF-8 may fail */
    int32_t n = mr_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < ids.n; i++)
        if (ids.v[i] < 0 || ids.v[i] >= n || !mr_tokenizer_token(tok, ids.v[i])) abort();
    mr_ids_close(&ids);
    return 0;
}
