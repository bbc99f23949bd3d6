/* test_http.c: the coordinator's HTTP/JSON front end (coordinator/http.c) in one process, small
 * enough for the sanitizer builds and run under ThreadSanitizer by scripts/test.sh: one worker
 * (models/mrank-tiny) and a coordinator with http_listen on a free loopback port. Its
 * libmicrohttpd thread pool hands each request to the coordinator's scheduler and the answer
 * back (tests/http_api.sh covers the shapes and conventions against a whole `mrank up`; this
 * covers the threads). N_CLIENTS threads each send N_EACH Cohere v2 requests at once, beside a
 * thread sending malformed bodies: every good request is answered 200 with all documents
 * ranked, each the same ranking; every malformed one 400 (TEI's validation 422) with a
 * message. Every wait is bounded (socket timeouts). */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <cmocka.h>

#include "clusterutil.h"

enum { N_CLIENTS = 4, N_EACH = 3, RESP_CAP = 1 << 16 };

/* POSTs body to path on loopback port over a fresh connection; the status code (-1 when the
 * exchange failed), the response body copied into out (NUL-terminated, cut at cap). */
static int http_post(int port, const char *path, const char *body, char *out, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {.tv_sec = 20};   /* no exchange waits longer */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char *req = NULL;
    int n = asprintf(&req,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     path, strlen(body), body);
    int status = -1;
    size_t got = 0;
    char *buf = malloc(RESP_CAP);
    if (n > 0 && buf && connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        write(fd, req, (size_t)n) == n) {
        ssize_t k;
        while (got < RESP_CAP - 1 && (k = read(fd, buf + got, RESP_CAP - 1 - got)) > 0)
            got += (size_t)k;
        buf[got] = 0;
        const char *sep = strstr(buf, "\r\n\r\n");
        if (sep && sscanf(buf, "HTTP/1.%*d %d", &status) == 1)
            snprintf(out, cap, "%s", sep + 4);
    }
    free(buf);
    free(req);
    close(fd);
    return status;
}

/* The Cohere v2 body of K_TINY_QUERY over the 8 tiny documents. */
static void good_body(char *out, size_t cap) {
    size_t k = (size_t)snprintf(out, cap, "{\"model\": \"m\", \"query\": \"%s\", \"documents\": [",
                                K_TINY_QUERY);
    for (int i = 0; i < K_TINY_N_DOCS; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s\"%s\"", i ? ", " : "", k_tiny_docs[i]);
    snprintf(out + k, cap - k, "]}");
}

/* The document indexes of a v2 answer in ranking order; how many. */
static int ranking(const char *body, int *idx, int cap) {
    int n = 0;
    for (const char *p = body; n < cap && (p = strstr(p, "\"index\"")); p += 7)
        if (sscanf(p, "\"index\" : %d", &idx[n]) == 1 || sscanf(p, "\"index\":%d", &idx[n]) == 1)
            n++;
    return n;
}

typedef struct client {
    int port, ok, order[K_TINY_N_DOCS];
    char err[256];
} client;

static void *good_client(void *arg) {
    client *cl = arg;
    char body[2048], *out = malloc(RESP_CAP);
    good_body(body, sizeof body);
    for (int i = 0; out && i < N_EACH; i++) {
        int st = http_post(cl->port, "/v2/rerank", body, out, RESP_CAP);
        int idx[K_TINY_N_DOCS + 1], n = ranking(out, idx, K_TINY_N_DOCS + 1);
        if (st != 200 || n != K_TINY_N_DOCS) {
            snprintf(cl->err, sizeof cl->err, "status %d, %d results: %.150s", st, n, out);
            break;
        }
        if (i > 0 && memcmp(idx, cl->order, sizeof cl->order)) {
            snprintf(cl->err, sizeof cl->err, "another ranking on request %d", i);
            break;
        }
        memcpy(cl->order, idx, sizeof cl->order);
        cl->ok++;
    }
    free(out);
    return NULL;
}

/* Malformed bodies, each with the status its shape answers. */
static void *bad_client(void *arg) {
    client *cl = arg;
    static const char *const cases[][3] = {
        {"/v2/rerank", "{", "400"},
        {"/v2/rerank", "{\"query\": \"q\", \"documents\": 7}", "400"},
        {"/v1/rerank", "{\"query\": \"q\", \"documents\": [\"a\"], \"top_n\": \"x\"}", "400"},
        {"/rerank", "{\"query\": \"q\"}", "422"},
    };
    char *out = malloc(RESP_CAP);
    for (int r = 0; out && r < N_EACH; r++)
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            int st = http_post(cl->port, cases[i][0], cases[i][1], out, RESP_CAP);
            if (st != atoi(cases[i][2]) || (!strstr(out, "\"message\"") && !strstr(out, "\"error\""))) {
                snprintf(cl->err, sizeof cl->err, "%s %s: status %d (want %s): %.120s",
                         cases[i][0], cases[i][1], st, cases[i][2], out);
                free(out);
                return NULL;
            }
            cl->ok++;
        }
    free(out);
    return NULL;
}

static void test_concurrent(void **state) {
    (void)state;
    mr_worker *w = start_tiny_worker();
    char json[1024];
    snprintf(json, sizeof json,
             "{\"coordinator\": {\"http_listen\": \"127.0.0.1:0\"},"
             " \"limits\": {\"max_tokens_per_pair\": 64},"
             " \"pools\": [{\"name\": \"p\", \"addresses\": [\"127.0.0.1:%d\"]}],"
             " \"stages\": [{\"name\": \"half\", \"pool\": \"p\", \"depth\": 2},"
             " {\"name\": \"full\", \"pool\": \"p\", \"depth\": 4}],"
             " \"profiles\": [{\"name\": \"two\", \"stages\": [{\"stage\": \"half\","
             " \"keep_top_k\": 4}, {\"stage\": \"full\"}]}],"
             " \"tiers\": [{\"name\": \"t\", \"profile\": \"two\"}]}",
             mr_worker_port(w));
    int port = 0;
    mr_coord *c = start_cluster_coord(json, &port, NULL);
    int hport = mr_coord_http_port(c);
    assert_true(hport > 0);
    client cl[N_CLIENTS + 1];
    pthread_t th[N_CLIENTS + 1];
    for (int i = 0; i <= N_CLIENTS; i++) {
        cl[i] = (client){.port = hport};
        assert_int_equal(pthread_create(&th[i], NULL, i < N_CLIENTS ? good_client : bad_client,
                                        &cl[i]), 0);
    }
    for (int i = 0; i <= N_CLIENTS; i++) pthread_join(th[i], NULL);
    for (int i = 0; i <= N_CLIENTS; i++)
        if (cl[i].err[0]) fail_msg("%s client %d: %s", i < N_CLIENTS ? "good" : "bad", i, cl[i].err);
    for (int i = 0; i < N_CLIENTS; i++) {
        assert_int_equal(cl[i].ok, N_EACH);
        assert_memory_equal(cl[i].order, cl[0].order, sizeof cl[0].order);
    }
    assert_int_equal(cl[N_CLIENTS].ok, 4 * N_EACH);
    mr_coord_free(c);
    stop_workers(&w, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_concurrent)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
