/* test_encode_max.c: mr_tokenizer_encode_max, the bounded-work encode behind passage and query
 * truncation (common/input.c), must give exactly the ids and truncated flag of a whole encode
 * cut to the budget, for every bundled tokenizer family: llama2 and mrank-tiny (SentencePiece BPE
 * without a pre-tokenizer, cut by the merge rule), gemma3 (SentencePiece BPE, 6k added tokens)
 * and qwen3 (byte-level BPE, split by the analysed regex). Texts are real documents from the IR
 * collections in shared/data/ir, shifted so that cuts fall everywhere, plus texts without spaces,
 * with space runs, tabs, newlines and non-ASCII words. Bounded work is asserted as counted bytes
 * handed to the encoder, never as time; the times of a 4 MB and a 4 KB passage are printed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "input.h"
#include "tokenizer.h"

static const char *const TOKS[] = {
    MR_SOURCE_DIR "/third_party/tokenizers/llama2/tokenizer.json",
    MR_SOURCE_DIR "/third_party/tokenizers/qwen3/tokenizer.json",
    MR_SOURCE_DIR "/third_party/tokenizers/gemma3/tokenizer.json",
    MR_SOURCE_DIR "/models/mrank-tiny/tokenizer.json",
};
#define N_TOKS (sizeof TOKS / sizeof *TOKS)
/* 48 KB of documents: a few hundred cuts per family while each whole encode stays well under a
 * second on one core */
#define DOC_BYTES (48u << 10)

static mr_tokenizer *g_tok[N_TOKS];
static char *g_doc;   /* DOC_BYTES of corpus text, titles and texts joined by spaces */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Titles and texts of shared/data/ir/<name>/corpus.jsonl appended to *s up to DOC_BYTES. */
static void add_corpus(const char *name, char *s, size_t *n) {
    char path[512], line[1 << 16];
    snprintf(path, sizeof path, MR_SHARED_DIR "/data/ir/%s/corpus.jsonl", name);
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("missing %s", path);
    while (*n < DOC_BYTES && fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        const char *keys[] = {"title", "text"};
        for (int k = 0; o && k < 2; k++) {
            cJSON *v = cJSON_GetObjectItemCaseSensitive(o, keys[k]);
            size_t l = cJSON_IsString(v) ? strlen(v->valuestring) : 0;
            if (l == 0 || *n + l + 1 >= DOC_BYTES) continue;
            memcpy(s + *n, v->valuestring, l);
            *n += l;
            s[(*n)++] = ' ';
        }
        cJSON_Delete(o);
    }
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    for (size_t i = 0; i < N_TOKS; i++) {
        mr_err err = {0};
        if (mr_tokenizer_new(&g_tok[i], TOKS[i], &err)) {
            fprintf(stderr, "%s (run scripts/fetch-testdata.sh)\n", err.msg);
            return -1;
        }
    }
    g_doc = calloc(1, DOC_BYTES + 1);
    size_t n = 0;
    add_corpus("medline", g_doc, &n);   /* long abstracts */
    add_corpus("cacm", g_doc, &n);      /* short titles, punctuation, digits */
    return g_doc && n > DOC_BYTES / 2 ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    for (size_t i = 0; i < N_TOKS; i++) mr_tokenizer_free(g_tok[i]);
    free(g_doc);
    return 0;
}

/* For every budget: encode_max(text) == encode(text) cut to the budget, flag included. Returns
 * the bytes encoded at the largest budget that cut (0 when none did). */
static size_t check_text(size_t k, const char *text, size_t len) {
    static const size_t budgets[] = {0, 1, 2, 3, 5, 8, 13, 21, 34, 48, 61, 64, 100, 128, 200, 384, 509, 512};
    mr_ids full = {0}, got = {0};
    mr_err err = {0};
    size_t cut_bytes = 0;
    assert_int_equal(mr_tokenizer_encode(g_tok[k], text, len, &full, &err), 0);
    for (size_t b = 0; b < sizeof budgets / sizeof *budgets + 2; b++) {
        /* the last two budgets: exactly the whole count (fits, not flagged) and one less */
        size_t max = b < sizeof budgets / sizeof *budgets ? budgets[b] : full.n - (b & 1);
        int tr = 0;
        size_t enc = 0;
        got.n = 0;
        assert_int_equal(mr_tokenizer_encode_max(g_tok[k], text, len, max, &got, &tr, &enc, &err), 0);
        size_t want = full.n < max ? full.n : max;
        if (got.n != want || tr != (full.n > max) ||
            memcmp(got.v, full.v, want * sizeof *got.v) != 0)
            fail_msg("%s: %zu bytes, budget %zu: %zu ids (flag %d), want %zu (flag %d)", TOKS[k],
                     len, max, got.n, tr, want, full.n > max);
        if (enc < len) cut_bytes = enc;
    }
    mr_ids_close(&full);
    mr_ids_close(&got);
    return cut_bytes;
}

