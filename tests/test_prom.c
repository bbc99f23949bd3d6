/* test_prom.c: the Prometheus writer and endpoint (rpc/prom.c): histogram buckets are
 * cumulative with the value on a bound counted in that bound's bucket, labels come before le,
 * and the HTTP endpoint serves exactly what the render function returns at GET /metrics, 404
 * elsewhere, 405 for other methods. Hostile clients: an idle connection is closed by the server
 * after the idle timeout; at the total connection limit a new GET waits (no answer while the
 * idle ones stay) and is answered once one closes or times out; one client address over its
 * own limit has further connections closed while another address is served; descriptors
 * above 1023 work. Waits are bounded (20 s receive timeouts, 10 s polls of the server's own
 * connection count); the only timing assertions are an idle close not before half the timeout
 * and "no answer within 0.5 s" where the correct server never answers at all. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "prom.h"

static void test_histogram_text(void **state) {
    static const double bounds[] = {1, 2, 5};
    mr_prom_hist h;
    mr_prom_hist_init(&h, bounds, 3);
    double v[] = {0.5, 1, 1.5, 5, 7};
    for (int i = 0; i < 5; i++) mr_prom_hist_observe(&h, v[i]);
    mr_prom_text t = {0};
    mr_prom_family(&t, "x_seconds", "histogram", "A test.");
    mr_prom_hist_write(&t, "x_seconds", "tier=\"a\"", &h);
    mr_prom_hist_write(&t, "y", NULL, &h);
    char *s = mr_prom_text_take(&t);
    assert_non_null(s);
    assert_string_equal(s, "# HELP x_seconds A test.\n# TYPE x_seconds histogram\n"
                           "x_seconds_bucket{tier=\"a\",le=\"1\"} 2\n"
                           "x_seconds_bucket{tier=\"a\",le=\"2\"} 3\n"
                           "x_seconds_bucket{tier=\"a\",le=\"5\"} 4\n"
                           "x_seconds_bucket{tier=\"a\",le=\"+Inf\"} 5\n"
                           "x_seconds_sum{tier=\"a\"} 15\n"
                           "x_seconds_count{tier=\"a\"} 5\n"
                           "y_bucket{le=\"1\"} 2\ny_bucket{le=\"2\"} 3\ny_bucket{le=\"5\"} 4\n"
                           "y_bucket{le=\"+Inf\"} 5\ny_sum 15\ny_count 5\n");
    free(s);
    assert_null(t.p);
    /* an empty text is "", not NULL */
    s = mr_prom_text_take(&t);
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);
}

static void test_long_text_grows(void **state) {
    mr_prom_text t = {0};
    for (int i = 0; i < 2000; i++) mr_prom_printf(&t, "metric_%d %d\n", i, i);
    char *s = mr_prom_text_take(&t);
    assert_non_null(s);
    assert_non_null(strstr(s, "metric_0 0\nmetric_1 1\n"));
    assert_non_null(strstr(s, "metric_1999 1999\n"));
    free(s);
}

/* user: an atomic_int counting the calls (the endpoint's thread writes it, the test reads it) */
static char *render(void *user) {
    atomic_fetch_add((atomic_int *)user, 1);
    return strdup("a_total 7\n");
}

/* One HTTP/1.0 request to 127.0.0.1:port; the whole answer into buf. */
static void http(int port, const char *req, char *buf, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    size_t n = 0;
    ssize_t k;
    while (n + 1 < cap && (k = read(fd, buf + n, cap - 1 - n)) > 0) n += (size_t)k;
    buf[n] = 0;
    close(fd);
}

