/* test_security.c: the security building blocks in one process: the API-key file parser and
 * its lookup (rpc/apikeys.c), the metrics bind host (rpc/prom.c), the address redaction of
 * client errors (coordinator/redact.c), the config's security section, and TLS/mTLS over
 * loopback with rpc/tls.c (certificates made by scripts/make-certs.sh with the openssl CLI;
 * without openssl the TLS cases skip and the binary exits 77): handshake refusals, and a
 * certificate rotation picked up by a new connection while an open one keeps working. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "apikeys.h"
#include "coord_internal.h"
#include "prom.h"
#include "rpc.h"
#include "tls.h"

/* sha256("secret-key-1") and sha256("secret-key-2") */
#define SHA1 "9c5e3b9c1fb1c41d6bf62ff2ae31d10e8fc6e1b1ed2c1a5b5f1d2b8f8e2b3a11"
static char sha_of_key1[65], sha_of_key2[65];
static int skipped_tls;

static void hex_sha(const char *key, char out[65]) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "printf '%%s' '%s' | sha256sum", key);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_int_equal(fscanf(p, "%64s", out), 1);
    pclose(p);
}

static void test_apikeys(void **state) {
    hex_sha("secret-key-1", sha_of_key1);
    hex_sha("secret-key-2", sha_of_key2);
    char json[600];
    snprintf(json, sizeof json,
             "[{\"name\": \"team-a\", \"sha256\": \"%s\", \"tiers\": [\"interactive\", "
             "\"standard\"]}, {\"name\": \"team-b\", \"sha256\": \"%s\", \"tiers\": [\"batch\"]}]",
             sha_of_key1, sha_of_key2);
    mr_apikeys *k = NULL;
    mr_err err = {0};
    assert_int_equal(mr_apikeys_parse(&k, "keys.json", json, &err), 0);
    assert_int_equal(mr_apikeys_count(k), 2);
    assert_int_equal(mr_apikeys_find(k, "secret-key-1", 12), 0);
    assert_int_equal(mr_apikeys_find(k, "secret-key-2", 12), 1);
    assert_int_equal(mr_apikeys_find(k, "secret-key-3", 12), -1);
    assert_int_equal(mr_apikeys_find(k, "secret-key-1", 11), -1);   /* a prefix is no key */
    assert_int_equal(mr_apikeys_find(k, "", 0), -1);
    assert_true(mr_apikeys_allows(k, 0, "standard"));
    assert_false(mr_apikeys_allows(k, 0, "batch"));
    assert_true(mr_apikeys_allows(k, 1, "batch"));
    assert_false(mr_apikeys_allows(k, -1, "batch"));
    assert_string_equal(mr_apikeys_name(k, 1), "team-b");
    mr_apikeys_free(k);

    size_t n;
    const char *b = mr_apikeys_bearer("Bearer abc", &n);
    assert_non_null(b);
    assert_int_equal(n, 3);
    assert_memory_equal(b, "abc", 3);
    assert_non_null(mr_apikeys_bearer("bearer  xyz ", &n));
    assert_int_equal(n, 3);
    assert_null(mr_apikeys_bearer("Basic abc", &n));
    assert_null(mr_apikeys_bearer("Bearer ", &n));
    assert_null(mr_apikeys_bearer(NULL, &n));

    /* every error names the file and the JSON path */
    static const struct { const char *json, *want; } bad[] = {
        {"{}", "keys.json: expected a JSON array"},
        {"[1]", "keys.json: [0]: expected an object"},
        {"[{\"sha256\": \"" SHA1 "\", \"tiers\": [\"a\"]}]", "keys.json: [0].name: missing"},
        {"[{\"name\": \"a b\", \"sha256\": \"" SHA1 "\", \"tiers\": [\"a\"]}]", "[0].name: expected"},
        {"[{\"name\": \"a\", \"sha256\": \"abc\", \"tiers\": [\"a\"]}]", "[0].sha256: expected 64 hex"},
        {"[{\"name\": \"a\", \"sha256\": \"" SHA1 "\", \"tiers\": []}]", "[0].tiers: expected 1..16"},
        {"[{\"name\": \"a\", \"sha256\": \"" SHA1 "\", \"tiers\": [\"a\"], \"key\": \"x\"}]",
         "[0].key: unknown key"},
        {"[{\"name\": \"a\", \"sha256\": \"" SHA1 "\", \"tiers\": [\"a\"]},"
         " {\"name\": \"a\", \"sha256\": \"" SHA1 "\", \"tiers\": [\"a\"]}]", "[1].name: 'a' again"},
        {"[{\"name\": \"a\", \"sha256\": \"" SHA1 "\", \"tiers\": [\"a\"]},"
         " {\"name\": \"b\", \"sha256\": \"" SHA1 "\", \"tiers\": [\"a\"]}]", "[1].sha256: the same key"},
        {"[{\"name\": \"a\", \"sha256\": \"" SHA1 "\", \"tiers\": [7]}]", "[0].tiers[0]: expected a string"},
        {"not json", "keys.json: line 1: not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = (mr_err){0};
        k = NULL;
        assert_int_not_equal(mr_apikeys_parse(&k, "keys.json", bad[i].json, &err), 0);
        assert_null(k);
        if (!strstr(err.msg, bad[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, bad[i].want);
        assert_non_null(strstr(err.msg, "keys.json"));
    }
    err = (mr_err){0};
    assert_int_equal(mr_apikeys_load(&k, "/nonexistent/keys.json", &err), MR_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/keys.json"));
}

static void test_host_of(void **state) {
    char h[64];
    mr_prom_host_of("127.0.0.1:7100", h, sizeof h);
    assert_string_equal(h, "127.0.0.1");
    mr_prom_host_of("[::1]:0", h, sizeof h);
    assert_string_equal(h, "::1");
    mr_prom_host_of("0.0.0.0:7001", h, sizeof h);
    assert_string_equal(h, "0.0.0.0");
    mr_prom_host_of("localhost:7001", h, sizeof h);
    assert_string_equal(h, "localhost");
    mr_prom_host_of("ipv4:10.0.0.2:7001", h, sizeof h);
    assert_string_equal(h, "10.0.0.2");
}

static void test_redact(void **state) {
    mr_coord *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->cfg.n_pools = 2;
    strcpy(c->cfg.pools[0].name, "cheap");
    strcpy(c->cfg.pools[1].name, "full");
    mr__endpoint ep0[2] = {{.target = "10.1.2.3:7101"}, {.target = "workers.svc:7000"}};
    mr__endpoint ep1[1] = {{.target = "10.1.2.4:7102"}};
    c->pools[0] = (mr__pool){.n_ep = 2, .ep = ep0};
    c->pools[1] = (mr__pool){.n_ep = 1, .ep = ep1};
    char m[400];
    snprintf(m, sizeof m, "stage 'full' (10.1.2.4:7102): boom");
    assert_int_equal(mr__redact(c, m, sizeof m), 1);
    assert_string_equal(m, "stage 'full' (pool 'full' replica 0): boom");
    snprintf(m, sizeof m, "no replica answered (failed to connect to all addresses; last error: "
                          "UNAVAILABLE: ipv4:127.0.0.1:7101: Connection refused)");
    assert_int_equal(mr__redact(c, m, sizeof m), 1);
    assert_null(strstr(m, "127.0.0.1"));
    assert_null(strstr(m, "7101"));
    assert_non_null(strstr(m, "no replica answered"));
    snprintf(m, sizeof m, "x workers.svc:7000 [fe80::1]:99 192.168.0.1 y");
    assert_int_equal(mr__redact(c, m, sizeof m), 1);
    assert_string_equal(m, "x pool 'cheap' replica 1 <internal address> <internal address> y");
    /* nothing address-like: untouched (versions, counts, stage names) */
    snprintf(m, sizeof m, "stage 'half-r2' v1.2.3: 12 of 40 passages, max_len 64");
    assert_int_equal(mr__redact(c, m, sizeof m), 0);
    assert_string_equal(m, "stage 'half-r2' v1.2.3: 12 of 40 passages, max_len 64");
    free(c);
}

static void test_config_security(void **state) {
    static const char *base =
        "{\"pools\": [{\"name\": \"p\", \"addresses\": [\"127.0.0.1:1\"]}],"
        " \"stages\": [{\"name\": \"s\", \"pool\": \"p\", \"depth\": 2}],"
        " \"profiles\": [{\"name\": \"f\", \"stages\": [{\"stage\": \"s\"}]}],"
        " \"tiers\": [{\"name\": \"t\", \"budget_ms\": 0, \"priority\": 0, \"profile\": \"f\"}],"
        " \"security\": %s}";
    mr_coord_config *cfg = calloc(1, sizeof *cfg);
    assert_non_null(cfg);
    static const struct { const char *sec, *want; } cases[] = {
        {"{\"tls\": {\"cert\": \"/nonexistent/c.pem\", \"key\": \"/etc/hostname\"}}",
         "security.tls.cert: /nonexistent/c.pem: cannot be read"},
        {"{\"tls\": {\"key\": \"/etc/hostname\"}}", "security.tls.cert: missing"},
        {"{\"tls\": {\"cert\": \"/etc/hostname\", \"key\": \"/etc/hostname\", \"ca\": \"x\"}}",
         "security.tls.ca: unknown key"},
        {"{\"internal\": {\"ca\": \"/etc/hostname\", \"cert\": \"/etc/hostname\"}}",
         "security.internal.key: missing"},
        {"{\"api_keys\": \"\"}", "security.api_keys: empty"},
        {"{\"api_keys\": 3}", "security.api_keys: expected a string"},
        {"[]", "security: expected an object"},
        {"{\"keys\": 1}", "security.keys: unknown key"},
    };
    char json[1200];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(json, sizeof json, base, cases[i].sec);
        mr_err err = {0};
        assert_int_not_equal(mr_coord_config_parse(cfg, "c.json", json, &err), 0);
        if (!strstr(err.msg, cases[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, cases[i].want);
    }
    snprintf(json, sizeof json, base,
             "{\"tls\": {\"cert\": \"/etc/hostname\", \"key\": \"/etc/hostname\"},"
             " \"api_keys\": \"/etc/hostname\"}");
    mr_err err = {0};
    assert_int_equal(mr_coord_config_parse(cfg, "c.json", json, &err), 0);
    assert_string_equal(cfg->security.tls_cert, "/etc/hostname");
    assert_string_equal(cfg->security.tls_client_ca, "");
    assert_string_equal(cfg->security.api_keys, "/etc/hostname");
    free(cfg);
}

/* ---- TLS over loopback ---- */

static char dir[64];

static void echo(mr_rpc_call *call, void *user) {
    size_t n;
    const uint8_t *p = mr_rpc_call_request(call, &n);
    mr_rpc_call_finish(call, p, n);
}

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...) {
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

/* Status of one echo call over ch. */
static grpc_status_code call_once(mr_rpc_channel *ch) {
    uint8_t *resp = NULL;
    size_t rlen = 0;
    grpc_status_code st = GRPC_STATUS_UNKNOWN;
    char msg[300];
    mr_rpc_unary(ch, "/t.T/Echo", (const uint8_t *)"hi", 2, 10000, &resp, &rlen, &st, msg,
                 sizeof msg);
    if (st == GRPC_STATUS_OK) assert_memory_equal(resp, "hi", 2);
    free(resp);
    return st;
}

static grpc_status_code call_with(const char *target, const char *ca, const char *cert,
                                  const char *key) {
    char pca[128], pcert[128], pkey[128];
    mr_rpc_tls_client t = {0};
    if (ca) t.ca = (snprintf(pca, sizeof pca, "%s/%s", dir, ca), pca);
    if (cert) t.cert = (snprintf(pcert, sizeof pcert, "%s/%s", dir, cert), pcert);
    if (key) t.key = (snprintf(pkey, sizeof pkey, "%s/%s", dir, key), pkey);
    mr_rpc_channel *ch = NULL;
    mr_err err = {0};
    assert_int_equal(mr_rpc_channel_new_tls(&ch, target, ca || cert ? &t : NULL, &err), 0);
    grpc_status_code st = call_once(ch);
    mr_rpc_channel_free(ch);
    return st;
}

static void test_tls(void **state) {
    if (skipped_tls) skip();
    char p[4][128];
    snprintf(p[0], sizeof p[0], "%s/live-cert.pem", dir);
    snprintf(p[1], sizeof p[1], "%s/live-key.pem", dir);
    snprintf(p[2], sizeof p[2], "%s/a/internal-ca.pem", dir);
    assert_int_equal(run("cp %s/a/internal.pem %s && cp %s/a/internal-key.pem %s", dir, p[0], dir,
                         p[1]), 0);
    mr_rpc_tls_server *t = NULL;
    mr_err err = {0};
    /* bad files are refused with the file and field named */
    assert_int_not_equal(mr_rpc_tls_server_new(&t, "/nonexistent.pem", p[1], NULL, "x", &err), 0);
    assert_non_null(strstr(err.msg, "x.cert /nonexistent.pem"));
    snprintf(p[3], sizeof p[3], "%s/a/client-key.pem", dir);
    err = (mr_err){0};
    assert_int_not_equal(mr_rpc_tls_server_new(&t, p[0], p[3], NULL, "x", &err), 0);
    assert_non_null(strstr(err.msg, "does not match"));

    assert_int_equal(mr_rpc_tls_server_new(&t, p[0], p[1], p[2], "test", &err), 0);
    mr_rpc_server *s = NULL;
    assert_int_equal(mr_rpc_server_new(&s, "127.0.0.1:0", 2, &err), 0);
    assert_int_equal(mr_rpc_server_set_tls(s, t, &err), 0);
    assert_int_equal(mr_rpc_server_add_unary(s, "/t.T/Echo", echo, NULL), 0);
    int port = 0;
    assert_int_equal(mr_rpc_server_start(s, &port, &err), 0);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);

    assert_int_equal(call_with(target, NULL, NULL, NULL), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(call_with(target, "a/internal-ca.pem", NULL, NULL), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(call_with(target, "a/internal-ca.pem", "b/internal.pem", "b/internal-key.pem"),
                     GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(call_with(target, "b/internal-ca.pem", "a/internal.pem", "a/internal-key.pem"),
                     GRPC_STATUS_UNAVAILABLE);   /* the server's cert is not from b's CA */
    assert_int_equal(call_with(target, "a/internal-ca.pem", "a/internal.pem", "a/internal-key.pem"),
                     GRPC_STATUS_OK);

    /* an open connection, then a rotation to a certificate of another CA (client CA kept) */
    char ca[128], cert[128], key[128];
    snprintf(ca, sizeof ca, "%s/a/internal-ca.pem", dir);
    snprintf(cert, sizeof cert, "%s/a/internal.pem", dir);
    snprintf(key, sizeof key, "%s/a/internal-key.pem", dir);
    mr_rpc_tls_client tc = {.ca = ca, .cert = cert, .key = key};
    mr_rpc_channel *open_ch = NULL;
    assert_int_equal(mr_rpc_channel_new_tls(&open_ch, target, &tc, &err), 0);
    assert_int_equal(call_once(open_ch), GRPC_STATUS_OK);
    assert_int_equal(mr_rpc_tls_server_reloads(t), 0);
    assert_int_equal(run("cp %s/b/internal.pem %s/tmp.pem && mv %s/tmp.pem %s && "
                         "cp %s/b/internal-key.pem %s/tmp.pem && mv %s/tmp.pem %s",
                         dir, dir, dir, p[0], dir, dir, dir, p[1]), 0);
    usleep(1100 * 1000);   /* the fetcher looks at most once a second */
    grpc_status_code st = GRPC_STATUS_UNKNOWN;
    for (int i = 0; i < 20 && st != GRPC_STATUS_OK; i++) {   /* bounded: 20 new connections */
        st = call_with(target, "b/internal-ca.pem", "a/internal.pem", "a/internal-key.pem");
        if (st != GRPC_STATUS_OK) usleep(200 * 1000);
    }
    assert_int_equal(st, GRPC_STATUS_OK);
    assert_int_equal(mr_rpc_tls_server_reloads(t), 1);
    assert_int_equal(call_once(open_ch), GRPC_STATUS_OK);   /* the open connection lives on */
    mr_rpc_channel_free(open_ch);
    mr_rpc_server_free(s);
}

int main(void) {
    strcpy(dir, "/tmp/mr_tsec_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    skipped_tls = run("command -v openssl >/dev/null") != 0 ||
                  run("%s/scripts/make-certs.sh %s/a >/dev/null && %s/scripts/make-certs.sh %s/b "
                      ">/dev/null", MR_SOURCE_DIR, dir, MR_SOURCE_DIR, dir) != 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apikeys),
        cmocka_unit_test(test_host_of),
        cmocka_unit_test(test_redact),
        cmocka_unit_test(test_config_security),
        cmocka_unit_test(test_tls),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    run("rm -rf %s", dir);
    if (!rc && skipped_tls) {
        fprintf(stderr, "test_security: openssl missing: the TLS cases skipped\n");
        return 77;
    }
    return rc;
}
