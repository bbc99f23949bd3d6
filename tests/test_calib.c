/* test_calib.c: score calibration (coordinator/calib.c, calib_fit.c): the Platt fit recovers
 * known parameters, refuses data it cannot calibrate; calibration.json is matched to a
 * config's stages by sub-architecture (the shipped models/mrank-tiny/calibration.json covers
 * both stages of deploy/local.json) and applied as sigmoid(a * raw + b); the reporting rule
 * keeps scores non-increasing down a ranking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "coord_internal.h"
#include "prng.h"
#include "textfile.h"

static double sigmoid(double z) { return 1 / (1 + exp(-z)); }

/* Labels drawn from sigmoid(2 raw - 1): the fit finds a ~ 2, b ~ -1. */
static void test_fit_recovers(void **state) {
    (void)state;
    enum { N = 20000 };
    static float raw[N];
    static int label[N];
    uint64_t s = 42;
    for (int i = 0; i < N; i++) {
        raw[i] = (float)(mr_prng_unit(&s) * 12 - 6);
        label[i] = mr_prng_unit(&s) < sigmoid(2.0 * raw[i] - 1);
    }
    double a, b, l0, l1;
    mr_err err = {0};
    assert_int_equal(mr_calib_fit(raw, label, N, &a, &b, &l0, &l1, &err), 0);
    /* 0.15: about 5 standard errors of a and b at 20000 samples over this range */
    assert_true(fabs(a - 2) < 0.15);
    assert_true(fabs(b + 1) < 0.15);
    assert_true(l1 < l0);   /* the identity a = 1, b = 0 is not the truth here */
}

static void test_fit_refuses(void **state) {
    (void)state;
    float raw[4] = {1, 2, 3, 4};
    int same[4] = {1, 1, 1, 1}, anti[4] = {1, 1, 0, 0};
    double a, b, l0, l1;
    mr_err err = {0};
    assert_int_equal(mr_calib_fit(raw, same, 4, &a, &b, &l0, &l1, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "both labels"));
    assert_int_equal(mr_calib_fit(raw, anti, 4, &a, &b, &l0, &l1, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "not positive"));
    float bad[4] = {1, NAN, 3, 4};
    int ok[4] = {0, 1, 0, 1};
    assert_int_equal(mr_calib_fit(bad, ok, 4, &a, &b, &l0, &l1, &err), MR_EINVAL);
}

static void test_shipped_file(void **state) {
    (void)state;
    mr_coord_config *cfg = calloc(1, sizeof *cfg);
    mr_err err = {0};
    assert_int_equal(mr_coord_config_load(cfg, MR_SOURCE_DIR "/deploy/local.json", &err), 0);
    char *txt = NULL;
    const char *path = MR_SOURCE_DIR "/models/mrank-tiny/calibration.json";
    assert_int_equal(mr__read_text(path, 1 << 20, &txt, NULL, &err), 0);
    struct mr__calib *k = NULL;
    assert_int_equal(mr__calib_parse(&k, cfg, path, txt, &err), 0);
    cJSON *root = cJSON_Parse(txt);
    const cJSON *subs = cJSON_GetObjectItemCaseSensitive(root, "subarchs");
    for (int s = 0; s < cfg->n_stages; s++) {
        if (cfg->stages[s].kind == MR_CC_LEXICAL) continue;   /* BM25: no head to calibrate */
        char key[512];
        mr_calib_stage_key(cfg, s, key, sizeof key);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(subs, key);
        assert_non_null(e);   /* every neural stage of the shipped config is calibrated */
        double a = cJSON_GetObjectItemCaseSensitive(e, "a")->valuedouble;
        double b = cJSON_GetObjectItemCaseSensitive(e, "b")->valuedouble;
        for (float raw = -8; raw <= 8; raw += 2)
            assert_float_equal(mr__calib_score(k, s, raw), sigmoid(a * raw + b), 1e-6);
    }
    /* no calibration: the head's logit through a sigmoid; unscored: 0 */
    assert_float_equal(mr__calib_score(NULL, 0, 1.5f), sigmoid(1.5), 1e-6);
    assert_float_equal(mr__calib_score(k, 0, NAN), 0, 0);
    cJSON_Delete(root);
    free(k);
    /* a slope <= 0 would reverse a stage's ranking: refused, naming the file */
    const char *bad = "{\"subarchs\": {\"x\": {\"a\": -1, \"b\": 0}}}";
    assert_int_equal(mr__calib_parse(&k, cfg, "bad.json", bad, &err), MR_EFORMAT);
    assert_non_null(strstr(err.msg, "bad.json"));
    assert_null(k);
    assert_int_equal(mr__calib_parse(&k, cfg, "bad.json", "[]", &err), MR_EFORMAT);
    free(txt);
    free(cfg);
}

/* Down a cascade ranking (two deep survivors, then shallow documents whose calibrated scores
 * are higher): reported scores never increase, and a stage's own order keeps its scores. */
static void test_report_rule(void **state) {
    (void)state;
    float cal[6] = {0.30f, 0.10f, 0.90f, 0.05f, 0.02f, 0.01f}, above = INFINITY, rep[6];
    for (int i = 0; i < 6; i++) above = rep[i] = mr__calib_report(cal[i], above);
    float want[6] = {0.30f, 0.10f, 0.10f, 0.05f, 0.02f, 0.01f};
    for (int i = 0; i < 6; i++) assert_float_equal(rep[i], want[i], 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_recovers),
        cmocka_unit_test(test_fit_refuses),
        cmocka_unit_test(test_shipped_file),
        cmocka_unit_test(test_report_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
