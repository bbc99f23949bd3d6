/* test_bm25.c: the lexical stage's scorer (common/bm25.c: Unicode tokenization, lowercasing,
 * stopwords, BM25 with the candidates' or a lexicon's statistics) and the lexicon file
 * (common/lexicon.c: parse errors naming the line and field, build/load round trip). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bm25.h"

typedef struct toks {
    char buf[512];
    int n;
} toks;

static void collect(const char *t, size_t len, void *user) {
    toks *k = user;
    size_t at = strlen(k->buf);
    snprintf(k->buf + at, sizeof k->buf - at, "%s%.*s", k->n++ ? "|" : "", (int)len, t);
}

static void test_tokenize(void **state) {
    toks k = {"", 0};
    const char *s = "What is the Capital of FRANCE? Paris-2024, Ünïcode ÉTÉ straße 東京 x\xff" "y";
    long n = mr_bm25_tokenize(s, strlen(s), NULL, collect, &k);
    /* stopwords (what, is, the, of) dropped; punctuation and the invalid byte separate */
    assert_string_equal(k.buf, "capital|france|paris|2024|ünïcode|été|straße|東京|x|y");
    assert_int_equal(n, 10);
    toks l = {"", 0};
    char longw[200];
    memset(longw, 'a', sizeof longw - 1);
    longw[sizeof longw - 1] = 0;
    mr_bm25_tokenize(longw, strlen(longw), NULL, collect, &l);
    assert_int_equal(strlen(l.buf), MR_BM25_MAX_TERM);   /* cut at the term limit */
}

/* Snowball English stemming after the stopwords: inflections meet ("runs", "running" ->
 * "run"; "cities", "city" -> "citi"), words it leaves alone stay, and the tokens are those of
 * the unstemmed tokenizer otherwise (same count, same order). */
static void test_stem(void **state) {
    mr_bm25_stemmer *st;
    mr_err err = {0};
    assert_int_equal(mr_bm25_stemmer_new(&st, MR_BM25_STEM_NONE, &err), 0);
    assert_null(st);
    assert_int_equal(mr_bm25_stemmer_new(&st, MR_BM25_STEM_ENGLISH, &err), 0);
    assert_non_null(st);
    const char *s = "The runs of running cities; a city of Paris, 2024 été";
    toks k = {"", 0}, u = {"", 0};
    assert_int_equal(mr_bm25_tokenize(s, strlen(s), st, collect, &k), 7);
    assert_string_equal(k.buf, "run|run|citi|citi|pari|2024|été");
    assert_int_equal(mr_bm25_tokenize(s, strlen(s), NULL, collect, &u), 7);
    assert_string_equal(u.buf, "runs|running|cities|city|paris|2024|été");
    mr_bm25_stemmer_free(st);
    mr_bm25_stem e;
    assert_int_equal(mr_bm25_stem_parse("english", &e, &err), 0);
    assert_int_equal(e, MR_BM25_STEM_ENGLISH);
    assert_int_equal(mr_bm25_stem_parse("porter2", &e, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "none or english"));
    /* scoring: a stemmed query matches an inflected document that the unstemmed one misses */
    const char *docs[] = {"running in cities", "walking alone"};
    float sc[2];
    mr_bm25_params p = {0.9, 0.4, MR_BM25_STEM_ENGLISH};
    assert_int_equal(mr_bm25_score(NULL, &p, "city runs", docs, 2, sc, &err), 0);
    assert_true(sc[0] > 0 && sc[1] == 0);
    p.stem = MR_BM25_STEM_NONE;
    assert_int_equal(mr_bm25_score(NULL, &p, "city runs", docs, 2, sc, &err), 0);
    assert_true(sc[0] == 0 && sc[1] == 0);
}

