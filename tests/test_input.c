/* test_input.c: model input construction and truncation (spec section 3) with the real
 * Mistral tokenizer: segment contents, the 3/4 query cap, the passage budget, a whole suffix. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "input.h"

static mr_tokenizer *g_tok;

static int setup(void **state) {
    mr_err err = {0};
    const char *path = MR_SOURCE_DIR "/third_party/tokenizers/llama2/tokenizer.json";
    if (mr_tokenizer_new(&g_tok, path, &err)) {
        fprintf(stderr, "%s (run scripts/fetch-testdata.sh)\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    mr_tokenizer_free(g_tok);
    return 0;
}

static void encode(const char *text, mr_ids *out) {
    mr_err err = {0};
    out->n = 0;
    assert_int_equal(mr_tokenizer_encode(g_tok, text, strlen(text), out, &err), 0);
}

static void test_segments(void **state) {
    mr_ids q = {0}, p = {0}, s = {0}, want = {0};
    mr_err err = {0};
    int tr = 0;
    assert_int_equal(mr_input_query(g_tok, 1, "what is a cat", 512, &q, &tr, &err), 0);
    assert_int_equal(q.v[0], 1);
    encode("A: what is a cat", &want);
    assert_memory_equal(q.v + 1, want.v, want.n * sizeof(int32_t));
    encode("\n", &want);
    assert_int_equal(q.n, 1 + 6 + want.n); /* "▁A", ":", "▁what", "▁is", "▁a", "▁cat" */
    assert_int_equal(q.v[1], 330);        /* "▁A" in Mistral's vocabulary */
    assert_int_equal(mr_input_passage(g_tok, "A cat is an animal.", 512, q.n, &p, &tr, &err), 0);
    encode("B: A cat is an animal.", &want);
    assert_int_equal(p.n, want.n);
    assert_int_equal(tr, 0);
    assert_int_equal(mr_input_suffix(g_tok, MR_DEFAULT_PROMPT, &s, &err), 0);
    mr_ids nl = {0}, pr = {0};
    encode("\n", &nl);
    encode(MR_DEFAULT_PROMPT, &pr);
    assert_int_equal(s.n, nl.n + pr.n);
    assert_memory_equal(s.v + nl.n, pr.v, pr.n * sizeof(int32_t));
    mr_ids_close(&q), mr_ids_close(&p), mr_ids_close(&s), mr_ids_close(&want);
    mr_ids_close(&nl), mr_ids_close(&pr);
}

static void test_truncation(void **state) {
    mr_ids q = {0}, p = {0}, nl = {0};
    mr_err err = {0};
    int tr = 0, max_len = 64;
    char longq[4000], longp[4000];
    strcpy(longq, "");
    strcpy(longp, "");
    for (int i = 0; i < 300; i++) strcat(longq, "cat "), strcat(longp, "dog ");
    encode("\n", &nl);
    assert_int_equal(mr_input_query(g_tok, 1, longq, max_len, &q, &tr, &err), 0);
    assert_int_equal(tr, 1);
    assert_int_equal(q.n, 1 + max_len * 3 / 4 + nl.n);
    /* the separator after the query is kept whole */
    assert_memory_equal(q.v + q.n - nl.n, nl.v, nl.n * sizeof(int32_t));
    tr = 0;
    assert_int_equal(mr_input_passage(g_tok, longp, max_len, q.n, &p, &tr, &err), 0);
    assert_int_equal(tr, 1);
    assert_int_equal(q.n + p.n, max_len);
    /* a short query leaves the passage the rest of the budget */
    assert_int_equal(mr_input_query(g_tok, 1, "cat", max_len, &q, &tr, &err), 0);
    assert_int_equal(mr_input_passage(g_tok, longp, max_len, q.n, &p, &tr, &err), 0);
    assert_int_equal(q.n + p.n, max_len);
    assert_int_equal(mr_input_query(g_tok, 1, "cat", 4, &q, &tr, &err), MR_EINVAL);
    mr_ids_close(&q), mr_ids_close(&p), mr_ids_close(&nl);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_truncation),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
