/*
 * fault_proxy.c — a TCP proxy that puts a faulty network between two processes of a test
 * (issue 13: the broker and each shard on a loopback address of its own, 127.0.0.x, as if on
 * hosts of their own; this kernel has no tc netem). Bytes pass through unchanged (ZeroMQ,
 * CURVE, HTTP alike); faults are switched on and off while it runs, through a control file.
 *
 *   fault_proxy --listen HOST:PORT --to HOST:PORT --ready-file F --control F
 *               [--stats F] [--seed N]
 *
 * Listens on --listen (port 0: a free one) and writes "HOST:PORT" to the ready file once it
 * does. Each accepted connection gets a connection of its own to --to, made from the listen
 * address, so the target sees the proxy's host as its peer. A connection to --to that fails
 * is reset on the client side (the client sees what a dead host would have given it: a
 * reset). A side that closes (FIN) is passed on once its bytes are delivered (half-close); a
 * side that fails (a reset, an error) resets the other. Accepts and changes of faults are
 * logged on stderr, one "fault_proxy listen=… event=… k=v" line each. Runs until killed; exit
 * status 2 on a usage error, 1 when it cannot listen or write the ready file.
 *
 * Control. The control file holds the faults in force, one a line ('#' starts a comment; no
 * file or an empty one: no fault). The proxy reads it every 20 ms; once it has applied a new
 * content it writes the same bytes to F.applied (atomically: F.applied.tmp, then rename), or a
 * line "error: …" if a line is bad (and then none of the new content is applied). A test
 * writes the control file (a temporary file moved over it) and waits until F.applied equals
 * it: from then on the faults are in force.
 *
 *   latency MS [JITTER]  each chunk read is delivered MS ± JITTER ms later (uniform, drawn
 *                        from --seed, default 1), each direction on its own; order is kept
 *   stall [up|down]      bytes stop moving and are held, nothing is lost (up: client to
 *                        target, down: target to client; default both); with both stalled no
 *                        connection is accepted either (they wait in the listen backlog), as
 *                        with a host that hangs
 *   drop                 a black hole: connections stay open, but what either side sends is
 *                        read and thrown away; new ones are accepted and black-holed too; when
 *                        cleared, every connection that went through it is reset (its byte
 *                        stream has a hole)
 *   reset                every open connection is reset (SO_LINGER 0: an RST to both sides),
 *                        and each new one as soon as it is accepted
 *   close                the same with an orderly close (FIN) instead of a reset
 *   refuse               the listening socket is closed, so connects are refused; open
 *                        connections carry on; the port is listened on again when cleared
 *
 * Stats (--stats F): "name value" lines, rewritten atomically every 100 ms when they changed:
 * accepted, open, bytes_up, bytes_down (delivered), delayed (chunks held by a latency),
 * dropped_bytes, resets, closes (connections ended by a fault), turned_away (connections reset
 * or closed at accept), upstream_failed.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proxy_net.h"

#define MAX_CONNS    1024
#define CHUNK_MAX    (64 * 1024)
#define QUEUE_CAP    (4 * 1024 * 1024) /* bytes held per direction before reading stops */
#define CONTROL_US   20000             /* control file read this often */
#define STATS_US     100000            /* stats file rewritten at most this often */
#define MAX_CONTROL  4096              /* bytes of a control file */
#define ACCEPT_BURST 16                /* accepts per turn of the loop */
#define UP           0                 /* client to target */
#define DOWN         1                 /* target to client */

typedef struct chunk {
    struct chunk *next;
    int64_t due; /* µs (now_us) it may be delivered */
    size_t len, off;
    char data[];
} chunk;

typedef struct dir {
    chunk *head, *tail;
    size_t queued;
    int eof;     /* the source sent FIN */
    int shut;    /* the FIN was passed on (shutdown of the destination's write side) */
    int blocked; /* the last send met a full socket buffer: wait for POLLOUT */
} dir;

