/*
 * test_admin.c — the admin HTTP port (ps/admin.h): routes, methods, the bearer-token rules
 * (401 without, 403 wrong or disabled, the handler never runs then), JSON errors, query
 * parameters, token loading, and the histogram exposition. Talks real HTTP over loopback.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "ps/admin.h"

static int calls;

static void h_health(struct evhttp_request *req, void *arg)
{
    (void)arg;
    ps_admin_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

static void h_op(struct evhttp_request *req, void *arg)
{
    (void)arg;
    uint64_t v = 0;
    ps_err err = {0, ""};
    calls++;
    if (ps_admin_param_u64(req, "version", &v, &err)) {
        ps_admin_reply_err(req, &err);
        return;
    }
    size_t n;
    ps_admin_body(req, &n);
    ps_admin_reply_json(req, 200,
                        json_pack("{s:I, s:I}", "version", (json_int_t)v, "body", (json_int_t)n));
}

static const ps_admin_route routes[] = {
    {"/healthz", PS_ADMIN_GET, 0, h_health, NULL},
    {"/admin/op", PS_ADMIN_POST, 1, h_op, NULL},
    {"/admin/files/", PS_ADMIN_PUT, 1, h_op, NULL},
};

/* One request over a fresh connection; returns the status, OUT body (static buffer). */
static int http(const char *addr, const char *req, char **body)
{
    static char buf[65536];
    char host[64];
    snprintf(host, sizeof host, "%s", addr);
    char *colon = strrchr(host, ':');
    *colon = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)r;
    buf[n] = '\0';
    close(fd);
    int status = 0;
    assert_int_equal(sscanf(buf, "HTTP/1.%*d %d", &status), 1);
    char *b = strstr(buf, "\r\n\r\n");
    *body = b ? b + 4 : buf + n;
    return status;
}

static void test_routes_and_tokens(void **state)
{
    (void)state;
    ps_err err = {0, ""};
    ps_admin_cfg cfg = {.listen = "127.0.0.1:0",
                        .token = "s3cret-token",
                        .max_body = 1 << 20,
                        .comp = "test",
                        .routes = routes,
                        .nroutes = 3};
    ps_admin_t *a = ps_admin_start(&cfg, &err);
    assert_non_null(a);
    const char *addr = ps_admin_address(a);
    assert_int_equal(strncmp(addr, "127.0.0.1:", 10), 0);
    char *body;

    assert_int_equal(http(addr, "GET /healthz HTTP/1.0\r\n\r\n", &body), 200);
    assert_non_null(strstr(body, "\"status\":\"ok\""));
    assert_int_equal(http(addr, "GET /nope HTTP/1.0\r\n\r\n", &body), 404);
    assert_non_null(strstr(body, "\"code\":\"not_found\""));
    assert_int_equal(http(addr, "GET /admin/op HTTP/1.0\r\n\r\n", &body), 405);

    calls = 0;
    assert_int_equal(
        http(addr, "POST /admin/op?version=7 HTTP/1.0\r\nContent-Length: 0\r\n\r\n", &body), 401);
    assert_non_null(strstr(body, "\"code\":\"unauthorized\""));
    assert_int_equal(http(addr,
                          "POST /admin/op?version=7 HTTP/1.0\r\nAuthorization: Basic eDp5\r\n"
                          "Content-Length: 0\r\n\r\n",
                          &body),
                     401);
    assert_int_equal(http(addr,
                          "POST /admin/op?version=7 HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n"
                          "Content-Length: 0\r\n\r\n",
                          &body),
                     403);
    assert_int_equal(http(addr,
                          "POST /admin/op?version=7 HTTP/1.0\r\nAuthorization: Bearer "
                          "s3cret-token-x\r\nContent-Length: 0\r\n\r\n",
                          &body),
                     403);
    assert_non_null(strstr(body, "\"code\":\"forbidden\""));
    assert_int_equal(calls, 0); /* refused before the handler */

    assert_int_equal(http(addr,
                          "POST /admin/op?version=7 HTTP/1.0\r\nAuthorization: Bearer "
                          "s3cret-token\r\nContent-Length: 5\r\n\r\nhello",
                          &body),
                     200);
    assert_non_null(strstr(body, "\"version\":7"));
    assert_non_null(strstr(body, "\"body\":5"));
    assert_int_equal(http(addr,
                          "POST /admin/op?version=x7 HTTP/1.0\r\nAuthorization: Bearer "
                          "s3cret-token\r\nContent-Length: 0\r\n\r\n",
                          &body),
                     400);
    assert_non_null(strstr(body, "version: must be"));
    assert_int_equal(http(addr,
                          "PUT /admin/files/a.sst?version=1 HTTP/1.0\r\nAuthorization: Bearer "
                          "s3cret-token\r\nContent-Length: 0\r\n\r\n",
                          &body),
                     200);
    /* the prefix itself is not a route of the prefix */
    assert_int_equal(http(addr, "PUT /admin/files/ HTTP/1.0\r\n\r\n", &body), 404);
    assert_int_equal(calls, 3);
    ps_admin_stop(a);

    /* no token configured: admin routes refused, reads served */
    cfg.token = NULL;
    assert_non_null(a = ps_admin_start(&cfg, &err));
    addr = ps_admin_address(a);
    assert_int_equal(http(addr,
                          "POST /admin/op?version=7 HTTP/1.0\r\nAuthorization: Bearer x\r\n"
                          "Content-Length: 0\r\n\r\n",
                          &body),
                     403);
    assert_non_null(strstr(body, "disabled"));
    assert_int_equal(http(addr, "GET /healthz HTTP/1.0\r\n\r\n", &body), 200);
    assert_int_equal(calls, 3);
    ps_admin_stop(a);

    cfg.listen = "no-port";
    assert_null(ps_admin_start(&cfg, &err));
    assert_int_equal(err.code, PS_EINVAL);
}

static void test_token_load(void **state)
{
    (void)state;
    ps_err err = {0, ""};
    char *t = NULL;
    assert_int_equal(ps_admin_token_load(NULL, NULL, &t, &err), 0);
    assert_null(t);
    assert_int_equal(ps_admin_token_load("abc", "/nonexistent", &t, &err), 0);
    assert_string_equal(t, "abc");
    free(t);
    assert_int_equal(ps_admin_token_load("a b", NULL, &t, &err), PS_EINVAL);
    assert_int_equal(ps_admin_token_load("", NULL, &t, &err), PS_EINVAL);
    assert_int_equal(ps_admin_token_load(NULL, "/nonexistent/token", &t, &err), PS_EIO);
    char path[] = "/tmp/ps_test_admin_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "tok-123\n", 8), 8);
    close(fd);
    assert_int_equal(ps_admin_token_load(NULL, path, &t, &err), 0);
    assert_string_equal(t, "tok-123");
    free(t);
    unlink(path);
}

static void test_hist(void **state)
{
    (void)state;
    static ps_hist h;
    ps_hist_observe(&h, 0.0003);
    ps_hist_observe(&h, 0.0003);
    ps_hist_observe(&h, 9.0);
    ps_buf b = PS_BUF_INIT;
    ps_hist_render(&h, "x_seconds", "x", &b);
    assert_int_equal(b.rc, 0);
    char *buf = b.p;
    size_t len = b.n;
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"0.00025\"} 0\n"));
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"0.0005\"} 2\n"));
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"2.5\"} 2\n"));
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(buf, "x_seconds_count 3\n"));
    assert_int_equal(strlen(buf), len);
    ps_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_and_tokens),
        cmocka_unit_test(test_token_load),
        cmocka_unit_test(test_hist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
