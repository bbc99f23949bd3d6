/* coord_metrics.c: counters and histograms of the coordinator (see coord_metrics.h); the text
 * format and the HTTP endpoint are rpc/prom.h's. */
#include "coord_metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prom.h"

static const double k_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define N_BUCKETS (int)(sizeof k_buckets / sizeof k_buckets[0])

typedef struct stage_tier {
    unsigned long in, kept, escalations, skipped, runs;
    double seconds;
} stage_tier;

typedef struct tier_ctr {
    unsigned long outcome[MR_OUT_N], degraded, deadline_misses;
    mr_prom_hist latency;
    unsigned long refusals[MR_REFUSE_N], lexical[MR_REFUSE_N];
    mr_prom_hist wait;
    long queued;
    double queued_ms;
} tier_ctr;

struct mr_coord_metrics {
    const mr_coord_config *cfg;
    pthread_mutex_t mu;
    stage_tier st[MR_CC_MAX_STAGES][MR_CC_MAX_TIERS];
    tier_ctr tier[MR_CC_MAX_TIERS];
    unsigned long retries[MR_CC_MAX_POOLS];
    unsigned long refused[MR_CC_MAX_POOLS][MR_RETRY_N];
    unsigned long ejections[MR_CC_MAX_POOLS], cancelled[MR_CC_MAX_POOLS];
    unsigned long hedges[MR_CC_MAX_POOLS];
    int replicas[MR_CC_MAX_POOLS];
    double ns_per_tl[MR_CC_MAX_STAGES];
    long inflight;
    double limit;
    int impaired[MR_CC_MAX_PROFILES];
    unsigned long fused[MR_CC_MAX_PROFILES];   /* stage pairs run as one pass */
    mr_prom_http *http;
    int n_keys;
    struct { char name[MR_CC_NAME]; unsigned long ok, denied; } keys[MR_COORD_METRICS_KEYS + 1];
    unsigned long unauthenticated;
};

static const char *const k_outcome[MR_OUT_N] = {"ok", "degraded", "invalid_argument",
                                                 "deadline_exceeded", "unavailable",
                                                 "rejected", "error"};
static const char *const k_refusal[MR_REFUSE_N] = {"no_time", "too_short", "queue_full",
                                                   "displaced",
                                                   "expired", "cancelled", "stopping"};

int mr_coord_metrics_new(mr_coord_metrics **out, const mr_coord_config *cfg, mr_err *err) {
    mr_coord_metrics *m = calloc(1, sizeof *m);
    if (!m) return mr_err_set(err, MR_ENOMEM, "metrics: out of memory");
    m->cfg = cfg;
    pthread_mutex_init(&m->mu, NULL);
    for (int t = 0; t < MR_CC_MAX_TIERS; t++) {
        mr_prom_hist_init(&m->tier[t].latency, k_buckets, N_BUCKETS);
        mr_prom_hist_init(&m->tier[t].wait, k_buckets, N_BUCKETS);
    }
    *out = m;
    return 0;
}

static char *render(void *user) { return mr_coord_metrics_render(user); }

int mr_coord_metrics_serve(mr_coord_metrics *m, const char *host, int port, mr_err *err) {
    if (port <= 0) return 0;
    return mr_prom_http_new_at(&m->http, host, port, render, m, NULL, err);
}

