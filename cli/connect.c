/* connect.c: the client side of `mrank rerank` and `mrank health`: a channel to an address,
 * over TLS when any of --ca/--cert/--key is given, carrying "authorization: Bearer KEY" when an
 * API key is given (docs/security.md). The key is wiped from the stack after use and never
 * printed. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "rpc.h"
#include "tls.h"

int mr_cli_connect(mr_rpc_channel **out, const char *who, const char *addr,
                   const mr_rpc_tls_client *tls, const char *api_key) {
    mr_err err = {0};
    int use_tls = tls && (tls->ca || tls->cert || tls->key);
    if (mr_rpc_channel_new_tls(out, addr, use_tls ? tls : NULL, &err)) {
        fprintf(stderr, "mrank %s: %s\n", who, err.msg);
        return -1;
    }
    if (!api_key || !*api_key) return 0;
    char bearer[4200];
    if (strlen(api_key) > 4000) {
        fprintf(stderr, "mrank %s: --api-key: longer than 4000 characters\n", who);
        return -1;
    }
    snprintf(bearer, sizeof bearer, "Bearer %s", api_key);
    int rc = mr_rpc_channel_set_authorization(*out, bearer, &err);
    memset(bearer, 0, sizeof bearer);
    if (rc) {
        fprintf(stderr, "mrank %s: %s\n", who, err.msg);
        return -1;
    }
    return 0;
}
