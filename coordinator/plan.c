/* plan.c: stage planning (see coord_internal.h): the cost of a stage in token-layers, its
 * estimated wall time from the stage's cost model and the pool's parallelism, the decision to
 * run it, skip it (degraded answer) or fail the request, the number of Score calls it is
 * split into, and what the later stages need (the budget a stage's attempts leave alone);
 * whether two consecutive stages run as one fused pass (stages that continue: the pair can
 * share a pass, and the profile's "fuse" or the cost model's comparison of both ways says so).
 * The rules themselves are cascade.c's; this file feeds them the request's and the pool's
 * figures. */
#include <string.h>

#include "coord_internal.h"

#include "subarch.h"

int mr__pool_parallelism(mr_coord *c, int p) {
    if (!*c->cfg.pools[p].dns) return c->pools[p].n_ep;
    int n = atomic_load(&c->pools[p].replicas);   /* the prober's last DNS answer */
    return n > 0 ? n : 1;
}

/* Token-layers of profile stage pos over active[0..n_active) (active NULL: the first n_active
 * documents); its estimated wall time into *est_ms. */
static double stage_cost(mr__req *r, int pos, const int *active, int n_active, double *est_ms) {
    mr_coord *c = r->co;
    int si = c->cfg.profiles[r->profile].stages[pos].stage;
    const mr_cc_stage *st = &c->cfg.stages[si];
    double tl = 0;
    *est_ms = 0;
    if (st->kind == MR_CC_LEXICAL) return 0;   /* microseconds in the executor: no cost model */
    for (int i = 0; i < n_active; i++)
        tl += mr_subarch_token_layers(&st->arch, r->n_fixed,
                                      r->passage_tokens[active ? active[i] : i]);
    pthread_mutex_lock(&c->mu);
    *est_ms = mr_cost_model_estimate_ms(&c->cost[si], tl, mr__pool_parallelism(c, st->pool));
    pthread_mutex_unlock(&c->mu);
    return tl;
}

double mr__plan_request(mr__req *r, double *est_ms, double *first_ms) {
    int n_stages = r->co->cfg.profiles[r->profile].n_stages;
    double tl0 = 0;
    *est_ms = *first_ms = 0;
    for (int pos = 0; pos < n_stages; pos++) {
        double ms, tl = stage_cost(r, pos, NULL, r->n, &ms);
        *est_ms += ms;
        if (tl0 == 0) {   /* the work: the first neural stage's (a lexical one costs 0) */
            tl0 = tl;
            *first_ms = *est_ms;
        }
    }
    return tl0;
}

void mr__plan_relax(mr__req *r, int pos) {
    mr_coord *c = r->co;
    int si = c->cfg.profiles[r->profile].stages[pos].stage;
    pthread_mutex_lock(&c->mu);
    mr_cost_model_relax(&c->cost[si]);
    pthread_mutex_unlock(&c->mu);
}

mr_stage_decision mr__plan_stage(mr__req *r, int pos, const int *active, int n_active,
                                 double *est_ms, double *rem_ms) {
    mr_coord *c = r->co;
    stage_cost(r, pos, active, n_active, est_ms);
    *rem_ms = mr__req_remaining_ms(r);
    mr_stage_decision dec = mr_cascade_decide(pos, *est_ms, *rem_ms, c->cfg.safety,
                                              c->cfg.tiers[r->tier].allow_degraded);
    if (dec != MR_STAGE_RUN) mr__plan_relax(r, pos);
    return dec;
}

double mr__plan_rest_ms(mr__req *r, int pos, const int *active, int n_active) {
    mr_coord *c = r->co;
    const mr_cc_profile *pr = &c->cfg.profiles[r->profile];
    if (c->cfg.tiers[r->tier].allow_degraded || n_active <= 0) return 0;
    double rest = 0;
    int n = mr__chunk_docs(r, pos, active, n_active);   /* keep rules count documents */
    for (int q = pos + 1; q < pr->n_stages && n > 0; q++) {
        n = mr_cascade_keep_bound(&r->keep[q - 1], n);
        int si = pr->stages[q].stage;
        const mr_cc_stage *st = &c->cfg.stages[si];
        if (st->kind == MR_CC_LEXICAL) continue;
        double tl = 0;      /* n candidates of the mean width of the active ones */
        for (int i = 0; i < n_active; i++)
            tl += mr_subarch_token_layers(&st->arch, r->n_fixed, r->passage_tokens[active[i]]);
        tl *= (double)n / n_active;
        pthread_mutex_lock(&c->mu);
        rest += mr_cost_model_estimate_ms(&c->cost[si], tl, mr__pool_parallelism(c, st->pool));
        pthread_mutex_unlock(&c->mu);
    }
    return rest * (c->cfg.safety > 1 ? c->cfg.safety : 1);
}

