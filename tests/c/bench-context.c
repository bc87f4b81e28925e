/*
 * Micro-benchmarks of the C context (not a test; build target
 * bench-context, run it from a release build):
 *   bh-batch      schedule 1000 BHs, one poll runs them: ns per BH
 *   bh-chain      one BH rescheduling itself: ns per run (one poll each)
 *   timers-virt   200k timers at random in [0,100 ms) on the virtual
 *                 clock with autojump: ns per timer (arm + fire)
 *   timers-real   same on REALTIME (wall: at least 500 ns, the 100 ms span)
 *   wakeup        cross-thread round trip: a BH in another thread's
 *                 blocked context answers with a BH in ours: ns per trip
 */
#include "qloop/qloop.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static long counter;
static double cpu_ns; /* CPU time per operation of the last benchmark */
static double cpu0;
static void count_cb(void *opaque)
{
    (void)opaque;
    counter++;
}

static double bench_bh_batch(void)
{
    enum { N = 1000, ROUNDS = 2000 };
    QLContext *ctx = ql_context_new();
    QLBH *bh[N];
    for (int i = 0; i < N; i++) {
        bh[i] = ql_bh_new(ctx, count_cb, NULL, "b");
    }
    double t0 = now_ns(CLOCK_MONOTONIC);
    cpu0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < N; i++) {
            ql_bh_schedule(bh[i]);
        }
        ql_context_poll(ctx, false);
    }
    double t = (now_ns(CLOCK_MONOTONIC) - t0) / ((double)N * ROUNDS);
    cpu_ns = (now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / ((double)N * ROUNDS);
    for (int i = 0; i < N; i++) {
        ql_bh_delete(bh[i]);
    }
    ql_context_free(ctx);
    return t;
}

static QLBH *chain_bh;
static long chain_left;
static void chain_cb(void *opaque)
{
    (void)opaque;
    if (--chain_left > 0) {
        ql_bh_schedule(chain_bh);
    }
}

static double bench_bh_chain(void)
{
    const long n = 2000000;
    QLContext *ctx = ql_context_new();
    chain_bh = ql_bh_new(ctx, chain_cb, NULL, "chain");
    chain_left = n;
    ql_bh_schedule(chain_bh);
    double t0 = now_ns(CLOCK_MONOTONIC);
    cpu0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    while (chain_left > 0) {
        ql_context_poll(ctx, true);
    }
    double t = (now_ns(CLOCK_MONOTONIC) - t0) / n;
    cpu_ns = (now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / n;
    ql_bh_delete(chain_bh);
    ql_context_free(ctx);
    return t;
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static double bench_timers(QLClockType clock, clockid_t measure, double *cpu)
{
    enum { N = 200000 };
    QLContext *ctx = ql_context_new();
    QLTimer **t = malloc(N * sizeof *t);
    for (int i = 0; i < N; i++) {
        t[i] = ql_timer_new(ctx, clock, count_cb, NULL, "t");
    }
    ql_virtual_clock_set_autojump(ctx, true);
    counter = 0;
    double t0 = now_ns(measure), c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    int64_t base = ql_clock_get_ns(ctx, clock);
    for (int i = 0; i < N; i++) {
        ql_timer_mod(t[i], base + (int64_t)(rng() % 100000000ULL));
    }
    while (counter < N) {
        ql_context_poll(ctx, true);
    }
    double per = (now_ns(measure) - t0) / N;
    *cpu = (now_ns(CLOCK_PROCESS_CPUTIME_ID) - c0) / N;
    for (int i = 0; i < N; i++) {
        ql_timer_free(t[i]);
    }
    free(t);
    ql_context_free(ctx);
    return per;
}

typedef struct Side {
    QLContext *ctx;
    QLBH *bh;          /* lives in ctx; scheduled by the peer */
    struct Side *peer;
    long trips;        /* [home] */
    long target;
    int done;          /* [atomic] */
} Side;

static void pong_cb(void *opaque)
{
    Side *s = opaque;
    s->trips++;
    if (s->trips < s->target || s->peer->trips < s->target) {
        ql_bh_schedule(s->peer->bh);
    }
}

static void *side_thread(void *opaque)
{
    Side *s = opaque;
    while (s->trips < s->target) {
        ql_context_poll(s->ctx, true);
    }
    return NULL;
}

static double bench_wakeup(void)
{
    const long n = 100000;
    Side a = {0}, b = {0};
    a.ctx = ql_context_new();
    b.ctx = ql_context_new();
    a.bh = ql_bh_new(a.ctx, pong_cb, &a, "a");
    b.bh = ql_bh_new(b.ctx, pong_cb, &b, "b");
    a.peer = &b;
    b.peer = &a;
    a.target = b.target = n;
    pthread_t th;
    pthread_create(&th, NULL, side_thread, &b);
    double t0 = now_ns(CLOCK_MONOTONIC);
    ql_bh_schedule(b.bh);
    side_thread(&a);
    double t = (now_ns(CLOCK_MONOTONIC) - t0) / n;
    pthread_join(th, NULL);
    ql_bh_delete(a.bh);
    ql_bh_delete(b.bh);
    ql_context_free(a.ctx);
    ql_context_free(b.ctx);
    return t;
}

int main(void)
{
    double w = bench_bh_batch();
    printf("bh-batch     %8.1f ns per BH (schedule + run, batches of 1000; CPU %.1f)\n", w, cpu_ns);
    w = bench_bh_chain();
    printf("bh-chain     %8.1f ns per self-rescheduling BH (one poll each; CPU %.1f)\n", w, cpu_ns);
    double cpu, wall;
    wall = bench_timers(QL_CLOCK_VIRTUAL, CLOCK_MONOTONIC, &cpu);
    printf("timers-virt  %8.1f ns per timer (200k, virtual clock, autojump; CPU %.1f)\n",
           wall, cpu);
    wall = bench_timers(QL_CLOCK_REALTIME, CLOCK_MONOTONIC, &cpu);
    printf("timers-real  %8.1f ns per timer (200k in 100 ms, REALTIME; CPU %.1f)\n", wall, cpu);
    printf("wakeup       %8.1f ns per cross-thread round trip\n", bench_wakeup());
    return 0;
}