typedef struct conn {
    unsigned long id;
    int cfd, ufd;   /* client, upstream (-1: none — a connection black-holed from the start) */
    int connecting; /* the upstream connect is under way */
    int dropped;    /* went through a black hole: reset when the drop clears */
    int dead;       /* to be freed at the end of this turn */
    dir d[2];       /* UP: cfd -> ufd, DOWN: ufd -> cfd */
} conn;

typedef struct faults {
    int64_t lat_us, jit_us;
    int stall[2];
    int drop, reset, close, refuse;
} faults;

typedef struct stats {
    unsigned long long accepted, open, bytes[2], delayed, dropped_bytes, resets, closes,
        turned_away, upstream_failed;
} stats;

static conn *conns[MAX_CONNS];
static int nconns;
static unsigned long next_id = 1;
static faults cur;
static stats st, st_written;
static struct sockaddr_in self, target;
static char self_str[PN_ADDR_LEN];
static int lfd = -1;
static uint64_t rng;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* splitmix64: the latencies of one --seed are the same from run to run. */
static uint64_t next_rand(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void say(const char *event, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const char *event, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fault_proxy listen=%s event=%s%s%s\n", self_str, event, *text ? " " : "",
            text);
}

/* Close fd with an RST instead of a FIN. */
static void close_rst(int fd)
{
    if (fd < 0) return;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* Close fd with a FIN: what is waiting unread is read first (Linux answers a close over
 * unread bytes with an RST). */
static void close_fin(int fd)
{
    if (fd < 0) return;
    char sink[4096];
    while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
    shutdown(fd, SHUT_WR);
    close(fd);
}

static void free_queue(dir *d)
{
    for (chunk *c = d->head, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    d->head = d->tail = NULL;
    d->queued = 0;
    d->blocked = 0;
}

enum { END_CLEAN, END_RESET, END_FIN };

/* End c: its sockets closed as how says, its queues freed; the slot is swept later. */
static void end_conn(conn *c, int how)
{
    if (c->dead) return;
    if (how == END_RESET) {
        close_rst(c->cfd);
        close_rst(c->ufd);
    } else if (how == END_FIN) {
        close_fin(c->cfd);
        close_fin(c->ufd);
    } else {
        if (c->cfd >= 0) close(c->cfd);
        if (c->ufd >= 0) close(c->ufd);
    }
    c->cfd = c->ufd = -1;
    free_queue(&c->d[UP]);
    free_queue(&c->d[DOWN]);
    c->dead = 1;
}

static void sweep(void)
{
    for (int i = 0; i < nconns;) {
        if (conns[i]->dead) {
            free(conns[i]);
            conns[i] = conns[--nconns];
        } else {
            i++;
        }
    }
    st.open = (unsigned long long)nconns;
}

static int src_fd(const conn *c, int d)
{
    return d == UP ? c->cfd : c->ufd;
}

static int dst_fd(const conn *c, int d)
{
    return d == UP ? c->ufd : c->cfd;
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* A non-blocking connection to the target from the listen host. Returns the socket (with
 * *pending set while the connect is under way), or -1. */
static int connect_upstream(int *pending)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in src = self;
    src.sin_port = 0;
    if (self.sin_addr.s_addr != htonl(INADDR_ANY) &&
        bind(fd, (struct sockaddr *)&src, sizeof src)) {
        close(fd);
        return -1;
    }
    *pending = 0;
    if (connect(fd, (struct sockaddr *)&target, sizeof target)) {
        if (errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        *pending = 1;
    }
    nodelay(fd);
    return fd;
}

static void accept_some(void)
{
    for (int k = 0; k < ACCEPT_BURST; k++) {
        struct sockaddr_in peer;
        socklen_t pl = sizeof peer;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or an error the next turn meets again */
        char ps[PN_ADDR_LEN];
        pn_addr_str(&peer, ps);
        st.accepted++;
        if (cur.reset || cur.close || nconns == MAX_CONNS) {
            say("turned_away", "peer=%s how=%s", ps, cur.reset ? "reset" : "close");
            if (cur.reset || nconns == MAX_CONNS)
                close_rst(fd);
            else
                close_fin(fd);
            st.turned_away++;
            continue;
        }
        conn *c = calloc(1, sizeof *c);
        if (!c) {
            close_rst(fd);
            continue;
        }
        c->id = next_id++;
        c->cfd = fd;
        c->ufd = -1;
        nodelay(fd);
        if (cur.drop) {
            c->dropped = 1;
        } else if ((c->ufd = connect_upstream(&c->connecting)) < 0) {
            say("upstream_failed", "conn=%lu peer=%s errno=%d", c->id, ps, errno);
            st.upstream_failed++;
            close_rst(fd);
            free(c);
            continue;
        }
        conns[nconns++] = c;
        say("accept", "conn=%lu peer=%s%s", c->id, ps, c->dropped ? " dropped=1" : "");
    }
}

/* Read what the source of direction d has (or throw it away in a black hole). Returns -1 when
 * the connection must be reset. */
static int read_dir(conn *c, int d, int64_t now)
{
    static char buf[CHUNK_MAX];
    ssize_t n = recv(src_fd(c, d), buf, sizeof buf, 0);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    if (c->dropped) {
        st.dropped_bytes += (unsigned long long)n;
        return n == 0 ? -1 : 0; /* a side that gives up on a black hole: the whole thing ends */
    }
    dir *q = &c->d[d];
    if (n == 0) {
        q->eof = 1;
        return 0;
    }
    chunk *ch = malloc(sizeof *ch + (size_t)n);
    if (!ch) return -1;
    memcpy(ch->data, buf, (size_t)n);
    ch->len = (size_t)n;
    ch->off = 0;
    ch->next = NULL;
    int64_t delay = cur.lat_us;
    if (cur.jit_us > 0)
        delay += (int64_t)(next_rand() % (uint64_t)(2 * cur.jit_us + 1)) - cur.jit_us;
    if (delay < 0) delay = 0;
    if (delay > 0) st.delayed++;
    ch->due = now + delay;
    if (q->tail && q->tail->due > ch->due) ch->due = q->tail->due; /* order kept */
    if (q->tail)
        q->tail->next = ch;
    else
        q->head = ch;
    q->tail = ch;
    q->queued += (size_t)n;
    return 0;
}

/* Deliver the chunks of direction d that are due; pass a FIN on once all is delivered.
 * Returns -1 when the connection must be reset. */
static int flush_dir(conn *c, int d, int64_t now)
{
    dir *q = &c->d[d];
    if (c->dropped || c->connecting || cur.stall[d]) return 0;
    q->blocked = 0;
    while (q->head && q->head->due <= now) {
        chunk *ch = q->head;
        ssize_t w = send(dst_fd(c, d), ch->data + ch->off, ch->len - ch->off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                q->blocked = 1;
                return 0;
            }
            return -1;
        }
        ch->off += (size_t)w;
        q->queued -= (size_t)w;
        st.bytes[d] += (unsigned long long)w;
        if (ch->off == ch->len) {
            q->head = ch->next;
            if (!q->head) q->tail = NULL;
            free(ch);
        }
    }
    if (!q->head && q->eof && !q->shut) {
        shutdown(dst_fd(c, d), SHUT_WR);
        q->shut = 1;
    }
    return 0;
}

/* The events to poll a source/destination socket for, for both directions through it. */
static short want_read(const conn *c, int d)
{
    const dir *q = &c->d[d];
    if (c->dropped) return src_fd(c, d) >= 0 ? POLLIN : 0;
    if (c->connecting && d == DOWN) return 0;
    return !q->eof && !cur.stall[d] && q->queued < QUEUE_CAP ? POLLIN : 0;
}

static short want_write(const conn *c, int d)
{
    return c->d[d].blocked && !cur.stall[d] && !c->dropped ? POLLOUT : 0;
}

/* ---- control ------------------------------------------------------------------------------ */

static int parse_faults(char *text, faults *f, char *why, size_t whylen)
{
    *f = (faults){0};
    char *save = NULL;
    int lineno = 0;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *w[4] = {0}, *s2 = NULL;
        int nw = 0;
        for (char *t = strtok_r(line, " \t\r", &s2); t; t = strtok_r(NULL, " \t\r", &s2)) {
            if (nw == 4) goto bad;
            w[nw++] = t;
        }
        if (nw == 0) continue;
        if (!strcmp(w[0], "latency") && (nw == 2 || nw == 3)) {
            char *e1, *e2 = "";
            double ms = strtod(w[1], &e1), jit = nw == 3 ? strtod(w[2], &e2) : 0;
            if (*e1 || *e2 || !(ms >= 0 && ms <= 60000) || !(jit >= 0 && jit <= ms)) goto bad;
            f->lat_us = (int64_t)(ms * 1000);
            f->jit_us = (int64_t)(jit * 1000);
        } else if (!strcmp(w[0], "stall") && nw <= 2) {
            int up = nw == 1 || !strcmp(w[1], "up"), down = nw == 1 || !strcmp(w[1], "down");
            if (!up && !down) goto bad;
            f->stall[UP] |= up;
            f->stall[DOWN] |= down;
        } else if (nw == 1 && !strcmp(w[0], "drop")) {
            f->drop = 1;
        } else if (nw == 1 && !strcmp(w[0], "reset")) {
            f->reset = 1;
        } else if (nw == 1 && !strcmp(w[0], "close")) {
            f->close = 1;
        } else if (nw == 1 && !strcmp(w[0], "refuse")) {
            f->refuse = 1;
        } else {
            goto bad;
        }
    }
    return 0;
bad:
    snprintf(why, whylen,
             "line %d: not one of latency MS [JITTER], stall [up|down], drop, "
             "reset, close, refuse",
             lineno);
    return -1;
}

/* Write text to path atomically. */
static void write_atomic(const char *path, const char *text, size_t len)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    int bad = fwrite(text, 1, len, f) != len;
    if (fclose(f) || bad || rename(tmp, path)) say("write_failed", "path=%s", path);
}

