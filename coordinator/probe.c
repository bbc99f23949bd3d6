/* probe.c: the coordinator's prober thread (see coord_internal.h). Every 2 s (200 ms while
 * not ready) it resolves each DNS pool's name (the replica count the planner uses; a changed
 * address set renews the pool's channel, since gRPC would not look again until a connection
 * fails), then probes every replica not still being probed, each on a thread of its own:
 * Worker Info (layers, batch budget, measured speed), a warm-up once per stage of its pool
 * (two small Score calls: the first pays the worker's lazy start-up, the second seeds the
 * stage's cost model), and for a replica the fan-out ejected (down_until, replicas.c) a small
 * Score call that brings it back before its ejection ends (Worker Info alone would bring back
 * a replica whose Score hangs). After waiting at most ROUND_WAIT_MS for the probes, it sets
 * the health status: SERVING once every pool has a replica that answered and warmed up. A
 * replica whose calls hang holds only its own probe; shutdown cancels the probes' calls. */
#define _GNU_SOURCE
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coord_internal.h"
#include "rpc_methods.h"
#include "subarch_pb.h"
#include "log.h"

int mr__dns_split(const char *target, char *host, size_t hcap, char *port, size_t pcap,
                  mr_err *err) {
    const char *t = target;
    if (strncmp(t, "dns:", 4)) return mr_err_set(err, MR_EINVAL, "'%s' is not a dns: target", target);
    t += 4;
    if (!strncmp(t, "//", 2)) {             /* authority (the DNS server), unused: resolv.conf */
        const char *slash = strchr(t + 2, '/');
        if (!slash) return mr_err_set(err, MR_EINVAL, "'%s': no name after the authority", target);
        t = slash + 1;
    }
    const char *colon = NULL, *hend;
    if (*t == '[') {
        const char *rb = strchr(t, ']');
        if (!rb) return mr_err_set(err, MR_EINVAL, "'%s': unterminated [address]", target);
        t++;
        hend = rb;
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = strrchr(t, ':');
        hend = colon ? colon : t + strlen(t);
    }
    const char *p = colon ? colon + 1 : "443";
    if (hend == t || (size_t)(hend - t) >= hcap || !*p || strlen(p) >= pcap)
        return mr_err_set(err, MR_EINVAL, "'%s': bad host or port", target);
    memcpy(host, t, (size_t)(hend - t));
    host[hend - t] = 0;
    snprintf(port, pcap, "%s", p);
    return 0;
}

static int cmp_addr(const void *a, const void *b) {
    return memcmp(a, b, sizeof(struct sockaddr_storage));
}

int mr__dns_count(const char *host, const char *port, int *n, uint64_t *sig, mr_err *err) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    *n = 0;
    *sig = 0;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc == EAI_NONAME || rc == EAI_NODATA) return 0;   /* a name with no replica */
    if (rc) return mr_err_set(err, MR_EIO, "resolving %s: %s", host, gai_strerror(rc));
    int cap = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) cap++;
    struct sockaddr_storage *v = calloc((size_t)cap + 1, sizeof *v);
    if (!v) {
        freeaddrinfo(res);
        return mr_err_set(err, MR_ENOMEM, "resolving %s: out of memory", host);
    }
    int k = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_addrlen <= sizeof *v) memcpy(&v[k++], a->ai_addr, a->ai_addrlen);
    freeaddrinfo(res);
    qsort(v, (size_t)k, sizeof *v, cmp_addr);
    uint64_t h = 1469598103934665603ULL;   /* FNV-1a over the sorted distinct addresses */
    for (int i = 0; i < k; i++) {
        if (i && !cmp_addr(&v[i], &v[i - 1])) continue;
        ++*n;
        for (size_t b = 0; b < sizeof *v; b++) h = (h ^ ((const uint8_t *)&v[i])[b]) * 1099511628211ULL;
    }
    free(v);
    *sig = h;
    return 0;
}

/* Resolves each DNS pool's name: replicas for the planner and the metric; a changed address
 * set renews the channel so that gRPC resolves again and balances over the new set. A failed
 * lookup keeps the last count. Static pools report their address count. */
