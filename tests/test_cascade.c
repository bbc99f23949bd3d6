/* test_cascade.c: the pure cascade rules of coordinator/cascade.c: keep rules, bounded
 * overrides, the cross-stage merge rule with its stable tie-break, token-layer costs, the EWMA
 * cost model, call splitting, the deadline skip decision, and the fan-out's fault rules: retry
 * budget and verdicts, jittered backoff, per-attempt timeout, outlier ejection, hedge delay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "cascade.h"
#include "subarch.h"

static void test_sort_merge_rule(void **state) {
    /* index 0 stopped at stage 0 with a huge score; it must still rank below every stage-1
     * survivor. NaN ranks last within its stage. */
    mr_cand c[] = {{0, 0, 50.0f}, {1, 1, -3.0f}, {2, 1, 2.0f}, {3, 0, 1.0f},
                   {4, 1, NAN},   {5, -1, NAN}, {6, 0, 7.0f}};
    mr_cascade_sort(c, 7);
    int want[] = {2, 1, 4, 0, 6, 3, 5};
    for (int i = 0; i < 7; i++) assert_int_equal(c[i].index, want[i]);
}

static void test_sort_ties_stable(void **state) {
    mr_cand c[] = {{5, 0, 1.0f}, {2, 0, 1.0f}, {9, 0, 1.0f}, {0, 0, 0.5f}, {1, 0, 1.0f}};
    mr_cascade_sort(c, 5);
    int want[] = {1, 2, 5, 9, 0};
    for (int i = 0; i < 5; i++) assert_int_equal(c[i].index, want[i]);
    mr_cand a = {3, 0, 2.0f}, b = {4, 0, 2.0f};
    assert_true(mr_cascade_before(&a, &b));
    assert_false(mr_cascade_before(&b, &a));
    assert_false(mr_cascade_before(&a, &a));
}

static void fill(mr_cand *c, const float *s, int n) {
    for (int i = 0; i < n; i++) c[i] = (mr_cand){i, 0, s[i]};
}

static void test_keep_rules(void **state) {
    const float s[10] = {0.1f, 0.9f, 0.5f, 0.3f, 0.7f, 0.2f, 0.8f, 0.4f, 0.6f, 0.0f};
    mr_cand c[10];
    mr_keep_rule none = {0};
    fill(c, s, 10);
    assert_int_equal(mr_cascade_select(c, 10, &none), 10);
    assert_int_equal(c[0].index, 1);
    assert_int_equal(c[9].index, 9);

    mr_keep_rule top3 = {.top_k = 3};
    fill(c, s, 10);
    assert_int_equal(mr_cascade_select(c, 10, &top3), 3);
    assert_int_equal(c[0].index, 1);
    assert_int_equal(c[1].index, 6);
    assert_int_equal(c[2].index, 4);
    assert_int_equal(mr_cascade_keep_count(s, 10, &top3), 3);

    mr_keep_rule half = {.fraction = 0.5f};
    fill(c, s, 10);
    assert_int_equal(mr_cascade_select(c, 10, &half), 5);
    mr_keep_rule third = {.fraction = 0.34f}; /* ceil(3.4) = 4 */
    assert_int_equal(mr_cascade_keep_count(s, 10, &third), 4);
    mr_keep_rule tiny = {.fraction = 0.01f}; /* at least one survives a fraction */
    assert_int_equal(mr_cascade_keep_count(s, 10, &tiny), 1);

    mr_keep_rule min = {.has_min_score = 1, .min_score = 0.55f};
    fill(c, s, 10);
    assert_int_equal(mr_cascade_select(c, 10, &min), 4); /* .9 .8 .7 .6 */
    assert_int_equal(mr_cascade_keep_count(s, 10, &min), 4);
    mr_keep_rule min_exact = {.has_min_score = 1, .min_score = 0.6f}; /* >= keeps the equal */
    assert_int_equal(mr_cascade_keep_count(s, 10, &min_exact), 4);

    /* the tightest rule wins */
    mr_keep_rule all3 = {.top_k = 6, .fraction = 0.5f, .has_min_score = 1, .min_score = 0.65f};
    fill(c, s, 10);
    assert_int_equal(mr_cascade_select(c, 10, &all3), 3);
    mr_keep_rule above_all = {.has_min_score = 1, .min_score = 5.0f};
    fill(c, s, 10);
    assert_int_equal(mr_cascade_select(c, 10, &above_all), 0);

    /* NaN scores never pass a min_score rule and sort last */
    const float sn[3] = {NAN, 1.0f, 2.0f};
    fill(c, sn, 3);
    mr_keep_rule m0 = {.has_min_score = 1, .min_score = -1e9f};
    assert_int_equal(mr_cascade_select(c, 3, &m0), 2);
    assert_int_equal(c[2].index, 0);
    /* ties at the cut: the lower index survives */
    const float st[4] = {1.0f, 2.0f, 1.0f, 1.0f};
    fill(c, st, 4);
    assert_int_equal(mr_cascade_select(c, 4, &(mr_keep_rule){.top_k = 2}), 2);
    assert_int_equal(c[0].index, 1);
    assert_int_equal(c[1].index, 0);
}

