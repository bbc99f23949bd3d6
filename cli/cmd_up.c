/* cmd_up.c: `mrank up`: a whole local cluster from one config, workers and a coordinator as
 * child processes on loopback, supervised.
 *
 * It forks/execs this same binary for every pool address (`mrank worker`) and for the
 * coordinator, waits until every child reports grpc.health.v1 SERVING and prints the
 * coordinator address (and its HTTP/JSON address, coordinator.http_listen or a free port). A child that exits before then is a configuration error: everything
 * stops, exit 1. Once ready, a child that exits is logged (which one, status or signal) and
 * restarted with its own argv after a backoff (BACKOFF_MIN_MS doubling to BACKOFF_MAX_MS, back
 * to the minimum once it stayed up STABLE_MS) while the rest keeps serving; a child restarted
 * --max-restarts times within RESTART_WINDOW_MS that exits again is a crash loop: `mrank up`
 * stops the cluster and returns 1. On SIGINT/SIGTERM it stops in order: the coordinator first
 * (SIGTERM: it drains its in-flight requests, which still need the workers), and only once it
 * has exited the workers (SIGTERM, they drain); each group gets SIGKILL after its grace period,
 * a second SIGINT/SIGTERM SIGKILLs at once, every child is reaped. Children get
 * PR_SET_PDEATHSIG so that even a SIGKILLed `mrank up` leaves no orphans (the reason for
 * fork/exec rather than posix_spawn). One thread: timers are sigtimedwait's timeout. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "coord_config.h"
#include "grpc/health/v1/health.pb-c.h"
#include "mrank.pb-c.h"
#include "prom.h"
#include "rpc.h"
#include "tls.h"
#include "rpc_methods.h"
#include "log.h"

#define DEFAULT_CONFIG "deploy/local.json"
#define DEFAULT_MODEL "models/mrank-tiny"

#define BACKOFF_MIN_MS 500        /* first restart delay */
#define BACKOFF_MAX_MS 30000      /* the delay doubles up to this */
#define STABLE_MS 60000           /* up this long: the next delay is BACKOFF_MIN_MS again */
#define RESTART_WINDOW_MS 120000  /* --max-restarts counts restarts within this window */
#define DEFAULT_MAX_RESTARTS 5
#define MAX_RESTARTS_CAP 32       /* the ring of restart times below */
#define TICK_MS 100               /* supervision period: reaping, restarts, health polls */
#define STOP_TICK_MS 20
/* The coordinator drains for COORD_DRAIN_MS (passed as --drain-ms): requests of a tier without a
 * budget may run for seconds on loaded cores, and SIGINT must not cut them off (the standalone
 * default, 5000 ms, is for an orchestrator that sets its own grace). SIGKILL 2 s after that. */
#define COORD_DRAIN_MS 28000
#define COORD_GRACE_MS (COORD_DRAIN_MS + 2000)
#define WORKER_GRACE_MS 10000
#define MAX_ARGS 64

typedef struct child {
    pid_t pid;                    /* 0: not running */
    char what[160];
    char addr[128];
    char *argv[MAX_ARGS];         /* owned copies, NULL-terminated */
    double started_ms;
    double restart_at_ms;         /* > 0: a restart is due then */
    int backoff_ms;               /* the next restart's delay */
    int restarts;                 /* since mrank up started */
    double restart_ms[MAX_RESTARTS_CAP]; /* ring: times of the latest restarts */
    int serving;                  /* SERVING seen since its latest start */
    int died;                     /* exited, not yet handled by the supervisor */
    const mr_rpc_tls_client *tls; /* how to reach its gRPC port (NULL: plaintext) */
} child;

static double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static struct timespec ms_ts(int ms) {
    return (struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L};
}