static void test_endpoint(void **state) {
    atomic_int calls = 0;
    int port = -1;
    mr_prom_http *h = NULL;
    mr_err err = {0};
    assert_int_equal(mr_prom_http_new(&h, 0, render, &calls, &port, &err), 0);
    assert_true(port > 0);
    char buf[4096];
    http(port, "GET /metrics HTTP/1.0\r\n\r\n", buf, sizeof buf);
    assert_non_null(strstr(buf, " 200 "));
    assert_non_null(strstr(buf, "text/plain; version=0.0.4"));
    assert_non_null(strstr(buf, "\r\n\r\na_total 7\n"));
    assert_int_equal(atomic_load(&calls), 1);
    http(port, "GET /other HTTP/1.0\r\n\r\n", buf, sizeof buf);
    assert_non_null(strstr(buf, " 404 "));
    http(port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n", buf, sizeof buf);
    assert_non_null(strstr(buf, " 405 "));
    assert_int_equal(atomic_load(&calls), 1);
    mr_prom_http_free(h);
    assert_int_equal(mr_prom_http_new(&h, 70000, render, &calls, NULL, &err), MR_EINVAL);
    mr_prom_http_free(NULL);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A TCP connection from source address src (any 127.x.y.z) to 127.0.0.1:port, with a 20 s
 * receive timeout so every read below is bounded. */
static int dial(int port, const char *src) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in from = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, src, &from.sin_addr), 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&from, sizeof from), 0);
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void send_get(int fd) {
    static const char get[] = "GET /metrics HTTP/1.0\r\n\r\n";
    assert_int_equal(write(fd, get, sizeof get - 1), (ssize_t)(sizeof get - 1));
}

/* Reads fd to its end (or the receive timeout, or a reset); 1 when the answer was a 200 with
 * the rendered text. Closes fd. */
static int answered(int fd) {
    char buf[4096];
    size_t n = 0;
    ssize_t k;
    while (n + 1 < sizeof buf && (k = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)k;
    buf[n] = 0;
    close(fd);
    return strstr(buf, " 200 ") && strstr(buf, "a_total 7\n");
}

/* Polls until the server counts n open connections (at most 10 s); the count it last saw. */
static unsigned wait_connections(const mr_prom_http *h, unsigned n) {
    unsigned c = mr_prom_http_connections(h);
    for (int i = 0; i < 1000 && c != n; i++) {
        usleep(10000);
        c = mr_prom_http_connections(h);
    }
    return c;
}

static mr_prom_http *start(unsigned timeout_s, unsigned max_conn, unsigned per_ip, atomic_int *calls,
                           int *port) {
    mr_prom_http_opts o;
    mr_prom_http_opts_init(&o);
    o.idle_timeout_s = timeout_s;
    o.max_connections = max_conn;
    o.max_per_ip = per_ip;
    mr_prom_http *h = NULL;
    mr_err err = {0};
    if (mr_prom_http_start(&h, &o, render, calls, port, &err)) fail_msg("%s", err.msg);
    return h;
}

static void test_opts(void **state) {
    mr_prom_http_opts o;
    mr_prom_http_opts_init(&o);
    assert_int_equal(o.port, 0);
    assert_int_equal(o.idle_timeout_s, 10);
    assert_int_equal(o.max_connections, 64);
    assert_int_equal(o.max_per_ip, 16);
    mr_prom_http *h = NULL;
    mr_err err = {0};
    atomic_int calls = 0;
    o.max_per_ip = 0;
    assert_int_equal(mr_prom_http_start(&h, &o, render, &calls, NULL, &err), MR_EINVAL);
    assert_non_null(strstr(err.msg, "at least 1"));
    assert_null(h);
}

/* The server closes an idle connection after the timeout (1 s here), and no earlier than half
 * of it (a server that closed at once would fail; load only delays the close). */
static void test_idle_timeout(void **state) {
    atomic_int calls = 0;
    int port = -1;
    mr_prom_http *h = start(1, 64, 16, &calls, &port);
    double t0 = now_s();
    int fd = dial(port, "127.0.0.1");
    assert_int_equal(wait_connections(h, 1), 1);
    char c;
    ssize_t k = read(fd, &c, 1);   /* blocks until the server closes it (20 s bound) */
    double dt = now_s() - t0;
    fprintf(stderr, "# idle connection closed by the server after %.2f s (timeout 1 s)\n", dt);
    assert_int_equal(k, 0);
    assert_true(dt >= 0.5);
    close(fd);
    assert_int_equal(wait_connections(h, 0), 0);
    assert_true(answered((send_get(fd = dial(port, "127.0.0.1")), fd)));
    mr_prom_http_free(h);
}

/* At the total limit (3) a new GET gets no answer while the idle connections stay open, and is
 * answered once one of them closes. With a 2 s idle timeout it is answered with nobody
 * closing anything, and the server has closed every idle connection (on a slow machine they
 * may time out before the GET arrives: the answer and the closes are what is checked). */
static void test_connection_limit(void **state) {
    for (int timeout_case = 0; timeout_case < 2; timeout_case++) {
        atomic_int calls = 0;
    int port = -1;
        mr_prom_http *h = start(timeout_case ? 2 : 60, 3, 16, &calls, &port);
        int idle[3];
        for (int i = 0; i < 3; i++) idle[i] = dial(port, "127.0.0.1");
        if (!timeout_case) assert_int_equal(wait_connections(h, 3), 3);
        int fd = dial(port, "127.0.0.2");   /* connect() completes in the kernel's backlog */
        send_get(fd);
        if (!timeout_case) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            /* the correct server does not accept it at all: no answer, however long we wait */
            assert_int_equal(poll(&p, 1, 500), 0);
            assert_int_equal(atomic_load(&calls), 0);
            close(idle[0]);
            idle[0] = -1;
        }
        assert_true(answered(fd));
        assert_int_equal(atomic_load(&calls), 1);
        for (int i = 0; i < 3; i++) {
            if (idle[i] < 0) continue;
            if (timeout_case) {
                char c;
                assert_int_equal(read(idle[i], &c, 1), 0);   /* closed by the server */
            }
            close(idle[i]);
        }
        mr_prom_http_free(h);
    }
}

