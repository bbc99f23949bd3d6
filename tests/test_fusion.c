/* test_fusion.c: score fusion (coordinator/fusion.c: per-request normalisation, ranks, the
 * weighted sum and reciprocal-rank fusion, the deepest-stage cut, the request order as a term)
 * and the config of the lexical stage and of a profile's "fusion" (coordinator/coord_config.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bm25.h"
#include "coord_config.h"
#include "fusion.h"

/* float32 results of exact small-number arithmetic: 1e-6 covers the float rounding */
#define TOL 1e-6

static void test_normalize_minmax(void **state) {
    float x[] = {2, 4, NAN, 3};
    mr_fusion_normalize(x, 4, MR_FUSION_MINMAX);
    assert_float_equal(x[0], 0, TOL);
    assert_float_equal(x[1], 1, TOL);
    assert_float_equal(x[2], 0, TOL);      /* NaN: the lowest value */
    assert_float_equal(x[3], 0.5, TOL);
    float same[] = {7, 7, 7};
    mr_fusion_normalize(same, 3, MR_FUSION_MINMAX);
    for (int i = 0; i < 3; i++) assert_float_equal(same[i], 0, TOL);
}

static void test_normalize_zscore(void **state) {
    float x[] = {1, 3, NAN};               /* mean 2, population stddev 1 */
    mr_fusion_normalize(x, 3, MR_FUSION_ZSCORE);
    assert_float_equal(x[0], -1, TOL);
    assert_float_equal(x[1], 1, TOL);
    assert_float_equal(x[2], -1, TOL);
    float nan2[] = {NAN, NAN};
    mr_fusion_normalize(nan2, 2, MR_FUSION_ZSCORE);
    assert_float_equal(nan2[0], 0, TOL);
}

static void test_ranks(void **state) {
    float x[] = {0.5f, 2, NAN, 2, -1};
    int r[5];
    mr_err err = {0};
    assert_int_equal(mr_fusion_ranks(x, 5, r, &err), 0);
    int want[] = {3, 1, 5, 2, 4};          /* ties: index ascending; NaN last */
    for (int i = 0; i < 5; i++) assert_int_equal(r[i], want[i]);
}

static void test_weighted(void **state) {
    /* stage 0 (lexical) orders 0 > 1 > 2, stage 1 orders 2 > 1 > 0 */
    float s0[] = {10, 5, 0}, s1[] = {-2, 0, 2};
    const float *rows[] = {s0, s1};
    mr_fusion f = {.method = MR_FUSION_WEIGHTED, .norm = MR_FUSION_MINMAX, .n = 2,
                   .pos = {0, 1}, .weight = {0.75, 0.25}};
    float out[3];
    mr_err err = {0};
    assert_int_equal(mr_fusion_apply(&f, rows, 1, 3, NULL, out, &err), 0);
    assert_float_equal(out[0], 0.75, TOL);
    assert_float_equal(out[1], 0.5, TOL);
    assert_float_equal(out[2], 0.25, TOL);
    /* the deeper stage did not run: only stage 0 counts */
    assert_int_equal(mr_fusion_apply(&f, rows, 0, 3, NULL, out, &err), 0);
    assert_float_equal(out[0], 0.75, TOL);
    assert_float_equal(out[2], 0, TOL);
    /* a row that is NULL (position not recorded) drops out too */
    const float *rows2[] = {NULL, s1};
    assert_int_equal(mr_fusion_apply(&f, rows2, 1, 3, NULL, out, &err), 0);
    assert_float_equal(out[0], 0, TOL);
    assert_float_equal(out[2], 0.25, TOL);
}

static void test_rrf(void **state) {
    float s0[] = {10, 5, 0}, s1[] = {-2, 0, 2};
    const float *rows[] = {s0, s1};
    mr_fusion f = {.method = MR_FUSION_RRF, .k = 60, .n = 2, .pos = {0, 1}, .weight = {1, 2}};
    float out[3];
    mr_err err = {0};
    assert_int_equal(mr_fusion_apply(&f, rows, 1, 3, NULL, out, &err), 0);
    assert_float_equal(out[0], 1.0 / 61 + 2.0 / 63, TOL);
    assert_float_equal(out[1], 1.0 / 62 + 2.0 / 62, TOL);
    assert_float_equal(out[2], 1.0 / 63 + 2.0 / 61, TOL);
    assert_true(out[2] > out[1] && out[1] > out[0]);   /* the heavier stage decides */
}

