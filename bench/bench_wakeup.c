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
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPEAT 101

/* The echo thread: pinned at creation; passes the token back n times, or stops (and wakes
 * the other side once) when either side set `failed`. */
typedef struct echo {
    int in, out; /* eventfds: read from in, write to out */
    long n;
    _Atomic int failed;
} echo;

static int wake(int fd)
{
    uint64_t v = 1;
    return write(fd, &v, sizeof v) == (ssize_t)sizeof v ? 0 : -1;
}

static int wait_for(int fd)
{
    uint64_t v;
    return read(fd, &v, sizeof v) == (ssize_t)sizeof v ? 0 : -1;
}

static void *echo_main(void *arg)
{
    echo *e = arg;
    for (long i = 0; i < e->n && !atomic_load(&e->failed); i++) {
        if (wait_for(e->in) || atomic_load(&e->failed) || wake(e->out)) {
            atomic_store(&e->failed, 1);
            (void)wake(e->out); /* the other side may be waiting */
            break;
        }
    }
    return NULL;
}

static double now_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int pin_attr(pthread_attr_t *attr, int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_attr_setaffinity_np(attr, sizeof set, &set);
}

/* One pass: n round trips between this thread, moved to cpu a for the pass, and one on cpu b.
 * OUT: wall and CPU (both threads) microseconds per round trip. Returns 0, or -1. */
static int one_pass(int a, int b, long n, double *wall_us, double *cpu_us)
{
    int rc = -1;
    echo e = {.in = eventfd(0, 0), .out = eventfd(0, 0), .n = n};
    cpu_set_t old, here;
    CPU_ZERO(&here);
    CPU_SET(a, &here);
    pthread_attr_t attr;
    pthread_t t;
    if (e.in < 0 || e.out < 0 || pthread_getaffinity_np(pthread_self(), sizeof old, &old) ||
        pthread_setaffinity_np(pthread_self(), sizeof here, &here))
        goto out;
    pthread_attr_init(&attr);
    int started = !pin_attr(&attr, b) && !pthread_create(&t, &attr, echo_main, &e);
    pthread_attr_destroy(&attr);
    if (started) {
        double c0 = now_s(CLOCK_PROCESS_CPUTIME_ID), w0 = now_s(CLOCK_MONOTONIC);
        for (long i = 0; i < n && !atomic_load(&e.failed); i++) {
            if (wake(e.in) || wait_for(e.out)) {
                atomic_store(&e.failed, 1);
                (void)wake(e.in); /* the echo thread may be waiting */
            }
        }
        double w1 = now_s(CLOCK_MONOTONIC);
        pthread_join(t, NULL);
        double c1 = now_s(CLOCK_PROCESS_CPUTIME_ID);
        if (!atomic_load(&e.failed)) {
            *wall_us = (w1 - w0) * 1e6 / (double)n;
            *cpu_us = (c1 - c0) * 1e6 / (double)n;
            rc = 0;
        }
    }
    pthread_setaffinity_np(pthread_self(), sizeof old, &old);
out:
    if (e.in >= 0) close(e.in);
    if (e.out >= 0) close(e.out);
    return rc;
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
                fprintf(stderr, "bench_wakeup: %s: a pass failed (%s)\n", placement[p],
                        strerror(errno));
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
