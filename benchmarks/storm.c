/* The open() storm the benchmarks trace: N failing open() calls as fast as
 * one core allows, optionally paced.  Prints one JSON line with its own
 * timing, measured around the loop only.
 *
 *   rbstorm N [PATH] [RATE]     RATE: opens per second, 0 = flat out
 *
 * Named rbstorm so every tracer can filter on the same comm.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    const char *path = argc > 2 ? argv[2] : "/nonexistent-rbtrace-bench/file";
    double rate = argc > 3 ? atof(argv[3]) : 0;
    long failed = 0;
    long long start = now_ns(), next = start;
    long long step = rate > 0 ? (long long)(1e9 / rate) : 0;
    for (long i = 0; i < n; i++) {
        if (step) {
            next += step;
            while (now_ns() < next)
                ;
        }
        int fd = open(path, O_RDONLY);
        if (fd >= 0)
            close(fd);
        else
            failed++;
    }
    long long end = now_ns();
    printf("{\"n\": %ld, \"failed\": %ld, \"ns_per_open\": %.1f, \"start_ns\": %lld, \"end_ns\": %lld}\n",
           n, failed, (double)(end - start) / n, start, end);
    return 0;
}
