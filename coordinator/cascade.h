/* cascade.h: the pure decision logic of the cascade coordinator, independent of gRPC.
 *
 * What survives a stage (keep rules and bounded request overrides), how the final ranking is
 * merged across stages, what a stage costs (token-layers times a per-pool ns/token-layer that
 * an EWMA refines online), how a stage's candidates are split into parallel calls, whether
 * a stage may still run within the remaining deadline budget, and the fan-out's fault rules:
 * retry budget and verdict, backoff, per-attempt timeout, outlier ejection. Nothing here does I/O, allocates
 * behind the caller's back (except mr_cascade_select's scratch) or takes locks: the coordinator
 * (coordinator/, coord_internal.h) owns the state and the locking; tests/test_cascade.c checks every rule.
 *
 * Ordering everywhere is the stable tie-break users expect: score descending, request index
 * ascending; NaN scores sort below every number. */
#ifndef MR_CASCADE_H
#define MR_CASCADE_H

#include "mr_err.h"

/* How many candidates of a stage escalate to the next stage. A zero field is "no limit";
 * the survivors are the best min(top_k, ceil(fraction * n), #(score >= min_score)). */
typedef struct mr_keep_rule {
    int top_k;                  /* 0 = no limit */
    float fraction;             /* 0 = no limit, else in (0, 1] */
    int has_min_score;
    float min_score;            /* raw score threshold (keep >= min_score) */
} mr_keep_rule;

/* Bounds a request override must stay within (from the profile stage's config). */
typedef struct mr_keep_bounds {
    int max_top_k;              /* an override's keep_top_k must be <= this (0: no override) */
    float max_fraction;         /* an override's keep_fraction must be <= this */
} mr_keep_bounds;

/* A request override of one stage (proto StageOverride without the stage index). */
typedef struct mr_keep_override {
    int top_k;                  /* 0 = keep the profile value */
    float fraction;             /* 0 = keep the profile value */
    int has_min_score;
    float min_score;
} mr_keep_override;

/* Applies ov to *rule within bounds; MR_ERANGE (message names the field and the bound) when
 * the override asks for more survivors than the bounds allow, or is not a finite value in
 * range. *rule is unchanged on error. what names the stage in messages ("overrides[0]"). */
int mr_cascade_override(mr_keep_rule *rule, const mr_keep_bounds *b, const mr_keep_override *ov,
                        const char *what, mr_err *err);

/* One candidate of the running ranking. */
typedef struct mr_cand {
    int index;                  /* position in the request */
    int stage;                  /* deepest stage that scored it (-1: none yet) */
    float score;                /* raw score at that stage */
} mr_cand;

/* 1 when a ranks before b: deeper stage first, then score desc (NaN last), then index asc. */
int mr_cascade_before(const mr_cand *a, const mr_cand *b);

/* Sorts c[0..n) by mr_cascade_before (the merge rule). Stable by construction. */
void mr_cascade_sort(mr_cand *c, int n);

/* Number of survivors among n candidates scored by one stage: applies rule to the scores
 * (which need not be sorted). */
int mr_cascade_keep_count(const float *scores, int n, const mr_keep_rule *rule);

/* Selection of one stage: sorts c[0..n) (all scored by the same stage) by the merge rule and
 * returns how many of the leading candidates survive rule. */
int mr_cascade_select(mr_cand *c, int n, const mr_keep_rule *rule);

/* ---- cost model ---- */

/* A row's cost is counted in token-layers: mr_subarch_token_layers (common/subarch.h). */

/* Per-pool speed estimate: worker-measured ns per token-layer, refined by an EWMA of what
 * Score calls actually took (compute_ms / token-layers). */
typedef struct mr_cost_model {
    double ns_per_tl;           /* current estimate (> 0) */
    double base_ns_per_tl;      /* the estimate at init (warm-up), what relax returns to */
    double base_overhead_ms;    /* (both set again by the first observation: the warm-up) */
    double alpha;               /* EWMA weight of a new observation, (0, 1] */
    double overhead_ms;         /* fixed cost of one Score round trip */
    long n_obs;
} mr_cost_model;

/* ns_per_tl <= 0 falls back to a conservative default (MR_CASCADE_DEFAULT_NS_PER_TL). */
#define MR_CASCADE_DEFAULT_NS_PER_TL 2000.0
void mr_cost_model_init(mr_cost_model *m, double ns_per_tl, double alpha, double overhead_ms);
/* Folds in one Score call: compute_ms for token_layers refines ns_per_tl, and wall_ms -
 * compute_ms (queueing and the round trip; wall_ms <= 0: unknown) refines overhead_ms. Ignored
 * when token_layers or compute_ms is not positive and finite. */
