/*
 * test_httpguard.c — the HTTP guard (ps/httpguard.h), through an admin port (ps/admin.h) on
 * loopback: strict chunk sizes (400 before libevent reads them), libevent's own refusals in
 * the JSON error shape (413 headers and body, 400, 417, 501), pipelined and keep-alive
 * requests untouched, a trickled request cut with 408 while an idle keep-alive connection is
 * not, max-connections (503, Retry-After, a slot freed by a close), accept() failures under a
 * low RLIMIT_NOFILE backed off without spinning, and ps_fd_limit_raise.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "ps/admin.h"
#include "ps/httpguard.h"

#define MAX_BODY 1024

static void h_health(struct evhttp_request *req, void *arg)
{
    (void)arg;
    ps_admin_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

static void h_echo(struct evhttp_request *req, void *arg)
{
    (void)arg;
    size_t n;
    ps_admin_body(req, &n);
    ps_admin_reply_json(req, 200, json_pack("{s:I}", "body", (json_int_t)n));
}

static const ps_admin_route routes[] = {
    {"/healthz", PS_ADMIN_GET, 0, h_health, NULL},
    {"/echo", PS_ADMIN_POST | PS_ADMIN_PUT, 0, h_echo, NULL},
};

static ps_admin_t *start(uint32_t max_connections, uint32_t timeout_ms)
{
    ps_err err = {0, ""};
    ps_admin_cfg cfg = {.listen = "127.0.0.1:0",
                        .max_body = MAX_BODY,
                        .limits = {max_connections, timeout_ms},
                        .comp = "test",
                        .routes = routes,
                        .nroutes = 2};
    ps_admin_t *a = ps_admin_start(&cfg, &err);
    assert_non_null(a);
    return a;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dial(const char *addr)
{
    char host[64];
    snprintf(host, sizeof host, "%s", addr);
    char *colon = strrchr(host, ':');
    *colon = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {10, 0}; /* no test waits this long for an answer it expects */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return; /* the server may answer and close first */
        p += w;
        n -= (size_t)w;
    }
}

/* Read until the server closes; returns the bytes (static buffer). */
static const char *read_all(int fd)
{
    static char buf[1 << 17];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = recv(fd, buf + n, sizeof buf - 1 - n, 0)) > 0) n += (size_t)r;
    buf[n] = '\0';
    return buf;
}

static int status_of(const char *resp)
{
    int status = 0;
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) return 0;
    return status;
}

/* One request over a fresh connection, read to the close; the status, OUT the response. */
static int http(const char *addr, const char *req, size_t len, const char **resp)
{
    int fd = dial(addr);
    send_all(fd, req, len);
    *resp = read_all(fd);
    close(fd);
    return status_of(*resp);
}

#define HTTP(addr, req, resp) http((addr), (req), strlen(req), (resp))

/* The JSON body of resp parses and has error.code == code. */
static void assert_error(const char *resp, const char *code)
{
    const char *b = strstr(resp, "\r\n\r\n");
    assert_non_null(b);
    assert_non_null(strstr(resp, "Content-Type: application/json"));
    json_error_t je;
    json_t *j = json_loads(b + 4, 0, &je);
    assert_non_null(j);
    const char *got = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    assert_non_null(got);
    if (strcmp(got, code)) fail_msg("error code %s, want %s: %s", got, code, resp);
    assert_non_null(json_object_get(json_object_get(j, "error"), "message"));
    json_decref(j);
}

/* The admin door's counter `name` from ps_httpguard_render_metrics. */
static uint64_t metric(const char *name)
{
    char pat[128];
    ps_buf b = PS_BUF_INIT;
    ps_httpguard_render_metrics(&b);
    assert_int_equal(b.rc, 0);
    snprintf(pat, sizeof pat, "\n%s{door=\"admin\"} ", name);
    const char *p = b.p ? strstr(b.p, pat) : NULL;
    uint64_t v = p ? strtoull(p + strlen(pat), NULL, 10) : UINT64_MAX;
    ps_buf_free(&b);
    assert_true(v != UINT64_MAX);
    return v;
}

static void wait_metric(const char *name, uint64_t want)
{
    for (int i = 0; i < 500 && metric(name) != want; i++) usleep(10000);
    assert_int_equal(metric(name), want);
}

#define CHUNKED                                                                                    \
    "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"