/* The most tokens one Score call on pool p should carry: the pool's max_call_tokens, else the
 * smallest batch budget a replica reported (0: none known). batch_only: the smallest batch
 * budget whatever max_call_tokens says, when that is smaller (a call with a prune step must
 * fit one worker batch). */
static long max_call_of(mr_coord *c, int p, int batch_only) {
    const mr__pool *prt = &c->pools[p];
    long max_call = c->cfg.pools[p].max_call_tokens, batch = 0;
    pthread_mutex_lock(&c->mu);
    for (int e = 0; e < prt->n_ep; e++)
        if (prt->ep[e].info_ok && prt->ep[e].max_batch_tokens > 0 &&
            (batch <= 0 || prt->ep[e].max_batch_tokens < batch))
            batch = prt->ep[e].max_batch_tokens;
    pthread_mutex_unlock(&c->mu);
    if (max_call <= 0 || (batch_only && batch > 0 && batch < max_call)) return batch;
    return max_call;
}

/* Score calls for n candidates of `tokens` tokens in all on pool p (cascade.h's split rule). */
static int calls_of(mr_coord *c, int p, int n, long tokens) {
    return mr_cascade_n_calls(n, tokens, mr__pool_parallelism(c, p), max_call_of(c, p, 0),
                              c->cfg.pools[p].min_per_call);
}

int mr__plan_calls(mr__req *r, const mr_cc_stage *st, const int *active, int n_active) {
    long tokens = 0;
    for (int i = 0; i < n_active; i++) tokens += r->n_fixed + r->passage_tokens[active[i]];
    return calls_of(r->co, st->pool, n_active, tokens);
}

/* ---- stages that continue ---- */

/* Whether profile stages pos and pos + 1 of cfg can share one pass (coord_internal.h). */
static int fusable(const mr_coord_config *cfg, int profile, int pos) {
    const mr_cc_profile *pr = &cfg->profiles[profile];
    if (pos < 0 || pos + 1 >= pr->n_stages) return 0;
    const mr_cc_stage *a = &cfg->stages[pr->stages[pos].stage];
    const mr_cc_stage *b = &cfg->stages[pr->stages[pos + 1].stage];
    const mr_subarch *x = &a->arch, *y = &b->arch;
    if (a->kind != MR_CC_NEURAL || b->kind != MR_CC_NEURAL || a->pool != b->pool ||
        x->depth <= 0 || y->depth <= x->depth || x->ratio != y->ratio ||
        x->pooling != y->pooling || x->n_adapters != y->n_adapters)
        return 0;
    for (int i = 0; i < x->n_adapters; i++)   /* the same adapters in the same order */
        if (strcmp(x->adapters[i], y->adapters[i])) return 0;
    /* up to the shallower exit both pass through the same widths: the deeper one's compress
     * layers below that depth are exactly the shallower one's (all below its depth) */
    int k = 0;
    while (k < y->n_compress && y->compress_layers[k] < x->depth) k++;
    if (k != x->n_compress) return 0;
    for (int i = 0; i < k; i++)
        if (x->compress_layers[i] != y->compress_layers[i]) return 0;
    return 1;
}

/* Tokens a fused call at stage pos counts for document d: exact once a neural stage before
 * pos tokenized, else limits.max_tokens_per_pair (a call with a prune step runs as one worker
 * batch and is refused when larger, so an estimate may not be short). */
static long fused_row_tokens(const mr__req *r, int pos, int d) {
    if (pos > mr__first_neural(r)) return r->n_fixed + r->passage_tokens[d];   /* exact */
    return r->co->cfg.max_tokens_per_pair;
}

/* The most tokens (fused_row_tokens) of a call when active[0..n_active) is split into
 * n_calls interleaved calls, as fanout.c splits them. */
static long widest_call(const mr__req *r, int pos, const int *active, int n_active, int n_calls) {
    long most = 0;
    for (int k = 0; k < n_calls; k++) {
        long t = 0;
        for (int i = k; i < n_active; i += n_calls) t += fused_row_tokens(r, pos, active[i]);
        if (t > most) most = t;
    }
    return most;
}