/* Copies av (NULL-terminated, at most MAX_ARGS - 1 entries) into c; -1 when out of memory. */
static int child_init(child *c, const char *what, const char *addr, char *const av[]) {
    memset(c, 0, sizeof *c);
    snprintf(c->what, sizeof c->what, "%s", what);
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    c->backoff_ms = BACKOFF_MIN_MS;
    for (int i = 0; av[i]; i++) {
        if (i == MAX_ARGS - 1 || !(c->argv[i] = strdup(av[i]))) return -1;
    }
    return 0;
}

static void child_close(child *c) {
    for (int i = 0; i < MAX_ARGS && c->argv[i]; i++) free(c->argv[i]);
    memset(c->argv, 0, sizeof c->argv);
}

/* Forks and execs c's argv; 0, or -1 after a message when fork fails. */
static int child_start(child *c, const sigset_t *old_mask) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        mr_log(MR_LOG_ERROR, "fork_failed", "fork for %s: %s\n", c->what, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127); /* the parent died before prctl */
        sigprocmask(SIG_SETMASK, old_mask, NULL);
        execv("/proc/self/exe", c->argv);
        mr_log(MR_LOG_ERROR, "exec_failed", "exec %s: %s\n", c->argv[1], strerror(errno));
        _exit(127);
    }
    c->pid = pid;
    c->started_ms = mono_ms();
    c->serving = 0;
    c->died = 0;
    return 0;
}

/* 1 when addr answers grpc.health.v1 Check("") with SERVING. */
static int health_serving(const char *addr, const mr_rpc_tls_client *tls) {
    mr_rpc_channel *ch = NULL;
    if (mr_rpc_channel_new_tls(&ch, addr, tls, NULL)) return 0;
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rq.service = "";
    uint8_t buf[64], *resp = NULL;
    size_t n = grpc__health__v1__health_check_request__pack(&rq, buf), rlen = 0;
    grpc_status_code st;
    int ok = 0;
    if (!mr_rpc_unary(ch, MR_METHOD_HEALTH_CHECK, buf, n, 500, &resp, &rlen, &st, NULL,
                      0)) {
        Grpc__Health__V1__HealthCheckResponse *r =
            grpc__health__v1__health_check_response__unpack(NULL, rlen, resp);
        ok = r && r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
        if (r) grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    }
    free(resp);
    mr_rpc_channel_free(ch);
    return ok;
}

/* Reaps exited children without blocking: logs each (which child, pid, status or signal),
 * sets its pid to 0 and its died flag. Returns how many of c[0..n) exited. */
static int reap(child *c, int n) {
    int count = 0, status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (int i = 0; i < n; i++) {
            if (c[i].pid != pid) continue;
            if (WIFEXITED(status))
                mr_log(MR_LOG_WARN, "child_exited", "%s (pid %d) exited with status %d\n", c[i].what,
                        (int)pid, WEXITSTATUS(status));
            else if (WIFSIGNALED(status))
                mr_log(MR_LOG_WARN, "child_killed", "%s (pid %d) killed by signal %d (%s)\n", c[i].what,
                        (int)pid, WTERMSIG(status), strsignal(WTERMSIG(status)));
            c[i].pid = 0;
            c[i].died = 1;
            count++;
        }
    return count;
}

/* Sends sig to every running child of c[lo..hi). */
static void signal_range(child *c, int lo, int hi, int sig) {
    for (int i = lo; i < hi; i++)
        if (c[i].pid > 0) kill(c[i].pid, sig);
}

/* SIGTERMs c[lo..hi) and waits until they have exited, reaping every child of c[0..n) meanwhile
 * (none is restarted any more); SIGKILL after grace_ms, or at once when *hurry is set or
 * SIGINT/SIGTERM arrives again (which sets *hurry for the next group). */