/* The request order as a term: the group's members sit at request positions 4, 0 and 9. */
static void test_input_order(void **state) {
    float s0[] = {10, 5, 0};               /* the stage orders member 0 > 1 > 2 */
    const float *rows[] = {s0};
    int input[] = {4, 0, 9};               /* the request orders member 1 > 0 > 2 */
    mr_fusion f = {.method = MR_FUSION_WEIGHTED, .norm = MR_FUSION_MINMAX, .n = 1,
                   .pos = {0}, .weight = {0.25}, .input_weight = 0.75};
    float out[3];
    mr_err err = {0};
    assert_int_equal(mr_fusion_apply(&f, rows, 0, 3, input, out, &err), 0);
    /* minmax of -position: -4 -> (9 - 4) / 9, 0 -> 1, -9 -> 0 */
    assert_float_equal(out[0], 0.25 + 0.75 * 5.0 / 9, TOL);
    assert_float_equal(out[1], 0.25 * 0.5 + 0.75, TOL);
    assert_float_equal(out[2], 0, TOL);
    f.input_weight = 0;                    /* weight 0: the order is not read */
    assert_int_equal(mr_fusion_apply(&f, rows, 0, 3, NULL, out, &err), 0);
    assert_float_equal(out[1], 0.125, TOL);
    mr_fusion r = {.method = MR_FUSION_RRF, .k = 60, .n = 1, .pos = {0}, .weight = {1},
                   .input_weight = 2};
    assert_int_equal(mr_fusion_apply(&r, rows, 0, 3, input, out, &err), 0);
    assert_float_equal(out[0], 1.0 / 61 + 2.0 / 62, TOL);
    assert_float_equal(out[1], 1.0 / 62 + 2.0 / 61, TOL);
    assert_float_equal(out[2], 1.0 / 63 + 2.0 / 63, TOL);
    assert_true(out[1] > out[0]);          /* the heavier request order decides */
}

static const char k_cfg[] =
    "{\"pools\":[{\"name\":\"p\",\"addresses\":[\"h:1\"]}],"
    "\"stages\":[{\"name\":\"bm25\",\"kind\":\"lexical\",\"k1\":1.2,\"b\":0.75,\"stem\":\"english\"},"
    "{\"name\":\"s\",\"pool\":\"p\",\"depth\":2}],"
    "\"profiles\":[{\"name\":\"x\",\"stages\":[{\"stage\":\"bm25\",\"keep_top_k\":30},"
    "{\"stage\":\"s\"}],\"fusion\":{\"method\":\"weighted\",\"normalize\":\"zscore\","
    "\"weights\":{\"s\":0.3,\"bm25\":0.7},\"input_order\":0.25}},"
    "{\"name\":\"r\",\"stages\":[{\"stage\":\"bm25\"},{\"stage\":\"s\"}],"
    "\"fusion\":{\"method\":\"rrf\",\"k\":10}}],"
    "\"tiers\":[{\"name\":\"t\",\"profile\":\"x\"}]}";