static void test_override_bounds(void **state) {
    mr_keep_rule r = {.top_k = 10, .fraction = 0.5f};
    mr_keep_bounds b = {.max_top_k = 20, .max_fraction = 0.6f};
    mr_err err = {0};
    /* tightening and loosening within bounds */
    mr_keep_override ok = {.top_k = 20, .fraction = 0.25f, .has_min_score = 1, .min_score = -2};
    assert_int_equal(mr_cascade_override(&r, &b, &ok, "overrides[0]", &err), 0);
    assert_int_equal(r.top_k, 20);
    assert_true(r.fraction == 0.25f); /* copied from the override: exact */
    assert_true(r.has_min_score && r.min_score == -2.0f);
    /* zero fields keep the profile value */
    mr_keep_override zero = {0};
    assert_int_equal(mr_cascade_override(&r, &b, &zero, "overrides[0]", &err), 0);
    assert_int_equal(r.top_k, 20);
    /* above the bounds: error naming the field, rule unchanged */
    mr_keep_rule before = r;
    mr_keep_override big = {.top_k = 21};
    assert_int_equal(mr_cascade_override(&r, &b, &big, "overrides[1]", &err), MR_ERANGE);
    assert_non_null(strstr(err.msg, "overrides[1].keep_top_k"));
    assert_non_null(strstr(err.msg, "20"));
    assert_memory_equal(&r, &before, sizeof r);
    mr_keep_override fr = {.fraction = 0.7f};
    assert_int_equal(mr_cascade_override(&r, &b, &fr, "overrides[0]", &err), MR_ERANGE);
    assert_non_null(strstr(err.msg, "keep_fraction"));
    mr_keep_override neg = {.fraction = -0.1f};
    assert_int_equal(mr_cascade_override(&r, &b, &neg, "overrides[0]", &err), MR_ERANGE);
    mr_keep_override nanf_ = {.fraction = NAN};
    assert_int_equal(mr_cascade_override(&r, &b, &nanf_, "overrides[0]", &err), MR_ERANGE);
    mr_keep_override inf = {.has_min_score = 1, .min_score = INFINITY};
    assert_int_equal(mr_cascade_override(&r, &b, &inf, "overrides[0]", &err), MR_ERANGE);
    assert_non_null(strstr(err.msg, "min_score"));
    mr_keep_override negk = {.top_k = -1};
    assert_int_equal(mr_cascade_override(&r, &b, &negk, "overrides[0]", &err), MR_ERANGE);
    assert_memory_equal(&r, &before, sizeof r);
    /* a threshold may be raised, never lowered: -1e6 would send every candidate on */
    mr_keep_override low = {.has_min_score = 1, .min_score = -1e6f};
    assert_int_equal(mr_cascade_override(&r, &b, &low, "overrides[0]", &err), MR_ERANGE);
    assert_non_null(strstr(err.msg, "overrides[0].min_score: -1e+06 is below this stage's "
                                    "threshold -2"));
    assert_memory_equal(&r, &before, sizeof r);
    mr_keep_override high = {.has_min_score = 1, .min_score = -1};
    assert_int_equal(mr_cascade_override(&r, &b, &high, "overrides[0]", &err), 0);
    assert_true(r.min_score == -1.0f);
}

/* A fraction keeps at least one candidate, however small: 1e-6 of one document is one, and a
 * fused pass gets a prune step that keeps one, never top_k 0. */
static void test_tiny_fraction(void **state) {
    mr_keep_rule tiny = {.fraction = 1e-6f};
    assert_int_equal(mr_cascade_keep_bound(&tiny, 1), 1);
    assert_int_equal(mr_cascade_keep_bound(&tiny, 1000), 1);
    assert_int_equal(mr_cascade_keep_bound(&tiny, 0), 0);
    mr_fused_prune st = {0};
    assert_int_equal(mr_cascade_fused_prune(&tiny, 4, 4, &st), 1);
    assert_int_equal(st.top_k, 1);
    float sc[3] = {0.1f, 0.3f, 0.2f};
    assert_int_equal(mr_cascade_keep_count(sc, 3, &tiny), 1);
}

