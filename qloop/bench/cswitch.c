/*
 * cswitch - the C-level cost of qloop's coroutine switch, with no Python.
 *
 *   cswitch N
 *
 * Linked against libqloop (qloop.get_include() / qloop.get_library_dir()).
 * Measures, each over N operations:
 *   yield_ns      one ql_coroutine_enter() into a coroutine that at once
 *                 calls ql_coroutine_yield() (enter + yield round trip; the
 *                 operation QEMU's test-coroutine /perf/yield times);
 *   lifecycle_ns  ql_coroutine_create() + enter of a coroutine that returns
 *                 at once (stacks come from the pool; QEMU's /perf/lifecycle).
 * Prints one JSON line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <qloop/qloop.h>
#include <qloop/coroutine.h>

static volatile int keep_going = 1;

static void yielder(void *opaque)
{
    long *switches = opaque;
    while (keep_going) {
        (*switches)++;
        ql_coroutine_yield();
    }
}

static void returner(void *opaque)
{
    (*(long *)opaque)++;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10000000;
    if (n <= 0) {
        fprintf(stderr, "usage: cswitch N (N > 0)\n");
        return 64;
    }
    long switches = 0, runs = 0;

    QLCoroutine *co = ql_coroutine_create(yielder, &switches);
    if (!co || ql_coroutine_enter(co) < 0) {   /* runs up to its first yield */
        perror("cswitch: coroutine");
        return 1;
    }
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        ql_coroutine_enter(co);
    }
    double t1 = now_s();
    keep_going = 0;
    ql_coroutine_enter(co);                     /* let it return */

    /* Warm the stack pool, then time create + enter + finish. */
    for (int i = 0; i < 16; i++) {
        ql_coroutine_enter(ql_coroutine_create(returner, &runs));
    }
    runs = 0;
    double t2 = now_s();
    for (long i = 0; i < n; i++) {
        ql_coroutine_enter(ql_coroutine_create(returner, &runs));
    }
    double t3 = now_s();
    if (switches != n + 1 || runs != n) {
        fprintf(stderr, "cswitch: counted %ld switches and %ld runs for N = %ld\n",
                switches, runs, n);
        return 1;
    }
    printf("{\"n\": %ld, \"yield_ns\": %.2f, \"lifecycle_ns\": %.2f, \"backend\": \"%s\"}\n",
           n, (t1 - t0) / (double)n * 1e9, (t3 - t2) / (double)n * 1e9, ql_coroutine_backend());
    return 0;
}