static void test_config_good(void **state) {
    mr_coord_config *c = calloc(1, sizeof *c);
    mr_err err = {0};
    int rc = mr_coord_config_parse(c, "f.json", k_cfg, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(c->stages[0].kind, MR_CC_LEXICAL);
    assert_int_equal(c->stages[0].pool, -1);
    assert_float_equal(c->stages[0].k1, 1.2, TOL);
    assert_float_equal(c->stages[0].b, 0.75, TOL);
    assert_int_equal(c->stages[0].stem, MR_BM25_STEM_ENGLISH);
    assert_int_equal(c->stages[1].kind, MR_CC_NEURAL);
    const mr_fusion *f = &c->profiles[0].fusion;
    assert_int_equal(f->method, MR_FUSION_WEIGHTED);
    assert_int_equal(f->norm, MR_FUSION_ZSCORE);
    assert_int_equal(f->n, 2);
    assert_int_equal(f->pos[0], 1);        /* "s" is position 1 of the profile */
    assert_float_equal(f->weight[0], 0.3, TOL);
    assert_int_equal(f->pos[1], 0);
    assert_float_equal(f->input_weight, 0.25, TOL);
    const mr_fusion *r = &c->profiles[1].fusion;
    assert_int_equal(r->method, MR_FUSION_RRF);
    assert_float_equal(r->k, 10, TOL);
    assert_int_equal(r->n, 2);             /* no weights: every stage, weight 1 */
    assert_float_equal(r->weight[1], 1, TOL);
    assert_float_equal(r->input_weight, 0, TOL);   /* not fused unless named */
    free(c);
}

static const struct {
    const char *from, *to, *path;
} k_bad[] = {
    {"\"kind\":\"lexical\"", "\"kind\":\"sparse\"", "stages[0].kind: 'sparse' is not"},
    {"\"kind\":\"lexical\"", "\"kind\":\"lexical\",\"pool\":\"p\"", "stages[0].pool: a lexical"},
    {"\"kind\":\"lexical\"", "\"kind\":\"lexical\",\"depth\":2", "stages[0].depth: a lexical"},
    {"\"pool\":\"p\",\"depth\":2", "\"pool\":\"p\",\"depth\":2,\"k1\":1", "stages[1].k1: only"},
    {"\"b\":0.75", "\"b\":1.5", "stages[0].b"},
    {"\"k1\":1.2", "\"k1\":-1", "stages[0].k1"},
    {"\"b\":0.75", "\"b\":0.75,\"lexicon\":\"/nonexistent/lex\"", "stages[0].lexicon"},
    {"\"stem\":\"english\"", "\"stem\":\"porter\"", "stages[0].stem: stem 'porter'"},
    {"\"stem\":\"english\"", "\"stem\":3", "stages[0].stem"},
    {"\"pool\":\"p\",\"depth\":2", "\"pool\":\"p\",\"depth\":2,\"stem\":\"none\"", "stages[1].stem: only"},
    {"\"method\":\"weighted\"", "\"method\":\"sum\"", "profiles[0].fusion.method"},
    {"\"normalize\":\"zscore\"", "\"normalize\":\"l2\"", "profiles[0].fusion.normalize"},
    {"\"s\":0.3", "\"deep\":0.3", "profiles[0].fusion.weights.deep: not a stage"},
    {"\"s\":0.3", "\"s\":-0.3", "profiles[0].fusion.weights.s: expected a weight"},
    {",\"weights\":{\"s\":0.3,\"bm25\":0.7}", "", "profiles[0].fusion.weights: missing"},
    {"\"k\":10", "\"k\":0", "profiles[1].fusion.k"},
    {"\"input_order\":0.25", "\"input_order\":-1", "profiles[0].fusion.input_order: -1"},
    {"\"input_order\":0.25", "\"input_order\":\"yes\"", "fusion.input_order: expected a"},
    {"\"method\":\"rrf\"", "\"method\":\"rrf\",\"normalize\":\"minmax\"", "rrf fuses ranks"},
    {"\"normalize\":\"zscore\"", "\"normalize\":\"zscore\",\"k\":5", "fusion.k: only rrf"},
    {"\"method\":\"rrf\"", "\"method\":\"rrf\",\"alpha\":1", "fusion.alpha: unknown key"},
    /* all weights 0: every fused score 0, the group in request order */
    {"\"weights\":{\"s\":0.3,\"bm25\":0.7},\"input_order\":0.25",
     "\"weights\":{\"s\":0,\"bm25\":0},\"input_order\":0",
     "profiles[0].fusion.weights: every weight is 0"},
};

static void test_config_bad(void **state) {
    mr_coord_config *c = calloc(1, sizeof *c);
    int failures = 0;
    for (size_t i = 0; i < sizeof k_bad / sizeof *k_bad; i++) {
        const char *at = strstr(k_cfg, k_bad[i].from);
        assert_non_null(at);
        char json[4096];
        snprintf(json, sizeof json, "%.*s%s%s", (int)(at - k_cfg), k_cfg, k_bad[i].to,
                 at + strlen(k_bad[i].from));
        mr_err err = {0};
        int rc = mr_coord_config_parse(c, "f.json", json, &err);
        if (rc >= 0 || !strstr(err.msg, k_bad[i].path)) {
            fprintf(stderr, "case %zu: rc %d, '%s', expected '%s'\n", i, rc, err.msg,
                    k_bad[i].path);
            failures++;
        }
    }
    free(c);
    assert_int_equal(failures, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normalize_minmax), cmocka_unit_test(test_normalize_zscore),
        cmocka_unit_test(test_ranks),            cmocka_unit_test(test_weighted),
        cmocka_unit_test(test_input_order),
        cmocka_unit_test(test_rrf),              cmocka_unit_test(test_config_good),
        cmocka_unit_test(test_config_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