int mr__plan_fuse(mr__req *r, int pos, const int *active, int n_active, mr__fuse_plan *fp) {
    mr_coord *c = r->co;
    const mr_cc_profile *pr = &c->cfg.profiles[r->profile];
    if (pr->fuse == MR_CC_FUSE_NEVER || n_active <= 0 || !fusable(&c->cfg, r->profile, pos))
        return 0;
    int sa = pr->stages[pos].stage, sb = pr->stages[pos + 1].stage;
    const mr_cc_stage *a = &c->cfg.stages[sa], *b = &c->cfg.stages[sb];
    const mr_keep_rule *keep = &r->keep[pos];
    int p = a->pool, par = mr__pool_parallelism(c, p);
    /* The deepest layer of a pass runs only K and V for every token, the rest for each row's
     * last token; a fused pass goes on after the shallower exit, so its layer dA - 1 runs in
     * full for every row. Counted as one more layer of every row (K and V are a small share
     * of a layer: 8% of mrank-tiny's, less in larger GQA models), which is what makes fusion
     * worth it only when the survivors' recomputed layers outweigh it (docs/perf.md). */
    mr_subarch below = a->arch;
    below.depth = a->arch.depth - 1;
    double tl_a = 0, tl_b = 0, tl_last = 0;
    long tokens = 0, fused_tokens = 0;
    for (int i = 0; i < n_active; i++) {
        int d = active[i], np = r->passage_tokens[d];
        double x = mr_subarch_token_layers(&a->arch, r->n_fixed, np);
        tl_a += x;
        tl_last += below.depth > 0 ? x - mr_subarch_token_layers(&below, r->n_fixed, np) : x;
        tl_b += mr_subarch_token_layers(&b->arch, r->n_fixed, np);
        tokens += r->n_fixed + np;
        fused_tokens += fused_row_tokens(r, pos, d);
    }
    /* split: stage a over all, stage b over the keep rule's count bound (min_score cannot be
     * known before the scores: counted as keeping all, as mr__plan_rest_ms does), each over
     * the replicas its own calls reach */
    int kept = mr_cascade_keep_bound(keep, n_active);
    int calls_a = calls_of(c, p, n_active, tokens);
    int calls_b = calls_of(c, p, kept, (long)((double)tokens * kept / n_active));
    /* fused: one pass per call, whose rows must fit one worker batch (the prune step makes
     * it run alone and whole); a call of n_j rows takes at most mr_cascade_fused_rows of them
     * past the shallower exit (the interleaved split gives every call a similar mix) */
    int calls_f = calls_of(c, p, n_active, fused_tokens);
    long limit = max_call_of(c, p, 1);
    while (calls_f < n_active && limit > 0 && widest_call(r, pos, active, n_active, calls_f) > limit)
        calls_f++;
    if (limit > 0 && widest_call(r, pos, active, n_active, calls_f) > limit) return 0;
    long rows_on = 0;
    for (int k = 0; k < calls_f; k++) {
        int n_j = n_active / calls_f + (k < n_active % calls_f);
        rows_on += mr_cascade_fused_rows(keep, n_active, n_j);
    }
    double mean_extra = (tl_b - tl_a) / n_active;
    /* Both ways run the same model's layers on the same pool: their compute is valued at one
     * speed, the mean of the two stages' learnt ones. The learnt speeds differ only by noise
     * and batching; valuing a layer at one stage's speed on one side and at the other's on
     * the other side would let that noise decide (measured: a split chosen for a pair whose
     * fused pass computes less, while the machine was loaded). Each way keeps its own round
     * trips. */
    pthread_mutex_lock(&c->mu);
    mr_cost_model ma = c->cost[sa], mb = c->cost[sb];
    int busy = 0;   /* this coordinator's calls in flight on the pool (they queue ahead) */
    for (int e = 0; e < c->pools[p].n_ep; e++) busy |= c->pools[p].ep[e].inflight_calls > 0;
    pthread_mutex_unlock(&c->mu);
    ma.ns_per_tl = mb.ns_per_tl = 0.5 * (ma.ns_per_tl + mb.ns_per_tl);
    double tl_kept = tl_b * kept / n_active, tl_on = mean_extra * rows_on;
    double split_ms = mr_cost_model_estimate_ms(&ma, tl_a, calls_a < par ? calls_a : par) +
                      mr_cost_model_estimate_ms(&mb, tl_kept, calls_b < par ? calls_b : par);
    fp->est_ms = mr_cost_model_fused_ms(&ma, &mb, tl_a + tl_last, tl_on,
                                        calls_f < par ? calls_f : par);
    fp->n_calls = calls_f;
    /* auto: the wall estimates on an idle pool, the token-layers on a busy one (cascade.h;
     * measured at saturation, docs/perf.md: on mrank-tiny-d8 at exit 3 keeping 4 of 16, where
     * the fused pass computes more, the wall estimates chose fusion for every request and it
     * ran at 0.88 of split's requests/s) */
    if (pr->fuse == MR_CC_FUSE_AUTO &&
        !mr_cascade_fuse_auto(split_ms, fp->est_ms, tl_a + tl_kept, tl_a + tl_last + tl_on, busy))
        return 0;
    /* the pair must fit the budget as a whole; else stage a runs alone (b may be skipped) */
    return mr_cascade_decide(pos, fp->est_ms, mr__req_remaining_ms(r), c->cfg.safety, 0) ==
           MR_STAGE_RUN;
}