static void resolve_pools(mr_coord *c) {
    for (int p = 0; p < c->cfg.n_pools; p++) {
        const mr_cc_pool *pc = &c->cfg.pools[p];
        mr__pool *pr = &c->pools[p];
        if (!*pc->dns) {
            mr_coord_metrics_replicas(c->metrics, p, pr->n_ep);
            continue;
        }
        char host[256], port[32];
        int n;
        uint64_t sig;
        mr_err err = {0};
        if (mr__dns_split(pc->dns, host, sizeof host, port, sizeof port, &err) ||
            mr__dns_count(host, port, &n, &sig, &err)) {
            mr_log(MR_LOG_WARN, "pool_resolve_failed", "pool '%s': %s\n", pc->name, err.msg);
            continue;
        }
        int was = atomic_exchange(&pr->replicas, n);
        mr_coord_metrics_replicas(c->metrics, p, n);
        if (sig == pr->addr_sig) continue;
        int first = pr->addr_sig == 0;
        pr->addr_sig = sig;
        mr_log(MR_LOG_INFO, "pool_resolved", "pool '%s': %s resolves to %d address%s (was %d)\n",
                pc->name, host, n, n == 1 ? "" : "es", was);
        if (!first && mr_rpc_channel_renew(pr->ep[0].ch, &err))
            mr_log(MR_LOG_WARN, "pool_renew_failed", "pool '%s': %s\n", pc->name, err.msg);
    }
}

/* One small Score call of stage s to endpoint e of its pool, within timeout_ms. seed 1: a
 * first observation of the stage's speed seeds its cost model; seed < 0: an ejected
 * replica's check, whose failure (expected while it stays broken) is logged at debug level
 * only (its ejection was logged). 0 when it answered. */
static int score_check(mr_coord *c, int s, int e, double timeout_ms, int seed) {
    static char *const passages[] = {
        "Warm-up passage one: the coordinator checks this replica before serving.",
        "Warm-up passage two, a little longer than the first, so rows differ in length.",
        "Three.", "Warm-up passage four closes the batch."};
    const mr_cc_stage *st = &c->cfg.stages[s];
    mr__endpoint *ep = &c->pools[st->pool].ep[e];
    Mrank__V1__ScoreRequest sr = MRANK__V1__SCORE_REQUEST__INIT;
    mr_subarch_pb arch;
    mr_subarch_to_pb(&arch, &st->arch);
    sr.query = "what does the warm-up check?";
    sr.arch = &arch.msg;
    sr.n_passages = 4;
    sr.passages = (char **)passages;
    uint8_t buf[2048];
    size_t len = mrank__v1__score_request__get_packed_size(&sr);
    if (len > sizeof buf) return -1;
    mrank__v1__score_request__pack(&sr, buf);
    uint8_t *resp = NULL;
    size_t rlen = 0;
    grpc_status_code code;
    char msg[256];
    double t0 = mr__now_ms();
    mr_rpc_opts o = {.timeout_ms = timeout_ms, .cancel = c->probe_cancel};
    if (mr_rpc_unary_opts(ep->ch, MR_METHOD_SCORE, buf, len, &o, &resp, &rlen, &code, msg,
                          sizeof msg)) {
        mr_log(seed < 0 ? MR_LOG_DEBUG : MR_LOG_WARN, "probe_score_failed",
               "%s of stage '%s' on %s: %s\n", seed < 0 ? "ejection check" : "warm-up",
               st->name, ep->target, msg);
        return -1;
    }
    double wall = mr__now_ms() - t0;
    Mrank__V1__ScoreResponse *r = mrank__v1__score_response__unpack(NULL, rlen, resp);
    free(resp);
    if (!r) return -1;
    if (seed > 0) {
        double tl = 0;
        for (size_t i = 0; i < r->n_passages; i++) {
            int tok = (int)r->passages[i]->tokens;
            int pt = (int)r->passages[i]->passage_tokens;
            tl += mr_subarch_token_layers(&st->arch, tok - pt, pt);
        }
        pthread_mutex_lock(&c->mu);
        if (c->cost[s].n_obs == 0 && tl > 0 && r->compute_ms > 0) {
            c->cost[s].ns_per_tl = r->compute_ms * 1e6 / tl;
            c->cost[s].overhead_ms = wall > r->compute_ms ? wall - r->compute_ms : 0;
            c->cost[s].n_obs = 1;
        }
        pthread_mutex_unlock(&c->mu);
    }
    mrank__v1__score_response__free_unpacked(r, NULL);
    return 0;
}

/* Two checks per stage of pool p on endpoint e: the first pays the worker's lazy start-up
 * (kernels, buffers) before a client does, the second seeds the stage's cost model with a
 * measured speed. 0 when every call succeeded. */
static int warm_up(mr_coord *c, int p, int e) {
    for (int s = 0; s < c->cfg.n_stages; s++)
        if (c->cfg.stages[s].pool == p)
            for (int round = 0; round < 2; round++)
                if (score_check(c, s, e, c->cfg.warmup_timeout_ms, round == 1)) return -1;
    return 0;
}

