/* test_eval.c: the loaders of eval/ (`mrank eval`, `mrank lexicon score`) on small inline
 * files: TREC runs (a document repeated for a query is refused; a query's lines need not be
 * contiguous; documents ordered by score, then rank, then file order; 6 fields, an int rank, a
 * finite score), qrels (a pair judged twice is refused; BEIR 3-column or TREC 4-column files,
 * the grade an int; every gain of a query with more than 4096 judgements), texts (an _id
 * repeated is refused, whitespace-only lines skipped), bounded lines (a line over 64 KiB is
 * refused where it is, a long line under it is one line) and the nDCG these give. */
#define _GNU_SOURCE /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval_internal.h"
#include "metrics.h"
#include "qrels.h"
#include "texts.h"
#include "trec_run.h"

static char g_dir[64], g_path[128];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/mr_eval_test_XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    snprintf(g_path, sizeof g_path, "%s/f", g_dir);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Writes the n bytes of text to g_path and returns g_path. */
static const char *file_of_n(const char *text, size_t n) {
    FILE *f = fopen(g_path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return g_path;
}

static const char *file_of(const char *text) { return file_of_n(text, strlen(text)); }

/* The loader's message for text must be "g_path:" followed by want (a prefix of the rest). */
#define EXPECT_REFUSED(load, obj, text, want)                                                      \
    do {                                                                                           \
        mr_err e_ = {0};                                                                           \
        int rc_ = load(&(obj), file_of(text), &e_);                                                \
        size_t pl_ = strlen(g_path);                                                               \
        if (rc_ != MR_EFORMAT || strncmp(e_.msg, g_path, pl_) || e_.msg[pl_] != ':' ||             \
            strncmp(e_.msg + pl_ + 1, want, strlen(want)))                                         \
            fail_msg("rc %d, '%s'; expected %s:%s", rc_, e_.msg, g_path, want);                    \
    } while (0)

/* The documents of query k of r, space-separated, into buf. */
static const char *docs_of(const mr_trec_run *r, int k, char *buf, size_t cap) {
    buf[0] = 0;
    for (int i = 0; i < r->count[k]; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, "%s%s", i ? " " : "", r->doc[r->first[k] + i]);
    }
    return buf;
}

/* A: nDCG above 1 came from scoring a repeated document twice */
static void test_run_repeated_document(void **state) {
    (void)state;
    mr_trec_run r;
    EXPECT_REFUSED(mr_trec_run_load, r,
                   "q1 Q0 d1 1 9.0 bm25\nq1 Q0 d3 2 8.0 bm25\nq2 Q0 d1 1 9 b\nq1 Q0 d1 3 7.0 bm25\n",
                   "4: document d1 repeated for query q1 (first at line 1)");
    assert_null(r.qid);
    /* the same document under two queries is no repeat */
    mr_err err = {0};
    assert_int_equal(mr_trec_run_load(&r, file_of("q1 Q0 d1 1 9 b\nq2 Q0 d1 1 9 b\n"), &err), 0);
    assert_int_equal(r.n_q, 2);
    mr_trec_run_close(&r);
}

/* B: a query whose lines are apart is one query, in the order of its first line */
static void test_run_query_lines_apart(void **state) {
    (void)state;
    mr_trec_run r;
    mr_err err = {0};
    char buf[256];
    assert_int_equal(mr_trec_run_load(&r, file_of("q2 Q0 d1 1 9.0 bm25\nq1 Q0 d2 1 9.0 bm25\n"
                                                  "q2 Q0 d3 2 7.0 bm25\nq1 Q0 d3 2 8.0 bm25\n"
                                                  "\n   \t\nq2 Q0 d4 3 6 bm25\n"),
                                      &err), 0);
    assert_int_equal(r.n_q, 2);
    assert_int_equal(r.n_doc, 5);
    assert_string_equal(r.qid[0], "q2");
    assert_string_equal(docs_of(&r, 0, buf, sizeof buf), "d1 d3 d4");
    assert_string_equal(r.qid[1], "q1");
    assert_string_equal(docs_of(&r, 1, buf, sizeof buf), "d2 d3");
    mr_trec_run_close(&r);
    mr_trec_run_close(&r); /* idempotent */
}

