/* loadgen.c: open-loop Poisson (or closed-loop) load generator for an mrank cluster, over the
 * project's asynchronous gRPC client (mr_rpc_unary_async).
 *
 *   loadgen --addr HOST:PORT [--mode rerank|score] [--rate R | --concurrency C]
 *           [--duration S] [--warmup-s S] [--docs N] [--tier T] [--profile P]
 *           [--depth D] [--compress-ratio R] [--compress-layers L,L] [--max-len N]
 *           [--timeout-ms T] [--seed S] [--label TEXT]
 *
 * Open loop (--rate): arrival times are a Poisson process (exponential gaps, fixed seed) of rate
 * R per second for S seconds, independent of completions; each request is started at its
 * scheduled time and its latency is measured from that scheduled time to its completion, so a
 * sender that falls behind is charged to the server (no coordinated omission). Closed loop
 * (--concurrency C): C requests are kept in flight for S seconds (saturation throughput).
 *
 * rerank mode: /mrank.v1.Ranker/Rerank with N documents, tier/profile as given.
 * score mode: /mrank.v1.Worker/Score straight to one worker with the same query and documents,
 * at the sub-architecture --depth/--compress-ratio/--compress-layers and --max-len (set these to
 * the coordinator stage's values and the config's max_tokens_per_pair): the coordinator's
 * overhead is the difference between the two at the same low rate.
 *
 * Documents come from a fixed list of sentences: document i is 1..6 sentences long (varied
 * lengths), and request k takes N consecutive documents starting at a k-dependent offset of a
 * pool of 256, so requests differ but every run sends the same bytes.
 *
 * Output: a human-readable summary and one line "JSON {...}" with sent, ok, errors by status
 * code, achieved throughput, exact p50/p90/p99/max latency (ms, over OK requests, sorted from
 * all samples, nearest rank) and the degraded count; also client latency minus the
 * server-reported time (Score: queue_ms + compute_ms; Rerank: total_ms), i.e. transport and
 * gRPC overhead, and for Rerank total_ms minus the stages' ms (the coordinator's own time);
 * and p50/p99 latency of the refusals (RESOURCE_EXHAUSTED: how fast overload is answered).
 * Requests that arrive during --warmup-s are sent but left out of every figure. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/status.h>

#include "mrank.pb-c.h"
#include "prng.h"
#include "rpc.h"
#include "rpc_methods.h"
#include "rpc_status.h"

#define N_VARIANTS 32
#define DOC_POOL 256

static const char *QUERY = "what is the capital of France and which river flows through it?";

static const char *SENTENCES[] = {
    "Paris is the capital and most populous city of France.",
    "The Seine flows through Paris before reaching the English Channel at Le Havre.",
    "Berlin is the capital of Germany and its largest city by population.",
    "The population of China is over 1.4 billion people.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The Eiffel Tower was built for the 1889 World's Fair.",
    "Lyon sits at the confluence of the Rhone and the Saone.",
    "Mount Everest is the highest mountain above sea level.",
    "Python is a programming language that emphasises readability.",
    "The Louvre is the world's most visited museum.",
    "The Nile is often regarded as the longest river in the world.",
    "Madrid is the capital of Spain, located in the centre of the Iberian Peninsula.",
    "France is a country in Western Europe with several overseas regions.",
    "The Danube passes through ten countries on its way to the Black Sea.",
    "A transformer model uses self-attention to weigh the tokens of its input.",
    "Rome was founded, according to legend, in 753 BC.",
};
#define N_SENT (sizeof SENTENCES / sizeof SENTENCES[0])

typedef struct {
    double sched;     /* scheduled start, s since t0 */
    double lat_ms;    /* completion - sched */
    int status;       /* grpc status, -1 = not completed */
    int degraded;
    int warm;         /* in the warm-up window: excluded */
    double srv_ms;    /* server-reported time: Score queue_ms + compute_ms; Rerank total_ms */
    double inner_ms;  /* Rerank: total_ms - sum of stage ms (coordinator's own time); else 0 */
} sample;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
    sample *s;
    int mode_rerank;
    struct timespec t0;
    double last_done;  /* s since t0 */
} state;

static state G;

typedef struct {
    int idx;
} req_ctx;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - G.t0.tv_sec) + (double)(t.tv_nsec - G.t0.tv_nsec) * 1e-9;
}