static mr_subarch arch(int depth, int ratio, int n_compress, const int *layers) {
    mr_subarch a;
    mr_subarch_default(&a);
    a.depth = depth;
    a.ratio = ratio;
    a.n_compress = n_compress;
    for (int i = 0; i < n_compress; i++) a.compress_layers[i] = layers[i];
    return a;
}

static void test_token_layers(void **state) {
    /* no compression: (fixed + passage) * depth */
    mr_subarch full = arch(8, 1, 0, NULL);
    assert_true(mr_subarch_token_layers(&full, 20, 100) == 120.0 * 8);
    /* r=2 at layer 2, depth 4: layers 0,1 see 100 passage tokens, layers 2,3 see 50 */
    int l2[] = {2};
    mr_subarch half = arch(4, 2, 1, l2);
    assert_true(mr_subarch_token_layers(&half, 20, 100) == 2 * 120.0 + 2 * 70.0);
    /* two compress layers, ceil pooling: 101 -> 26 -> 7 with r=4 */
    int l13[] = {1, 3};
    mr_subarch q = arch(4, 4, 2, l13);
    assert_true(mr_subarch_token_layers(&q, 0, 101) == 101.0 + 26.0 + 26.0 + 7.0);
    /* compress layers at or beyond depth are never reached */
    int l9[] = {9};
    mr_subarch deep = arch(4, 2, 1, l9);
    assert_true(mr_subarch_token_layers(&deep, 10, 10) == 80.0);
    /* the spec's Gemma example: r=2 at layer 8, exit at 25 ~ (8 + 17/2)/42 of the full model */
    int g8[] = {8};
    mr_subarch g = arch(25, 2, 1, g8), gf = arch(42, 1, 0, NULL);
    double ratio = mr_subarch_token_layers(&g, 0, 1000) / mr_subarch_token_layers(&gf, 0, 1000);
    /* both sides are one correctly rounded division of the same rational: equal (measured 0);
     * 1e-12 only allows for a last-bit difference in how the counts are summed */
    assert_true(fabs(ratio - (8 + 17 / 2.0) / 42) < 1e-12);
}

static void test_cost_model(void **state) {
    mr_cost_model m;
    mr_cost_model_init(&m, 0, 0.5, 1.0);
    assert_true(m.ns_per_tl == MR_CASCADE_DEFAULT_NS_PER_TL);
    mr_cost_model_init(&m, 1000, 0.5, 1.0);
    /* 1e6 token-layers at 1000 ns = 1000 ms; over 4 calls 250 ms, plus 1 ms overhead. Here and
     * below the expected values are exact in double (measured differences 0): 1e-9 and 1e-6
     * only absorb the last bits of the double arithmetic */
    assert_true(fabs(mr_cost_model_estimate_ms(&m, 1e6, 1) - 1001.0) < 1e-9);
    assert_true(fabs(mr_cost_model_estimate_ms(&m, 1e6, 4) - 251.0) < 1e-9);
    assert_true(fabs(mr_cost_model_estimate_ms(&m, 1e6, 0) - 1001.0) < 1e-9);
    /* first observation: mean of the prior and the observation; then EWMA with alpha */
    mr_cost_model_observe(&m, 1e6, 3000.0, 3004.0); /* 3000 ns per token-layer */
    assert_true(fabs(m.ns_per_tl - 2000.0) < 1e-6);
    assert_true(fabs(m.overhead_ms - 2.5) < 1e-9);
    mr_cost_model_observe(&m, 1e6, 3000.0, 0); /* unknown wall time: overhead unchanged */
    assert_true(fabs(m.ns_per_tl - 2500.0) < 1e-6);
    assert_true(fabs(m.overhead_ms - 2.5) < 1e-9);
    /* garbage observations are ignored */
    mr_cost_model_observe(&m, 0, 10, 10);
    mr_cost_model_observe(&m, 1e6, NAN, 10);
    mr_cost_model_observe(&m, 1e6, -1, 10);
    assert_true(fabs(m.ns_per_tl - 2500.0) < 1e-6);
    assert_int_equal(m.n_obs, 2);
    /* converges toward a new speed */
    for (int i = 0; i < 50; i++) mr_cost_model_observe(&m, 1e6, 100.0, 0);
    assert_true(fabs(m.ns_per_tl - 100.0) < 1e-9); /* 2400 * 0.5^50 = 2.1e-12 is left */
    /* skips relax an inflated estimate back to the warm-up baseline (the first observation:
     * 2000 ns, 2.5 ms), so a burst of load does not keep a stage skipped for good */
    for (int i = 0; i < 3; i++) mr_cost_model_observe(&m, 1e6, 40000.0, 40010.0);
    double inflated = m.ns_per_tl;
    assert_true(inflated > 10000.0);
    mr_cost_model_relax(&m);
    assert_true(m.ns_per_tl < inflated && m.ns_per_tl > 2000.0);
    for (int i = 0; i < 60; i++) mr_cost_model_relax(&m);
    /* 61 halvings of a gap under 4e4 leave < 2e-14 (measured 0) */
    assert_true(fabs(m.ns_per_tl - 2000.0) < 1e-9);
    assert_true(fabs(m.overhead_ms - 2.5) < 1e-9);
}