/* Move from cur to the faults f: what changes for the open connections and the listener. */
static void apply(const faults *f)
{
    int resets = 0, closes = 0;
    for (int i = 0; i < nconns; i++) {
        conn *c = conns[i];
        if (c->dead) continue;
        if (f->reset && !cur.reset) {
            end_conn(c, END_RESET);
            resets++;
        } else if (f->close && !cur.close) {
            end_conn(c, END_FIN);
            closes++;
        } else if (f->drop && !cur.drop && !c->dropped) {
            c->dropped = 1;
            free_queue(&c->d[UP]);
            free_queue(&c->d[DOWN]);
        } else if (!f->drop && cur.drop && c->dropped) {
            end_conn(c, END_RESET);
            resets++;
        }
    }
    st.resets += (unsigned long long)resets;
    st.closes += (unsigned long long)closes;
    if (resets || closes) say("ended", "resets=%d closes=%d", resets, closes);
    if (f->refuse && lfd >= 0) {
        close(lfd);
        lfd = -1;
    }
    cur = *f;
    sweep();
}

/* Listen again after a refuse cleared (the port of the ready file). Returns 0 or -1. */
static int relisten(void)
{
    if (cur.refuse || lfd >= 0) return 0;
    struct sockaddr_in a = self;
    lfd = pn_listen(&a, 128);
    if (lfd < 0) return -1;
    fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
    say("listening", "%s", "");
    return 0;
}