void mr_cost_model_observe(mr_cost_model *m, double token_layers, double compute_ms,
                           double wall_ms);
/* A stage that was not run for lack of budget observes nothing, so an estimate inflated by a
 * burst of load would keep it skipped for good: each skip moves the estimate one EWMA step back
 * towards its warm-up value; runs that really are slow push it up again. */
void mr_cost_model_relax(mr_cost_model *m);
/* Estimated wall time of a stage: token_layers spread over `parallel` concurrent calls
 * (>= 1), plus the round-trip overhead. */
double mr_cost_model_estimate_ms(const mr_cost_model *m, double token_layers, int parallel);

/* ---- splitting ---- */

/* Number of parallel Score calls for n candidates with total_tokens tokens on a pool of
 * n_workers: at least enough calls to stay under max_call_tokens per call (when > 0), at
 * least one per worker when there are enough candidates (min_per_call each), at most n. */
int mr_cascade_n_calls(int n, long total_tokens, int n_workers, long max_call_tokens,
                       int min_per_call);

/* ---- deadline ---- */

typedef enum mr_stage_decision {
    MR_STAGE_RUN = 0,           /* the stage fits the remaining budget */
    MR_STAGE_SKIP = 1,          /* skip it and all deeper stages: answer degraded */
    MR_STAGE_FAIL = 2           /* cannot answer in time: DEADLINE_EXCEEDED */
} mr_stage_decision;

/* Decides whether stage `stage` (0-based) may start: it runs when est_ms * safety <=
 * remaining_ms. Otherwise the answer is the ranking so far (SKIP) when the tier allows degraded
 * answers and some stage already completed (stage > 0), else FAIL. remaining_ms <= 0 never runs. */
mr_stage_decision mr_cascade_decide(int stage, double est_ms, double remaining_ms, double safety,
                                    int allow_degraded);

/* Remaining budget in ms: the smaller of the gRPC deadline's remaining time (INFINITY: no
 * deadline) and the tier budget minus the time already spent (budget_ms <= 0: no budget);
 * INFINITY when neither is set. May be negative once the budget is spent. */
double mr_cascade_remaining_ms(double grpc_remaining_ms, double budget_ms, double elapsed_ms);

/* ---- retries, attempt timeouts, outlier ejection (fanout.c applies them) ---- */

/* A pool's retry budget, a token bucket as in gRPC's retry throttling: it starts full, every
 * original Score call adds MR_RETRY_TOKENS_PER_CALL (up to MR_RETRY_TOKENS_MAX) and every retry
 * costs one token; with less than one token left retries are refused. Time adds
 * MR_RETRY_TOKENS_PER_S too (mr_retry_budget_refill), a floor as in Finagle's retry budget
 * (minRetriesPerSec): a pool whose replica stays unreachable while gRPC's round robin still
 * routes to it (a DNS pool until keepalive gives up) keeps losing calls faster than a tenth of
 * the traffic buys back. So retries stay below a tenth of the calls plus 5 per second plus a
 * burst of ten: enough for the calls in flight on a replica that just died, never a storm
 * against an overloaded pool. */
#define MR_RETRY_TOKENS_MAX 10.0
#define MR_RETRY_TOKENS_PER_CALL 0.1
#define MR_RETRY_TOKENS_PER_S 5.0
typedef struct mr_retry_budget {
    double tokens;
    double at_ms;               /* time of the last refill (0: none yet) */
} mr_retry_budget;
void mr_retry_budget_init(mr_retry_budget *b);
void mr_retry_budget_call(mr_retry_budget *b);
/* Adds MR_RETRY_TOKENS_PER_S for the time since the last refill (monotonic ms). */
void mr_retry_budget_refill(mr_retry_budget *b, double now_ms);
/* 1 (and one token spent) when a retry may go, else 0. */
int mr_retry_budget_take(mr_retry_budget *b);
/* The same for a hedge, which only spends from the upper half of the bucket: hedges never
 * leave retries (which replace calls that failed) without tokens. */
int mr_retry_budget_take_hedge(mr_retry_budget *b);