/* One address at its own limit (2) has a third connection closed unanswered, while another
 * address is served; once its idle ones close, it is served again. */
static void test_per_ip_limit(void **state) {
    atomic_int calls = 0;
    int port = -1;
    mr_prom_http *h = start(60, 64, 2, &calls, &port);
    int idle[2] = {dial(port, "127.0.0.1"), dial(port, "127.0.0.1")};
    assert_int_equal(wait_connections(h, 2), 2);
    int fd = dial(port, "127.0.0.1");
    send_get(fd);
    assert_false(answered(fd));   /* closed by the server (EOF or reset), not left waiting */
    assert_true(answered((send_get(fd = dial(port, "127.0.0.3")), fd)));
    close(idle[0]);
    close(idle[1]);
    assert_int_equal(wait_connections(h, 0), 0);
    assert_true(answered((send_get(fd = dial(port, "127.0.0.1")), fd)));
    assert_int_equal(atomic_load(&calls), 2);
    mr_prom_http_free(h);
}

/* With descriptors 0..1199 taken, the endpoint's sockets are all above 1023 (select() could
 * not watch them) and it still answers. */
static void test_high_descriptors(void **state) {
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 1300) {
        if (rl.rlim_max < 1300) fail_msg("RLIMIT_NOFILE hard limit %lu < 1300",
                                         (unsigned long)rl.rlim_max);
        rl.rlim_cur = 1300;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    int fill[1200], n = 0, fd;
    while (n < 1200 && (fd = open("/dev/null", O_RDONLY)) >= 0 && fd < 1200) fill[n++] = fd;
    assert_true(fd >= 1023);
    atomic_int calls = 0;
    int port = -1;
    mr_prom_http *h = start(10, 64, 16, &calls, &port);
    int c = dial(port, "127.0.0.1");
    assert_true(c > 1023);
    send_get(c);
    assert_true(answered(c));
    mr_prom_http_free(h);
    for (int i = 0; i < n; i++) close(fill[i]);
    if (fd >= 1200) close(fd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_histogram_text),
        cmocka_unit_test(test_long_text_grows),
        cmocka_unit_test(test_endpoint),
        cmocka_unit_test(test_opts),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_connection_limit),
        cmocka_unit_test(test_per_ip_limit),
        cmocka_unit_test(test_high_descriptors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
