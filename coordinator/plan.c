/* plan.c: stage planning (see coord_internal.h): the cost of a stage in token-layers, its
 * estimated wall time from the stage's cost model and the pool's parallelism, the decision to
 * run it, skip it (degraded answer) or fail the request, the number of Score calls it is
 * split into, and what the later stages need (the budget a stage's attempts leave alone). The rules themselves are cascade.c's; this file feeds them the request's and the
 * pool's figures. */
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
    int n = n_active;
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

int mr__plan_calls(mr__req *r, const mr_cc_stage *st, const int *active, int n_active) {
    mr_coord *c = r->co;
    const mr_cc_pool *pc = &c->cfg.pools[st->pool];
    const mr__pool *prt = &c->pools[st->pool];
    long tokens = 0;
    for (int i = 0; i < n_active; i++) tokens += r->n_fixed + r->passage_tokens[active[i]];
    long max_call = pc->max_call_tokens;
    if (max_call <= 0) {    /* the smallest batch budget a replica reported */
        pthread_mutex_lock(&c->mu);
        for (int e = 0; e < prt->n_ep; e++)
            if (prt->ep[e].info_ok && prt->ep[e].max_batch_tokens > 0 &&
                (max_call <= 0 || prt->ep[e].max_batch_tokens < max_call))
                max_call = prt->ep[e].max_batch_tokens;
        pthread_mutex_unlock(&c->mu);
    }
    return mr_cascade_n_calls(n_active, tokens, mr__pool_parallelism(c, st->pool), max_call,
                              pc->min_per_call);
}