/* Whether an ejected replica of pool p scores again: one check of the pool's first stage,
 * bounded by MR_ATTEMPT_EST_FACTOR x the stage's estimate for it (at least BACK_FLOOR_MS, at
 * most the warm-up's timeout). Worker Info alone proves too little: a replica whose Score
 * hangs still answers it, and would be back in the fan-out after every probe. */
#define BACK_FLOOR_MS 1000.0
static int scores_again(mr_coord *c, int p, int e) {
    for (int s = 0; s < c->cfg.n_stages; s++) {
        if (c->cfg.stages[s].pool != p) continue;
        /* the check's 4 rows: about 16 query and template tokens and 16 passage tokens each */
        double tl = 4 * mr_subarch_token_layers(&c->cfg.stages[s].arch, 16, 16);
        pthread_mutex_lock(&c->mu);
        double t = MR_ATTEMPT_EST_FACTOR * mr_cost_model_estimate_ms(&c->cost[s], tl, 1);
        pthread_mutex_unlock(&c->mu);
        if (!(t >= BACK_FLOOR_MS)) t = BACK_FLOOR_MS;
        if (t > c->cfg.warmup_timeout_ms) t = c->cfg.warmup_timeout_ms;
        return score_check(c, s, e, t, -1) == 0;
    }
    return 1;   /* a pool no stage uses: nothing to check */
}

/* One replica's probe: Worker Info, the warm-up until it succeeds once, and for an ejected
 * replica the check that it scores again. */
typedef struct probe_job {
    mr_coord *c;
    int p, e;
} probe_job;

static void *probe_endpoint(void *arg) {
    probe_job *j = arg;
    mr_coord *c = j->c;
    mr__pool *pr = &c->pools[j->p];
    mr__endpoint *ep = &pr->ep[j->e];
    uint8_t *resp = NULL;
    size_t rlen = 0;
    grpc_status_code st;
    char msg[128];
    mr_rpc_opts o = {.timeout_ms = 1000, .cancel = c->probe_cancel};
    int rc = mr_rpc_unary_opts(ep->ch, MR_METHOD_WORKER_INFO, NULL, 0, &o, &resp, &rlen, &st,
                               msg, sizeof msg);
    Mrank__V1__WorkerInfoResponse *wi =
        rc ? NULL : mrank__v1__worker_info_response__unpack(NULL, rlen, resp);
    free(resp);
    pthread_mutex_lock(&c->mu);
    int warmed = wi ? ep->warmed : 0, ready = c->ready;
    double down_until = ep->down_until;
    pthread_mutex_unlock(&c->mu);
    if (wi && !warmed) warmed = warm_up(c, j->p, j->e) == 0;
    int back = wi && warmed && down_until > mr__now_ms() && scores_again(c, j->p, j->e);
    pthread_mutex_lock(&c->mu);
    ep->info_ok = wi != NULL;
    ep->warmed = warmed;
    back = back && ep->down_until == down_until;    /* not ejected again meanwhile */
    if (back) ep->down_until = 0;   /* it scores: an ejected replica is back before its time */
    if (wi) {
        ep->ns_per_tl = wi->ns_per_token_layer;
        ep->num_layers = (int)wi->num_layers;
        ep->max_batch_tokens = (int)wi->max_batch_tokens;
        if (!*c->model && wi->model) snprintf(c->model, sizeof c->model, "%s", wi->model);
        c->untrained = wi->untrained;
        if (wi->dtype && *wi->dtype) snprintf(c->dtype, sizeof c->dtype, "%s", wi->dtype);
    }
    pthread_mutex_unlock(&c->mu);
    if (back)
        mr_log(MR_LOG_INFO, "replica_back", "ejected replica %s scores again: back in its pool\n",
                ep->target);
    if (wi) {
        for (int s = 0; s < c->cfg.n_stages; s++)
            if (c->cfg.stages[s].pool == j->p && wi->num_layers &&
                (uint32_t)c->cfg.stages[s].arch.depth > wi->num_layers && !ready)
                mr_log(MR_LOG_ERROR, "stage_too_deep", "%s: stages[%d] '%s': depth %d > the %u "
                        "layers of the model at %s\n", c->cfg.path, s, c->cfg.stages[s].name,
                        c->cfg.stages[s].arch.depth, wi->num_layers, ep->target);
        mrank__v1__worker_info_response__free_unpacked(wi, NULL);
    }
    pthread_mutex_lock(&c->mu);
    ep->probing = 0;
    c->n_probing--;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    free(j);
    return NULL;
}

