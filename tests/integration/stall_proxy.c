/*
 * stall_proxy.c — a TCP proxy in front of one daemon's admin HTTP port that holds one chosen
 * request, so the push fault tests (test_push_faults.sh, issue 9) can kill a replica at an
 * exact step of `builder push` instead of racing it: "while staging" (hold the 2nd file chunk
 * to a replica), "between prepare and activate" (hold a replica's activate), "right after
 * activate" (hold the broker's switch).
 *
 *   stall_proxy --to HOST:PORT --ready-file F [--stall "METHOD /path-prefix" [--nth N]
 *               --stalled-file F --release-file F]
 *
 * Listens on 127.0.0.1 (a free port) and writes "127.0.0.1:PORT" to the ready file. Every
 * accepted connection gets its own connection to --to; bytes pass through unchanged, except
 * that the client's HTTP requests are framed (request line, headers, Content-Length body; a
 * chunked body ends the framing of that connection): the N-th request (default 1) whose request
 * line starts with the --stall text is held — not forwarded, the client connection no longer
 * read — and the stalled file is created. Once the release file exists (checked every 20 ms),
 * the held request is forwarded and the connection carries on. A connection whose upstream
 * fails or closes is closed on the client side too (so a request held for a replica that was
 * killed fails at once); a connection to --to that cannot be made closes the client.
 * Runs until killed. Exit status 2 on a usage error.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proxy_net.h"

#define MAX_PAIRS 256
#define MAX_HDR   (64 * 1024)
#define BUF       (256 * 1024)

typedef struct pair {
    int cfd, ufd;     /* client, upstream; -1 when unused */
    int framing;      /* 0 once a chunked body made the stream opaque */
    size_t body_left; /* body bytes of the current request still to forward */
    char *hdr;        /* headers of the request being read */
    size_t hdr_len;
    char *held; /* a held request and whatever followed it */
    size_t held_len;
} pair;

static pair pairs[MAX_PAIRS];
static const char *stall_text, *stalled_file, *release_file;
static long nth = 1, seen;
static int stalled, released;
static struct sockaddr_in upstream;

static void close_pair(pair *p)
{
    if (p->cfd >= 0) close(p->cfd);
    if (p->ufd >= 0) close(p->ufd);
    free(p->hdr);
    free(p->held);
    *p = (pair){.cfd = -1, .ufd = -1};
}

/* Content-Length of the headers at h (0 if none); *chunked set for a chunked body. */
static size_t content_length(const char *h, size_t n, int *chunked)
{
    size_t len = 0;
    *chunked = 0;
    for (size_t i = 0; i < n;) {
        const char *line = h + i;
        const char *end = memchr(line, '\n', n - i);
        size_t ll = end ? (size_t)(end - line) : n - i;
        if (ll > 15 && !strncasecmp(line, "Content-Length:", 15))
            len = strtoul(line + 15, NULL, 10);
        if (ll > 18 && !strncasecmp(line, "Transfer-Encoding:", 18) &&
            memmem(line, ll, "chunked", 7))
            *chunked = 1;
        i += ll + 1;
    }
    return len;
}

/* Pass the client's bytes b[0..n) upstream, framing requests and holding the chosen one.
 * Returns -1 when the pair must close. */