static void check_control(const char *path, char *last, size_t *last_len, int *first)
{
    char text[MAX_CONTROL + 1], applied[4096];
    size_t len = 0;
    FILE *in = fopen(path, "r");
    if (in) {
        len = fread(text, 1, MAX_CONTROL, in);
        fclose(in);
    } else if (errno != ENOENT) {
        return; /* try again next turn */
    }
    text[len] = '\0';
    if (!*first && len == *last_len && !memcmp(text, last, len)) return;
    *first = 0;
    memcpy(last, text, len);
    *last_len = len;
    snprintf(applied, sizeof applied, "%s.applied", path);
    faults f;
    char why[256], copy[MAX_CONTROL + 1];
    memcpy(copy, text, len + 1);
    if (strlen(text) != len || parse_faults(copy, &f, why, sizeof why)) {
        char msg[320];
        int n = snprintf(msg, sizeof msg, "error: %s\n",
                         strlen(text) != len ? "a NUL byte in the control file" : why);
        say("bad_control", "msg=\"%.*s\"", n - 1, msg);
        write_atomic(applied, msg, (size_t)n);
        return;
    }
    apply(&f);
    say("faults",
        "latency_us=%lld jitter_us=%lld stall_up=%d stall_down=%d drop=%d reset=%d "
        "close=%d refuse=%d",
        (long long)f.lat_us, (long long)f.jit_us, f.stall[UP], f.stall[DOWN], f.drop, f.reset,
        f.close, f.refuse);
    write_atomic(applied, text, len);
}