/* E: score decreasing (not the rank column), ties by rank, then file order; extreme ranks and
 * tab separators */
static void test_run_order(void **state) {
    (void)state;
    mr_trec_run r;
    mr_err err = {0};
    char buf[256];
    assert_int_equal(mr_trec_run_load(&r, file_of("q1 Q0 d3 1 7.0 bm25\n"
                                                  "q1 Q0 d1 2 9.0 bm25\n"
                                                  "q1\tQ0\td5\t2147483647\t1e300\tx\r\n"
                                                  "q1 Q0 d6 -2147483648 -1e300 x\n"
                                                  "q1 Q0 t2 5 3.5 x\nq1 Q0 t1 4 3.5 x\n"
                                                  "q1 Q0 u2 6 2 x\nq1 Q0 u1 6 2 x\n"),
                                      &err), 0);
    assert_int_equal(r.n_q, 1);
    assert_string_equal(docs_of(&r, 0, buf, sizeof buf), "d5 d1 d3 t1 t2 u2 u1 d6");
    mr_trec_run_close(&r);
    /* equal scores everywhere: the rank column's order (the runs tests/fusion_e2e.sh writes) */
    assert_int_equal(mr_trec_run_load(&r, file_of("q Q0 c 3 0 x\nq Q0 a 1 0 x\nq Q0 b 2 0 x\n"),
                                      &err), 0);
    assert_string_equal(docs_of(&r, 0, buf, sizeof buf), "a b c");
    mr_trec_run_close(&r);
}

static void test_run_bad_lines(void **state) {
    (void)state;
    mr_trec_run r;
    EXPECT_REFUSED(mr_trec_run_load, r, "q Q0 d 1 1 x\nq Q0 e 2 1\n",
                   "2: not a TREC run line (qid Q0 docid rank score tag): 5 fields");
    EXPECT_REFUSED(mr_trec_run_load, r, "q Q0 d 1 1 x y\n",
                   "1: not a TREC run line (qid Q0 docid rank score tag): more than 6 fields");
    EXPECT_REFUSED(mr_trec_run_load, r, "q Q0 d 1.5 1 x\n", "1: rank '1.5' is not an integer");
    EXPECT_REFUSED(mr_trec_run_load, r, "q Q0 d 2147483648 1 x\n",
                   "1: rank '2147483648' is not an integer");
    EXPECT_REFUSED(mr_trec_run_load, r, "q Q0 d 1 nan x\n", "1: score 'nan' is not a finite");
    EXPECT_REFUSED(mr_trec_run_load, r, "q Q0 d 1 -inf x\n", "1: score '-inf' is not a finite");
    EXPECT_REFUSED(mr_trec_run_load, r, "q Q0 d 1 1e999 x\n", "1: score '1e999' is not a finite");
    EXPECT_REFUSED(mr_trec_run_load, r, "q Q0 d 1 3x x\n", "1: score '3x' is not a finite");
}

/* J: a line over MR_EVAL_LINE_MAX is refused where it is; one over the old 1024 bytes is one
 * line, not two */