/* Real text shifted by many offsets: the cuts land after words, digits and punctuation. */
static void test_corpus(void **state) {
    (void)state;
    for (size_t k = 0; k < N_TOKS; k++) {
        size_t cuts = 0;
        for (size_t off = 0; off < 4000; off += 397) {
            size_t len = 8192 + off * 7;
            if (check_text(k, g_doc + off, len)) cuts++;
        }
        /* every family must really cut, or this test proves nothing about cuts */
        if (cuts == 0) fail_msg("%s: no prefix cut was taken", TOKS[k]);
    }
}

/* Text without spaces (encoded whole), space runs, tabs, newlines, non-ASCII words. */
static void test_odd_text(void **state) {
    (void)state;
    size_t n = 12000;
    char *s = malloc(n + 1);
    for (size_t k = 0; k < N_TOKS; k++) {
        for (size_t i = 0; i < n; i++) s[i] = g_doc[i] == ' ' ? '_' : g_doc[i];   /* no spaces */
        check_text(k, s, n);
        size_t m = 0;   /* words between runs of spaces, tabs and newlines */
        static const char *const seps[] = {" ", "  ", "   ", "\t", "\n", " \n ", ". ", "é ", "数据 ", "\xe2\x96\x81 "};
        for (size_t i = 0; m + 40 < n; i++) {
            m += (size_t)snprintf(s + m, n - m, "w%zu%s", i * 7919 % 1000, seps[i % 10]);
        }
        check_text(k, s, m);
        /* a long run without spaces after a few words: the first cut point lies far out */
        m = (size_t)snprintf(s, n, "a few words first ");
        memset(s + m, 'x', 6000);
        m += 6000;
        m += (size_t)snprintf(s + m, n - m, " then words again and again and again");
        check_text(k, s, m);
    }
    free(s);
}

/* A 4 MB passage costs what its budget needs: counted bytes equal those of its first 64 KB,
 * whatever follows. The before/after times are printed for the record, not asserted. */
static void test_bounded_work(void **state) {
    (void)state;
    size_t big = 4u << 20, small = 4u << 10;
    char *s = malloc(big + 1);
    for (size_t i = 0; i < big; i += DOC_BYTES / 2)
        memcpy(s + i, g_doc, big - i < DOC_BYTES / 2 ? big - i : DOC_BYTES / 2);
    s[big] = 0;
    for (size_t k = 0; k < N_TOKS; k++) {
        mr_ids ids = {0};
        mr_err err = {0};
        size_t enc_big = 0, enc_64k = 0;
        int tr = 0;
        assert_int_equal(mr_tokenizer_encode_max(g_tok[k], s, big, 64, &ids, &tr, &enc_big, &err), 0);
        ids.n = 0;
        assert_int_equal(mr_tokenizer_encode_max(g_tok[k], s, 64u << 10, 64, &ids, &tr, &enc_64k, &err), 0);
        assert_int_equal(enc_big, enc_64k);
        assert_true(enc_big < (64u << 10));
        double t0 = now();
        ids.n = 0;
        s[small] = 0;   /* mr_input_passage reads a C string */
        assert_int_equal(mr_input_passage(g_tok[k], s, 100, 36, &ids, &tr, &err), 0);
        double t1 = now();
        s[small] = g_doc[small % (DOC_BYTES / 2)];
        ids.n = 0;
        assert_int_equal(mr_input_passage(g_tok[k], s, 100, 36, &ids, &tr, &err), 0);
        double t2 = now();
        ids.n = 0;
        assert_int_equal(mr_tokenizer_encode(g_tok[k], s, 256u << 10, &ids, &err), 0);
        double t3 = now();
        printf("%s: budget 64: 4 MB encodes %zu bytes; passage 4 KB %.2f ms, 4 MB %.2f ms "
               "(x%.1f); whole encode of 256 KB, the old cost of a quarter MB: %.0f ms\n",
               TOKS[k], enc_big, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t2 - t1) / (t1 - t0), (t3 - t2) * 1e3);
        mr_ids_close(&ids);
    }
    free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus),
        cmocka_unit_test(test_odd_text),
        cmocka_unit_test(test_bounded_work),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