void mr_coord_metrics_auth(mr_coord_metrics *m, const char *key_name, int denied) {
    pthread_mutex_lock(&m->mu);
    if (!key_name) {
        m->unauthenticated++;
    } else {
        int i = 0;
        while (i < m->n_keys && strcmp(m->keys[i].name, key_name)) i++;
        if (i == m->n_keys) {
            if (m->n_keys < MR_COORD_METRICS_KEYS) m->n_keys++;
            else i = MR_COORD_METRICS_KEYS;   /* the "other" row */
            snprintf(m->keys[i].name, sizeof m->keys[i].name, "%s",
                     i < MR_COORD_METRICS_KEYS ? key_name : "other");
        }
        if (denied) m->keys[i].denied++;
        else m->keys[i].ok++;
    }
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_free(mr_coord_metrics *m) {
    if (!m) return;
    mr_prom_http_free(m->http);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static int ok_idx(int i, int n) { return i >= 0 && i < n; }

void mr_coord_metrics_stage(mr_coord_metrics *m, int stage, int tier, int in, int kept,
                            int escalated, int skipped, double ms) {
    if (!m || !ok_idx(stage, m->cfg->n_stages) || !ok_idx(tier, m->cfg->n_tiers)) return;
    pthread_mutex_lock(&m->mu);
    stage_tier *s = &m->st[stage][tier];
    s->in += (unsigned long)in;
    s->kept += (unsigned long)kept;
    s->escalations += escalated != 0;
    s->skipped += skipped != 0;
    s->runs += !skipped;
    s->seconds += ms / 1e3;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_request(mr_coord_metrics *m, int tier, mr_outcome out, int deadline_miss,
                              double ms) {
    if (!m || !ok_idx(tier, m->cfg->n_tiers)) return;
    pthread_mutex_lock(&m->mu);
    tier_ctr *t = &m->tier[tier];
    t->outcome[out]++;
    t->degraded += out == MR_OUT_DEGRADED;
    t->deadline_misses += deadline_miss != 0;
    mr_prom_hist_observe(&t->latency, ms / 1e3);
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_retry(mr_coord_metrics *m, int pool) {
    if (!m || !ok_idx(pool, m->cfg->n_pools)) return;
    pthread_mutex_lock(&m->mu);
    m->retries[pool]++;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_retry_refused(mr_coord_metrics *m, int pool, mr_retry_verdict why) {
    if (!m || !ok_idx(pool, m->cfg->n_pools) || !ok_idx((int)why, MR_RETRY_N)) return;
    pthread_mutex_lock(&m->mu);
    m->refused[pool][why]++;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_ejection(mr_coord_metrics *m, int pool) {
    if (!m || !ok_idx(pool, m->cfg->n_pools)) return;
    pthread_mutex_lock(&m->mu);
    m->ejections[pool]++;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_hedge(mr_coord_metrics *m, int pool) {
    if (!m || !ok_idx(pool, m->cfg->n_pools)) return;
    pthread_mutex_lock(&m->mu);
    m->hedges[pool]++;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_cancelled(mr_coord_metrics *m, int pool, int n) {
    if (!m || !ok_idx(pool, m->cfg->n_pools) || n <= 0) return;
    pthread_mutex_lock(&m->mu);
    m->cancelled[pool] += (unsigned long)n;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_cost(mr_coord_metrics *m, int stage, double ns_per_tl) {
    if (!m || !ok_idx(stage, m->cfg->n_stages)) return;
    pthread_mutex_lock(&m->mu);
    m->ns_per_tl[stage] = ns_per_tl;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_replicas(mr_coord_metrics *m, int pool, int n) {
    if (!m || !ok_idx(pool, m->cfg->n_pools)) return;
    pthread_mutex_lock(&m->mu);
    m->replicas[pool] = n;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_inflight(mr_coord_metrics *m, int delta) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->inflight += delta;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_queue(mr_coord_metrics *m, int tier, int n, double est_ms) {
    if (!m || !ok_idx(tier, m->cfg->n_tiers)) return;
    pthread_mutex_lock(&m->mu);
    m->tier[tier].queued = n;
    m->tier[tier].queued_ms = est_ms;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_wait(mr_coord_metrics *m, int tier, double ms) {
    if (!m || !ok_idx(tier, m->cfg->n_tiers)) return;
    pthread_mutex_lock(&m->mu);
    mr_prom_hist_observe(&m->tier[tier].wait, ms / 1e3);
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_refusal(mr_coord_metrics *m, int tier, mr_refusal why, int lexical) {
    if (!m || !ok_idx(tier, m->cfg->n_tiers) || !ok_idx(why, MR_REFUSE_N)) return;
    pthread_mutex_lock(&m->mu);
    (lexical ? m->tier[tier].lexical : m->tier[tier].refusals)[why]++;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_profile_impaired(mr_coord_metrics *m, int profile, int impaired) {
    if (!m || !ok_idx(profile, m->cfg->n_profiles)) return;
    pthread_mutex_lock(&m->mu);
    m->impaired[profile] = impaired != 0;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_fused(mr_coord_metrics *m, int profile) {
    if (!m || !ok_idx(profile, m->cfg->n_profiles)) return;
    pthread_mutex_lock(&m->mu);
    m->fused[profile]++;
    pthread_mutex_unlock(&m->mu);
}

void mr_coord_metrics_limit(mr_coord_metrics *m, double limit) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->limit = limit;
    pthread_mutex_unlock(&m->mu);
}

#define HELP(name, type, text) mr_prom_family(&b, name, type, text)

char *mr_coord_metrics_render(mr_coord_metrics *m) {
    mr_prom_text b = {0};
    const mr_coord_config *c = m->cfg;
    pthread_mutex_lock(&m->mu);
    HELP("mrank_coord_stage_candidates_total", "counter", "Candidates scored by a stage.");
    for (int s = 0; s < c->n_stages; s++)
        for (int t = 0; t < c->n_tiers; t++)
            mr_prom_printf(&b, "mrank_coord_stage_candidates_total{stage=\"%s\",tier=\"%s\"} %lu\n",
                      c->stages[s].name, c->tiers[t].name, m->st[s][t].in);
    HELP("mrank_coord_stage_kept_total", "counter",
         "Candidates a stage kept (escalated, or final at the last stage).");
    for (int s = 0; s < c->n_stages; s++)
        for (int t = 0; t < c->n_tiers; t++)
            mr_prom_printf(&b, "mrank_coord_stage_kept_total{stage=\"%s\",tier=\"%s\"} %lu\n",
                      c->stages[s].name, c->tiers[t].name, m->st[s][t].kept);
    HELP("mrank_coord_stage_survival_ratio", "gauge", "kept / candidates since start.");
    for (int s = 0; s < c->n_stages; s++)
        for (int t = 0; t < c->n_tiers; t++)
            mr_prom_printf(&b, "mrank_coord_stage_survival_ratio{stage=\"%s\",tier=\"%s\"} %g\n",
                      c->stages[s].name, c->tiers[t].name,
                      m->st[s][t].in ? (double)m->st[s][t].kept / m->st[s][t].in : 0.0);
    HELP("mrank_coord_stage_escalations_total", "counter",
         "Requests that escalated survivors into this (non-first) stage.");
    for (int s = 0; s < c->n_stages; s++)
        for (int t = 0; t < c->n_tiers; t++)
            mr_prom_printf(&b, "mrank_coord_stage_escalations_total{stage=\"%s\",tier=\"%s\"} %lu\n",
                      c->stages[s].name, c->tiers[t].name, m->st[s][t].escalations);
    HELP("mrank_coord_stage_skipped_total", "counter",
         "Stages skipped because they could not finish within the deadline budget.");
    for (int s = 0; s < c->n_stages; s++)
        for (int t = 0; t < c->n_tiers; t++)
            mr_prom_printf(&b, "mrank_coord_stage_skipped_total{stage=\"%s\",tier=\"%s\"} %lu\n",
                      c->stages[s].name, c->tiers[t].name, m->st[s][t].skipped);
    HELP("mrank_coord_stage_seconds_total", "counter", "Wall time spent in a stage.");
    for (int s = 0; s < c->n_stages; s++)
        for (int t = 0; t < c->n_tiers; t++)
            mr_prom_printf(&b, "mrank_coord_stage_seconds_total{stage=\"%s\",tier=\"%s\"} %g\n",
                      c->stages[s].name, c->tiers[t].name, m->st[s][t].seconds);
    HELP("mrank_coord_stage_seconds_per_token_layer", "gauge",
         "Cost model estimate of a stage: seconds per token and layer.");
    for (int s = 0; s < c->n_stages; s++)
        mr_prom_printf(&b, "mrank_coord_stage_seconds_per_token_layer{stage=\"%s\"} %g\n",
                  c->stages[s].name, m->ns_per_tl[s] * 1e-9);
    HELP("mrank_coord_requests_total", "counter", "Requests by tier and outcome.");
    for (int t = 0; t < c->n_tiers; t++)
        for (int o = 0; o < MR_OUT_N; o++)
            mr_prom_printf(&b, "mrank_coord_requests_total{tier=\"%s\",outcome=\"%s\"} %lu\n",
                      c->tiers[t].name, k_outcome[o], m->tier[t].outcome[o]);
    HELP("mrank_coord_degraded_total", "counter", "Answers with degraded=true.");
    for (int t = 0; t < c->n_tiers; t++)
        mr_prom_printf(&b, "mrank_coord_degraded_total{tier=\"%s\"} %lu\n", c->tiers[t].name,
                  m->tier[t].degraded);
    HELP("mrank_coord_deadline_misses_total", "counter",
         "Requests that could not run every stage in time (degraded or DEADLINE_EXCEEDED).");
    for (int t = 0; t < c->n_tiers; t++)
        mr_prom_printf(&b, "mrank_coord_deadline_misses_total{tier=\"%s\"} %lu\n", c->tiers[t].name,
                  m->tier[t].deadline_misses);
    HELP("mrank_coord_request_duration_seconds", "histogram", "End-to-end request latency.");
    for (int t = 0; t < c->n_tiers; t++) {
        char labels[MR_CC_NAME + 16];
        snprintf(labels, sizeof labels, "tier=\"%s\"", c->tiers[t].name);
        mr_prom_hist_write(&b, "mrank_coord_request_duration_seconds", labels,
                           &m->tier[t].latency);
    }
    HELP("mrank_coord_retries_total", "counter", "Score calls retried on another replica.");
    for (int p = 0; p < c->n_pools; p++)
        mr_prom_printf(&b, "mrank_coord_retries_total{pool=\"%s\"} %lu\n", c->pools[p].name,
                  m->retries[p]);
    HELP("mrank_coord_retries_refused_total", "counter",
         "Failed Score calls not retried, by reason (budget: the pool's retry budget is empty; "
         "pool_full: RESOURCE_EXHAUSTED and no other replica free; no_replica; deadline; "
         "attempts; status: not retryable).");
    for (int p = 0; p < c->n_pools; p++)
        for (int v = MR_RETRY_OK + 1; v < MR_RETRY_N; v++)
            mr_prom_printf(&b, "mrank_coord_retries_refused_total{pool=\"%s\",reason=\"%s\"} %lu\n",
                           c->pools[p].name, mr_retry_reason((mr_retry_verdict)v),
                           m->refused[p][v]);
    HELP("mrank_coord_ejections_total", "counter",
         "Replicas ejected (skipped by the fan-out) after timeouts or errors.");
    for (int p = 0; p < c->n_pools; p++)
        mr_prom_printf(&b, "mrank_coord_ejections_total{pool=\"%s\"} %lu\n", c->pools[p].name,
                       m->ejections[p]);
    HELP("mrank_coord_hedges_total", "counter",
         "Slow Score calls sent again to another replica (short-budget tiers).");
    for (int p = 0; p < c->n_pools; p++)
        mr_prom_printf(&b, "mrank_coord_hedges_total{pool=\"%s\"} %lu\n", c->pools[p].name,
                       m->hedges[p]);
    HELP("mrank_coord_score_cancelled_total", "counter",
         "Score calls in flight cancelled by the coordinator (client gone, deadline, stage "
         "failed).");
    for (int p = 0; p < c->n_pools; p++)
        mr_prom_printf(&b, "mrank_coord_score_cancelled_total{pool=\"%s\"} %lu\n",
                       c->pools[p].name, m->cancelled[p]);
    HELP("mrank_coord_auth_requests_total", "counter",
         "Calls by API key name (the key itself is never shown): accepted, or refused for a "
         "tier outside the key's list (permission_denied).");
    int nk = m->n_keys + (m->keys[MR_COORD_METRICS_KEYS].name[0] != 0);
    for (int i = 0; i < nk; i++) {
        int k = i < m->n_keys ? i : MR_COORD_METRICS_KEYS;
        mr_prom_printf(&b, "mrank_coord_auth_requests_total{key=\"%s\",result=\"ok\"} %lu\n",
                       m->keys[k].name, m->keys[k].ok);
        mr_prom_printf(&b, "mrank_coord_auth_requests_total{key=\"%s\",result=\"permission_denied\"} %lu\n",
                       m->keys[k].name, m->keys[k].denied);
    }
    HELP("mrank_coord_auth_unauthenticated_total", "counter",
         "Calls refused UNAUTHENTICATED: no key, or a key in no entry of the key file.");
    mr_prom_printf(&b, "mrank_coord_auth_unauthenticated_total %lu\n", m->unauthenticated);
    HELP("mrank_coord_pool_replicas", "gauge",
         "Addresses a pool's DNS name resolves to (a static pool: its addresses).");
    for (int p = 0; p < c->n_pools; p++)
        mr_prom_printf(&b, "mrank_coord_pool_replicas{pool=\"%s\"} %d\n", c->pools[p].name,
                       m->replicas[p]);
    HELP("mrank_coord_inflight_requests", "gauge",
         "Requests admitted and not answered yet (queued or running).");
    mr_prom_printf(&b, "mrank_coord_inflight_requests %ld\n", m->inflight);
    HELP("mrank_coord_concurrency_limit", "gauge",
         "Requests the admission queue lets run at once now (adaptive, at most max_inflight).");
    mr_prom_printf(&b, "mrank_coord_concurrency_limit %g\n", m->limit);
    HELP("mrank_coord_queue_requests", "gauge", "Requests waiting in the admission queue.");
    for (int t = 0; t < c->n_tiers; t++)
        mr_prom_printf(&b, "mrank_coord_queue_requests{tier=\"%s\"} %ld\n", c->tiers[t].name,
                       m->tier[t].queued);
    HELP("mrank_coord_queue_work_seconds", "gauge",
         "Estimated service seconds of the requests waiting in the admission queue.");
    for (int t = 0; t < c->n_tiers; t++)
        mr_prom_printf(&b, "mrank_coord_queue_work_seconds{tier=\"%s\"} %g\n", c->tiers[t].name,
                       m->tier[t].queued_ms / 1e3);
    HELP("mrank_coord_queue_wait_seconds", "histogram",
         "Time from arrival until a request started or left the queue.");
    for (int t = 0; t < c->n_tiers; t++) {
        char labels[MR_CC_NAME + 16];
        snprintf(labels, sizeof labels, "tier=\"%s\"", c->tiers[t].name);
        mr_prom_hist_write(&b, "mrank_coord_queue_wait_seconds", labels, &m->tier[t].wait);
    }
    HELP("mrank_coord_profile_impaired", "gauge",
         "1 while a stage's pool of the profile has no live replica (degraded or refused).");
    for (int p = 0; p < c->n_profiles; p++)
        mr_prom_printf(&b, "mrank_coord_profile_impaired{profile=\"%s\"} %d\n",
                       c->profiles[p].name, m->impaired[p]);
    HELP("mrank_coord_fused_stages_total", "counter",
         "Stage pairs of the profile run as one fused pass (stages that continue).");
    for (int p = 0; p < c->n_profiles; p++)
        mr_prom_printf(&b, "mrank_coord_fused_stages_total{profile=\"%s\"} %lu\n",
                       c->profiles[p].name, m->fused[p]);
    HELP("mrank_coord_refusals_total", "counter",
         "Requests refused before they ran, by tier and reason.");
    for (int t = 0; t < c->n_tiers; t++)
        for (int r = 0; r < MR_REFUSE_N; r++)
            mr_prom_printf(&b, "mrank_coord_refusals_total{tier=\"%s\",reason=\"%s\"} %lu\n",
                           c->tiers[t].name, k_refusal[r], m->tier[t].refusals[r]);
    HELP("mrank_coord_lexical_answers_total", "counter",
         "Requests answered from their profile's pool-free (lexical) stages alone instead of "
         "refused, by tier and the reason they could not run the whole profile.");
    for (int t = 0; t < c->n_tiers; t++)
        for (int r = 0; r < MR_REFUSE_N; r++)
            mr_prom_printf(&b, "mrank_coord_lexical_answers_total{tier=\"%s\",reason=\"%s\"} "
                           "%lu\n", c->tiers[t].name, k_refusal[r], m->tier[t].lexical[r]);
    pthread_mutex_unlock(&m->mu);
    mr_prom_process(&b, "coordinator");
    return mr_prom_text_take(&b);
}