static void test_score_candidates(void **state) {
    const char *docs[] = {"Paris is the capital of France.", "Berlin is the capital of Germany.",
                          "France France wine"};
    mr_bm25_params p = {0.9, 0.4, MR_BM25_STEM_NONE};
    float s[3];
    mr_err err = {0};
    assert_int_equal(mr_bm25_score(NULL, &p, "capital of France", docs, 3, s, &err), 0);
    /* by hand: N 3; lengths 3, 3, 3 (avgdl 3): norm = k1; capital df 2, france df 2 */
    double idf2 = log(1 + (3 - 2 + 0.5) / (2 + 0.5));
    double w1 = 1 * 1.9 / (1 + 0.9), w2 = 2 * 1.9 / (2 + 0.9);
    assert_float_equal(s[0], 2 * idf2 * w1, 1e-5);   /* float32 result of a double sum */
    assert_float_equal(s[1], idf2 * w1, 1e-5);
    assert_float_equal(s[2], idf2 * w2, 1e-5);
    assert_true(s[0] > s[2] && s[2] > s[1]);
}

static void test_lexicon_parse(void **state) {
    static const char good[] = "mrank-lexicon 1\ndocs 10\navgdl 4.5\nterms 3\n"
                               "2\tcapital\n9\tfrance\n1\tparis\n";
    mr_lexicon lx;
    mr_err err = {0};
    assert_int_equal(mr_lexicon_parse(&lx, "g.lex", good, strlen(good), &err), 0);
    assert_int_equal(lx.n_docs, 10);
    assert_int_equal(mr_lexicon_df(&lx, "france", 6), 9);
    assert_int_equal(mr_lexicon_df(&lx, "paris", 5), 1);
    assert_int_equal(mr_lexicon_df(&lx, "pari", 4), 0);
    assert_int_equal(mr_lexicon_df(&lx, "zzz", 3), 0);
    const char *docs[] = {"capital paris", "france"};
    float s[2];
    mr_bm25_params p = {0.9, 0.4, MR_BM25_STEM_NONE};
    assert_int_equal(mr_bm25_score(&lx, &p, "paris", docs, 2, s, &err), 0);
    double norm = 0.9 * (1 - 0.4 + 0.4 * 2 / 4.5);
    assert_float_equal(s[0], log(1 + 9.5 / 1.5) * 1.9 / (1 + norm), 1e-5);
    assert_float_equal(s[1], 0, 1e-9);
    assert_int_equal(lx.stem, MR_BM25_STEM_NONE); /* no stem line: an older file, unstemmed */
    p.stem = MR_BM25_STEM_ENGLISH;                /* another stemming than the lexicon's */
    assert_int_equal(mr_bm25_score(&lx, &p, "paris", docs, 2, s, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "stemmed 'none'"));
    mr_lexicon_free(&lx);
    static const char stemmed[] = "mrank-lexicon 1\nstem english\ndocs 10\navgdl 4.5\nterms 1\n"
                                  "2\tpari\n";
    assert_int_equal(mr_lexicon_parse(&lx, "s.lex", stemmed, strlen(stemmed), &err), 0);
    assert_int_equal(lx.stem, MR_BM25_STEM_ENGLISH);
    assert_int_equal(mr_bm25_score(&lx, &p, "Paris", docs, 2, s, &err), 0);
    assert_true(s[0] > 0 && s[1] == 0);
    mr_lexicon_free(&lx);
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"lexicon\n", "line 1: not a lexicon"},
        {"mrank-lexicon 1\ndocs x\n", "line 2: docs: 'x'"},
        {"mrank-lexicon 1\ndocs 0\n", "line 2: docs"},
        {"mrank-lexicon 1\ndocs 5\navgdl -1\n", "line 3: avgdl"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 99999999\n1\ta\n", "line 4: terms"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 2\n1\ta\n", "line 6: 2 terms announced"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 1\n6\ta\n", "line 5: expected 'DF<TAB>TERM'"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 1\n0\ta\n", "line 5: expected"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 1\n1 a\n", "line 5: expected"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 1\n1\t\n", "line 5: term: empty"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 2\n1\tb\n1\ta\n", "line 6: term: not after"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 1\n1\ta\nextra\n", "line 6: text after"},
        {"mrank-lexicon 1\ndocs 5\navgdl 1\nterms 1\n99999999999999999999\ta\n", "line 5"},
        {"mrank-lexicon 1\nstem porter\ndocs 5\n", "line 2: stem"},
        {"mrank-lexicon 1\nstem english\ndocs 0\n", "line 3: docs"},
        {"mrank-lexicon 1\nstem english\ndocs 5\navgdl 1\nterms 9999999\n1\ta\n", "line 5: terms"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        mr_err e = {0};
        int rc = mr_lexicon_parse(&lx, "b.lex", bad[i].text, strlen(bad[i].text), &e);
        if (rc >= 0 || strncmp(e.msg, "b.lex: ", 7) || !strstr(e.msg, bad[i].want))
            fail_msg("case %zu: rc %d, '%s', expected '%s'", i, rc, e.msg, bad[i].want);
        assert_null(lx.terms);
    }
}

