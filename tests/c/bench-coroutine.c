/* Coroutine micro-benchmarks (not a test).  Prints one line per figure:
 * ns per enter+yield round trip, per pooled create+enter+finish, and per
 * CoMutex hand-off among 2 and 100 coroutines.  Median of 5 runs.
 * QLOOP_COROUTINE=ucontext selects the portable backend. */
#include "qloop/coroutine.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define RUNS 5

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v)
{
    qsort(v, RUNS, sizeof *v, cmp_double);
    return v[RUNS / 2];
}

static volatile int stop;

static void co_yield_loop(void *opaque)
{
    (void)opaque;
    while (!stop) {
        ql_coroutine_yield();
    }
}

static double bench_yield(long n)
{
    QLCoroutine *co;
    double t0;

    stop = 0;
    co = ql_coroutine_create(co_yield_loop, NULL);
    ql_coroutine_enter(co);
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        ql_coroutine_enter(co);
    }
    t0 = (now_ns() - t0) / n;
    stop = 1;
    ql_coroutine_enter(co);
    return t0;
}

static void co_empty(void *opaque)
{
    (void)opaque;
}

static double bench_lifecycle(long n)
{
    double t0 = now_ns();

    for (long i = 0; i < n; i++) {
        ql_coroutine_enter(ql_coroutine_create(co_empty, NULL));
    }
    return (now_ns() - t0) / n;
}

static QLCoMutex *mutex;

static void co_lock_loop(void *opaque)
{
    (void)opaque;
    while (!stop) {
        ql_co_mutex_lock(mutex);
        ql_coroutine_yield(); /* others queue up meanwhile */
        ql_co_mutex_unlock(mutex);
    }
}

/* Each round: the holder unlocks (hand-off to the first waiter), queues
 * again, and the new holder runs until it yields. */
static double bench_mutex(int ncos, long n)
{
    QLCoroutine *h;
    double t0;

    stop = 0;
    mutex = ql_co_mutex_new();
    for (int i = 0; i < ncos; i++) {
        ql_coroutine_enter(ql_coroutine_create(co_lock_loop, NULL));
    }
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        ql_coroutine_enter(ql_co_mutex_holder(mutex));
    }
    t0 = (now_ns() - t0) / n;
    stop = 1;
    while ((h = ql_co_mutex_holder(mutex))) {
        ql_coroutine_enter(h);
    }
    ql_co_mutex_free(mutex);
    return t0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    double v[RUNS];
    const char *be = ql_coroutine_backend();

    for (int r = 0; r < RUNS; r++) {
        v[r] = bench_yield(n);
    }
    printf("%s: switch round trip (enter+yield): %.1f ns\n", be, median(v));
    for (int r = 0; r < RUNS; r++) {
        v[r] = bench_lifecycle(n);
    }
    printf("%s: lifecycle (create+enter+finish, pooled): %.1f ns\n", be, median(v));
    for (int r = 0; r < RUNS; r++) {
        v[r] = bench_mutex(2, n / 2);
    }
    printf("%s: CoMutex hand-off, 2 coroutines: %.1f ns\n", be, median(v));
    for (int r = 0; r < RUNS; r++) {
        v[r] = bench_mutex(100, n / 2);
    }
    printf("%s: CoMutex hand-off, 100 coroutines: %.1f ns\n", be, median(v));
    return 0;
}