static void stop_range(child *c, int n, int lo, int hi, int grace_ms, const sigset_t *set,
                       int *hurry) {
    signal_range(c, lo, hi, SIGTERM);
    double until = mono_ms() + grace_ms;
    struct timespec tick = ms_ts(STOP_TICK_MS);
    for (;;) {
        reap(c, n);
        int alive = 0;
        for (int i = lo; i < hi; i++) alive += c[i].pid > 0;
        if (!alive) return;
        if (*hurry) break;
        if (mono_ms() > until) {
            for (int i = lo; i < hi; i++)
                if (c[i].pid > 0)
                    mr_log(MR_LOG_WARN, "child_sigkill", "%s did not stop in %d ms: SIGKILL\n", c[i].what,
                            grace_ms);
            break;
        }
        siginfo_t si;
        int sig = sigtimedwait(set, &si, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            mr_log(MR_LOG_WARN, "sigkill_all", "%s again: SIGKILL to every child\n", strsignal(sig));
            *hurry = 1;
        }
    }
    signal_range(c, lo, hi, SIGKILL);
    for (int i = lo; i < hi; i++)
        if (c[i].pid > 0) {
            waitpid(c[i].pid, NULL, 0);
            c[i].pid = 0;
        }
}

/* The ordered stop: the coordinator (c[n - 1]) first, so that it can drain its in-flight
 * requests over live workers, then the workers. Every child is reaped on return. */
static void stop_all(child *c, int n, const sigset_t *set) {
    int hurry = 0;
    for (int i = 0; i < n; i++) c[i].restart_at_ms = 0;
    if (n > 0) stop_range(c, n, n - 1, n, COORD_GRACE_MS, set, &hurry);
    stop_range(c, n, 0, n - 1, WORKER_GRACE_MS, set, &hurry);
}

/* Handles c's exit after the cluster was ready: schedules a restart after the backoff, or,
 * when c was already restarted max_restarts times within RESTART_WINDOW_MS, returns -1 after
 * saying so (a crash loop). */
static int schedule_restart(child *c, int max_restarts) {
    double now = mono_ms();
    int recent = 0;
    for (int k = 0; k < max_restarts && k < c->restarts; k++)
        recent += now - c->restart_ms[k] < RESTART_WINDOW_MS;
    if (recent >= max_restarts) {
        mr_log(MR_LOG_ERROR, "crash_loop", "%s exited again after %d restarts within %d s "
                "(--max-restarts %d): crash loop, giving up\n", c->what, recent,
                RESTART_WINDOW_MS / 1000, max_restarts);
        return -1;
    }
    if (now - c->started_ms >= STABLE_MS) c->backoff_ms = BACKOFF_MIN_MS;
    c->restart_at_ms = now + c->backoff_ms;
    mr_log(MR_LOG_INFO, "child_restart_scheduled", "restarting %s in %.1f s\n", c->what, c->backoff_ms / 1e3);
    c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
    return 0;
}

/* One supervision pass over c[0..n) once the cluster is ready: exits become scheduled
 * restarts, due restarts are started, restarted children are polled until SERVING again.
 * 0, or -1 when `mrank up` must give up (crash loop, fork failure). */
