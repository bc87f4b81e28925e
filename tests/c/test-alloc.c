/*
 * Steady state allocates nothing: BH schedule + dispatch, oneshot BHs from
 * the home thread, timer mod / del / fire.  malloc and friends are
 * interposed in this executable and counted; where something else replaces
 * them (a sanitizer runtime, valgrind), the warm-up allocations are not seen
 * and the test reports itself as skipped.
 */
#include "qltest.h"
#include "context-int.h" /* the wheel's size, for the spread test */

#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static long allocs;

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
void *malloc(size_t n)
{
    __atomic_fetch_add(&allocs, 1, __ATOMIC_RELAXED);
    return __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
    __atomic_fetch_add(&allocs, 1, __ATOMIC_RELAXED);
    return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
    __atomic_fetch_add(&allocs, 1, __ATOMIC_RELAXED);
    return __libc_realloc(p, n);
}

void free(void *p)
{
    __libc_free(p);
}
#endif

static int counter;
static QLBH *chain_bh;

static void count_cb(void *opaque)
{
    (void)opaque;
    counter++;
}

static void chain_cb(void *opaque)
{
    (void)opaque;
    if (++counter % 1000) {
        ql_bh_schedule(chain_bh);
    }
}

static int skipped(void)
{
    long before = allocs;
    QLContext *probe = ql_context_new();
    long seen = allocs - before;
    ql_context_free(probe);
    if (seen == 0) {
        printf("skipped: allocations are not interposed in this build\n");
        return 1;
    }
    return 0;
}

static void test_bh_schedule_and_dispatch_allocate_nothing(void)
{
    if (skipped()) {
        return;
    }
    QLContext *ctx = ql_context_new();
    QLBH *bh = ql_bh_new(ctx, count_cb, NULL, "count");
    chain_bh = ql_bh_new(ctx, chain_cb, NULL, "chain");
    for (int i = 0; i < 2000; i++) { /* warm up: free lists, arrays */
        ql_bh_schedule(bh);
        ql_bh_schedule_oneshot(ctx, count_cb, NULL, "oneshot");
        ql_context_poll(ctx, false);
    }
    long before = allocs;
    for (int i = 0; i < 100000; i++) {
        ql_bh_schedule(bh);
        ql_bh_schedule_oneshot(ctx, count_cb, NULL, "oneshot");
        ql_context_poll(ctx, false);
    }
    ql_bh_schedule(chain_bh);
    while (ql_context_poll(ctx, false) > 0) {
    }
    QL_CHECK_EQ(allocs - before, 0);
    ql_bh_delete(bh);
    ql_bh_delete(chain_bh);
    ql_context_free(ctx);
}

static void test_timer_mod_del_and_fire_allocate_nothing(void)
{
    if (skipped()) {
        return;
    }
    QLContext *ctx = ql_context_new();
    enum { N = 1000 };
    static QLTimer *t[N];
    for (int i = 0; i < N; i++) {
        t[i] = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, count_cb, NULL, "t");
    }
    for (int round = 0; round < 3; round++) { /* warm up: heap arrays grow */
        for (int i = 0; i < N; i++) {
            ql_timer_mod_in(t[i], 1 + (i * 7919) % 5003);
        }
        ql_virtual_clock_advance(ctx, 10000);
        while (ql_context_poll(ctx, false) > 0) {
        }
    }
    long before = allocs;
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < N; i++) {
            ql_timer_mod_in(t[i], 1 + (i * 7919 + round) % 5003);
        }
        for (int i = 0; i < N; i += 3) {
            ql_timer_del(t[i]);
        }
        ql_virtual_clock_advance(ctx, 10000);
        while (ql_context_poll(ctx, false) > 0) {
        }
    }
    QL_CHECK_EQ(allocs - before, 0);
    for (int i = 0; i < N; i++) {
        ql_timer_free(t[i]);
    }
    ql_context_free(ctx);
}

/* Timers spread over the whole wheel (deadlines up to two wheel spans
 * ahead, the clock moving a tenth of a span per step): after two turns of
 * warm-up, further turns take chunks the emptied buckets gave back. */
static void test_timers_spread_over_the_wheel_allocate_nothing_after_warm_up(void)
{
    if (skipped()) {
        return;
    }
    QLContext *ctx = ql_context_new();
    enum { N = 2000 };
    const int64_t span = (int64_t)QL_WHEEL_SIZE << QL_WHEEL_SHIFT;
    static QLTimer *t[N];
    unsigned seed = 12345;
    for (int i = 0; i < N; i++) {
        t[i] = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, count_cb, NULL, "t");
    }
    long before = 0;
    for (int step = 0; step < 100; step++) {
        if (step == 20) { /* two turns of the wheel */
            before = allocs;
        }
        for (int i = 0; i < N; i++) {
            if (!ql_timer_pending(t[i])) {
                seed = seed * 1103515245u + 12345u;
                ql_timer_mod_in(t[i], (int64_t)(seed % (unsigned)(2 * span / 1000)) * 1000);
            }
        }
        ql_virtual_clock_advance(ctx, span / 10);
        while (ql_context_poll(ctx, false) > 0) {
        }
    }
    QL_CHECK_EQ(allocs - before, 0);
    for (int i = 0; i < N; i++) {
        ql_timer_free(t[i]);
    }
    ql_context_free(ctx);
}

QLTEST_MAIN(QLT(test_bh_schedule_and_dispatch_allocate_nothing),
            QLT(test_timer_mod_del_and_fire_allocate_nothing),
            QLT(test_timers_spread_over_the_wheel_allocate_nothing_after_warm_up))
