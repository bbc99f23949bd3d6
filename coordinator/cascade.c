/* cascade.c: keep rules, the cross-stage merge rule, the stage cost model, call splitting, the
 * deadline decision and the fault rules (retry budget, backoff, attempt timeout, ejection) of
 * the cascade coordinator (see cascade.h). Pure functions over plain
 * arrays: no gRPC, no locks, no clocks; the coordinator feeds them measured times. */
#include "cascade.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int mr_cascade_override(mr_keep_rule *rule, const mr_keep_bounds *b, const mr_keep_override *ov,
                        const char *what, mr_err *err) {
    mr_keep_rule r = *rule;
    if (ov->top_k < 0)
        return mr_err_set(err, MR_ERANGE, "%s.keep_top_k: %d is negative", what, ov->top_k);
    if (ov->top_k > 0) {
        if (ov->top_k > b->max_top_k)
            return mr_err_set(err, MR_ERANGE,
                              "%s.keep_top_k: %d is above this stage's bound %d", what,
                              ov->top_k, b->max_top_k);
        r.top_k = ov->top_k;
    }
    if (!isfinite(ov->fraction) || ov->fraction < 0 || ov->fraction > 1)
        return mr_err_set(err, MR_ERANGE, "%s.keep_fraction: %g is not in [0, 1]", what,
                          (double)ov->fraction);
    if (ov->fraction > 0) {
        if (ov->fraction > b->max_fraction)
            return mr_err_set(err, MR_ERANGE,
                              "%s.keep_fraction: %g is above this stage's bound %g", what,
                              (double)ov->fraction, (double)b->max_fraction);
        r.fraction = ov->fraction;
    }
    if (ov->has_min_score) {
        if (!isfinite(ov->min_score) || fabsf(ov->min_score) > 1e6f)
            return mr_err_set(err, MR_ERANGE, "%s.min_score: %g is not a finite score", what,
                              (double)ov->min_score);
        if (rule->has_min_score && ov->min_score < rule->min_score)
            return mr_err_set(err, MR_ERANGE,
                              "%s.min_score: %g is below this stage's threshold %g (a request "
                              "may only raise it)", what, (double)ov->min_score,
                              (double)rule->min_score);
        r.has_min_score = 1;
        r.min_score = ov->min_score;
    }
    *rule = r;
    return 0;
}

/* Score order with NaN below every number; 0 when equal. */
static int score_cmp(float a, float b) {
    int na = isnan(a), nb = isnan(b);
    if (na || nb) return na == nb ? 0 : (na ? 1 : -1);
    return a > b ? -1 : a < b ? 1 : 0;
}

int mr_cascade_before(const mr_cand *a, const mr_cand *b) {
    if (a->stage != b->stage) return a->stage > b->stage;
    int c = score_cmp(a->score, b->score);
    if (c) return c < 0;
    return a->index < b->index;
}

static int cand_qsort_cmp(const void *pa, const void *pb) {
    const mr_cand *a = pa, *b = pb;
    if (mr_cascade_before(a, b)) return -1;
    if (mr_cascade_before(b, a)) return 1;
    return 0;
}

void mr_cascade_sort(mr_cand *c, int n) {
    /* The comparison is total (index breaks every tie), so qsort's instability is harmless. */
    if (n > 1) qsort(c, (size_t)n, sizeof *c, cand_qsort_cmp);
}

int mr_cascade_keep_bound(const mr_keep_rule *rule, int n) {
    int k = n;
    if (rule->top_k > 0 && rule->top_k < k) k = rule->top_k;
    if (rule->fraction > 0) {
        /* the 1e-6 slack keeps 0.5 * 10 at 5 despite float rounding; a fraction keeps at
         * least one (a tiny fraction of a few candidates would otherwise keep none, and a
         * fused pass would get a prune step of top_k 0) */
        int f = (int)ceil((double)rule->fraction * n - 1e-6);
        if (f < 1) f = 1;
        if (f < k) k = f;
    }
    return k;
}

int mr_cascade_fused_prune(const mr_keep_rule *rule, int n, int n_call, mr_fused_prune *step) {
    int k = mr_cascade_keep_bound(rule, n);
    if (k < n_call) {
        *step = (mr_fused_prune){.top_k = k};
        return 1;
    }
    if (!rule->has_min_score) return 0;
    *step = (mr_fused_prune){.has_min_score = 1, .min_score = rule->min_score};
    return 1;
}

int mr_cascade_fused_rows(const mr_keep_rule *rule, int n, int n_call) {
    int k = mr_cascade_keep_bound(rule, n);
    return k < n_call ? k : n_call;
}

int mr_cascade_keep_count(const float *scores, int n, const mr_keep_rule *rule) {
    int k = mr_cascade_keep_bound(rule, n);
    if (rule->has_min_score) {
        int above = 0;
        for (int i = 0; i < n; i++)
            if (!isnan(scores[i]) && scores[i] >= rule->min_score) above++;
        if (above < k) k = above;
    }
    return k < 0 ? 0 : k;
}

