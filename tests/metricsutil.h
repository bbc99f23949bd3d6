/* metricsutil.h: one sample read off a live /metrics page, for the cmocka tests that check a
 * worker's or coordinator's counters (static, included by each test that needs it; the test
 * includes cmocka.h first). */
#ifndef MR_METRICSUTIL_H
#define MR_METRICSUTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* The value of the sample `series` (a name, or a name with labels such as
 * mrank_coord_retries_total{pool="p"}) on the /metrics page at loopback:port (HTTP/1.0 GET, 5 s
 * receive timeout); fails the test when the page or the line is missing. */
static double scrape_metric(int port, const char *series) {
    static char buf[1 << 16];
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {5, 0};
    assert_true(s >= 0);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) fail_msg("metrics port %d: connect", port);
    const char get[] = "GET /metrics HTTP/1.0\r\n\r\n";
    assert_int_equal(write(s, get, sizeof get - 1), (ssize_t)(sizeof get - 1));
    size_t n = 0;
    for (ssize_t k; n < sizeof buf - 1 && (k = read(s, buf + n, sizeof buf - 1 - n)) > 0;)
        n += (size_t)k;
    close(s);
    buf[n] = 0;
    char key[256];
    snprintf(key, sizeof key, "\n%s ", series);
    const char *at = strstr(buf, key);
    if (!at) fail_msg("no %s in the metrics page (%zu bytes)", series, n);
    return strtod(at + strlen(key), NULL);
}

#endif