static uint64_t rng_state;
static double rng_unit(void) { return mr_prng_unit(&rng_state); }

static void on_done(void *user, grpc_status_code status, const char *msg, const uint8_t *resp,
                    size_t resp_len) {
    (void)msg;
    int idx = (int)(intptr_t)user;
    double t = now_s();
    int deg = 0;
    double srv = NAN, inner = NAN;
    if (status == GRPC_STATUS_OK && G.mode_rerank) {
        Mrank__V1__RerankResponse *r = mrank__v1__rerank_response__unpack(NULL, resp_len, resp);
        if (r) {
            deg = r->degraded ? 1 : 0;
            srv = r->total_ms;
            inner = r->total_ms;
            for (size_t i = 0; i < r->n_stages; i++) inner -= r->stages[i]->ms;
            mrank__v1__rerank_response__free_unpacked(r, NULL);
        } else {
            status = GRPC_STATUS_DATA_LOSS; /* undecodable answer */
        }
    } else if (status == GRPC_STATUS_OK) {
        Mrank__V1__ScoreResponse *r = mrank__v1__score_response__unpack(NULL, resp_len, resp);
        if (r) {
            srv = r->queue_ms + r->compute_ms;
            mrank__v1__score_response__free_unpacked(r, NULL);
        } else {
            status = GRPC_STATUS_DATA_LOSS;
        }
    }
    pthread_mutex_lock(&G.mu);
    sample *s = &G.s[idx];
    s->lat_ms = (t - s->sched) * 1e3;
    s->status = (int)status;
    s->degraded = deg;
    s->srv_ms = srv;
    s->inner_ms = inner;
    if (t > G.last_done) G.last_done = t;
    G.inflight--;
    pthread_cond_broadcast(&G.cv);
    pthread_mutex_unlock(&G.mu);
}