static void test_n_calls(void **state) {
    assert_int_equal(mr_cascade_n_calls(0, 0, 4, 0, 1), 0);
    /* one call per worker when there are enough candidates */
    assert_int_equal(mr_cascade_n_calls(100, 5000, 2, 0, 1), 2);
    assert_int_equal(mr_cascade_n_calls(100, 5000, 2, 0, 8), 2);
    assert_int_equal(mr_cascade_n_calls(10, 500, 4, 0, 8), 1); /* 10 / 8 -> one call */
    assert_int_equal(mr_cascade_n_calls(3, 300, 8, 0, 1), 3);  /* never more calls than items */
    /* token cap per call forces more calls than workers */
    assert_int_equal(mr_cascade_n_calls(100, 10000, 2, 1000, 1), 10);
    assert_int_equal(mr_cascade_n_calls(5, 10000, 1, 100, 1), 5);
}

static void test_decide(void **state) {
    /* fits: run */
    assert_int_equal(mr_cascade_decide(0, 10, 100, 1.2, 1), MR_STAGE_RUN);
    assert_int_equal(mr_cascade_decide(1, 80, 100, 1.2, 0), MR_STAGE_RUN);
    assert_int_equal(mr_cascade_decide(1, 10, INFINITY, 1.2, 0), MR_STAGE_RUN);
    /* does not fit with the safety factor: skip when degraded answers are allowed */
    assert_int_equal(mr_cascade_decide(1, 90, 100, 1.2, 1), MR_STAGE_SKIP);
    assert_int_equal(mr_cascade_decide(2, 500, 100, 1.0, 1), MR_STAGE_SKIP);
    /* ... else fail */
    assert_int_equal(mr_cascade_decide(1, 90, 100, 1.2, 0), MR_STAGE_FAIL);
    /* the first stage has no ranking to fall back on */
    assert_int_equal(mr_cascade_decide(0, 200, 100, 1.0, 1), MR_STAGE_FAIL);
    /* a spent budget never runs */
    assert_int_equal(mr_cascade_decide(0, 0, 0, 1.0, 1), MR_STAGE_FAIL);
    assert_int_equal(mr_cascade_decide(1, 0, -5, 1.0, 1), MR_STAGE_SKIP);
    /* safety below 1 is treated as 1 */
    assert_int_equal(mr_cascade_decide(1, 100, 100, 0.5, 0), MR_STAGE_RUN);
}

static void test_remaining(void **state) {
    assert_true(isinf(mr_cascade_remaining_ms(INFINITY, 0, 5)));
    assert_true(mr_cascade_remaining_ms(INFINITY, 100, 30) == 70);
    assert_true(mr_cascade_remaining_ms(50, 100, 30) == 50);
    assert_true(mr_cascade_remaining_ms(500, 100, 30) == 70);
    assert_true(mr_cascade_remaining_ms(NAN, 100, 130) == -30);
    assert_true(mr_cascade_remaining_ms(-3, 0, 0) == -3);
}

static void test_sigmoid(void **state) {
    assert_true(mr_cascade_sigmoid(0) == 0.5f);
    /* 0.8807971f is the correctly rounded sigmoid(2); f32 expf may be off by an ulp or two
     * (measured 0): 1.2e-7 is two ulps at 0.88 */
    assert_true(fabsf(mr_cascade_sigmoid(2.0f) - 0.8807971f) <= 1.2e-7f);
    assert_true(mr_cascade_sigmoid(-100.0f) >= 0 && mr_cascade_sigmoid(-100.0f) < 1e-30f);
    assert_true(mr_cascade_sigmoid(100.0f) == 1.0f);
    assert_true(isnan(mr_cascade_sigmoid(NAN)));
}