static void write_stats(const char *path)
{
    if (!memcmp(&st, &st_written, sizeof st)) return;
    char text[1024];
    int n = snprintf(text, sizeof text,
                     "accepted %llu\nopen %llu\nbytes_up %llu\nbytes_down %llu\ndelayed %llu\n"
                     "dropped_bytes %llu\nresets %llu\ncloses %llu\nturned_away %llu\n"
                     "upstream_failed %llu\n",
                     st.accepted, st.open, st.bytes[UP], st.bytes[DOWN], st.delayed,
                     st.dropped_bytes, st.resets, st.closes, st.turned_away, st.upstream_failed);
    write_atomic(path, text, (size_t)n);
    st_written = st;
}

/* ---- the loop ----------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: fault_proxy --listen HOST:PORT --to HOST:PORT --ready-file F --control F "
               "[--stats F] [--seed N]\n");
}

int main(int argc, char **argv)
{
    const char *listen_at = NULL, *to = NULL, *ready = NULL, *control = NULL, *stats_file = NULL;
    unsigned long long seed = 1;
    static const struct option opts[] = {{"listen", required_argument, 0, 'l'},
                                         {"to", required_argument, 0, 't'},
                                         {"ready-file", required_argument, 0, 'r'},
                                         {"control", required_argument, 0, 'c'},
                                         {"stats", required_argument, 0, 's'},
                                         {"seed", required_argument, 0, 'S'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            listen_at = optarg;
            break;
        case 't':
            to = optarg;
            break;
        case 'r':
            ready = optarg;
            break;
        case 'c':
            control = optarg;
            break;
        case 's':
            stats_file = optarg;
            break;
        case 'S':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !listen_at || !to || !ready || !control) {
        usage(stderr);
        return 2;
    }
    if (pn_parse_addr(listen_at, &self) || pn_parse_addr(to, &target)) {
        fprintf(stderr, "fault_proxy: --listen and --to take IPv4:PORT\n");
        return 2;
    }
    rng = seed;
    signal(SIGPIPE, SIG_IGN);
    if ((lfd = pn_listen(&self, 128)) < 0) {
        fprintf(stderr, "fault_proxy: listen on %s: %s\n", listen_at, strerror(errno));
        return 1;
    }
    fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
    pn_addr_str(&self, self_str);
    static char last[MAX_CONTROL + 1];
    size_t last_len = 0;
    int first = 1;
    check_control(control, last, &last_len, &first); /* faults in force before the first accept */
    if (pn_write_ready(ready, &self)) {
        perror(ready);
        return 1;
    }
    char to_str[PN_ADDR_LEN];
    say("ready", "to=%s", pn_addr_str(&target, to_str));

    static struct pollfd pfd[1 + 2 * MAX_CONNS];
    static int who[1 + 2 * MAX_CONNS]; /* connection index * 2 + (0 client, 1 upstream) */
    int64_t next_control = now_us() + CONTROL_US, next_stats = 0;
    for (;;) {
        int64_t now = now_us();
        if (now >= next_control) {
            check_control(control, last, &last_len, &first);
            if (relisten()) say("relisten_failed", "errno=%d", errno);
            next_control = now + CONTROL_US;
        }
        if (stats_file && now >= next_stats) {
            write_stats(stats_file);
            next_stats = now + STATS_US;
        }
        /* deliver what is due, then wait for the next thing to do */
        int64_t wake = next_control;
        for (int i = 0; i < nconns; i++) {
            conn *c = conns[i];
            for (int d = UP; d <= DOWN && !c->dead; d++) {
                if (flush_dir(c, d, now))
                    end_conn(c, END_RESET);
                else if (c->d[d].head && !c->d[d].blocked && !cur.stall[d] && !c->connecting &&
                         c->d[d].head->due < wake)
                    wake = c->d[d].head->due;
            }
            if (!c->dead && c->d[UP].shut && c->d[DOWN].shut) end_conn(c, END_CLEAN);
        }
        sweep();
        int n = 0;
        if (lfd >= 0 && !(cur.stall[UP] && cur.stall[DOWN])) {
            pfd[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
            who[n++] = -1;
        }
        for (int i = 0; i < nconns; i++) {
            conn *c = conns[i];
            short ce = want_read(c, UP) | want_write(c, DOWN);
            short ue = c->connecting ? POLLOUT : (short)(want_read(c, DOWN) | want_write(c, UP));
            if (ce) {
                pfd[n] = (struct pollfd){.fd = c->cfd, .events = ce};
                who[n++] = i * 2;
            }
            if (ue && c->ufd >= 0) {
                pfd[n] = (struct pollfd){.fd = c->ufd, .events = ue};
                who[n++] = i * 2 + 1;
            }
        }
        int64_t wait = wake - now_us();
        int timeout = wait <= 0 ? 0 : (int)((wait + 999) / 1000);
        if (poll(pfd, (nfds_t)n, timeout) < 0) {
            if (errno == EINTR) continue;
            perror("fault_proxy: poll");
            return 1;
        }
        now = now_us();
        for (int j = 0; j < n; j++) {
            if (!pfd[j].revents) continue;
            if (who[j] < 0) {
                accept_some();
                continue;
            }
            conn *c = conns[who[j] / 2];
            int side_up = who[j] & 1; /* this socket is the upstream one */
            if (c->dead) continue;
            if (side_up && c->connecting) {
                int e = 0;
                socklen_t el = sizeof e;
                getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &e, &el);
                if (e) {
                    say("upstream_failed", "conn=%lu errno=%d", c->id, e);
                    st.upstream_failed++;
                    end_conn(c, END_RESET);
                } else {
                    c->connecting = 0;
                }
                continue;
            }
            /* the socket is the source of one direction and the destination of the other */
            int rd = side_up ? DOWN : UP, wr = side_up ? UP : DOWN;
            if ((pfd[j].revents & (POLLIN | POLLHUP | POLLERR)) && (pfd[j].events & POLLIN) &&
                read_dir(c, rd, now))
                end_conn(c, END_RESET);
            if (!c->dead && (pfd[j].revents & (POLLOUT | POLLHUP | POLLERR)) &&
                (pfd[j].events & POLLOUT))
                c->d[wr].blocked = 0; /* flushed at the top of the loop */
        }
        sweep();
    }
}
