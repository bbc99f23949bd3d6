/* cmd_up.c: `mrank up`: a whole local cluster from one config, workers and a coordinator as
 * child processes on loopback.
 *
 * It forks/execs this same binary for every pool address (`mrank worker`) and for the
 * coordinator, waits until every child reports grpc.health.v1 SERVING, prints the coordinator
 * address, and on SIGINT/SIGTERM (or when a child dies) stops everything: SIGTERM to the
 * coordinator then the workers, SIGKILL after a grace period, every child reaped. Children get
 * PR_SET_PDEATHSIG so that even a SIGKILLed `mrank up` leaves no orphans. fork/exec is used
 * rather than libuv's uv_spawn because uv_spawn cannot set the parent-death signal. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "coord_config.h"
#include "grpc/health/v1/health.pb-c.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "rpc_methods.h"

#define DEFAULT_CONFIG "deploy/local.json"
#define DEFAULT_MODEL "models/mrank-tiny"

typedef struct child {
    pid_t pid;
    char what[160];
    char addr[128];
    int exited;
} child;

static double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static pid_t spawn(char *const argv[], const sigset_t *old_mask) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127); /* the parent died before prctl */
    sigprocmask(SIG_SETMASK, old_mask, NULL);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "mrank up: exec %s: %s\n", argv[1], strerror(errno));
    _exit(127);
}