static void test_retry_budget(void **state) {
    mr_retry_budget b;
    mr_retry_budget_init(&b);
    /* starts full: a burst of MR_RETRY_TOKENS_MAX retries, then refusals */
    int n = 0;
    for (int i = 0; i < 100; i++) n += mr_retry_budget_take(&b);
    assert_int_equal(n, (int)MR_RETRY_TOKENS_MAX);
    assert_int_equal(mr_retry_budget_take(&b), 0);
    /* ten original calls buy one retry (0.1 each), nine do not */
    for (int i = 0; i < 9; i++) mr_retry_budget_call(&b);
    assert_int_equal(mr_retry_budget_take(&b), 0);
    mr_retry_budget_call(&b);
    assert_int_equal(mr_retry_budget_take(&b), 1);
    assert_int_equal(mr_retry_budget_take(&b), 0);
    /* the bucket never holds more than its maximum */
    for (int i = 0; i < 10000; i++) mr_retry_budget_call(&b);
    n = 0;
    for (int i = 0; i < 100; i++) n += mr_retry_budget_take(&b);
    assert_int_equal(n, (int)MR_RETRY_TOKENS_MAX);
    /* the operator's overload run: 1000 calls each failing, every failure asking for a retry;
     * retries granted stay within the start plus a tenth of the calls, not 4 per call */
    mr_retry_budget_init(&b);
    n = 0;
    for (int i = 0; i < 1000; i++) {
        mr_retry_budget_call(&b);
        n += mr_retry_budget_take(&b);
    }
    assert_true(n <= MR_RETRY_TOKENS_MAX + 1000 * MR_RETRY_TOKENS_PER_CALL);
    assert_true(n >= 1000 * MR_RETRY_TOKENS_PER_CALL);
    /* hedges spend only the upper half: from a full bucket 5 hedges, then the rest is kept
     * for retries */
    mr_retry_budget_init(&b);
    n = 0;
    for (int i = 0; i < 100; i++) n += mr_retry_budget_take_hedge(&b);
    assert_int_equal(n, (int)(MR_RETRY_TOKENS_MAX / 2));
    n = 0;
    for (int i = 0; i < 100; i++) n += mr_retry_budget_take(&b);
    assert_int_equal(n, (int)(MR_RETRY_TOKENS_MAX / 2));
    /* time refills it: nothing before a first refill time, then MR_RETRY_TOKENS_PER_S per
     * second (1 s: 5 retries), never beyond the maximum, never backwards */
    mr_retry_budget_refill(&b, 1000);
    assert_int_equal(mr_retry_budget_take(&b), 0);
    mr_retry_budget_refill(&b, 2000);
    n = 0;
    for (int i = 0; i < 100; i++) n += mr_retry_budget_take(&b);
    assert_int_equal(n, (int)MR_RETRY_TOKENS_PER_S);
    mr_retry_budget_refill(&b, 1500);   /* an earlier clock reading adds nothing */
    assert_int_equal(mr_retry_budget_take(&b), 0);
    mr_retry_budget_refill(&b, 100000);
    n = 0;
    for (int i = 0; i < 100; i++) n += mr_retry_budget_take(&b);
    assert_int_equal(n, (int)MR_RETRY_TOKENS_MAX);
}

static void test_retry_decide(void **state) {
    mr_retry_budget b;
    mr_retry_budget_init(&b);
    /* a worker's own error is never retried; nothing is spent */
    assert_int_equal(mr_retry_decide(MR_FAIL_FATAL, 1, 3, 3, 100, 10, &b), MR_RETRY_STATUS);
    /* a pool of one replica never retries (not the same replica twice), RESOURCE_EXHAUSTED
     * least of all */
    assert_int_equal(mr_retry_decide(MR_FAIL_EXHAUSTED, 1, 0, 0, 100, 10, &b), MR_RETRY_NO_REPLICA);
    assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, 1, 0, 0, 100, 10, &b), MR_RETRY_NO_REPLICA);
    /* RESOURCE_EXHAUSTED while every other replica is full or ejected: no retry */
    assert_int_equal(mr_retry_decide(MR_FAIL_EXHAUSTED, 1, 2, 0, 100, 10, &b), MR_RETRY_POOL_FULL);
    /* ... while another one is free: retry */
    assert_int_equal(mr_retry_decide(MR_FAIL_EXHAUSTED, 1, 2, 1, 100, 10, &b), MR_RETRY_OK);
    /* other failures retry on any other replica */
    assert_int_equal(mr_retry_decide(MR_FAIL_UNAVAILABLE, 1, 1, 0, 100, 10, &b), MR_RETRY_OK);
    assert_int_equal(mr_retry_decide(MR_FAIL_TRANSIENT, 1, 1, 1, 100, 10, &b), MR_RETRY_OK);
    /* no time for another attempt */
    assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, 1, 1, 1, 5, 10, &b), MR_RETRY_DEADLINE);
    assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, 1, 1, 1, 0, 0, &b), MR_RETRY_DEADLINE);
    assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, 1, 1, 1, NAN, 1, &b), MR_RETRY_DEADLINE);
    assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, 1, 1, 1, INFINITY, 10, &b), MR_RETRY_OK);
    /* four retries granted above: 6 tokens left, then the budget refuses; refusals for other
     * reasons above took none */
    for (int i = 0; i < 6; i++)
        assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, 1, 1, 1, 100, 10, &b), MR_RETRY_OK);
    assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, 1, 1, 1, 100, 10, &b), MR_RETRY_BUDGET);
    /* a call gets at most MR_RETRY_MAX_ATTEMPTS attempts, whatever the budget */
    mr_retry_budget_init(&b);
    assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, MR_RETRY_MAX_ATTEMPTS - 1, 2, 2, 100, 10, &b),
                     MR_RETRY_OK);
    assert_int_equal(mr_retry_decide(MR_FAIL_TIMEOUT, MR_RETRY_MAX_ATTEMPTS, 2, 2, 100, 10, &b),
                     MR_RETRY_ATTEMPTS);
    assert_string_equal(mr_retry_reason(MR_RETRY_BUDGET), "budget");
    assert_string_equal(mr_retry_reason(MR_RETRY_POOL_FULL), "pool_full");
    assert_string_equal(mr_retry_reason(MR_RETRY_ATTEMPTS), "attempts");
    assert_string_equal(mr_retry_reason(MR_RETRY_N), "status");
}

