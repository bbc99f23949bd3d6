/* fuzz_tokenizer_json.c: libFuzzer target for loading a tokenizer.json (common/tokenizer.c,
 * mr_tokenizer_new), the file a downloaded checkpoint brings; fuzz_tokenizer.c fuzzes the text
 * a loaded real tokenizer encodes.
 *
 * The input is written to tokenizer.json in a folder made once with mkdtemp (removed at exit)
 * and loaded. A refusal must fill the error with a code and a message naming the file. A
 * tokenizer that loads encodes a fixed short text (ASCII words, punctuation, digits, accents,
 * tabs and newlines, "<s>") that must encode (or fail with a message, never MR_EINVAL: the text
 * is valid UTF-8) to ids in [0, vocab size) that each have a token string, and
 * mr_tokenizer_encode_max must give exactly the first ids of that whole encode and its
 * truncated flag (its contract, tests/test_encode_max.c, here on tokenizers nobody shipped:
 * the prefix cuts rest on tokenizer.c's cut_safe analysis of the loaded rules). Must never
 * crash, leak or read out of bounds. The loader reads up to 1 GiB, so the input size is
 * libFuzzer's -max_len (scripts/fuzz.sh leaves the default; the seeds are under 4 KiB). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer.h"

static char g_dir[64], g_path[128];

static const char k_text[] =
    "the quick brown fox, don't stop: Hello world! 12345 caf\xc3\xa9 na\xc3\xafve \xe2\x96\x81"
    "x\tTab\nline <s> end. the quick brown fox jumps over the lazy dog again and again, "
    "while 3.14 and 2718 are numbers; \xc3\x9c\xc3\xa4 \xe4\xb8\xad\xe6\x96\x87 ok.";

static void cleanup(void) {
    unlink(g_path);
    rmdir(g_dir);
}

static void fail(const char *what, const mr_err *err) {
    fprintf(stderr, "fuzz_tokenizer_json: %s (%s)\n", what, err ? err->msg : "");
    abort();
}

/* The loaded tokenizer's checks on k_text (see the comment at the top). */
static void check_encode(const mr_tokenizer *t) {
    mr_ids ids = {0}, cut = {0};
    mr_err err = {0};
    int rc = mr_tokenizer_encode(t, k_text, sizeof k_text - 1, &ids, &err);
    if (rc) {
        if (rc == MR_EINVAL || !err.msg[0]) fail("valid UTF-8 refused, or no message", &err);
        mr_ids_close(&ids);
        return;
    }
    int32_t n = mr_tokenizer_vocab_size(t);
    for (size_t i = 0; i < ids.n; i++)
        if (ids.v[i] < 0 || ids.v[i] >= n || !mr_tokenizer_token(t, ids.v[i]))
            fail("an id outside the vocabulary", NULL);
    for (size_t max = 1; max <= 9; max += 4) {   /* cuts early in the text and later */
        int truncated = 0;
        cut.n = 0;
        if (mr_tokenizer_encode_max(t, k_text, sizeof k_text - 1, max, &cut, &truncated, NULL,
                                    &err))
            fail("encode_max failed where encode did not", &err);
        size_t want = ids.n < max ? ids.n : max;
        if (cut.n != want || truncated != (ids.n > max) ||
            (want && memcmp(cut.v, ids.v, want * sizeof *ids.v))) {
            fprintf(stderr, "fuzz_tokenizer_json: encode_max(%zu): %zu ids, truncated %d; whole "
                    "encode: %zu ids\n", max, cut.n, truncated, ids.n);
            abort();
        }
    }
    mr_ids_close(&cut);
    mr_ids_close(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_dir[0]) {
        strcpy(g_dir, "/tmp/mr_fuzz_tokjson_XXXXXX");
        if (!mkdtemp(g_dir)) abort();
        snprintf(g_path, sizeof g_path, "%s/tokenizer.json", g_dir);
        atexit(cleanup);
    }
    FILE *fp = fopen(g_path, "wb");
    if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp)) abort();
    mr_tokenizer *t = NULL;
    mr_err err = {0};
    if (mr_tokenizer_new(&t, g_path, &err)) {
        if (t || err.code == 0 || !strstr(err.msg, g_path))
            fail("a refusal that leaves a tokenizer or does not name the file", &err);
        return 0;
    }
    check_encode(t);
    mr_tokenizer_free(t);
    return 0;
}