static void test_long_lines(void **state) {
    (void)state;
    size_t big = MR_EVAL_LINE_MAX + 10;
    char *t = malloc(big + 64);
    assert_non_null(t);
    /* a 2000-byte docid: 2 lines, 1 query */
    int l = sprintf(t, "q Q0 a 1 2 x\nq Q0 ");
    memset(t + l, 'd', 2000);
    sprintf(t + l + 2000, " 2 1 x\n");
    mr_trec_run r;
    mr_err err = {0};
    assert_int_equal(mr_trec_run_load(&r, file_of(t), &err), 0);
    assert_int_equal(r.n_doc, 2);
    assert_int_equal(strlen(r.doc[1]), 2000);
    mr_trec_run_close(&r);
    /* exactly MR_EVAL_LINE_MAX bytes: read; one more: refused naming its line */
    for (int over = 0; over <= 1; over++) {
        l = sprintf(t, "q Q0 a 1 2 x\nq Q0 ");
        size_t pad = MR_EVAL_LINE_MAX - 11 + (size_t)over; /* "q Q0 " pad " 2 1 x" */
        memset(t + l, 'd', pad);
        sprintf(t + l + pad, " 2 1 x\nq Q0 z 3 0 x\n");
        if (!over) {
            assert_int_equal(mr_trec_run_load(&r, file_of(t), &err), 0);
            assert_int_equal(r.n_doc, 3);
            mr_trec_run_close(&r);
        } else {
            EXPECT_REFUSED(mr_trec_run_load, r, t, "2: line longer than 65536 bytes");
        }
    }
    mr_qrels qr;
    l = sprintf(t, "query-id\tcorpus-id\tscore\nq\t");
    memset(t + l, 'd', big);
    sprintf(t + l + big, "\t1\n");
    EXPECT_REFUSED(mr_qrels_load, qr, t, "2: line longer than 65536 bytes");
    free(t);
    static const char nul[] = "query-id\tcorpus-id\tscore\nq\td\t1\nq\td2\0x\t1\n";
    mr_err e = {0};
    assert_int_equal(mr_qrels_load(&qr, file_of_n(nul, sizeof nul - 1), &e), MR_EFORMAT);
    assert_non_null(strstr(e.msg, ":3: NUL byte"));
}

/* C: a pair judged twice; perfect order must score 1, so the pair is refused, not counted twice */
static void test_qrels_repeated_pair(void **state) {
    (void)state;
    mr_qrels q;
    EXPECT_REFUSED(mr_qrels_load, q,
                   "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq1\td1\t1\n",
                   "4: query q1, document d1 judged again (first at line 2)");
    assert_null(q.q);
    /* the same document for two queries is fine, and a perfect order scores 1 */
    mr_err err = {0};
    assert_int_equal(mr_qrels_load(&q, file_of("query-id\tcorpus-id\tscore\nq1\td1\t1\n"
                                               "q2\td1\t2\nq1\td2\t0\n"), &err), 0);
    int ideal[4], gains[2] = {mr_qrels_get(&q, "q1", "d1"), mr_qrels_get(&q, "q1", "d2")};
    int n = mr_qrels_gains(&q, "q1", ideal, q.max_gains);
    assert_int_equal(n, 1);
    assert_float_equal(mr_ndcg_at(gains, 2, ideal, n, 10), 1.0, 1e-12);
    mr_qrels_close(&q);
}

/* D: BEIR 3-column files (tabs or spaces), TREC 4-column ones without a header, nothing else */
static void test_qrels_formats(void **state) {
    (void)state;
    mr_qrels q;
    mr_err err = {0};
    assert_int_equal(mr_qrels_load(&q, file_of("query-id\tcorpus-id\tscore\n1\t1410\t1\n"
                                               "1 1572  2\r\n\n"), &err), 0);
    assert_int_equal(q.n, 2);
    assert_int_equal(mr_qrels_get(&q, "1", "1572"), 2);
    mr_qrels_close(&q);
    assert_int_equal(mr_qrels_load(&q, file_of("1\t1410\t1\n"), &err), 0); /* no header */
    assert_int_equal(mr_qrels_get(&q, "1", "1410"), 1);
    mr_qrels_close(&q);
    /* TREC: qid iteration docid grade (was read as doc "0", grade 10) */
    assert_int_equal(mr_qrels_load(&q, file_of("1\t0\t10\t1\n1 0 20 0\n"), &err), 0);
    assert_int_equal(q.n, 2);
    assert_int_equal(mr_qrels_get(&q, "1", "10"), 1);
    assert_int_equal(mr_qrels_get(&q, "1", "0"), 0);
    assert_int_equal(q.max_gains, 1);
    mr_qrels_close(&q);
    EXPECT_REFUSED(mr_qrels_load, q, "query-id\tcorpus-id\tscore\n1\t0\t10\t1\n",
                   "2: 4 fields; this file's lines have 3 (query-id corpus-id score); 4-column");
    EXPECT_REFUSED(mr_qrels_load, q, "1 0 10 1\n1 11 1\n",
                   "2: 3 fields; this file's lines have 4 (TREC");
    EXPECT_REFUSED(mr_qrels_load, q, "1 11 1\n1 0 10 1\n", "2: 4 fields; this file's lines have 3");
    EXPECT_REFUSED(mr_qrels_load, q, "1 11\n", "1: 2 fields; need 3 (query-id corpus-id score)");
    EXPECT_REFUSED(mr_qrels_load, q, "query-id corpus-id score\n1 2 3 4 5\n",
                   "2: more than 4 fields;");
    EXPECT_REFUSED(mr_qrels_load, q, "query-id\tcorpus-id\tscore\n1\t2\t1.5\n",
                   "2: score '1.5' is not an integer");
    EXPECT_REFUSED(mr_qrels_load, q, "q\td\t99999999999\n", "1: score '99999999999' is not an");
    EXPECT_REFUSED(mr_qrels_load, q, "q\td\t\n", "1: 2 fields");
    EXPECT_REFUSED(mr_qrels_load, q, "q 0 d x\n", "1: grade 'x' is not an integer");
}