/* Starts a probe of every replica not still being probed, waits for them at most
 * ROUND_WAIT_MS (a replica whose calls hang delays neither the others nor the health), seeds
 * cost models from Worker Info until observations exist, and sets health: SERVING iff every
 * pool has a replica that answered and warmed up. */
#define ROUND_WAIT_MS 1500
static void probe_once(mr_coord *c) {
    resolve_pools(c);
    for (int p = 0; p < c->cfg.n_pools; p++)
        for (int e = 0; e < c->pools[p].n_ep; e++) {
            pthread_mutex_lock(&c->mu);
            int busy = c->pools[p].ep[e].probing;
            if (!busy) c->pools[p].ep[e].probing = 1, c->n_probing++;
            pthread_mutex_unlock(&c->mu);
            if (busy) continue;
            probe_job *j = malloc(sizeof *j);
            pthread_t th;
            pthread_attr_t at;
            int started = 0;
            if (j) {
                *j = (probe_job){c, p, e};
                if (!pthread_attr_init(&at)) {
                    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
                    started = pthread_create(&th, &at, probe_endpoint, j) == 0;
                    pthread_attr_destroy(&at);
                }
                if (!started) probe_endpoint(j);    /* no thread: probe it here */
            } else {
                pthread_mutex_lock(&c->mu);
                c->pools[p].ep[e].probing = 0;
                c->n_probing--;
                pthread_mutex_unlock(&c->mu);
            }
        }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ROUND_WAIT_MS % 1000 * 1000000L;
    ts.tv_sec += ROUND_WAIT_MS / 1000 + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&c->mu);
    while (c->n_probing > 0 && !c->stopping && pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0) {}
    pthread_mutex_unlock(&c->mu);
    int all_ok = 1;
    pthread_mutex_lock(&c->mu);
    for (int p = 0; p < c->cfg.n_pools; p++) {
        mr__pool *pr = &c->pools[p];
        int any = 0, ns_n = 0;
        double ns_sum = 0;
        for (int e = 0; e < pr->n_ep; e++) {
            if (pr->ep[e].info_ok && pr->ep[e].warmed) any = 1;
            if (pr->ep[e].info_ok && pr->ep[e].ns_per_tl > 0) {
                ns_sum += pr->ep[e].ns_per_tl;
                ns_n++;
            }
        }
        if (ns_n)
            for (int s = 0; s < c->cfg.n_stages; s++)
                if (c->cfg.stages[s].pool == p && c->cost[s].n_obs == 0)
                    c->cost[s].ns_per_tl = ns_sum / ns_n;
        all_ok &= any;
    }
    int was = c->ready, stopping = c->stopping;
    c->ready = all_ok;
    pthread_mutex_unlock(&c->mu);
    if (!stopping && was != all_ok) {
        mr_rpc_server_set_health(c->srv, "", all_ok);
        mr_rpc_server_set_health(c->srv, MR_SERVICE_RANKER, all_ok);
        mr_log(MR_LOG_INFO, "health", "%s\n",
                all_ok ? "every pool answered: SERVING"
                       : "a pool has no live replica: NOT_SERVING");
    }
}

static void *prober_main(void *arg) {
    mr_coord *c = arg;
    for (;;) {
        probe_once(c);
        pthread_mutex_lock(&c->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long step_ms = c->ready ? 2000 : 200;
        ts.tv_nsec += step_ms % 1000 * 1000000L;
        ts.tv_sec += step_ms / 1000 + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        while (!c->stopping && pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0) {}
        int stop = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (stop) return NULL;
    }
}

int mr__prober_start(mr_coord *c, mr_err *err) {
    if (mr_rpc_cancel_new(&c->probe_cancel))
        return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory for the prober");
    if (pthread_create(&c->prober, NULL, prober_main, c)) {
        mr_rpc_cancel_free(c->probe_cancel);
        c->probe_cancel = NULL;
        return mr_err_set(err, MR_ENOMEM, "coordinator: cannot start the prober thread");
    }
    c->prober_started = 1;
    return 0;
}

void mr__prober_stop(mr_coord *c) {
    if (!c->prober_started) return;
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->prober, NULL);
    mr_rpc_cancel_fire(c->probe_cancel);     /* a warm-up of a hung replica ends now */
    pthread_mutex_lock(&c->mu);
    while (c->n_probing > 0) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    mr_rpc_cancel_free(c->probe_cancel);
    c->probe_cancel = NULL;
    c->prober_started = 0;
}