int mr_cascade_select(mr_cand *c, int n, const mr_keep_rule *rule) {
    mr_cascade_sort(c, n);
    int k = mr_cascade_keep_bound(rule, n);
    if (rule->has_min_score) {
        /* sorted: the survivors above the threshold are a prefix */
        int above = 0;
        while (above < n && !isnan(c[above].score) && c[above].score >= rule->min_score) above++;
        if (above < k) k = above;
    }
    return k;
}

void mr_cost_model_init(mr_cost_model *m, double ns_per_tl, double alpha, double overhead_ms) {
    m->ns_per_tl = ns_per_tl > 0 && isfinite(ns_per_tl) ? ns_per_tl : MR_CASCADE_DEFAULT_NS_PER_TL;
    m->alpha = alpha > 0 && alpha <= 1 ? alpha : 0.2;
    m->overhead_ms = overhead_ms >= 0 ? overhead_ms : 0;
    m->base_ns_per_tl = m->ns_per_tl;
    m->base_overhead_ms = m->overhead_ms;
    m->n_obs = 0;
}

void mr_cost_model_relax(mr_cost_model *m) {
    m->ns_per_tl += m->alpha * (m->base_ns_per_tl - m->ns_per_tl);
    m->overhead_ms += m->alpha * (m->base_overhead_ms - m->overhead_ms);
}

void mr_cost_model_observe(mr_cost_model *m, double token_layers, double compute_ms,
                           double wall_ms) {
    if (!(token_layers > 0) || !(compute_ms > 0) || !isfinite(token_layers) ||
        !isfinite(compute_ms))
        return;
    double ns = compute_ms * 1e6 / token_layers;
    m->ns_per_tl = m->n_obs == 0 && m->alpha < 1 ? 0.5 * (m->ns_per_tl + ns)
                                                 : (1 - m->alpha) * m->ns_per_tl + m->alpha * ns;
    if (wall_ms >= compute_ms && isfinite(wall_ms))
        m->overhead_ms = (1 - m->alpha) * m->overhead_ms + m->alpha * (wall_ms - compute_ms);
    if (m->n_obs == 0) {   /* the first call (the coordinator's warm-up) sets the baseline */
        m->base_ns_per_tl = m->ns_per_tl;
        m->base_overhead_ms = m->overhead_ms;
    }
    m->n_obs++;
}

double mr_cost_model_estimate_ms(const mr_cost_model *m, double token_layers, int parallel) {
    if (parallel < 1) parallel = 1;
    return m->overhead_ms + token_layers * m->ns_per_tl / 1e6 / parallel;
}

double mr_cost_model_fused_ms(const mr_cost_model *a, const mr_cost_model *b, double tl_a,
                              double tl_rest, int parallel) {
    if (parallel < 1) parallel = 1;
    double overhead = a->overhead_ms > b->overhead_ms ? a->overhead_ms : b->overhead_ms;
    return overhead + (tl_a * a->ns_per_tl + tl_rest * b->ns_per_tl) / 1e6 / parallel;
}

int mr_cascade_fuse_auto(double split_ms, double fused_ms, double split_tl, double fused_tl,
                         int busy) {
    return busy ? !(fused_tl > split_tl) : !(fused_ms > split_ms);
}

int mr_cascade_n_calls(int n, long total_tokens, int n_workers, long max_call_tokens,
                       int min_per_call) {
    if (n <= 0) return 0;
    if (min_per_call < 1) min_per_call = 1;
    long calls = 1;
    if (max_call_tokens > 0) calls = (total_tokens + max_call_tokens - 1) / max_call_tokens;
    long by_workers = n / min_per_call;
    if (by_workers > n_workers) by_workers = n_workers;
    if (by_workers > calls) calls = by_workers;
    if (calls < 1) calls = 1;
    if (calls > n) calls = n;
    return (int)calls;
}

mr_stage_decision mr_cascade_decide(int stage, double est_ms, double remaining_ms, double safety,
                                    int allow_degraded) {
    if (safety < 1) safety = 1;
    if (remaining_ms > 0 && !(est_ms * safety > remaining_ms)) return MR_STAGE_RUN;
    return allow_degraded && stage > 0 ? MR_STAGE_SKIP : MR_STAGE_FAIL;
}

double mr_cascade_remaining_ms(double grpc_remaining_ms, double budget_ms, double elapsed_ms) {
    double r = isnan(grpc_remaining_ms) ? INFINITY : grpc_remaining_ms;
    if (budget_ms > 0 && budget_ms - elapsed_ms < r) r = budget_ms - elapsed_ms;
    return r;
}

void mr_retry_budget_init(mr_retry_budget *b) { *b = (mr_retry_budget){MR_RETRY_TOKENS_MAX, 0}; }

void mr_retry_budget_refill(mr_retry_budget *b, double now_ms) {
    if (b->at_ms > 0 && now_ms > b->at_ms) {
        b->tokens += (now_ms - b->at_ms) / 1000 * MR_RETRY_TOKENS_PER_S;
        if (b->tokens > MR_RETRY_TOKENS_MAX) b->tokens = MR_RETRY_TOKENS_MAX;
    }
    if (now_ms > b->at_ms) b->at_ms = now_ms;
}

