/* cmd_coordinator.c: `mrank coordinator`: the cascade coordinator process. Loads and checks
 * the cluster config (coord_config.h), serves mrank.v1.Ranker over the config's worker pools
 * (coordinator.h) until SIGINT/SIGTERM, then drains in-flight requests. */
#define _GNU_SOURCE
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coord_config.h"
#include "coordinator.h"
#include "log.h"
#include "trace.h"

int mr_cmd_coordinator(int argc, char **argv) {
    static const struct option opts[] = {{"config", 1, 0, 'c'},       {"listen", 1, 0, 'l'},
                                         {"metrics-port", 1, 0, 'M'}, {"drain-ms", 1, 0, 'd'},
                                         {"check", 0, 0, 'C'},        {"help", 0, 0, 'h'},
                                         {"http-listen", 1, 0, 'H'},
                                         {"otlp-endpoint", 1, 0, 'O'}, MR_CLI_LOG_OPTIONS,
                                         {0, 0, 0, 0}};
    const char *config = NULL, *listen = NULL, *http_listen = NULL, *otlp = NULL;
    int metrics_port = -1, drain_ms = 5000, ch, rc = 2, check = 0;
    mr_coord_config *cfg = NULL;
    mr_coord *co = NULL;
    mr_err err = {0};
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'l': listen = optarg; break;
        case 'M': if (mr_cli_parse_int("--metrics-port", optarg, &metrics_port)) return 2; break;
        case 'd': if (mr_cli_parse_int("--drain-ms", optarg, &drain_ms)) return 2; break;
        case 'C': check = 1; break;
        case 'H': http_listen = optarg; break;
        case 'O': otlp = optarg; break;
        case 'h':
            puts("usage: mrank coordinator --config FILE [--listen ADDR] [--metrics-port P]\n"
                 "                         [--http-listen HOST:PORT]\n"
                 "  serves mrank.v1.Ranker (Rerank, RerankStream, Info) and grpc.health.v1 over\n"
                 "  the worker pools of FILE (see docs/cluster.md); --listen and --metrics-port\n"
                 "  default to the config's coordinator section\n"
                 "  --http-listen  also serve HTTP/JSON (POST /v2/rerank, /v1/rerank, /rerank;\n"
                 "             docs/cluster.md); default coordinator.http_listen, \"off\": none\n"
                 "  --check   validate FILE, print a summary and exit (0 when valid)\n"
                 "  --drain-ms N  at SIGTERM, finish the requests in flight for up to N ms\n"
                 "            (default 5000) before exiting\n"
                 "  --otlp-endpoint URL  export spans as OTLP/HTTP JSON to URL (default: the\n"
                 "            config's coordinator.otlp_endpoint; none when both are unset)\n"
                 MR_CLI_LOG_USAGE);
            return 0;
        default:
            if (mr_cli_log_option(ch, optarg, "mrank coordinator") == 1) break;
            return 2;
        }
    }
    if (!config || optind < argc) {
        fprintf(stderr, "usage: mrank coordinator --config FILE [--listen ADDR] "
                        "[--metrics-port P]\n");
        return 2;
    }
    mr_cli_log_start("mrank coordinator");
    if (!(cfg = calloc(1, sizeof *cfg))) return 1;
    if (mr_coord_config_load(cfg, config, &err)) {
        mr_log(MR_LOG_ERROR, "config_error", "%s\n", err.msg);
        goto done;
    }
    if (http_listen && snprintf(cfg->http_listen, sizeof cfg->http_listen, "%s", http_listen) >=
                           (int)sizeof cfg->http_listen) {
        fprintf(stderr, "mrank coordinator: --http-listen: too long\n");
        goto done;
    }
    if (check) {
        printf("%s: valid: %d pools, %d stages, %d profiles, %d tiers\n", config, cfg->n_pools,
               cfg->n_stages, cfg->n_profiles, cfg->n_tiers);
        rc = 0;
        goto done;
    }
    /* Block the stop signals before any thread exists, so only sigwait below sees them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (!otlp && *cfg->otlp_endpoint) otlp = cfg->otlp_endpoint;
    if (otlp && *otlp && mr_trace_export_start(otlp, "mrank-coordinator", &err)) {
        mr_log(MR_LOG_ERROR, "config_error", "%s", err.msg);
        rc = 2;
        goto done;
    }
    int port = 0;
    if (mr_coord_new(&co, cfg, listen, metrics_port >= 0 ? metrics_port : cfg->metrics_port,
                     &err) ||
        mr_coord_start(co, &port, &err)) {
        mr_log(MR_LOG_ERROR, "start_failed", "%s\n", err.msg);
        rc = 1;
        goto done;
    }
    mr_log(MR_LOG_INFO, "serving", "serving on port %d (config %s, %d pools, %d stages, "
            "%d profiles, %d tiers)\n", port, config, cfg->n_pools, cfg->n_stages,
            cfg->n_profiles, cfg->n_tiers);
    if (mr_coord_http_port(co) >= 0)
        mr_log(MR_LOG_INFO, "http_serving", "http on port %d\n", mr_coord_http_port(co));
    int sig = 0;
    sigwait(&set, &sig);
    mr_log(MR_LOG_INFO, "draining", "%s: draining\n", strsignal(sig));
    mr_coord_shutdown(co, drain_ms);
    rc = 0;
done:
    mr_coord_free(co);
    mr_trace_export_stop();   /* after the drain: the last requests' spans go out too */
    free(cfg);
    return rc;
}