static char *make_doc(int i) {
    int n_sent = 1 + (int)((i * 7u + 3u) % 6u); /* 1..6 sentences */
    size_t cap = 64;
    for (int k = 0; k < n_sent; k++) cap += strlen(SENTENCES[(i * 5 + k * 3) % N_SENT]) + 1;
    char *d = malloc(cap);
    if (!d) return NULL;
    int off = snprintf(d, cap, "[%d] ", i);
    for (int k = 0; k < n_sent; k++)
        off += snprintf(d + off, cap - (size_t)off, "%s%s", k ? " " : "",
                        SENTENCES[(i * 5 + k * 3) % N_SENT]);
    return d;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double pct(const double *v, size_t n, double p) {
    if (!n) return NAN;
    size_t r = (size_t)ceil(p / 100.0 * (double)n);
    if (r < 1) r = 1;
    if (r > n) r = n;
    return v[r - 1];
}

static const char *code_name(int c) {
    return c < 0 ? "CLIENT_START_FAILED" : mr_rpc_status_name(c);
}

static void usage(FILE *f) {
    fputs("usage: loadgen --addr HOST:PORT [--mode rerank|score] [--rate R | --concurrency C]\n"
          "  [--duration S] [--warmup-s S] [--docs N] [--tier T] [--profile P]\n"
          "  [--depth D] [--compress-ratio R] [--compress-layers L[,L]] [--max-len N]\n"
          "  [--timeout-ms T] [--seed S] [--max-outstanding N] [--label TEXT]\n",
          f);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"addr", 1, 0, 'a'},        {"mode", 1, 0, 'm'},         {"rate", 1, 0, 'r'},
        {"concurrency", 1, 0, 'c'}, {"duration", 1, 0, 'd'},     {"warmup-s", 1, 0, 'w'},
        {"docs", 1, 0, 'n'},        {"tier", 1, 0, 't'},         {"profile", 1, 0, 'p'},
        {"depth", 1, 0, 'D'},       {"compress-ratio", 1, 0, 'R'},
        {"compress-layers", 1, 0, 'L'}, {"max-len", 1, 0, 'M'}, {"timeout-ms", 1, 0, 'T'},
        {"seed", 1, 0, 's'},        {"max-outstanding", 1, 0, 'O'}, {"label", 1, 0, 'l'},
        {"help", 0, 0, 'h'},        {0, 0, 0, 0}};
    const char *addr = NULL, *mode = "rerank", *tier = "", *profile = "", *label = "";
    double rate = 0, duration = 5, warmup = 0, timeout_ms = 10000;
    int conc = 0, n_docs = 32, depth = 8, ratio = 1, max_len = 0, max_out = 4096;
    uint32_t clayers[8];
    size_t n_clayers = 0;
    uint64_t seed = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'a': addr = optarg; break;
        case 'm': mode = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'c': conc = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'n': n_docs = atoi(optarg); break;
        case 't': tier = optarg; break;
        case 'p': profile = optarg; break;
        case 'D': depth = atoi(optarg); break;
        case 'R': ratio = atoi(optarg); break;
        case 'L': {
            char *p = optarg;
            while (*p && n_clayers < 8) {
                clayers[n_clayers++] = (uint32_t)strtoul(p, &p, 10);
                if (*p == ',') p++;
                else break;
            }
            break;
        }
        case 'M': max_len = atoi(optarg); break;
        case 'T': timeout_ms = atof(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'O': max_out = atoi(optarg); break;
        case 'l': label = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int rerank = strcmp(mode, "rerank") == 0;
    if (!addr || (!rerank && strcmp(mode, "score")) || (rate <= 0) == (conc <= 0) ||
        n_docs < 1 || duration <= 0 || warmup < 0 || warmup >= duration) {
        usage(stderr);
        return 2;
    }

    /* documents and N_VARIANTS pre-packed requests */
    char *pool[DOC_POOL];
    for (int i = 0; i < DOC_POOL; i++)
        if (!(pool[i] = make_doc(i))) return 1;
    uint8_t *rq_buf[N_VARIANTS];
    size_t rq_len[N_VARIANTS];
    for (int v = 0; v < N_VARIANTS; v++) {
        int off = (v * 37) % DOC_POOL;
        if (rerank) {
            Mrank__V1__Document *dv = calloc((size_t)n_docs, sizeof *dv);
            Mrank__V1__Document **dp = calloc((size_t)n_docs, sizeof *dp);
            if (!dv || !dp) return 1;
            for (int i = 0; i < n_docs; i++) {
                mrank__v1__document__init(&dv[i]);
                dv[i].text = pool[(off + i) % DOC_POOL];
                dp[i] = &dv[i];
            }
            Mrank__V1__RerankRequest rq = MRANK__V1__RERANK_REQUEST__INIT;
            rq.query = (char *)QUERY;
            rq.n_documents = (size_t)n_docs;
            rq.documents = dp;
            rq.tier = (char *)tier;
            rq.profile = (char *)profile;
            rq_len[v] = mrank__v1__rerank_request__get_packed_size(&rq);
            rq_buf[v] = malloc(rq_len[v] + 1);
            if (!rq_buf[v]) return 1;
            mrank__v1__rerank_request__pack(&rq, rq_buf[v]);
            free(dv);
            free(dp);
        } else {
            char **ps = calloc((size_t)n_docs, sizeof *ps);
            if (!ps) return 1;
            for (int i = 0; i < n_docs; i++) ps[i] = pool[(off + i) % DOC_POOL];
            Mrank__V1__SubArch arch = MRANK__V1__SUB_ARCH__INIT;
            arch.depth = (uint32_t)depth;
            arch.compress_ratio = (uint32_t)ratio;
            arch.n_compress_layers = n_clayers;
            arch.compress_layers = clayers;
            Mrank__V1__ScoreRequest rq = MRANK__V1__SCORE_REQUEST__INIT;
            rq.query = (char *)QUERY;
            rq.n_passages = (size_t)n_docs;
            rq.passages = ps;
            rq.arch = &arch;
            rq.max_len = (uint32_t)max_len;
            rq_len[v] = mrank__v1__score_request__get_packed_size(&rq);
            rq_buf[v] = malloc(rq_len[v] + 1);
            if (!rq_buf[v]) return 1;
            mrank__v1__score_request__pack(&rq, rq_buf[v]);
            free(ps);
        }
    }
    const char *method = rerank ? MR_METHOD_RERANK : MR_METHOD_SCORE;

    mr_rpc_channel *chn = NULL;
    mr_err err = {0};
    if (mr_rpc_channel_new(&chn, addr, &err)) {
        fprintf(stderr, "loadgen: %s\n", err.msg);
        return 1;
    }
    size_t cap = rate > 0 ? (size_t)(rate * duration * 1.5 + 1000) : 1u << 20;
    G.s = calloc(cap, sizeof *G.s);
    if (!G.s) return 1;
    pthread_mutex_init(&G.mu, NULL);
    pthread_cond_init(&G.cv, NULL);
    G.mode_rerank = rerank;
    rng_state = seed;
    mr_rpc_opts ro = {.timeout_ms = timeout_ms, .wait_for_ready = 1, .traceparent = NULL};

    size_t n = 0, skipped = 0;
    double max_lag = 0;
    clock_gettime(CLOCK_MONOTONIC, &G.t0);
    double next = 0;
    for (;;) {
        double t;
        if (rate > 0) {
            next += -log(1.0 - rng_unit()) / rate;
            if (next >= duration) break;
            struct timespec ts = G.t0;
            double whole = floor(next);
            ts.tv_sec += (time_t)whole;
            ts.tv_nsec += (long)((next - whole) * 1e9);
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
            t = next;
            double lag = now_s() - t;
            if (lag > max_lag) max_lag = lag;
            pthread_mutex_lock(&G.mu);
            if (G.inflight >= max_out) { /* client-side cap: counted, never sent */
                pthread_mutex_unlock(&G.mu);
                skipped++;
                continue;
            }
        } else {
            pthread_mutex_lock(&G.mu);
            while (G.inflight >= conc) pthread_cond_wait(&G.cv, &G.mu);
            t = now_s();
            if (t >= duration) {
                pthread_mutex_unlock(&G.mu);
                break;
            }
        }
        if (n == cap) {
            pthread_mutex_unlock(&G.mu);
            break;
        }
        size_t idx = n++;
        G.s[idx].sched = t;
        G.s[idx].status = -1;
        G.s[idx].warm = t < warmup;
        G.inflight++;
        pthread_mutex_unlock(&G.mu);
        int v = (int)(mr_prng_next(&rng_state) % N_VARIANTS);
        if (mr_rpc_unary_async(chn, method, rq_buf[v], rq_len[v], &ro, on_done,
                               (void *)(intptr_t)idx)) {
            pthread_mutex_lock(&G.mu);
            G.s[idx].status = 99;
            G.s[idx].lat_ms = 0;
            G.inflight--;
            pthread_mutex_unlock(&G.mu);
        }
    }
    double send_end = now_s();
    pthread_mutex_lock(&G.mu);
    while (G.inflight > 0) pthread_cond_wait(&G.cv, &G.mu);
    pthread_mutex_unlock(&G.mu);
    mr_rpc_channel_free(chn);

    /* statistics over the measured window (arrivals at or after warm-up) */
    size_t sent = 0, ok = 0, degraded = 0, by_code[101] = {0};
    double *lat = malloc((n + 1) * sizeof *lat);
    double *xport = malloc((n + 1) * sizeof *xport), *inner = malloc((n + 1) * sizeof *inner);
    double *refused = malloc((n + 1) * sizeof *refused);
    size_t n_inner = 0, n_refused = 0;
    if (!lat || !xport || !inner || !refused) return 1;
    double first = 1e30, last = 0;
    for (size_t i = 0; i < n; i++) {
        sample *s = &G.s[i];
        if (s->warm) continue;
        sent++;
        if (s->sched < first) first = s->sched;
        double end = s->sched + s->lat_ms / 1e3;
        if (end > last) last = end;
        int c = s->status < 0 || s->status > 100 ? 100 : s->status;
        by_code[c]++;
        if (c == GRPC_STATUS_RESOURCE_EXHAUSTED) refused[n_refused++] = s->lat_ms;
        if (c == 0) {
            xport[ok] = s->lat_ms - s->srv_ms;
            if (rerank) inner[n_inner++] = s->inner_ms;
            lat[ok++] = s->lat_ms;
            degraded += (size_t)s->degraded;
        }
    }
    qsort(lat, ok, sizeof *lat, cmp_d);
    qsort(xport, ok, sizeof *xport, cmp_d);
    qsort(inner, n_inner, sizeof *inner, cmp_d);
    qsort(refused, n_refused, sizeof *refused, cmp_d);
    double window = rate > 0 ? duration - warmup : send_end - warmup;
    double span = last > first ? last - first : window;
    double thr = ok / (span > window ? span : window);
    double mean = 0;
    for (size_t i = 0; i < ok; i++) mean += lat[i];
    mean = ok ? mean / (double)ok : NAN;

    printf("%s%s%s %s -> %s  %s %.2f  docs %d  tier '%s' profile '%s'  window %.1f s\n",
           *label ? "[" : "", label, *label ? "]" : "", method, addr,
           rate > 0 ? "open-loop rate/s" : "closed-loop concurrency",
           rate > 0 ? rate : (double)conc, n_docs, tier, profile, window);
    printf("  sent %zu  ok %zu  degraded %zu  throughput %.2f req/s  (offered %.2f/s)\n", sent, ok,
           degraded, thr, sent / window);
    printf("  latency ms: p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  mean %.2f\n", pct(lat, ok, 50),
           pct(lat, ok, 90), pct(lat, ok, 99), ok ? lat[ok - 1] : NAN, mean);
    printf("  client latency - server-reported time (%s), ms: p50 %.2f  p99 %.2f\n",
           rerank ? "Rerank total_ms" : "Score queue_ms + compute_ms", pct(xport, ok, 50),
           pct(xport, ok, 99));
    if (rerank)
        printf("  coordinator time outside stages (total_ms - stage ms), ms: p50 %.3f  p99 %.3f\n",
               pct(inner, n_inner, 50), pct(inner, n_inner, 99));
    if (n_refused)
        printf("  refusals (RESOURCE_EXHAUSTED) latency ms: p50 %.2f  p99 %.2f\n",
               pct(refused, n_refused, 50), pct(refused, n_refused, 99));
    if (sent != ok || skipped) {
        printf("  errors:");
        for (int c = 1; c <= 100; c++)
            if (by_code[c]) printf(" %s=%zu", code_name(c), by_code[c]);
        if (skipped) printf(" CLIENT_CAP_NOT_SENT=%zu", skipped);
        printf("\n");
    }
    if (rate > 0 && max_lag > 0.005) printf("  note: sender lagged up to %.1f ms\n", max_lag * 1e3);
    printf("JSON {\"label\":\"%s\",\"mode\":\"%s\",\"rate\":%.3f,\"concurrency\":%d,\"docs\":%d,"
           "\"tier\":\"%s\",\"profile\":\"%s\",\"window_s\":%.3f,\"sent\":%zu,\"ok\":%zu,"
           "\"degraded\":%zu,\"throughput\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
           "\"max\":%.3f,\"mean\":%.3f,\"xport_p50\":%.3f,\"xport_p99\":%.3f,"
           "\"inner_p50\":%.3f,\"inner_p99\":%.3f,\"refused_p50\":%.3f,\"refused_p99\":%.3f,"
           "\"sender_lag_ms\":%.2f,\"not_sent\":%zu,\"errors\":{",
           label, mode, rate, conc, n_docs, tier, profile, window, sent, ok, degraded, thr,
           ok ? pct(lat, ok, 50) : -1, ok ? pct(lat, ok, 90) : -1, ok ? pct(lat, ok, 99) : -1,
           ok ? lat[ok - 1] : -1, ok ? mean : -1, ok ? pct(xport, ok, 50) : -1,
           ok ? pct(xport, ok, 99) : -1, n_inner ? pct(inner, n_inner, 50) : -1,
           n_inner ? pct(inner, n_inner, 99) : -1, n_refused ? pct(refused, n_refused, 50) : -1,
           n_refused ? pct(refused, n_refused, 99) : -1, max_lag * 1e3, skipped);
    int first_e = 1;
    for (int c = 1; c <= 100; c++)
        if (by_code[c]) {
            printf("%s\"%s\":%zu", first_e ? "" : ",", code_name(c), by_code[c]);
            first_e = 0;
        }
    printf("}}\n");
    free(lat);
    free(xport);
    free(inner);
    free(refused);
    free(G.s);
    for (int v = 0; v < N_VARIANTS; v++) free(rq_buf[v]);
    for (int i = 0; i < DOC_POOL; i++) free(pool[i]);
    return 0;
}