static int supervise(child *c, int n, int max_restarts, const sigset_t *old_mask) {
    reap(c, n);
    for (int i = 0; i < n; i++) {
        if (!c[i].died) continue;
        c[i].died = 0;
        if (schedule_restart(&c[i], max_restarts)) return -1;
    }
    double now = mono_ms();
    for (int i = 0; i < n; i++) {
        child *k = &c[i];
        if (k->restart_at_ms > 0 && now >= k->restart_at_ms) {
            k->restart_at_ms = 0;
            if (max_restarts > 0) k->restart_ms[k->restarts % max_restarts] = now;
            k->restarts++;
            if (child_start(k, old_mask)) return -1;
            mr_log(MR_LOG_INFO, "child_restarted", "restarted %s: pid %d (restart %d)\n", k->what,
                    (int)k->pid, k->restarts);
        }
        if (k->pid > 0 && !k->serving && k->restarts > 0 && health_serving(k->addr, k->tls)) {
            k->serving = 1;
            mr_log(MR_LOG_INFO, "child_serving", "%s SERVING again (pid %d, restart %d)\n", k->what,
                    (int)k->pid, k->restarts);
        }
    }
    return 0;
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Asks the coordinator's Info whether the model is untrained. -1 when unknown. */
static int coordinator_untrained(const char *addr, const mr_rpc_tls_client *tls) {
    mr_rpc_channel *ch = NULL;
    uint8_t *resp = NULL;
    size_t rlen = 0;
    grpc_status_code st;
    int u = -1;
    if (mr_rpc_channel_new_tls(&ch, addr, tls, NULL)) return -1;
    if (!mr_rpc_unary(ch, MR_METHOD_RANKER_INFO, NULL, 0, 2000, &resp, &rlen, &st, NULL, 0)) {
        Mrank__V1__InfoResponse *r = mrank__v1__info_response__unpack(NULL, rlen, resp);
        if (r) {
            u = r->untrained;
            mrank__v1__info_response__free_unpacked(r, NULL);
        }
    }
    free(resp);
    mr_rpc_channel_free(ch);
    return u;
}

static void up_usage(FILE *f) {
    fprintf(f, "usage: mrank up [--config FILE] [--model DIR] [--backend B] [--timeout-s N]\n"
          "                [--threads N] [--max-restarts N]\n"
          "  starts every worker of the config's pools and a coordinator on loopback, waits\n"
          "  until all are SERVING, prints the coordinator address, then restarts any child\n"
          "  that exits (backoff %.1f s doubling to %d s); Ctrl-C stops the coordinator (it\n"
          "  drains), then the workers.\n"
          "  --config FILE       cluster config (default " DEFAULT_CONFIG ")\n"
          "  --model DIR         model folder (default: the config's model, else the bundled\n"
          "                      " DEFAULT_MODEL ")\n"
          "  --backend B         every worker's scorer backend: cpu, cuda or cuda-fp8 (default cpu)\n"
          "  --threads N         compute threads per worker (default: CPUs / workers)\n"
          "  --timeout-s N       how long to wait for SERVING (default 120)\n"
          "  --max-restarts N    restarts of one child within %d s before giving up (exit 1);\n"
          "                      0..%d, default %d; 0 stops the cluster on the first exit\n"
          MR_CLI_LOG_USAGE,
          BACKOFF_MIN_MS / 1e3, BACKOFF_MAX_MS / 1000, RESTART_WINDOW_MS / 1000,
          MAX_RESTARTS_CAP, DEFAULT_MAX_RESTARTS);
}

/* Fills kids[0..n_workers) with one `mrank worker` per pool address; 0 or -1 (out of memory). */
static int plan_workers(child *kids, const mr_coord_config *cfg, const char *model,
                        const char *backend, const char *threads,
                        const mr_rpc_tls_client *worker_tls) {
    const mr_cc_security *sec = &cfg->security;
    int n = 0;
    for (int p = 0; p < cfg->n_pools; p++) {
        const mr_cc_pool *pc = &cfg->pools[p];
        for (int a = 0; a < pc->n_addrs; a++) {
            char *av[MAX_ARGS], mport[16], adbuf[MR_CC_MAX_ADAPTERS][600], what[160];
            int k = 0;
            av[k++] = "mrank";
            av[k++] = "worker";
            av[k++] = "--model";
            av[k++] = (char *)model;
            av[k++] = "--listen";
            av[k++] = (char *)pc->addrs[a];
            av[k++] = "--threads";
            av[k++] = (char *)threads;
            av[k++] = "--backend";
            av[k++] = (char *)backend;
            if (*cfg->otlp_endpoint) {
                av[k++] = "--otlp-endpoint";
                av[k++] = (char *)cfg->otlp_endpoint;
            }
            av[k++] = "--log-level";
            av[k++] = (char *)mr_cli_log_level();
            av[k++] = "--log-format";
            av[k++] = (char *)mr_cli_log_format();
            for (int j = 0; j < pc->n_adapters; j++) {
                snprintf(adbuf[j], sizeof adbuf[j], "%s=%s", pc->adapters[j].name,
                         pc->adapters[j].dir);
                av[k++] = "--adapter";
                av[k++] = adbuf[j];
            }
            if (pc->metrics_port_base > 0) {
                snprintf(mport, sizeof mport, "%d", pc->metrics_port_base + a);
                av[k++] = "--metrics-port";
                av[k++] = mport;
            }
            if (*sec->internal_cert) {   /* mTLS: only the internal CA's holders get in */
                av[k++] = "--tls-cert";
                av[k++] = (char *)sec->internal_cert;
                av[k++] = "--tls-key";
                av[k++] = (char *)sec->internal_key;
                av[k++] = "--tls-client-ca";
                av[k++] = (char *)sec->internal_ca;
            }
            av[k] = NULL;
            snprintf(what, sizeof what, "worker %.40s[%d] %.80s", pc->name, a, pc->addrs[a]);
            if (child_init(&kids[n], what, pc->addrs[a], av)) return -1;
            kids[n++].tls = *sec->internal_cert ? worker_tls : NULL;
        }
    }
    return 0;
}

/* The coordinator's HTTP address into cfg->http_listen: the config's, or (when it has none) a
 * free port on the gRPC listener's host, taken from the kernel then released (the coordinator
 * binds it a moment later); "off" serves none. 0, or -1 when no port could be had. */
static int http_address(mr_coord_config *cfg) {
    if (*cfg->http_listen) return 0;
    char host[128];
    mr_prom_host_of(cfg->listen, host, sizeof host);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    if (getaddrinfo(*host ? host : NULL, "0", &hints, &ai) || !ai) return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM, 0), port = -1;
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    if (fd >= 0 && !bind(fd, ai->ai_addr, ai->ai_addrlen) &&
        !getsockname(fd, (struct sockaddr *)&sa, &sl))
        port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                              : ((struct sockaddr_in *)&sa)->sin_port);
    if (fd >= 0) close(fd);
    int v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    if (port <= 0) return -1;
    snprintf(cfg->http_listen, sizeof cfg->http_listen, v6 ? "[%s]:%d" : "%s:%d", host, port);
    return 0;
}