void mr_retry_budget_call(mr_retry_budget *b) {
    b->tokens += MR_RETRY_TOKENS_PER_CALL;
    if (b->tokens > MR_RETRY_TOKENS_MAX) b->tokens = MR_RETRY_TOKENS_MAX;
}

int mr_retry_budget_take(mr_retry_budget *b) {
    /* the 1e-9 slack lets ten additions of 0.1 buy one retry despite float rounding */
    if (b->tokens < 1 - 1e-9) return 0;
    b->tokens -= 1;
    if (b->tokens < 0) b->tokens = 0;
    return 1;
}

int mr_retry_budget_take_hedge(mr_retry_budget *b) {
    /* the 1e-9 slack as in mr_retry_budget_take */
    if (b->tokens - 1 < MR_RETRY_TOKENS_MAX / 2 - 1e-9) return 0;
    return mr_retry_budget_take(b);
}

const char *mr_retry_reason(mr_retry_verdict v) {
    static const char *const k[MR_RETRY_N] = {"ok",       "status", "no_replica", "pool_full",
                                              "deadline", "budget", "attempts"};
    return v >= 0 && v < MR_RETRY_N ? k[v] : "status";
}

mr_retry_verdict mr_retry_decide(mr_call_failure f, int attempt, int n_other, int n_other_free,
                                 double remaining_ms, double need_ms, mr_retry_budget *b) {
    if (f == MR_FAIL_FATAL) return MR_RETRY_STATUS;
    if (attempt >= MR_RETRY_MAX_ATTEMPTS) return MR_RETRY_ATTEMPTS;
    if (n_other < 1) return MR_RETRY_NO_REPLICA;
    if (f == MR_FAIL_EXHAUSTED && n_other_free < 1) return MR_RETRY_POOL_FULL;
    if (!(remaining_ms > 0) || (need_ms > 0 && need_ms > remaining_ms)) return MR_RETRY_DEADLINE;
    return mr_retry_budget_take(b) ? MR_RETRY_OK : MR_RETRY_BUDGET;
}

double mr_retry_backoff_ms(int retry, double cap_ms, double u01) {
    if (!(cap_ms > 0)) return 0;
    double d = MR_RETRY_BACKOFF_BASE_MS;
    for (int i = 1; i < retry && d < MR_RETRY_BACKOFF_MAX_MS; i++) d *= 2;
    if (d > MR_RETRY_BACKOFF_MAX_MS) d = MR_RETRY_BACKOFF_MAX_MS;
    if (d > cap_ms) d = cap_ms;
    if (!(u01 >= 0)) u01 = 0;
    if (u01 >= 1) u01 = 1;
    return u01 * d;
}

double mr_attempt_timeout_ms(double call_est_ms, double remaining_ms, double reserve_ms,
                             int can_retry) {
    if (!(call_est_ms >= 0)) call_est_ms = 0;
    if (isnan(remaining_ms)) remaining_ms = INFINITY;
    double avail = remaining_ms;
    if (reserve_ms > 0 && remaining_ms - reserve_ms >= call_est_ms) avail = remaining_ms - reserve_ms;
    if (!can_retry) return avail > 0 ? avail : 0;
    double t = MR_ATTEMPT_EST_FACTOR * call_est_ms;
    if (t < MR_ATTEMPT_FLOOR_MS) t = MR_ATTEMPT_FLOOR_MS;
    if (avail == INFINITY) return t;
    if (avail / 2 >= call_est_ms) avail /= 2;
    if (t > avail) t = avail;
    return t > 0 ? t : 0;
}

double mr_hedge_delay_ms(double call_est_ms, double tier_budget_ms, double remaining_ms) {
    if (!(tier_budget_ms > 0) || tier_budget_ms > MR_HEDGE_MAX_BUDGET_MS) return -1;
    if (!(call_est_ms >= 0)) return -1;
    double d = 2 * call_est_ms;
    if (d < MR_HEDGE_MIN_DELAY_MS) d = MR_HEDGE_MIN_DELAY_MS;
    if (!(d + call_est_ms <= remaining_ms)) return -1;
    return d;
}

double mr_outlier_failure(mr_outlier *o, int severe, int n_replicas, int n_ejected) {
    if (!severe && ++o->consecutive < MR_EJECT_AFTER) return 0;
    int max_ejected = n_replicas / 2 > 1 ? n_replicas / 2 : 1;
    if (n_replicas < 2 || n_ejected >= max_ejected) return 0;   /* the count stays: next time */
    double ms = MR_EJECT_BASE_MS;
    for (int i = 0; i < o->ejections && ms < MR_EJECT_MAX_MS; i++) ms *= 2;
    if (ms > MR_EJECT_MAX_MS) ms = MR_EJECT_MAX_MS;
    o->consecutive = 0;
    o->ejections++;
    return ms;
}

void mr_outlier_success(mr_outlier *o) {
    o->consecutive = 0;
    o->ejections = 0;
}

float mr_cascade_sigmoid(float raw) {
    if (isnan(raw)) return raw;
    return (float)(1.0 / (1.0 + exp(-(double)raw)));
}