static void test_chunk_sizes(void **state)
{
    (void)state;
    ps_admin_t *a = start(0, 0);
    const char *addr = ps_admin_address(a), *r;
    uint64_t before = metric("persrv_http_protocol_errors_total");

    assert_int_equal(HTTP(addr, CHUNKED "5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n", &r), 200);
    assert_non_null(strstr(r, "\"body\":8"));
    assert_int_equal(HTTP(addr, CHUNKED "5  \r\nhello\r\n0\r\n\r\n", &r), 200);

    static const char *const bad[] = {"zz",
                                      "0x5",
                                      "+5",
                                      " 5",
                                      "5;name=value",
                                      "5 junk",
                                      "-1",
                                      "5\tx",
                                      "5z",
                                      "ffffffffffffffffff",
                                      "10000000000000000",
                                      "8000000000000000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char req[256];
        snprintf(req, sizeof req, CHUNKED "%s\r\nhello\r\n0\r\n\r\n", bad[i]);
        int st = HTTP(addr, req, &r);
        if (st != 400) fail_msg("chunk size '%s': status %d, want 400", bad[i], st);
        assert_error(r, "parse_error");
        assert_non_null(strstr(r, i >= 9 ? "overflows" : "malformed chunk size"));
    }
    /* a chunk size that parses but goes over max-body: 413 (libevent's, rewritten) */
    assert_int_equal(HTTP(addr, CHUNKED "7fffffffffffffff\r\n", &r), 413);
    assert_error(r, "too_large");
    assert_non_null(strstr(r, "chunked body exceeds 1024 bytes"));
    char big[4096];
    int n = snprintf(big, sizeof big, CHUNKED);
    for (int i = 0; i < 3; i++) {
        n += snprintf(big + n, sizeof big - (size_t)n, "200\r\n");
        memset(big + n, 'x', 512);
        n += 512;
        n += snprintf(big + n, sizeof big - (size_t)n, "\r\n");
    }
    assert_int_equal(http(addr, big, (size_t)n, &r), 413);
    assert_error(r, "too_large");
    assert_int_equal(metric("persrv_http_protocol_errors_total") - before, 12 + 2);
    ps_admin_stop(a);
}