static void test_backoff(void **state) {
    /* full jitter: u01 scales the doubled base; here u01 = 0.5, so half of 5, 10, 20 ... ms */
    assert_true(mr_retry_backoff_ms(1, 1000, 0.5) == 2.5);
    assert_true(mr_retry_backoff_ms(2, 1000, 0.5) == 5.0);
    assert_true(mr_retry_backoff_ms(3, 1000, 0.5) == 10.0);
    /* capped at MR_RETRY_BACKOFF_MAX_MS, and by what the budget can spare */
    assert_true(mr_retry_backoff_ms(40, 1e9, 0.999) <= MR_RETRY_BACKOFF_MAX_MS);
    assert_true(mr_retry_backoff_ms(40, 1e9, 0.5) == MR_RETRY_BACKOFF_MAX_MS / 2);
    assert_true(mr_retry_backoff_ms(3, 4, 0.5) == 2.0);
    assert_true(mr_retry_backoff_ms(3, 0, 0.5) == 0);
    assert_true(mr_retry_backoff_ms(3, -5, 0.5) == 0);
    assert_true(mr_retry_backoff_ms(3, NAN, 0.5) == 0);
    assert_true(mr_retry_backoff_ms(1, 1000, 0) == 0);
}

static void test_attempt_timeout(void **state) {
    /* no budget: 3x the estimate, at least the floor */
    assert_true(mr_attempt_timeout_ms(10, INFINITY, 0, 1) == MR_ATTEMPT_FLOOR_MS);
    assert_true(mr_attempt_timeout_ms(200, INFINITY, 0, 1) == 600);
    /* the operator's case: a 150 ms tier, cheap calls of ~10 ms, two replicas: an attempt gets
     * half of the budget, so a hung replica leaves 75 ms to the other one (was all 150) */
    assert_true(mr_attempt_timeout_ms(10, 150, 0, 1) == 75);
    /* one replica: nothing to fail over to, the attempt may use all of it (a timeout would
     * only lose the answer), without a budget no timeout */
    assert_true(mr_attempt_timeout_ms(10, 150, 0, 0) == 150);
    assert_true(mr_attempt_timeout_ms(200, 5000, 0, 0) == 5000);
    assert_true(isinf(mr_attempt_timeout_ms(10, INFINITY, 0, 0)));
    /* what the later stages need is kept back */
    assert_true(mr_attempt_timeout_ms(10, 150, 50, 1) == 50);
    assert_true(mr_attempt_timeout_ms(10, 150, 50, 0) == 100);
    /* ... unless it would leave less than this call's estimate */
    assert_true(mr_attempt_timeout_ms(60, 150, 100, 0) == 150);
    /* half would not fit the estimate: no halving (a retry would not fit either) */
    assert_true(mr_attempt_timeout_ms(100, 150, 0, 1) == 150);
    /* a spent budget gives 0 (the caller does not start the attempt) */
    assert_true(mr_attempt_timeout_ms(10, -3, 0, 1) == 0);
    assert_true(mr_attempt_timeout_ms(NAN, INFINITY, 0, 1) == MR_ATTEMPT_FLOOR_MS);
}