static void test_build_roundtrip(void **state) {
    char dir[] = "/tmp/mr_lex_XXXXXX", corpus[64], out[64];
    assert_non_null(mkdtemp(dir));
    snprintf(corpus, sizeof corpus, "%s/c.jsonl", dir);
    snprintf(out, sizeof out, "%s/c.lex", dir);
    FILE *f = fopen(corpus, "w");
    assert_non_null(f);
    fputs("{\"_id\":\"1\",\"title\":\"Paris\",\"text\":\"Paris is in France.\"}\n"
          "\n{\"_id\":\"2\",\"text\":\"Berlin, Germany\"}\n", f);
    fclose(f);
    long docs = 0, terms = 0;
    mr_err err = {0};
    assert_int_equal(mr_lexicon_build(corpus, out, MR_BM25_STEM_NONE, &docs, &terms, &err), 0);
    assert_int_equal(docs, 2);
    assert_int_equal(terms, 4);            /* paris, france, berlin, germany */
    mr_lexicon lx;
    assert_int_equal(mr_lexicon_load(&lx, out, &err), 0);
    assert_int_equal(lx.stem, MR_BM25_STEM_NONE);
    assert_int_equal(mr_lexicon_df(&lx, "paris", 5), 1);   /* twice in one document */
    assert_float_equal(lx.avgdl, (3 + 2) / 2.0, 1e-12);
    mr_lexicon_free(&lx);
    assert_int_equal(mr_lexicon_build(corpus, out, MR_BM25_STEM_ENGLISH, &docs, &terms, &err), 0);
    assert_int_equal(mr_lexicon_load(&lx, out, &err), 0);
    assert_int_equal(lx.stem, MR_BM25_STEM_ENGLISH); /* recorded in the file */
    assert_int_equal(mr_lexicon_df(&lx, "pari", 4), 1);
    assert_int_equal(mr_lexicon_df(&lx, "paris", 5), 0);
    mr_lexicon_free(&lx);
    f = fopen(corpus, "w");
    fputs("{\"_id\":\"1\",\"text\":\"a b\"}\n{\"_id\":\"2\"}\n", f);
    fclose(f);
    assert_int_equal(mr_lexicon_build(corpus, out, MR_BM25_STEM_NONE, &docs, &terms, &err),
                     MR_EFORMAT);
    assert_non_null(strstr(err.msg, "line 2"));
    assert_int_equal(mr_lexicon_load(&lx, "/nonexistent/x.lex", &err), MR_ENOTFOUND);
    unlink(corpus);
    unlink(out);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokenize),
        cmocka_unit_test(test_stem),       cmocka_unit_test(test_score_candidates),
        cmocka_unit_test(test_lexicon_parse),  cmocka_unit_test(test_build_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