static int from_client(pair *p, const char *b, size_t n)
{
    while (n > 0) {
        if (!p->framing) return pn_write_all(p->ufd, b, n);
        if (p->body_left > 0) {
            size_t k = n < p->body_left ? n : p->body_left;
            if (pn_write_all(p->ufd, b, k)) return -1;
            p->body_left -= k;
            b += k;
            n -= k;
            continue;
        }
        /* Headers: gather up to the blank line. */
        size_t room = MAX_HDR - p->hdr_len, k = n < room ? n : room;
        if (!p->hdr && !(p->hdr = malloc(MAX_HDR))) return -1;
        memcpy(p->hdr + p->hdr_len, b, k);
        size_t old = p->hdr_len;
        p->hdr_len += k;
        char *end = memmem(p->hdr, p->hdr_len, "\r\n\r\n", 4);
        if (!end) {
            if (p->hdr_len == MAX_HDR) { /* not HTTP as we know it: stop framing */
                p->framing = 0;
                if (pn_write_all(p->ufd, p->hdr, p->hdr_len)) return -1;
                p->hdr_len = 0;
            }
            b += k;
            n -= k;
            continue;
        }
        size_t hl = (size_t)(end - p->hdr) + 4, used = hl - old; /* bytes of b in the headers */
        int chunked;
        size_t clen = content_length(p->hdr, hl, &chunked);
        if (stall_text && !stalled && !strncmp(p->hdr, stall_text, strlen(stall_text)) &&
            ++seen == nth) {
            /* Hold this request and everything after it until the release. */
            stalled = 1;
            p->held_len = hl + (n - used);
            if (!(p->held = malloc(p->held_len))) return -1;
            memcpy(p->held, p->hdr, hl);
            memcpy(p->held + hl, b + used, n - used);
            p->hdr_len = 0;
            FILE *f = fopen(stalled_file, "w");
            if (f) {
                fprintf(f, "%.*s\n", (int)(strchr(p->held, '\r') - p->held), p->held);
                fclose(f);
            }
            return 0;
        }
        if (pn_write_all(p->ufd, p->hdr, hl)) return -1;
        p->hdr_len = 0;
        p->body_left = clen;
        if (chunked) p->framing = 0;
        b += used;
        n -= used;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: stall_proxy --to HOST:PORT --ready-file F [--stall \"METHOD /prefix\" "
               "[--nth N] --stalled-file F --release-file F]\n");
}

int main(int argc, char **argv)
{
    const char *to = NULL, *ready = NULL;
    static const struct option opts[] = {{"to", required_argument, 0, 't'},
                                         {"ready-file", required_argument, 0, 'r'},
                                         {"stall", required_argument, 0, 's'},
                                         {"nth", required_argument, 0, 'n'},
                                         {"stalled-file", required_argument, 0, 'S'},
                                         {"release-file", required_argument, 0, 'R'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 't':
            to = optarg;
            break;
        case 'r':
            ready = optarg;
            break;
        case 's':
            stall_text = optarg;
            break;
        case 'n':
            nth = strtol(optarg, NULL, 10);
            break;
        case 'S':
            stalled_file = optarg;
            break;
        case 'R':
            release_file = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !to || !ready || nth < 1 ||
        (stall_text && (!stalled_file || !release_file))) {
        usage(stderr);
        return 2;
    }
    if (pn_parse_addr(to, &upstream)) {
        fprintf(stderr, "stall_proxy: --to: '%s' is not IPv4:PORT\n", to);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in self = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int lfd = pn_listen(&self, 64);
    if (lfd < 0) {
        perror("stall_proxy: listen");
        return 1;
    }
    for (int i = 0; i < MAX_PAIRS; i++) pairs[i] = (pair){.cfd = -1, .ufd = -1};
    if (pn_write_ready(ready, &self)) {
        perror(ready);
        return 1;
    }

    static char buf[BUF];
    struct pollfd pfd[1 + 2 * MAX_PAIRS];
    int who[1 + 2 * MAX_PAIRS]; /* pair index * 2 + (0 client, 1 upstream) */
    for (;;) {
        if (stalled && !released && release_file) {
            struct stat sb;
            if (stat(release_file, &sb) == 0) {
                released = 1;
                for (int i = 0; i < MAX_PAIRS; i++) {
                    pair *p = &pairs[i];
                    if (!p->held) continue;
                    char *h = p->held;
                    size_t hl = p->held_len;
                    p->held = NULL;
                    int rc = from_client(p, h, hl);
                    free(h);
                    if (rc) close_pair(p);
                }
            }
        }
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < MAX_PAIRS; i++) {
            if (pairs[i].cfd < 0) continue;
            /* A held connection is not read from the client, but its upstream is watched. */
            pfd[n] = (struct pollfd){.fd = pairs[i].cfd, .events = pairs[i].held ? 0 : POLLIN};
            who[n++] = i * 2;
            pfd[n] = (struct pollfd){.fd = pairs[i].ufd, .events = POLLIN};
            who[n++] = i * 2 + 1;
        }
        if (poll(pfd, (nfds_t)n, 20) < 0) {
            if (errno == EINTR) continue;
            perror("stall_proxy: poll");
            return 1;
        }
        if (pfd[0].revents & POLLIN) {
            int cfd = accept(lfd, NULL, NULL);
            int slot = -1;
            for (int i = 0; i < MAX_PAIRS && slot < 0; i++)
                if (pairs[i].cfd < 0) slot = i;
            if (cfd >= 0) {
                int ufd = socket(AF_INET, SOCK_STREAM, 0);
                if (slot < 0 || ufd < 0 ||
                    connect(ufd, (struct sockaddr *)&upstream, sizeof upstream) != 0) {
                    close(cfd);
                    if (ufd >= 0) close(ufd);
                } else {
                    pairs[slot] = (pair){.cfd = cfd, .ufd = ufd, .framing = 1};
                }
            }
        }
        for (int j = 1; j < n; j++) {
            if (!pfd[j].revents) continue;
            pair *p = &pairs[who[j] / 2];
            if (p->cfd < 0) continue; /* closed earlier in this round */
            int from_up = who[j] & 1;
            if (!from_up && p->held) { /* held: the client is not read until the release */
                if (pfd[j].revents & (POLLHUP | POLLERR)) close_pair(p);
                continue;
            }
            ssize_t r = read(from_up ? p->ufd : p->cfd, buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                close_pair(p);
                continue;
            }
            int rc =
                from_up ? pn_write_all(p->cfd, buf, (size_t)r) : from_client(p, buf, (size_t)r);
            if (rc) close_pair(p);
        }
    }
}