static void test_hedge_delay(void **state) {
    /* a short-budget tier: 2x the estimate, at least the minimum */
    assert_true(mr_hedge_delay_ms(20, 150, 150) == 40);
    assert_true(mr_hedge_delay_ms(1, 150, 150) == MR_HEDGE_MIN_DELAY_MS);
    /* no hedge without a budget or with a long one */
    assert_true(mr_hedge_delay_ms(20, 0, 150) < 0);
    assert_true(mr_hedge_delay_ms(20, MR_HEDGE_MAX_BUDGET_MS + 1, 150) < 0);
    assert_true(mr_hedge_delay_ms(20, MR_HEDGE_MAX_BUDGET_MS, 150) == 40);
    /* ... nor when the hedge could not finish: 40 + 20 > 50 */
    assert_true(mr_hedge_delay_ms(20, 150, 50) < 0);
    assert_true(mr_hedge_delay_ms(20, 150, 60) == 40);
    assert_true(mr_hedge_delay_ms(NAN, 150, 150) < 0);
}

static void test_outlier(void **state) {
    mr_outlier o = {0};
    /* MR_EJECT_AFTER consecutive failures eject */
    for (int i = 1; i < MR_EJECT_AFTER; i++) assert_true(mr_outlier_failure(&o, 0, 4, 0) == 0);
    assert_true(mr_outlier_failure(&o, 0, 4, 0) == MR_EJECT_BASE_MS);
    /* an answer in between resets the count */
    assert_true(mr_outlier_failure(&o, 0, 4, 0) == 0);
    mr_outlier_success(&o);
    for (int i = 1; i < MR_EJECT_AFTER; i++) assert_true(mr_outlier_failure(&o, 0, 4, 0) == 0);
    mr_outlier_success(&o);
    assert_true(mr_outlier_failure(&o, 0, 4, 0) == 0);
    /* one severe failure ejects at once; further ejections double up to the maximum */
    mr_outlier_success(&o);
    assert_true(mr_outlier_failure(&o, 1, 4, 0) == MR_EJECT_BASE_MS);
    assert_true(mr_outlier_failure(&o, 1, 4, 0) == 2 * MR_EJECT_BASE_MS);
    assert_true(mr_outlier_failure(&o, 1, 4, 0) == 4 * MR_EJECT_BASE_MS);
    for (int i = 0; i < 40; i++) assert_true(mr_outlier_failure(&o, 1, 4, 0) <= MR_EJECT_MAX_MS);
    assert_true(mr_outlier_failure(&o, 1, 4, 0) == MR_EJECT_MAX_MS);
    mr_outlier_success(&o);
    assert_true(mr_outlier_failure(&o, 1, 4, 0) == MR_EJECT_BASE_MS);
    /* at most half of the pool (at least one) ejected at a time; a pool of one never */
    mr_outlier_success(&o);
    assert_true(mr_outlier_failure(&o, 1, 2, 1) == 0);
    assert_true(mr_outlier_failure(&o, 1, 4, 2) == 0);
    assert_true(mr_outlier_failure(&o, 1, 5, 2) == 0);
    assert_true(mr_outlier_failure(&o, 1, 1, 0) == 0);
    assert_true(mr_outlier_failure(&o, 1, 4, 1) == MR_EJECT_BASE_MS);
    /* refused ejections leave the count at the threshold: the next failure ejects */
    mr_outlier_success(&o);
    for (int i = 0; i < MR_EJECT_AFTER; i++) assert_true(mr_outlier_failure(&o, 0, 2, 1) == 0);
    assert_true(mr_outlier_failure(&o, 0, 2, 0) == MR_EJECT_BASE_MS);
}

/* Stages that continue: the prune step of a fused call never drops a row the keep rule keeps
 * over all candidates, and the fused estimate pays one round trip. */
