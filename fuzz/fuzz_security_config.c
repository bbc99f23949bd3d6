/* fuzz_security_config.c: libFuzzer target for the "security" section of the cluster config
 * (coordinator/coord_config.c).
 *
 * The input is spliced into a minimal valid config as the value of "security" and parsed. A
 * rejected config must name the file in its error; an accepted one must hold NUL-terminated
 * paths, a TLS key exactly when a TLS certificate, and all three internal files or none. Must
 * never crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_config.h"

static const char head[] =
    "{\"pools\": [{\"name\": \"p\", \"addresses\": [\"127.0.0.1:1\"]}],"
    " \"stages\": [{\"name\": \"s\", \"pool\": \"p\", \"depth\": 2}],"
    " \"profiles\": [{\"name\": \"f\", \"stages\": [{\"stage\": \"s\"}]}],"
    " \"tiers\": [{\"name\": \"t\", \"budget_ms\": 0, \"priority\": 0, \"profile\": \"f\"}],"
    " \"security\": ";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 65536) return 0;
    size_t hn = sizeof head - 1;
    char *text = malloc(hn + size + 2);
    static mr_coord_config cfg;
    if (!text) return 0;
    memcpy(text, head, hn);
    memcpy(text + hn, data, size);
    text[hn + size] = '}';
    text[hn + size + 1] = 0;
    mr_err err = {0};
    if (mr_coord_config_parse(&cfg, "c.json", text, &err)) {
        if (err.code == 0 || !strstr(err.msg, "c.json")) abort();
        free(text);
        return 0;
    }
    const mr_cc_security *s = &cfg.security;
    if (!*s->tls_cert != !*s->tls_key) abort();
    if (*s->tls_client_ca && !*s->tls_cert) abort();
    if (!*s->internal_ca != !*s->internal_cert || !*s->internal_cert != !*s->internal_key) abort();
    if (memchr(s->api_keys, 0, sizeof s->api_keys) == NULL) abort();
    free(text);
    return 0;
}