/* H: more than 4096 judgements for one query: every gain, sorted, whatever the file order */
static void test_qrels_many_judgements(void **state) {
    (void)state;
    enum { N = 5000 };
    char *t = malloc((size_t)N * 32 + 64), *p = t;
    assert_non_null(t);
    p += sprintf(p, "query-id\tcorpus-id\tscore\n");
    for (int i = 0; i < N; i++) p += sprintf(p, "q\td%04d\t%d\n", i, i == N - 1 ? 3 : 1);
    mr_qrels q;
    mr_err err = {0};
    assert_int_equal(mr_qrels_load(&q, file_of(t), &err), 0);
    free(t);
    assert_int_equal(q.max_gains, N);
    int *ideal = malloc(sizeof(int) * N);
    assert_non_null(ideal);
    assert_int_equal(mr_qrels_gains(&q, "q", ideal, q.max_gains), N);
    assert_int_equal(ideal[0], 3);
    assert_int_equal(ideal[1], 1);
    assert_int_equal(mr_qrels_gains(&q, "q", ideal, 4096), MR_ERANGE);
    assert_int_equal(mr_qrels_gains(&q, "other", ideal, 0), 0);
    /* the grade-3 document first scores 1 */
    int gains[2] = {3, 1};
    assert_float_equal(mr_ndcg_at(gains, 2, ideal, N, 2), 1.0, 1e-12);
    free(ideal);
    mr_qrels_close(&q);
}

/* G, K: an _id given twice is refused; lines of whitespace are skipped like empty ones */
static void test_texts(void **state) {
    (void)state;
    mr_texts t;
    EXPECT_REFUSED(mr_texts_load, t,
                   "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\", \"text\": \"y\"}\n"
                   "{\"_id\": \"a\", \"text\": \"z\"}\n",
                   "3: _id a repeated (first at line 1)");
    assert_null(t.id);
    mr_err err = {0};
    assert_int_equal(mr_texts_load(&t, file_of("{\"_id\": \"a\", \"text\": \"x\"}\n   \n\t\r\n\n"
                                               "{\"_id\": \"b\", \"title\": \"T\", \"text\": "
                                               "\"y\"}\n  \n"),
                                   &err), 0);
    assert_int_equal(t.n, 2);
    assert_string_equal(mr_texts_get(&t, "b"), "T y");
    mr_texts_close(&t);
    EXPECT_REFUSED(mr_texts_load, t, "{\"_id\": \"a\", \"text\": \"x\"}\n  x \n",
                   "2: need \"_id\" and \"text\" strings");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_run_repeated_document, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_query_lines_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_bad_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qrels_repeated_pair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qrels_formats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qrels_many_judgements, setup, teardown),
        cmocka_unit_test_setup_teardown(test_texts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
