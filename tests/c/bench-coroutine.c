/* Coroutine micro-benchmarks (not a test).  Prints one line per figure:
 * ns per enter+yield round trip, per pooled create+enter+finish, and per
 * CoMutex hand-off among 2 and 100 coroutines: median of 5 runs of the
 * thread's CPU time (the wall clock of a shared machine includes time
 * stolen by others), wall-clock median in brackets.  Also resident memory
 * per suspended coroutine.  QLOOP_COROUTINE=ucontext selects the portable
 * backend. */
#include "qloop/coroutine.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define RUNS 5

static double wall[RUNS];
static int run_idx;

static double clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Start a measurement; returns CPU ns. */
static double t_wall0;
static double now_ns(void)
{
    t_wall0 = clock_ns(CLOCK_MONOTONIC);
    return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

/* End a measurement started at cpu0: CPU ns per op; wall kept aside. */
static double per_op(double cpu0, long n)
{
    double cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    wall[run_idx] = (clock_ns(CLOCK_MONOTONIC) - t_wall0) / n;
    return cpu / n;
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
    t0 = per_op(t0, n);
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
    return per_op(t0, n);
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
    t0 = per_op(t0, n);
    stop = 1;
    while ((h = ql_co_mutex_holder(mutex))) {
        ql_coroutine_enter(h);
    }
    ql_co_mutex_free(mutex);
    return t0;
}

static long rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) {
            resident = 0;
        }
        fclose(f);
    }
    return resident * 4096;
}

static void co_yield_once(void *opaque)
{
    (void)opaque;
    ql_coroutine_yield();
}

/* Resident memory per suspended coroutine (stack pages touched, record,
 * stack descriptor), over 10,000 fresh coroutines. */
static double bench_rss(void)
{
    enum { N = 10000 };
    static QLCoroutine *cos[N];
    long before = rss_bytes(), after;

    for (int i = 0; i < N; i++) {
        cos[i] = ql_coroutine_create(co_yield_once, NULL);
        ql_coroutine_enter(cos[i]);
    }
    after = rss_bytes();
    for (int i = 0; i < N; i++) {
        ql_coroutine_enter(cos[i]);
    }
    return (double)(after - before) / N;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    double v[RUNS];
    const char *be = ql_coroutine_backend();

    /* First, before the pools hold anything. */
    printf("%s: RSS per suspended coroutine: %.0f bytes\n", be, bench_rss());

#define REPORT(what, call)                                                  \
    do {                                                                    \
        for (run_idx = 0; run_idx < RUNS; run_idx++) {                      \
            v[run_idx] = (call);                                            \
        }                                                                   \
        printf("%s: %s: %.1f ns [wall %.1f]\n", be, what, median(v),        \
               median(wall));                                               \
    } while (0)

    REPORT("switch round trip (enter+yield)", bench_yield(n));
    REPORT("lifecycle (create+enter+finish, pooled)", bench_lifecycle(n));
    REPORT("CoMutex hand-off, 2 coroutines", bench_mutex(2, n / 2));
    REPORT("CoMutex hand-off, 100 coroutines", bench_mutex(100, n / 2));
    return 0;
}
