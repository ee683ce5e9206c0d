/*
 * conn_flood.c — many TCP connections to one HTTP port, for test_http_limits.sh (issue 11):
 *
 *   conn_flood slowloris HOST:PORT N SECONDS [INTERVAL_MS]
 *       N connections each send "GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: " and then
 *       one more header byte every INTERVAL_MS (default 1000), never ending the headers: a
 *       request trickled so slowly that only a total-time limit closes it (an idle timeout
 *       never fires).
 *   conn_flood idle HOST:PORT N SECONDS
 *       N connections that send nothing.
 *
 * Either runs until SECONDS have passed or the server has closed every connection, then
 * prints one line of figures:
 *   MODE opened=O failed=F closed=C status_408=A status_503=B other_status=X
 *        first_close_s=T1 median_close_s=T2 last_close_s=T3 bytes_sent=S
 * opened: connections established (connect() done; the server may not have accepted them
 * yet: they can wait in its listen backlog); failed: connects refused or not done in 10 s;
 * closed: connections the server closed (EOF or reset), with the status of the answer it sent
 * first if any; *_close_s: seconds from connect to that close. The rest are closed on exit.
 * Exit status 0, 2 on a usage error, 1 when nothing could be opened at all.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS      20000
#define CONNECT_WAIT_S 10.0
#define SLOW_PREFIX    "GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: "

enum { C_CONNECTING, C_OPEN, C_CLOSED, C_FAILED };

typedef struct conn {
    int fd;
    int state;
    int status; /* of the first answer, 0: none */
    double t_open, t_close;
} conn;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int usage(void)
{
    fprintf(stderr, "usage: conn_flood slowloris HOST:PORT N SECONDS [INTERVAL_MS]\n"
                    "       conn_flood idle HOST:PORT N SECONDS\n");
    return 2;
}

static void send_all(conn *c, const char *p, size_t n, long long *sent)
{
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) *sent += w;
}

int main(int argc, char **argv)
{
    if (argc < 5) return usage();
    int slow = !strcmp(argv[1], "slowloris");
    if (!slow && strcmp(argv[1], "idle")) return usage();
    char host[64];
    const char *colon = strrchr(argv[2], ':');
    if (!colon || (size_t)(colon - argv[2]) >= sizeof host) return usage();
    memcpy(host, argv[2], (size_t)(colon - argv[2]));
    host[colon - argv[2]] = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return usage();
    long n = atol(argv[3]);
    double seconds = atof(argv[4]);
    long interval_ms = argc > 5 ? atol(argv[5]) : 1000;
    if (n < 1 || n > MAX_CONNS || seconds <= 0 || interval_ms < 1) return usage();
    signal(SIGPIPE, SIG_IGN);

    /* this process needs n descriptors and a few */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 16) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)n + 16 ? rl.rlim_max : (rlim_t)n + 16;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    conn *cs = calloc((size_t)n, sizeof *cs);
    struct pollfd *pf = calloc((size_t)n, sizeof *pf);
    if (!cs || !pf) return 1;
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        conn *c = &cs[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        c->state = C_CONNECTING;
        if (c->fd < 0 ||
            (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) && errno != EINPROGRESS)) {
            if (c->fd >= 0) close(c->fd);
            c->fd = -1;
            c->state = C_FAILED;
        }
    }
    double end = t0 + seconds, next_tick = t0;
    long long sent = 0;
    for (;;) {
        double now = now_s();
        long live = 0;
        for (long i = 0; i < n; i++) {
            conn *c = &cs[i];
            pf[i].fd = c->state == C_CONNECTING || c->state == C_OPEN ? c->fd : -1;
            pf[i].events = c->state == C_CONNECTING ? POLLOUT : POLLIN;
            pf[i].revents = 0;
            if (c->state == C_CONNECTING && now - t0 > CONNECT_WAIT_S) {
                close(c->fd);
                c->fd = -1;
                c->state = C_FAILED;
                pf[i].fd = -1;
            }
            live += pf[i].fd >= 0;
        }
        if (live == 0 || now >= end) break;
        if (slow && now >= next_tick) { /* one more byte on every open connection */
            for (long i = 0; i < n; i++)
                if (cs[i].state == C_OPEN) send_all(&cs[i], "a", 1, &sent);
            next_tick += interval_ms / 1e3;
            if (next_tick < now) next_tick = now + interval_ms / 1e3;
        }
        double wait = end - now;
        if (slow && next_tick - now < wait) wait = next_tick - now;
        int r = poll(pf, (nfds_t)n, (int)(wait * 1e3) + 1);
        if (r < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        now = now_s();
        for (long i = 0; i < n && r > 0; i++) {
            conn *c = &cs[i];
            if (!pf[i].revents) continue;
            if (c->state == C_CONNECTING) {
                int e = 0;
                socklen_t el = sizeof e;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &el);
                if (e) {
                    close(c->fd);
                    c->fd = -1;
                    c->state = C_FAILED;
                    continue;
                }
                c->state = C_OPEN;
                c->t_open = now;
                if (slow) send_all(c, SLOW_PREFIX, sizeof SLOW_PREFIX - 1, &sent);
                continue;
            }
            char buf[4096];
            ssize_t got = recv(c->fd, buf, sizeof buf - 1, 0);
            if (got > 0) {
                buf[got] = '\0';
                if (!c->status && !strncmp(buf, "HTTP/1.", 7) && got > 12)
                    c->status = atoi(buf + 9);
                continue;
            }
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            close(c->fd);
            c->fd = -1;
            c->state = C_CLOSED;
            c->t_close = now;
        }
    }

    long opened = 0, failed = 0, closed = 0, s408 = 0, s503 = 0, other = 0;
    double *dt = calloc((size_t)n, sizeof *dt);
    for (long i = 0; i < n; i++) {
        conn *c = &cs[i];
        failed += c->state == C_FAILED;
        opened += c->state == C_OPEN || c->state == C_CLOSED;
        if (c->state == C_CLOSED) {
            dt[closed++] = c->t_close - c->t_open;
            s408 += c->status == 408;
            s503 += c->status == 503;
            other += c->status && c->status != 408 && c->status != 503;
        }
        if (c->fd >= 0) close(c->fd);
    }
    qsort(dt, (size_t)closed, sizeof *dt, cmp_double);
    printf("%s opened=%ld failed=%ld closed=%ld status_408=%ld status_503=%ld other_status=%ld "
           "first_close_s=%.2f median_close_s=%.2f last_close_s=%.2f bytes_sent=%lld\n",
           argv[1], opened, failed, closed, s408, s503, other, closed ? dt[0] : 0.0,
           closed ? dt[closed / 2] : 0.0, closed ? dt[closed - 1] : 0.0, sent);
    free(dt);
    free(cs);
    free(pf);
    return opened ? 0 : 1;
}
