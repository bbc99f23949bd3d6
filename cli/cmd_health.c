/* cmd_health.c: `mrank health`: asks a worker or coordinator for its grpc.health.v1 status
 * (what Kubernetes probes and load balancers ask; no API key needed), or with --info for the
 * coordinator's mrank.v1.Ranker/Info (which needs a key when keys are configured). Speaks TLS
 * with --ca/--cert/--key like `mrank rerank`. Prints the status; exit 0 when SERVING (or Info
 * answered), 1 otherwise (NOT_SERVING, or the gRPC status, printed), 2 on bad usage. */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "grpc/health/v1/health.pb-c.h"
#include "mrank.pb-c.h"
#include "rpc.h"
#include "rpc_methods.h"
#include "rpc_status.h"
#include "tls.h"

static void health_usage(FILE *f) {
    fputs("usage: mrank health --addr HOST:PORT [--service S] [--info] [options]\n"
          "  --service S        health of service S (default \"\": the whole server)\n"
          "  --info             call mrank.v1.Ranker/Info instead (a coordinator)\n"
          "  --timeout-ms N     deadline (default 5000)\n"
          "  --ca FILE          connect with TLS, verifying the server with this PEM CA\n"
          "  --cert FILE        client certificate (mTLS), with --key FILE its private key\n"
          "  --api-key KEY      sent as 'authorization: Bearer KEY' (default: $MRANK_API_KEY)\n",
          f);
}

int mr_cmd_health(int argc, char **argv) {
    static const struct option opts[] = {
        {"addr", 1, 0, 'a'}, {"service", 1, 0, 's'}, {"info", 0, 0, 'i'},
        {"timeout-ms", 1, 0, 'T'}, {"ca", 1, 0, 'C'}, {"cert", 1, 0, 'E'}, {"key", 1, 0, 'K'},
        {"api-key", 1, 0, 'A'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *addr = NULL, *service = "", *api_key = getenv("MRANK_API_KEY");
    mr_rpc_tls_client tls = {0};
    int info = 0, timeout_ms = 5000, ch, rc = 2;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'a': addr = optarg; break;
        case 's': service = optarg; break;
        case 'i': info = 1; break;
        case 'T': if (mr_cli_parse_int("--timeout-ms", optarg, &timeout_ms)) return 2; break;
        case 'C': tls.ca = optarg; break;
        case 'E': tls.cert = optarg; break;
        case 'K': tls.key = optarg; break;
        case 'A': api_key = optarg; break;
        case 'h': health_usage(stdout); return 0;
        default: health_usage(stderr); return 2;
        }
    }
    if (!addr || optind < argc) {
        health_usage(stderr);
        return 2;
    }
    mr_rpc_channel *chn = NULL;
    uint8_t buf[600], *resp = NULL;
    size_t n = 0, rlen = 0;
    grpc_status_code st;
    char msg[512] = "";
    rc = 1;
    if (mr_cli_connect(&chn, "health", addr, &tls, api_key)) goto done;
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rq.service = (char *)service;
    if (!info) {
        if (grpc__health__v1__health_check_request__get_packed_size(&rq) > sizeof buf) {
            fprintf(stderr, "mrank health: --service: too long\n");
            rc = 2;
            goto done;
        }
        n = grpc__health__v1__health_check_request__pack(&rq, buf);
    }
    if (mr_rpc_unary(chn, info ? MR_METHOD_RANKER_INFO : MR_METHOD_HEALTH_CHECK, buf, n,
                     timeout_ms, &resp, &rlen, &st, msg, sizeof msg)) {
        printf("%s: %s\n", mr_rpc_status_name(st), msg);
        goto done;
    }
    if (info) {
        Mrank__V1__InfoResponse *r = mrank__v1__info_response__unpack(NULL, rlen, resp);
        printf("OK: %s\n", r && r->model ? r->model : "(malformed InfoResponse)");
        rc = r ? 0 : 1;
        if (r) mrank__v1__info_response__free_unpacked(r, NULL);
        goto done;
    }
    Grpc__Health__V1__HealthCheckResponse *h =
        grpc__health__v1__health_check_response__unpack(NULL, rlen, resp);
    int serving =
        h && h->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    printf("%s\n", !h ? "malformed HealthCheckResponse" : serving ? "SERVING" : "NOT_SERVING");
    if (h) grpc__health__v1__health_check_response__free_unpacked(h, NULL);
    rc = serving ? 0 : 1;
done:
    mr_rpc_channel_free(chn);
    free(resp);
    return rc;
}