static void test_fused_prune(void **state) {
    mr_fused_prune st = {0};
    mr_keep_rule none = {0}, top = {.top_k = 3}, frac = {.fraction = 0.25f},
                 min = {.has_min_score = 1, .min_score = -1.5f},
                 both = {.top_k = 3, .has_min_score = 1, .min_score = -1.5f};
    assert_int_equal(mr_cascade_fused_prune(&none, 16, 16, &st), 0);   /* keeps all: no step */
    assert_int_equal(mr_cascade_fused_prune(&top, 16, 16, &st), 1);
    assert_int_equal(st.top_k, 3);
    /* a call of 2 rows of 16: top 3 keeps them all, nothing to prune */
    assert_int_equal(mr_cascade_fused_prune(&top, 16, 2, &st), 0);
    assert_int_equal(mr_cascade_fused_rows(&top, 16, 2), 2);
    /* fraction over all 16 candidates (4), not over the call's 8 rows (2) */
    assert_int_equal(mr_cascade_fused_prune(&frac, 16, 8, &st), 1);
    assert_int_equal(st.top_k, 4);
    assert_int_equal(mr_cascade_fused_rows(&frac, 16, 8), 4);
    assert_int_equal(mr_cascade_fused_prune(&min, 16, 8, &st), 1);
    assert_true(st.top_k == 0 && st.has_min_score && st.min_score == -1.5f);
    assert_int_equal(mr_cascade_fused_rows(&min, 16, 8), 8);
    /* both: the count goes to the worker, min_score is the coordinator's selection */
    assert_int_equal(mr_cascade_fused_prune(&both, 16, 8, &st), 1);
    assert_int_equal(st.top_k, 3);
    /* superset: over every split of 16 scores into interleaved calls, the rule's survivors
     * are among the rows each call's step keeps (the worker's rule: best top_k of the call,
     * ties by lower row; rows in request order) */
    float sc[16];
    for (int i = 0; i < 16; i++) sc[i] = (float)((i * 7) % 5) - 2.0f;   /* ties included */
    const mr_keep_rule *rules[] = {&top, &frac, &min, &both};
    for (int ri = 0; ri < 4; ri++)
        for (int calls = 1; calls <= 5; calls++) {
            mr_cand c[16];
            for (int i = 0; i < 16; i++) c[i] = (mr_cand){i, 0, sc[i]};
            int kept = mr_cascade_select(c, 16, rules[ri]);
            for (int k = 0; k < calls; k++) {
                int rows[16], n = 0;
                for (int i = k; i < 16; i += calls) rows[n++] = i;
                int has = mr_cascade_fused_prune(rules[ri], 16, n, &st);
                for (int j = 0; j < kept; j++) {
                    int d = c[j].index, row = -1;
                    for (int i = 0; i < n; i++)
                        if (rows[i] == d) row = i;
                    if (row < 0 || !has) continue;
                    if (st.top_k == 0) {
                        assert_true(sc[d] >= st.min_score);
                        continue;
                    }
                    int better = 0;   /* rows of the call ranked before d by the worker */
                    for (int i = 0; i < n; i++)
                        better += sc[rows[i]] > sc[d] || (sc[rows[i]] == sc[d] && i < row);
                    assert_true(better < st.top_k);
                }
            }
        }
    mr_cost_model a, b;
    mr_cost_model_init(&a, 1000, 0.2, 2);
    mr_cost_model_init(&b, 1000, 0.2, 3);
    /* 3 ms of round trip (the larger), (1e6 + 1e6) token-layers x 1000 ns / 2 calls */
    assert_true(fabs(mr_cost_model_fused_ms(&a, &b, 1e6, 1e6, 2) - 1003.0) < 1e-9);
    assert_true(fabs(mr_cost_model_fused_ms(&a, &b, 1e6, 0, 0) - 1003.0) < 1e-9);
    /* auto: idle, the wall estimates decide (fusing saves a round trip though it computes
     * more); busy, the token-layers do; ties fuse */
    assert_true(mr_cascade_fuse_auto(12.0, 10.0, 80, 84, 0) == 1);
    assert_true(mr_cascade_fuse_auto(12.0, 10.0, 80, 84, 1) == 0);
    assert_true(mr_cascade_fuse_auto(9.0, 10.0, 160, 128, 0) == 0);
    assert_true(mr_cascade_fuse_auto(9.0, 10.0, 160, 128, 1) == 1);
    assert_true(mr_cascade_fuse_auto(10.0, 10.0, 80, 80, 0) == 1);
    assert_true(mr_cascade_fuse_auto(10.0, 10.0, 80, 80, 1) == 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sort_merge_rule), cmocka_unit_test(test_sort_ties_stable),
        cmocka_unit_test(test_keep_rules),      cmocka_unit_test(test_override_bounds),
        cmocka_unit_test(test_tiny_fraction),
        cmocka_unit_test(test_token_layers),    cmocka_unit_test(test_cost_model),
        cmocka_unit_test(test_n_calls),         cmocka_unit_test(test_decide),
        cmocka_unit_test(test_remaining),       cmocka_unit_test(test_sigmoid),
        cmocka_unit_test(test_retry_budget),    cmocka_unit_test(test_retry_decide),
        cmocka_unit_test(test_backoff),         cmocka_unit_test(test_attempt_timeout),
        cmocka_unit_test(test_outlier),         cmocka_unit_test(test_hedge_delay),
        cmocka_unit_test(test_fused_prune),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