static void print_ready(const mr_coord_config *cfg, const char *model, double ms,
                        const mr_rpc_tls_client *coord_tls) {
    int untrained = coordinator_untrained(cfg->listen, coord_tls);
    printf("mrank up: cluster ready in %.1f s\n", ms / 1e3);
    printf("  model:       %s%s\n", model,
           untrained == 1 ? "  (untrained (seeded) model: scores are not relevance)" : "");
    for (int p = 0; p < cfg->n_pools; p++) {
        printf("  pool %-10s", cfg->pools[p].name);
        for (int a = 0; a < cfg->pools[p].n_addrs; a++) printf(" %s", cfg->pools[p].addrs[a]);
        printf("\n");
    }
    for (int s = 0; s < cfg->n_stages; s++) {
        const mr_cc_stage *st = &cfg->stages[s];
        if (st->kind == MR_CC_LEXICAL)
            printf("  stage %-9s lexical (BM25 k1 %g, b %g, %s), in the coordinator\n", st->name,
                   st->k1, st->b, *st->lexicon ? st->lexicon : "statistics of the candidates");
        else
            printf("  stage %-9s pool %s, depth %d, compress_ratio %d\n", st->name,
                   cfg->pools[st->pool].name, st->arch.depth, st->arch.ratio);
    }
    if (cfg->metrics_port > 0)
        printf("  metrics:     http://127.0.0.1:%d/metrics\n", cfg->metrics_port);
    printf("coordinator: %s\n", cfg->listen);
    if (strcmp(cfg->http_listen, "off"))
        printf("http: http%s://%s\n", *cfg->security.tls_cert ? "s" : "", cfg->http_listen);
    const mr_cc_security *sec = &cfg->security;
    printf("try: mrank rerank --addr %s --query 'what is the capital of France?' --docs FILE%s%s%s\n"
           "Ctrl-C stops the cluster.\n", cfg->listen,
           *sec->tls_cert ? " --ca CA_OF_SECURITY.TLS.CERT" : "",
           *sec->tls_client_ca ? " --cert CLIENT.PEM --key CLIENT-KEY.PEM" : "",
           *sec->api_keys ? " --api-key KEY" : "");
    if (*sec->tls_cert || *sec->internal_cert || *sec->api_keys)
        printf("security: public port %s%s, workers %s, API keys %s (docs/security.md)\n",
               *sec->tls_cert ? "TLS" : "plaintext", *sec->tls_client_ca ? " + client certs" : "",
               *sec->internal_cert ? "mTLS" : "plaintext", *sec->api_keys ? sec->api_keys : "off");
    fflush(stdout);
}