static void test_libevent_refusals(void **state)
{
    (void)state;
    ps_admin_t *a = start(0, 0);
    const char *addr = ps_admin_address(a), *r;

    assert_int_equal(
        HTTP(addr, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n", &r), 413);
    assert_error(r, "too_large");
    assert_non_null(strstr(r, "Content-Length 5000"));
    assert_int_equal(
        HTTP(addr, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\nhello", &r), 400);
    assert_error(r, "parse_error");
    assert_int_equal(HTTP(addr, "GARBAGE\r\n\r\n", &r), 400);
    assert_error(r, "parse_error");
    assert_int_equal(HTTP(addr, "GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", &r), 400);
    assert_error(r, "parse_error");
    assert_int_equal(HTTP(addr,
                          "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: something\r\n"
                          "Content-Length: 5\r\n\r\nhello",
                          &r),
                     417);
    assert_error(r, "expectation_failed");
    assert_int_equal(HTTP(addr, "BREW /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &r), 501);
    assert_error(r, "not_implemented");
    /* a method libevent knows but the route does not take: the admin port's own 405 */
    assert_int_equal(HTTP(addr, "PATCH /healthz HTTP/1.0\r\n\r\n", &r), 405);
    assert_error(r, "method_not_allowed");
    /* headers over 64 KiB: libevent says 400, the guard knows it is a size */
    size_t hl = 70000;
    char *h = malloc(hl + 64);
    int n = snprintf(h, 64, "GET /healthz HTTP/1.1\r\nX-Big: ");
    memset(h + n, 'a', hl);
    memcpy(h + n + hl, "\r\n\r\n", 4);
    assert_int_equal(http(addr, h, (size_t)n + hl + 4, &r), 413);
    assert_error(r, "too_large");
    assert_non_null(strstr(r, "headers exceed 65536 bytes"));
    free(h);
    ps_admin_stop(a);
}

/* Read one response of a keep-alive connection (its Content-Length body included). */
static int read_one(int fd)
{
    char buf[8192];
    size_t n = 0;
    for (;;) {
        ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
        assert_true(r > 0);
        n += (size_t)r;
        buf[n] = '\0';
        const char *end = strstr(buf, "\r\n\r\n");
        const char *cl = strstr(buf, "Content-Length: ");
        if (end && cl && n >= (size_t)(end + 4 - buf) + strtoul(cl + 16, NULL, 10)) break;
    }
    return status_of(buf);
}

static void test_request_timeout(void **state)
{
    (void)state;
    ps_admin_t *a = start(0, 300);
    const char *addr = ps_admin_address(a), *r;
    uint64_t cut = metric("persrv_http_request_timeouts_total");

    /* a request whose headers never end: cut after the limit, never before */
    double t0 = now_s();
    int fd = dial(addr);
    const char *slow = "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: a";
    send_all(fd, slow, strlen(slow));
    r = read_all(fd);
    double took = now_s() - t0;
    close(fd);
    assert_int_equal(status_of(r), 408);
    assert_error(r, "request_timeout");
    assert_true(took >= 0.25);
    assert_int_equal(metric("persrv_http_request_timeouts_total") - cut, 1);

    /* a keep-alive connection idle between requests longer than the limit stays open */
    fd = dial(addr);
    const char *get = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    send_all(fd, get, strlen(get));
    assert_int_equal(read_one(fd), 200);
    usleep(700 * 1000);
    send_all(fd, get, strlen(get));
    assert_int_equal(read_one(fd), 200);
    close(fd);

    /* pipelined requests, bodies of both framings between them, in one write */
    fd = dial(addr);
    const char *pipe3 = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                        "PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
                        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    send_all(fd, pipe3, strlen(pipe3));
    r = read_all(fd);
    close(fd);
    int oks = 0;
    for (const char *p = r; (p = strstr(p, "HTTP/1.1 200 OK")); p++) oks++;
    assert_int_equal(oks, 4);
    assert_non_null(strstr(r, "\"body\":5"));
    assert_non_null(strstr(r, "\"body\":3"));
    assert_int_equal(metric("persrv_http_request_timeouts_total") - cut, 1);
    ps_admin_stop(a);
}

static void test_max_connections(void **state)
{
    (void)state;
    ps_admin_t *a = start(2, 0);
    const char *addr = ps_admin_address(a), *r;
    uint64_t refused = metric("persrv_http_connections_refused_total");
    assert_int_equal(metric("persrv_http_connections_max"), 2);

    int x = dial(addr), y = dial(addr);
    wait_metric("persrv_http_connections", 2);
    /* (nothing sent: a request arriving after the server's close would be answered by a
     * reset, which may discard the 503 before it is read) */
    int z = dial(addr);
    r = read_all(z);
    close(z);
    assert_int_equal(status_of(r), 503);
    assert_error(r, "unavailable");
    assert_non_null(strstr(r, "Retry-After: 1\r\n"));
    assert_int_equal(metric("persrv_http_connections_refused_total") - refused, 1);
    close(x);
    wait_metric("persrv_http_connections", 1);
    assert_int_equal(HTTP(addr, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", &r), 200);
    close(y);
    wait_metric("persrv_http_connections", 0);
    ps_admin_stop(a);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void test_accept_backoff(void **state)
{
    (void)state;
    enum { N = 40 };
    ps_admin_t *a = start(0, 0);
    const char *addr = ps_admin_address(a), *r;
    uint64_t errors = metric("persrv_http_accept_errors_total");

    char host[64];
    snprintf(host, sizeof host, "%s", addr);
    char *colon = strrchr(host, ':');
    *colon = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fds[N], top = 0;
    for (int i = 0; i < N; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(fds[i] >= 0);
        if (fds[i] > top) top = fds[i];
    }
    /* from here the process may open 2 more descriptors: the server runs out after those */
    struct rlimit old, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = (rlim_t)top + 3;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(connect(fds[i], (struct sockaddr *)&sa, sizeof sa), 0);
    for (int i = 0; i < 500 && metric("persrv_http_accept_errors_total") == errors; i++)
        usleep(10000);
    double c0 = cpu_s(), t0 = now_s();
    usleep(1000 * 1000);
    double cpu = cpu_s() - c0, wall = now_s() - t0;
    uint64_t failed = metric("persrv_http_accept_errors_total") - errors;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    print_message("accept failures backed off: %llu in %.2f s, %.3f CPU s\n",
                  (unsigned long long)failed, wall, cpu);
    assert_true(failed >= 1);
    assert_true(failed < 100 * wall + 20); /* every 100 ms, not a busy loop */
    assert_true(cpu < 0.5 * wall);
    for (int i = 0; i < N; i++) close(fds[i]);
    /* descriptors again: served */
    int st = 0;
    for (int i = 0; i < 100 && st != 200; i++) {
        st = HTTP(addr, "GET /healthz HTTP/1.0\r\n\r\n", &r);
        if (st != 200) usleep(50000);
    }
    assert_int_equal(st, 200);
    ps_admin_stop(a);
}

static void test_fd_limit(void **state)
{
    (void)state;
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    if (old.rlim_cur < 64) skip();
    struct rlimit low = {64, old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    uint64_t soft = 0;
    ps_err err = {0, ""};
    uint64_t hard = old.rlim_max == RLIM_INFINITY ? (uint64_t)1 << 20 : (uint64_t)old.rlim_max;
    assert_int_equal(ps_fd_limit_raise(100, 0, "test", &soft, &err), 0);
    assert_int_equal(soft, hard < 100 ? hard : 100);
    assert_int_equal(ps_fd_limit_raise(50, 0, "test", &soft, &err), 0); /* never lowered */
    assert_int_equal(soft, hard < 100 ? hard : 100);
    /* more than the hard limit: as much as there is, and the daemon runs on */
    if (old.rlim_max != RLIM_INFINITY) {
        assert_int_equal(ps_fd_limit_raise(hard + 1, 0, "test", &soft, &err), 0);
        assert_int_equal(soft, hard);
    }
    /* PS_FD_TO_HARD: the hard limit whatever the need */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    assert_int_equal(ps_fd_limit_raise(100, PS_FD_TO_HARD, "test", &soft, &err), 0);
    assert_int_equal(soft, hard);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunk_sizes),     cmocka_unit_test(test_libevent_refusals),
        cmocka_unit_test(test_request_timeout), cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_accept_backoff),  cmocka_unit_test(test_fd_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
