/*
 * bench_wakeup.c — what one thread waking another costs on this machine: the unit every hop
 * of the cluster pays (a ZeroMQ message wakes the sender's I/O thread, the receiver's I/O
 * thread and the thread behind it; an HTTP request wakes a broker lane).
 *
 *   bench_wakeup [--round-trips N] [--repeat R] [--json]
 *
 * Two threads pass a token back and forth over two eventfds (blocking read, write), N round
 * trips (default 20,000) per pass: once with both threads pinned to the same core, once with
 * them on two different cores (when the process may use two). Each pass reports the wall time
 * per round trip (two wake-ups) and the CPU time per round trip of both threads together;
 * the figures are medians over --repeat passes (default 5). On bare metal a wake-up across
 * cores costs a few microseconds; under nested virtualization an inter-processor interrupt
 * can cost ten times that, which is what makes a request that crosses many threads slow.
 * Output: one JSON line per placement (--json) or a line of text each.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPEAT 101

typedef struct peer {
    int in, out; /* eventfds: read from in, write to out */
    int cpu;
    long n;
    int failed;
} peer;

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static int pass_token(const peer *p)
{
    uint64_t v;
    if (read(p->in, &v, sizeof v) != (ssize_t)sizeof v) return -1;
    v = 1;
    return write(p->out, &v, sizeof v) == (ssize_t)sizeof v ? 0 : -1;
}

static void *echo_main(void *arg)
{
    peer *p = arg;
    if (pin(p->cpu)) p->failed = 1;
    for (long i = 0; i < p->n && !p->failed; i++)
        if (pass_token(p)) p->failed = 1;
    return NULL;
}

static double now_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One pass: n round trips between a thread on cpu a (this one) and one on cpu b. OUT: wall
 * and CPU (both threads) microseconds per round trip. Returns 0, or -1 (errno). */
static int one_pass(int a, int b, long n, double *wall_us, double *cpu_us)
{
    int ping = eventfd(0, 0), pong = eventfd(0, 0);
    if (ping < 0 || pong < 0) return -1;
    peer echo = {.in = ping, .out = pong, .cpu = b, .n = n};
    peer self = {.in = pong, .out = ping, .cpu = a, .n = n};
    cpu_set_t old;
    pthread_getaffinity_np(pthread_self(), sizeof old, &old);
    double c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
    pthread_t t;
    if (pthread_create(&t, NULL, echo_main, &echo)) return -1;
    int rc = pin(a) ? -1 : 0;
    double w0 = now_s(CLOCK_MONOTONIC);
    uint64_t v = 1;
    for (long i = 0; i < n && !rc; i++) {
        if (write(self.out, &v, sizeof v) != (ssize_t)sizeof v || read(self.in, &v, sizeof v) < 0)
            rc = -1;
    }
    double w1 = now_s(CLOCK_MONOTONIC);
    if (rc) { /* unblock the echo thread */
        v = (uint64_t)n;
        (void)!write(ping, &v, sizeof v);
    }
    pthread_join(t, NULL);
    double c1 = now_s(CLOCK_PROCESS_CPUTIME_ID);
    pthread_setaffinity_np(pthread_self(), sizeof old, &old);
    close(ping);
    close(pong);
    if (rc || echo.failed) return -1;
    *wall_us = (w1 - w0) * 1e6 / (double)n;
    *cpu_us = (c1 - c0) * 1e6 / (double)n;
    return 0;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    long n = 20000;
    int repeat = 5, json = 0;
    static const struct option opts[] = {{"round-trips", required_argument, 0, 'n'},
                                         {"repeat", required_argument, 0, 'r'},
                                         {"json", no_argument, 0, 'j'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "n:r:j", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            n = atol(optarg);
            break;
        case 'r':
            repeat = atoi(optarg);
            break;
        case 'j':
            json = 1;
            break;
        default:
            fprintf(stderr, "usage: bench_wakeup [--round-trips N] [--repeat R] [--json]\n");
            return 2;
        }
    }
    if (n < 1 || n > 100000000 || repeat < 1 || repeat > MAX_REPEAT) {
        fprintf(stderr, "bench_wakeup: --round-trips 1..1e8, --repeat 1..%d\n", MAX_REPEAT);
        return 2;
    }
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed)) {
        perror("bench_wakeup: sched_getaffinity");
        return 1;
    }
    int cpus[2], ncpu = 0;
    for (int i = 0; i < CPU_SETSIZE && ncpu < 2; i++)
        if (CPU_ISSET(i, &allowed)) cpus[ncpu++] = i;
    const char *placement[2] = {"same_core", "two_cores"};
    for (int p = 0; p < ncpu; p++) {
        double wall[MAX_REPEAT], cpu[MAX_REPEAT];
        for (int r = 0; r < repeat; r++) {
            if (one_pass(cpus[0], cpus[p], n, &wall[r], &cpu[r])) {
                fprintf(stderr, "bench_wakeup: %s: %s\n", placement[p], strerror(errno));
                return 1;
            }
        }
        double w = median(wall, repeat), u = median(cpu, repeat);
        if (json)
            printf("{\"bench\":\"wakeup\",\"placement\":\"%s\",\"cpus\":[%d,%d],"
                   "\"round_trips\":%ld,\"repeat\":%d,\"wall_us_per_round_trip\":%.2f,"
                   "\"cpu_us_per_round_trip\":%.2f}\n",
                   placement[p], cpus[0], cpus[p], n, repeat, w, u);
        else
            printf("%-9s cpus %d,%d: %.2f us per round trip (two wake-ups), %.2f us of CPU\n",
                   placement[p], cpus[0], cpus[p], w, u);
    }
    if (ncpu < 2) fprintf(stderr, "bench_wakeup: one core allowed: no two_cores figure\n");
    return 0;
}
