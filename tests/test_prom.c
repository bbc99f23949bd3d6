/* test_prom.c: the Prometheus writer and endpoint (rpc/prom.c): histogram buckets are
 * cumulative with the value on a bound counted in that bound's bucket, labels come before le,
 * and the HTTP endpoint serves exactly what the render function returns at GET /metrics, 404
 * elsewhere, 405 for other methods. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static char *render(void *user) {
    (*(int *)user)++;
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
    int calls = 0, port = -1;
    mr_prom_http *h = NULL;
    mr_err err = {0};
    assert_int_equal(mr_prom_http_new(&h, 0, render, &calls, &port, &err), 0);
    assert_true(port > 0);
    char buf[4096];
    http(port, "GET /metrics HTTP/1.0\r\n\r\n", buf, sizeof buf);
    assert_non_null(strstr(buf, " 200 "));
    assert_non_null(strstr(buf, "text/plain; version=0.0.4"));
    assert_non_null(strstr(buf, "\r\n\r\na_total 7\n"));
    assert_int_equal(calls, 1);
    http(port, "GET /other HTTP/1.0\r\n\r\n", buf, sizeof buf);
    assert_non_null(strstr(buf, " 404 "));
    http(port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n", buf, sizeof buf);
    assert_non_null(strstr(buf, " 405 "));
    assert_int_equal(calls, 1);
    mr_prom_http_free(h);
    assert_int_equal(mr_prom_http_new(&h, 70000, render, &calls, NULL, &err), MR_EINVAL);
    mr_prom_http_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_histogram_text),
        cmocka_unit_test(test_long_text_grows),
        cmocka_unit_test(test_endpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