/* How an attempt failed, for the retry and ejection rules. */
typedef enum mr_call_failure {
    MR_FAIL_FATAL = 0,          /* the worker's answer stands (INVALID_ARGUMENT, INTERNAL...) */
    MR_FAIL_UNAVAILABLE,        /* no connection / the replica went away */
    MR_FAIL_TIMEOUT,            /* the attempt's deadline passed */
    MR_FAIL_EXHAUSTED,          /* the replica refused: full (RESOURCE_EXHAUSTED) */
    MR_FAIL_TRANSIENT           /* CANCELLED, ABORTED, UNKNOWN */
} mr_call_failure;

/* Why a failed attempt is not retried; MR_RETRY_OK when it is. */
typedef enum mr_retry_verdict {
    MR_RETRY_OK = 0,
    MR_RETRY_STATUS,            /* not a retryable failure */
    MR_RETRY_NO_REPLICA,        /* no other replica to send it to */
    MR_RETRY_POOL_FULL,         /* RESOURCE_EXHAUSTED and every other replica refuses too */
    MR_RETRY_DEADLINE,          /* the budget left cannot fit another attempt */
    MR_RETRY_BUDGET,            /* the pool's retry budget is empty */
    MR_RETRY_ATTEMPTS,          /* the call already had MR_RETRY_MAX_ATTEMPTS attempts */
    MR_RETRY_N
} mr_retry_verdict;
/* The metric label of a refusal: "status", "no_replica", "pool_full", "deadline", "budget",
 * "attempts". */
const char *mr_retry_reason(mr_retry_verdict v);

/* Whether failed attempt number `attempt` (1, 2, ...) of a call is retried. n_other: replicas other than the one that failed
 * (a DNS pool passes 1: gRPC balances the retry to another backend); n_other_free: those of
 * them not known to be full (RESOURCE_EXHAUSTED lately) nor ejected; remaining_ms: the budget
 * left; need_ms: the least a new attempt needs (its estimate). A token is taken from b only
 * when every other rule allows the retry, so refusals for other reasons cost nothing. */
#define MR_RETRY_MAX_ATTEMPTS 3
mr_retry_verdict mr_retry_decide(mr_call_failure f, int attempt, int n_other, int n_other_free,
                                 double remaining_ms, double need_ms, mr_retry_budget *b);

/* Full-jitter exponential backoff before retry number `retry` (1, 2, ...): u01 * min(5 ms *
 * 2^(retry-1), 200 ms, cap_ms), u01 in [0, 1) from the caller's generator; cap_ms (what the
 * budget can spare) <= 0 or NaN gives 0. */
#define MR_RETRY_BACKOFF_BASE_MS 5.0
#define MR_RETRY_BACKOFF_MAX_MS 200.0
double mr_retry_backoff_ms(int retry, double cap_ms, double u01);

/* Timeout of one Score attempt. It gets at most avail = remaining_ms - reserve_ms (what the
 * later stages of the cascade need; ignored when that leaves less than the call's estimate).
 * When no other replica could take over (!can_retry) that is all it gets: timing out early
 * would only lose the answer (INFINITY without a budget). Else it wants
 * max(MR_ATTEMPT_EST_FACTOR x call_est_ms, MR_ATTEMPT_FLOOR_MS), where call_est_ms includes the
 * work queued ahead of it on that replica: a healthy replica is rarely 3x slower than that,
 * and the floor keeps tiny estimates from timing out on scheduling noise; and at most half of
 * avail, so a hung replica leaves the retry the other half: with one of two replicas hung, a
 * 150 ms tier still answers (not halved when half would not fit the estimate: a retry could
 * not fit either). No budget (remaining_ms infinite): the wanted value. */
#define MR_ATTEMPT_EST_FACTOR 3.0
#define MR_ATTEMPT_FLOOR_MS 250.0
double mr_attempt_timeout_ms(double call_est_ms, double remaining_ms, double reserve_ms,
                             int can_retry);

/* Outlier ejection of one replica: MR_EJECT_AFTER consecutive failed attempts (timeouts or
 * errors; RESOURCE_EXHAUSTED is load, not a fault, and does not count), or one severe failure
 * (UNAVAILABLE, or a timeout beyond MR_ATTEMPT_EST_FACTOR x the estimate), eject it for
 * MR_EJECT_BASE_MS, doubling with every further ejection up to MR_EJECT_MAX_MS; an answer
 * resets both counts. At most half of a pool's replicas (at least one) are ejected at a time:
 * when load makes every replica slow, ejecting the last ones would only concentrate it. */
