/* test_discovery.c: how the coordinator follows a DNS pool (coordinator/probe.c, plan.c) and
 * the channel renewal it relies on (rpc/client.c). Splitting gRPC dns targets into host and
 * port; counting the distinct addresses a name resolves to, with a fingerprint that tells one
 * address set from another; the planner's parallelism following the resolved count (at least
 * one, a static pool its address count); and mr_rpc_channel_renew with calls in flight: every
 * call completes once (on the channel it started on), and the channel frees without waiting
 * forever. The multi-host counterpart, replicas added to a real DNS server under load, is
 * tests/multihost.sh. Loopback only; every call has a deadline. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "coord_internal.h"
#include "rpc.h"
#include "rpc_methods.h"

static void test_split(void **state) {
    (void)state;
    char h[256], p[32];
    mr_err err = {0};
    assert_int_equal(mr__dns_split("dns:///mrank-full.mrank.svc.cluster.local:7000", h, sizeof h,
                                   p, sizeof p, &err), 0);
    assert_string_equal(h, "mrank-full.mrank.svc.cluster.local");
    assert_string_equal(p, "7000");
    assert_int_equal(mr__dns_split("dns://10.0.0.53:53/full.svc:7001", h, sizeof h, p, sizeof p,
                                   &err), 0);
    assert_string_equal(h, "full.svc");
    assert_string_equal(p, "7001");
    assert_int_equal(mr__dns_split("dns:full.svc", h, sizeof h, p, sizeof p, &err), 0);
    assert_string_equal(h, "full.svc");
    assert_string_equal(p, "443");
    assert_int_equal(mr__dns_split("dns:///[::1]:7002", h, sizeof h, p, sizeof p, &err), 0);
    assert_string_equal(h, "::1");
    assert_string_equal(p, "7002");
    assert_int_equal(mr__dns_split("ipv4:10.0.0.1:7000", h, sizeof h, p, sizeof p, &err),
                     MR_EINVAL);
    assert_int_equal(mr__dns_split("dns:///:7000", h, sizeof h, p, sizeof p, &err), MR_EINVAL);
    assert_int_equal(mr__dns_split("dns:///x:", h, sizeof h, p, sizeof p, &err), MR_EINVAL);
}

static void test_count(void **state) {
    (void)state;
    int n = -1, n2 = -1;
    uint64_t s1 = 0, s2 = 0, s3 = 0;
    mr_err err = {0};
    assert_int_equal(mr__dns_count("127.0.0.1", "7000", &n, &s1, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(mr__dns_count("127.0.0.1", "7000", &n2, &s2, &err), 0);
    assert_int_equal(n2, 1);
    assert_true(s1 == s2 && s1 != 0);
    assert_int_equal(mr__dns_count("127.0.0.2", "7000", &n, &s3, &err), 0);
    assert_int_equal(n, 1);
    assert_true(s3 != s1);          /* another address set, another fingerprint */
}

static void test_parallelism(void **state) {
    (void)state;
    static mr_coord c;              /* large: not on the stack */
    memset(&c, 0, sizeof c);
    c.cfg.n_pools = 2;
    snprintf(c.cfg.pools[0].dns, sizeof c.cfg.pools[0].dns, "dns:///full.svc:7000");
    c.pools[0].n_ep = 1;
    c.pools[1].n_ep = 3;            /* a static pool of three addresses */
    atomic_store(&c.pools[0].replicas, 0);
    assert_int_equal(mr__pool_parallelism(&c, 0), 1);   /* nothing resolved yet */
    atomic_store(&c.pools[0].replicas, 5);
    assert_int_equal(mr__pool_parallelism(&c, 0), 5);
    atomic_store(&c.pools[0].replicas, 2);
    assert_int_equal(mr__pool_parallelism(&c, 0), 2);
    assert_int_equal(mr__pool_parallelism(&c, 1), 3);
}

enum { N_CALLS = 8 };
static int g_done[N_CALLS];

static void on_done(void *user, grpc_status_code st, const char *msg, const uint8_t *resp,
                    size_t len) {
    (void)msg, (void)resp, (void)len;
    int i = (int)(intptr_t)user;
    if (st != GRPC_STATUS_OK) __atomic_add_fetch(&g_done[i], 1, __ATOMIC_SEQ_CST);
}

static void test_renew_in_flight(void **state) {
    (void)state;
    mr_rpc_channel *ch = NULL;
    mr_err err = {0};
    /* port 1 on loopback: nothing listens, every call fails by its deadline or sooner */
    assert_int_equal(mr_rpc_channel_new(&ch, "dns:///127.0.0.1:1", &err), 0);
    mr_rpc_opts o = {.timeout_ms = 300, .wait_for_ready = 1};
    for (int i = 0; i < N_CALLS; i++) {
        assert_int_equal(mr_rpc_unary_async(ch, MR_METHOD_WORKER_INFO, NULL, 0, &o, on_done,
                                            (void *)(intptr_t)i), 0);
        if (i % 3 == 2) assert_int_equal(mr_rpc_channel_renew(ch, &err), 0);
    }
    assert_int_equal(mr_rpc_channel_renew(ch, &err), 0);
    uint8_t *resp = NULL;
    size_t len = 0;
    grpc_status_code st;
    char msg[128];
    assert_int_not_equal(mr_rpc_unary(ch, MR_METHOD_WORKER_INFO, NULL, 0, 300, &resp, &len,
                                      &st, msg, sizeof msg), 0);
    assert_int_not_equal(st, GRPC_STATUS_OK);
    mr_rpc_channel_free(ch);        /* waits for the calls: each has a deadline */
    for (int i = 0; i < N_CALLS; i++) assert_int_equal(g_done[i], 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_count),
        cmocka_unit_test(test_parallelism),
        cmocka_unit_test(test_renew_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