/* 1 when addr answers grpc.health.v1 Check("") with SERVING. */
static int health_serving(const char *addr) {
    mr_rpc_channel *ch = NULL;
    if (mr_rpc_channel_new(&ch, addr, NULL)) return 0;
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

/* Reaps exited children without blocking; returns the first unexpected exit's index or -1. */
static int reap(child *c, int n) {
    int dead = -1, status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (int i = 0; i < n; i++)
            if (c[i].pid == pid && !c[i].exited) {
                c[i].exited = 1;
                if (dead < 0) dead = i;
                if (WIFEXITED(status))
                    fprintf(stderr, "mrank up: %s exited with status %d\n", c[i].what,
                            WEXITSTATUS(status));
                else if (WIFSIGNALED(status))
                    fprintf(stderr, "mrank up: %s killed by %s\n", c[i].what,
                            strsignal(WTERMSIG(status)));
            }
    return dead;
}

/* SIGTERM the coordinator (last child) first, then the workers; SIGKILL what is left after
 * grace_ms; reap everything. */
static void stop_all(child *c, int n, int grace_ms) {
    for (int i = n - 1; i >= 0; i--)
        if (c[i].pid > 0 && !c[i].exited) kill(c[i].pid, SIGTERM);
    double until = mono_ms() + grace_ms;
    for (;;) {
        reap(c, n);
        int alive = 0;
        for (int i = 0; i < n; i++) alive += c[i].pid > 0 && !c[i].exited;
        if (!alive) return;
        if (mono_ms() > until) break;
        usleep(20000);
    }
    for (int i = 0; i < n; i++)
        if (c[i].pid > 0 && !c[i].exited) {
            fprintf(stderr, "mrank up: %s did not stop in %d ms: SIGKILL\n", c[i].what, grace_ms);
            kill(c[i].pid, SIGKILL);
        }
    for (int i = 0; i < n; i++)
        if (c[i].pid > 0 && !c[i].exited) {
            waitpid(c[i].pid, NULL, 0);
            c[i].exited = 1;
        }
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Asks the coordinator's Info whether the model is untrained. -1 when unknown. */
static int coordinator_untrained(const char *addr) {
    mr_rpc_channel *ch = NULL;
    uint8_t *resp = NULL;
    size_t rlen = 0;
    grpc_status_code st;
    int u = -1;
    if (mr_rpc_channel_new(&ch, addr, NULL)) return -1;
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
    fputs("usage: mrank up [--config FILE] [--model DIR] [--backend B] [--timeout-s N]\n"
          "  starts every worker of the config's pools and a coordinator on loopback, waits\n"
          "  until all are SERVING, prints the coordinator address; Ctrl-C stops everything.\n"
          "  --config FILE   cluster config (default " DEFAULT_CONFIG ")\n"
          "  --model DIR     model folder (default: the config's model, else the bundled\n"
          "                  " DEFAULT_MODEL ")\n"
          "  --backend B     every worker's scorer backend: cpu, cuda or cuda-fp8 (default cpu)\n"
          "  --threads N     compute threads per worker (default: CPUs / workers)\n"
          "  --timeout-s N   how long to wait for SERVING (default 120)\n", f);
}

int mr_cmd_up(int argc, char **argv) {
    static const struct option opts[] = {{"config", 1, 0, 'c'},    {"model", 1, 0, 'm'},
                                         {"threads", 1, 0, 't'},   {"timeout-s", 1, 0, 'T'},
                                         {"backend", 1, 0, 'B'},   {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *config = DEFAULT_CONFIG, *model = NULL, *backend = "cpu";
    int threads = 0, timeout_s = 120, ch, rc = 1, n = 0;
    mr_coord_config *cfg = calloc(1, sizeof *cfg);
    child *kids = NULL;
    mr_err err = {0};
    if (!cfg) return 1;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'm': model = optarg; break;
        case 'B': backend = optarg; break;
        case 't': if (mr_cli_parse_int("--threads", optarg, &threads)) goto done; break;
        case 'T': if (mr_cli_parse_int("--timeout-s", optarg, &timeout_s)) goto done; break;
        case 'h': up_usage(stdout); rc = 0; goto done;
        default: up_usage(stderr); rc = 2; goto done;
        }
    }
    if (mr_coord_config_load(cfg, config, &err)) {
        fprintf(stderr, "mrank up: %s\n", err.msg);
        goto done;
    }
    if (!model) model = *cfg->model ? cfg->model : DEFAULT_MODEL;
    int n_workers = 0;
    for (int p = 0; p < cfg->n_pools; p++) {
        if (*cfg->pools[p].dns) {
            fprintf(stderr, "mrank up: %s: pools[%d].dns: mrank up starts loopback workers and "
                    "needs an addresses list\n", config, p);
            goto done;
        }
        n_workers += cfg->pools[p].n_addrs;
    }
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    char cfg_json[600];
    snprintf(cfg_json, sizeof cfg_json, "%s/config.json", model);
    if (!file_exists(cfg_json)) {
        fprintf(stderr, "mrank up: %s: no model folder (no config.json)%s\n", model,
                strcmp(model, DEFAULT_MODEL) ? "" : ": run mrank up from the repository root");
        goto done;
    }
    if (threads <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        threads = (int)(cpus / (n_workers ? n_workers : 1));
        if (threads < 1) threads = 1;
    }
    kids = calloc((size_t)n_workers + 1, sizeof *kids);
    if (!kids) goto done;
    char tbuf[16];
    snprintf(tbuf, sizeof tbuf, "%d", threads);
    for (int p = 0; p < cfg->n_pools; p++) {
        const mr_cc_pool *pc = &cfg->pools[p];
        for (int a = 0; a < pc->n_addrs; a++) {
            char *av[64], mport[16], adbuf[MR_CC_MAX_ADAPTERS][600];
            int k = 0;
            av[k++] = "mrank";
            av[k++] = "worker";
            av[k++] = "--model";
            av[k++] = (char *)model;
            av[k++] = "--listen";
            av[k++] = (char *)pc->addrs[a];
            av[k++] = "--threads";
            av[k++] = tbuf;
            av[k++] = "--backend";
            av[k++] = (char *)backend;
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
            av[k] = NULL;
            child *c = &kids[n];
            snprintf(c->what, sizeof c->what, "worker %.40s[%d] (%.80s)", pc->name, a, pc->addrs[a]);
            snprintf(c->addr, sizeof c->addr, "%s", pc->addrs[a]);
            if ((c->pid = spawn(av, &old)) < 0) {
                fprintf(stderr, "mrank up: fork: %s\n", strerror(errno));
                goto stop;
            }
            n++;
        }
    }
    {
        char mport[16];
        snprintf(mport, sizeof mport, "%d", cfg->metrics_port);
        char *av[] = {"mrank", "coordinator", "--config", (char *)config, "--listen",
                      cfg->listen, "--metrics-port", mport, NULL};
        child *c = &kids[n];
        snprintf(c->what, sizeof c->what, "coordinator (%s)", cfg->listen);
        snprintf(c->addr, sizeof c->addr, "%s", cfg->listen);
        if ((c->pid = spawn(av, &old)) < 0) {
            fprintf(stderr, "mrank up: fork: %s\n", strerror(errno));
            goto stop;
        }
        n++;
    }
    fprintf(stderr, "mrank up: started %d workers and a coordinator; waiting for SERVING...\n",
            n - 1);
    double t0 = mono_ms();
    int ready = 0;
    struct timespec tick = {0, 200 * 1000000L};
    while (!ready) {
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            fprintf(stderr, "mrank up: %s before the cluster was ready: stopping\n",
                    strsignal(sig));
            goto stop;
        }
        if (reap(kids, n) >= 0) goto stop;
        ready = 1;
        for (int i = 0; i < n && ready; i++) ready = health_serving(kids[i].addr);
        if (!ready && mono_ms() - t0 > timeout_s * 1e3) {
            fprintf(stderr, "mrank up: not SERVING after %d s: stopping\n", timeout_s);
            goto stop;
        }
    }
    int untrained = coordinator_untrained(cfg->listen);
    printf("mrank up: cluster ready in %.1f s\n", (mono_ms() - t0) / 1e3);
    printf("  model:       %s%s\n", model,
           untrained == 1 ? "  (untrained (seeded) model: scores are not relevance)" : "");
    for (int p = 0; p < cfg->n_pools; p++) {
        printf("  pool %-10s", cfg->pools[p].name);
        for (int a = 0; a < cfg->pools[p].n_addrs; a++) printf(" %s", cfg->pools[p].addrs[a]);
        printf("\n");
    }
    for (int s = 0; s < cfg->n_stages; s++)
        printf("  stage %-9s pool %s, depth %d, compress_ratio %d\n", cfg->stages[s].name,
               cfg->pools[cfg->stages[s].pool].name, cfg->stages[s].arch.depth,
               cfg->stages[s].arch.ratio);
    if (cfg->metrics_port > 0)
        printf("  metrics:     http://127.0.0.1:%d/metrics\n", cfg->metrics_port);
    printf("coordinator: %s\n", cfg->listen);
    printf("try: mrank rerank --addr %s --query 'what is the capital of France?' --docs FILE\n"
           "Ctrl-C stops the cluster.\n", cfg->listen);
    fflush(stdout);
    for (;;) {
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &tick);
        if (sig == SIGINT || sig == SIGTERM) {
            fprintf(stderr, "mrank up: %s: stopping the cluster\n", strsignal(sig));
            rc = 0;
            break;
        }
        if (reap(kids, n) >= 0) {
            fprintf(stderr, "mrank up: a child exited: stopping the cluster\n");
            break;
        }
    }
stop:
    stop_all(kids, n, 10000);
    fprintf(stderr, "mrank up: stopped\n");
done:
    free(kids);
    free(cfg);
    return rc;
}