int mr_cmd_up(int argc, char **argv) {
    static const struct option opts[] = {{"config", 1, 0, 'c'},    {"model", 1, 0, 'm'},
                                         {"threads", 1, 0, 't'},   {"timeout-s", 1, 0, 'T'},
                                         {"backend", 1, 0, 'B'},   {"max-restarts", 1, 0, 'R'},
                                         {"help", 0, 0, 'h'},      MR_CLI_LOG_OPTIONS,
                                         {0, 0, 0, 0}};
    const char *config = DEFAULT_CONFIG, *model = NULL, *backend = "cpu";
    int threads = 0, timeout_s = 120, max_restarts = DEFAULT_MAX_RESTARTS, ch, rc = 1, n = 0;
    int n_workers = 0, n_kids = 0;
    mr_coord_config *cfg = calloc(1, sizeof *cfg);
    child *kids = NULL;
    mr_err err = {0};
    sigset_t set, old;
    if (!cfg) return 1;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'm': model = optarg; break;
        case 'B': backend = optarg; break;
        case 't': if (mr_cli_parse_int("--threads", optarg, &threads)) goto done; break;
        case 'T': if (mr_cli_parse_int("--timeout-s", optarg, &timeout_s)) goto done; break;
        case 'R':
            if (mr_cli_parse_int("--max-restarts", optarg, &max_restarts)) goto done;
            if (max_restarts < 0 || max_restarts > MAX_RESTARTS_CAP) {
                fprintf(stderr, "mrank up: --max-restarts: %d is not in 0..%d\n", max_restarts,
                        MAX_RESTARTS_CAP);
                rc = 2;
                goto done;
            }
            break;
        case 'h': up_usage(stdout); rc = 0; goto done;
        default:
            if (mr_cli_log_option(ch, optarg, "mrank up") == 1) break;
            up_usage(stderr);
            rc = 2;
            goto done;
        }
    }
    mr_cli_log_start("mrank up");   /* and every child gets the same options */
    if (mr_coord_config_load(cfg, config, &err)) {
        mr_log(MR_LOG_ERROR, "config_error", "%s\n", err.msg);
        goto done;
    }
    if (!model) model = *cfg->model ? cfg->model : DEFAULT_MODEL;
    for (int p = 0; p < cfg->n_pools; p++) {
        if (*cfg->pools[p].dns) {
            mr_log(MR_LOG_ERROR, "config_error", "%s: pools[%d].dns: mrank up starts loopback workers and "
                    "needs an addresses list\n", config, p);
            goto done;
        }
        n_workers += cfg->pools[p].n_addrs;
    }
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    char cfg_json[600];
    snprintf(cfg_json, sizeof cfg_json, "%s/config.json", model);
    if (!file_exists(cfg_json)) {
        mr_log(MR_LOG_ERROR, "config_error", "%s: no model folder (no config.json)%s\n", model,
                strcmp(model, DEFAULT_MODEL) ? "" : ": run mrank up from the repository root");
        goto done;
    }
    if (threads <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        threads = (int)(cpus / (n_workers ? n_workers : 1));
        if (threads < 1) threads = 1;
    }
    n_kids = n_workers + 1;
    kids = calloc((size_t)n_kids, sizeof *kids);
    if (!kids) goto done;
    char tbuf[16], mport[16], what[160];
    snprintf(tbuf, sizeof tbuf, "%d", threads);
    snprintf(mport, sizeof mport, "%d", cfg->metrics_port);
    char drain[16];
    snprintf(drain, sizeof drain, "%d", COORD_DRAIN_MS);
    if (http_address(cfg)) {
        fprintf(stderr, "mrank up: no free port for the HTTP front end on %s's host (set "
                "coordinator.http_listen)\n", cfg->listen);
        goto done;
    }
    char *cav[] = {"mrank", "coordinator", "--config", (char *)config, "--listen",
                   cfg->listen, "--metrics-port", mport, "--drain-ms", drain,
                   "--http-listen", cfg->http_listen,
                   "--log-level", (char *)mr_cli_log_level(),
                   "--log-format", (char *)mr_cli_log_format(), NULL};
    snprintf(what, sizeof what, "coordinator %.100s", cfg->listen);
    /* mrank up reaches the workers as the coordinator does (internal mTLS), and its own
     * coordinator child over loopback without checking the server certificate (it has no
     * public CA), presenting the internal certificate when there is one */
    const mr_cc_security *sec = &cfg->security;
    mr_rpc_tls_client worker_tls = {.ca = sec->internal_ca, .cert = sec->internal_cert,
                                    .key = sec->internal_key};
    mr_rpc_tls_client coord_tls = {.skip_verify = 1};
    if (*sec->internal_cert) {
        coord_tls.cert = sec->internal_cert;
        coord_tls.key = sec->internal_key;
    }
    if (plan_workers(kids, cfg, model, backend, tbuf, &worker_tls) ||
        child_init(&kids[n_workers], what, cfg->listen, cav)) {
        mr_log(MR_LOG_ERROR, "out_of_memory", "out of memory\n");
        goto done;
    }
    if (*sec->tls_cert) kids[n_workers].tls = &coord_tls;
    /* the coordinator is the last child: stop_all relies on it */
    for (n = 0; n < n_kids; n++)
        if (child_start(&kids[n], &old)) goto stop;
    mr_log(MR_LOG_INFO, "started", "started %d workers and a coordinator; waiting for SERVING...\n",
            n - 1);
    double t0 = mono_ms();
    int ready = 0;
    struct timespec tick = ms_ts(200);
    while (!ready) {
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            mr_log(MR_LOG_ERROR, "start_failed", "%s before the cluster was ready: stopping\n",
                    strsignal(sig));
            goto stop;
        }
        if (reap(kids, n) > 0) {
            mr_log(MR_LOG_ERROR, "start_failed", "a child exited before the cluster was ready (a "
                    "configuration error?): stopping\n");
            goto stop;
        }
        ready = 1;
        for (int i = 0; i < n && ready; i++) ready = health_serving(kids[i].addr, kids[i].tls);
        if (!ready && mono_ms() - t0 > timeout_s * 1e3) {
            mr_log(MR_LOG_ERROR, "start_timeout", "not SERVING after %d s: stopping\n", timeout_s);
            goto stop;
        }
    }
    for (int i = 0; i < n; i++) kids[i].serving = 1;
    print_ready(cfg, model, mono_ms() - t0, *sec->tls_cert ? &coord_tls : NULL);
    tick = ms_ts(TICK_MS);
    for (;;) {
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            mr_log(MR_LOG_INFO, "stopping", "%s: stopping the coordinator (it drains), then the "
                    "workers\n", strsignal(sig));
            rc = 0;
            break;
        }
        if (supervise(kids, n, max_restarts, &old)) {
            mr_log(MR_LOG_INFO, "stopping", "stopping the cluster\n");
            break;
        }
    }
stop:
    stop_all(kids, n_kids, &set); /* children not started yet have pid 0 */
    mr_log(MR_LOG_INFO, "stopped", "stopped\n");
done:
    for (int i = 0; kids && i < n_kids; i++) child_close(&kids[i]);
    free(kids);
    free(cfg);
    return rc;
}