#define MR_EJECT_AFTER 3
#define MR_EJECT_BASE_MS 1000.0
#define MR_EJECT_MAX_MS 30000.0
typedef struct mr_outlier {
    int consecutive;            /* failures since the last answer or ejection */
    int ejections;              /* ejections since the last answer */
} mr_outlier;
/* Records a failure of a replica of a pool of n_replicas of which n_ejected others are ejected
 * now; returns how long to eject it (ms), 0 when it stays. */
double mr_outlier_failure(mr_outlier *o, int severe, int n_replicas, int n_ejected);
void mr_outlier_success(mr_outlier *o);

/* Hedging: in tiers with a short budget (at most MR_HEDGE_MAX_BUDGET_MS), where waiting out a
 * slow replica costs the answer, a call still unanswered after mr_hedge_delay_ms is sent again
 * to another replica; the first answer wins and the other copy is cancelled. The delay is 2x
 * the call's estimate (a healthy replica rarely takes longer), at least MR_HEDGE_MIN_DELAY_MS;
 * -1 (no hedge) for other tiers, or when a hedge sent then could not finish in the budget
 * left (delay + estimate > remaining_ms). Hedges are paid from the upper half of the pool's
 * retry budget (mr_retry_budget_take_hedge). */
#define MR_HEDGE_MAX_BUDGET_MS 1000.0
#define MR_HEDGE_MIN_DELAY_MS 10.0
double mr_hedge_delay_ms(double call_est_ms, double tier_budget_ms, double remaining_ms);

/* ---- stages that continue (a fused stage pair, docs/cluster.md) ---- */

/* The prune step a fused call of n_call of a stage's n candidates carries at the shallower
 * stage's exit, so that the worker stops computing rows that cannot survive rule: top_k = the
 * rule's count bound over all n candidates (top_k and fraction) when it is below n_call, else
 * the rule's min_score, else none (*step unchanged, 0 returned). Every row the rule keeps over
 * the n candidates is kept by the step of the call it is in: the global best k of a call's rows
 * are among that call's best k (the worker breaks ties by lower row, so a call's rows must be
 * in request order, as the merge rule breaks them), and min_score is per row. The step may keep
 * more (a call's best k that are not the global best, rows of the best k under min_score): the
 * coordinator selects the survivors itself from every row's shallower score, as an unfused
 * cascade does, and drops the deeper scores of the others. */
typedef struct mr_fused_prune {
    int top_k;                  /* > 0: keep the best top_k rows of the call */
    int has_min_score;          /* else (top_k 0): keep raw score >= min_score */
    float min_score;
} mr_fused_prune;
int mr_cascade_fused_prune(const mr_keep_rule *rule, int n, int n_call, mr_fused_prune *step);

/* Rows of a call of n_call (of a stage's n candidates) that a fused pass takes to the deeper
 * exit at most: the count mr_cascade_fused_prune's step keeps, before min_score (unknown until
 * the scores are in). */
int mr_cascade_fused_rows(const mr_keep_rule *rule, int n, int n_call);

/* Estimated wall time of a fused pair's calls: tl_a token-layers of the shallower stage (cost
 * model a) and tl_rest of the deeper stage's layers beyond it (model b), spread over `parallel`
 * concurrent calls (>= 1), plus one round trip (the larger overhead of the two). The unfused
 * cascade pays mr_cost_model_estimate_ms of each stage, two round trips, and recomputes the
 * survivors' shallower layers, but may split each stage over more replicas. */
double mr_cost_model_fused_ms(const mr_cost_model *a, const mr_cost_model *b, double tl_a,
                              double tl_rest, int parallel);

/* The "auto" choice for a stage pair (1: fuse, 0: split). On an idle pool a request's latency
 * is its compute plus its round trips: the smaller wall estimate wins (split_ms, fused_ms), and
 * the round trip a fused pair saves may outweigh the rows it carries past the shallower exit.
 * On a busy pool (calls of other requests in flight there) requests queue behind one another,
 * the pool's capacity sets everyone's latency and a round trip is time waiting, not
 * computing: the way with fewer token-layers wins (split_tl, fused_tl). Ties fuse. */
int mr_cascade_fuse_auto(double split_ms, double fused_ms, double split_tl, double fused_tl,
                         int busy);

/* The top_k and fraction part of a keep rule: at most how many of n survive. */
int mr_cascade_keep_bound(const mr_keep_rule *rule, int n);

/* Calibrated score: 1 / (1 + exp(-raw)); NaN stays NaN. */
float mr_cascade_sigmoid(float raw);

#endif
