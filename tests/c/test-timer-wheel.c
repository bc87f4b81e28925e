/* Timer wheel + heap (timer.c): exact deadline order and FIFO among equal
 * deadlines across buckets, the cursor, far deadlines and overflow, re-arm
 * and del of timers in the wheel, mod from other threads, one million
 * pending timers.  All on the virtual clock: no timing assumptions. */
#include "qltest.h"
#include "context-int.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TICK (1LL << QL_WHEEL_SHIFT)
#define SPAN (TICK * QL_WHEEL_SIZE)

typedef struct W {
    QLTimer *t;
    int64_t expire;   /* expected deadline, -1 if not armed */
    uint64_t order;   /* arming order of that deadline */
} W;

static QLContext *g_ctx;
static int64_t last_expire;
static uint64_t last_order;
static long fired, early, misordered;
static W *cur_base;

static void w_cb(void *opaque)
{
    W *w = opaque;
    int64_t now = ql_clock_get_ns(g_ctx, QL_CLOCK_VIRTUAL);
    if (w->expire > now) {
        early++;
    }
    if (w->expire < last_expire || (w->expire == last_expire && w->order < last_order)) {
        misordered++;
    }
    last_expire = w->expire;
    last_order = w->order;
    w->expire = -1;
    fired++;
}

static uint64_t arm_counter;

static void arm(W *w, int64_t expire)
{
    QL_CHECK_EQ(ql_timer_mod(w->t, expire), 0);
    w->expire = expire < 0 ? 0 : expire;
    w->order = arm_counter++;
}

static QLContext *setup(void)
{
    g_ctx = ql_context_new();
    fired = early = misordered = 0;
    last_expire = -1;
    last_order = 0;
    arm_counter = 0;
    return g_ctx;
}

static W *make(QLContext *ctx, int n)
{
    W *ws = calloc((size_t)n, sizeof *ws);
    for (int i = 0; i < n; i++) {
        ws[i].t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, w_cb, &ws[i], "w");
        ws[i].expire = -1;
    }
    cur_base = ws;
    return ws;
}

static void destroy(QLContext *ctx, W *ws, int n)
{
    for (int i = 0; i < n; i++) {
        ql_timer_free(ws[i].t);
    }
    free(ws);
    ql_context_free(ctx);
}

/* Advance the virtual clock to `to` in steps, polling; the order check
 * spans the whole run (last_* reset only by setup). */
static void run_to(QLContext *ctx, int64_t to, int64_t step)
{
    int64_t now = ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL);
    while (now < to) {
        now = now + step < to ? now + step : to;
        ql_virtual_clock_set(ctx, now);
        while (ql_context_poll(ctx, false) > 0) {
        }
    }
}

/* Armed timers per the model; -1 if ql_timer_pending disagrees with it. */
static int pending(W *ws, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        k += ws[i].expire >= 0;
        if (ql_timer_pending(ws[i].t) != (ws[i].expire >= 0)) {
            return -1;
        }
    }
    return k;
}

/* Equal deadlines in one bucket and across buckets fire in arming order. */
static void test_wheel_equal_deadlines_fire_in_arming_order(void)
{
    QLContext *ctx = setup();
    enum { N = 600 };
    W *ws = make(ctx, N);
    ql_virtual_clock_set(ctx, 5 * TICK + 17);
    for (int i = 0; i < N; i++) {
        /* 6 distinct deadlines: now, same tick, next ticks, far */
        static const int64_t d[] = {0, 3, TICK, 7 * TICK + 1, SPAN + 5, 3 * TICK};
        arm(&ws[i], 5 * TICK + 17 + d[i % 6]);
    }
    run_to(ctx, 5 * TICK + 17 + SPAN + 5, TICK / 3);
    QL_CHECK_EQ(fired, N);
    QL_CHECK_EQ(early, 0);
    QL_CHECK_EQ(misordered, 0);
    destroy(ctx, ws, N);
}

/* Random arms, re-arms (wheel -> wheel, wheel -> heap, heap -> wheel) and
 * dels, interleaved with runs: order, never early, pending state. */
static void test_wheel_random_mod_del_matches_model(void)
{
    QLContext *ctx = setup();
    enum { N = 3000 };
    W *ws = make(ctx, N);
    srand(12345);
    for (int round = 0; round < 60; round++) {
        int64_t now = ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL);
        for (int k = 0; k < N / 2; k++) {
            W *w = &ws[rand() % N];
            int op = rand() % 10;
            if (op < 2) {
                ql_timer_del(w->t);
                w->expire = -1;
            } else {
                int64_t d;
                switch (op) {
                case 2: d = -(int64_t)(rand() % 1000); break;          /* past */
                case 3: d = rand() % (TICK * 2); break;                 /* near */
                case 4: d = SPAN - TICK + rand() % (2 * TICK); break;   /* wheel edge */
                case 5: d = SPAN * (1 + rand() % 4); break;             /* far */
                case 6: d = (int64_t)(rand() % 8) * TICK; break;        /* tick boundaries */
                default: d = (int64_t)rand() % (SPAN / 2); break;
                }
                if (op == 9 && w->expire >= 0) {
                    int64_t want = now + d < 0 ? 0 : now + d;
                    ql_timer_mod_anticipate(w->t, want);
                    if (want < w->expire) {
                        w->expire = want < 0 ? 0 : want;
                        w->order = arm_counter++;
                    }
                    continue;
                }
                arm(w, now + d);
            }
        }
        /* Everything armed so far is checked against the model: the run
         * order is checked by w_cb; pending() checks ql_timer_pending. */
        int armed_now = pending(ws, N);
        QL_CHECK(armed_now >= 0);
        QL_CHECK_EQ(ctx->timers_armed, (size_t)armed_now);
        last_expire = -1; /* new arms may be earlier than the last fired */
        run_to(ctx, now + (int64_t)(rand() % 3) * SPAN / 2 + TICK, TICK / 2 + rand() % TICK);
        QL_CHECK_EQ(early, 0);
        QL_CHECK_EQ(misordered, 0);
    }
    int64_t now = ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL);
    last_expire = -1;
    run_to(ctx, now + 6 * SPAN, SPAN / 7);
    QL_CHECK_EQ(pending(ws, N), 0);
    QL_CHECK_EQ(ctx->timers_armed, 0); /* the count that lets polls skip timers */
    QL_CHECK_EQ(early, 0);
    QL_CHECK_EQ(misordered, 0);
    destroy(ctx, ws, N);
}

/* Deadlines near INT64_MAX and 0; a jump of the clock over the whole wheel. */
static void test_wheel_extreme_deadlines_and_big_jumps(void)
{
    QLContext *ctx = setup();
    enum { N = 8 };
    W *ws = make(ctx, N);
    arm(&ws[0], INT64_MAX);
    arm(&ws[1], INT64_MAX - 1);
    arm(&ws[2], 0);
    arm(&ws[3], TICK + 1);
    arm(&ws[4], 100 * SPAN);
    QL_CHECK_EQ(ql_timer_mod_in(ws[5].t, INT64_MAX), 0); /* saturates */
    ws[5].expire = INT64_MAX;
    ws[5].order = arm_counter++;
    while (ql_context_poll(ctx, false) > 0) {
    }
    QL_CHECK_EQ(fired, 1);
    ql_virtual_clock_set(ctx, 100 * SPAN); /* one jump over many wheels */
    while (ql_context_poll(ctx, false) > 0) {
    }
    QL_CHECK_EQ(fired, 3);
    arm(&ws[6], 100 * SPAN + TICK * 3);
    arm(&ws[7], 100 * SPAN + TICK * 2);
    ql_virtual_clock_set(ctx, INT64_MAX - 1);
    while (ql_context_poll(ctx, false) > 0) {
    }
    QL_CHECK_EQ(fired, 6);
    ql_virtual_clock_set(ctx, INT64_MAX);
    while (ql_context_poll(ctx, false) > 0) {
    }
    QL_CHECK_EQ(fired, 8);
    QL_CHECK_EQ(early, 0);
    QL_CHECK_EQ(misordered, 0);
    destroy(ctx, ws, N);
}

/* A timer armed in the wheel that is earlier than everything else wakes a
 * sleeping poll's timeout computation: the timeout is its deadline. */
static void test_wheel_timeout_is_the_earliest_deadline(void)
{
    QLContext *ctx = setup();
    enum { N = 4 };
    W *ws = make(ctx, N);
    ql_virtual_clock_set(ctx, 10 * TICK);
    arm(&ws[0], 10 * TICK + 50 * TICK);
    arm(&ws[1], 10 * TICK + 20 * TICK + 5);
    arm(&ws[2], 10 * TICK + 30 * TICK);
    int64_t vd;
    ql__timers_timeout(ctx, &vd);
    QL_CHECK_EQ(vd, 10 * TICK + 20 * TICK + 5);
    arm(&ws[3], 10 * TICK + 2 * TICK);
    ql__timers_timeout(ctx, &vd);
    QL_CHECK_EQ(vd, 10 * TICK + 2 * TICK);
    ql_timer_del(ws[3].t);
    ws[3].expire = -1;
    ql__timers_timeout(ctx, &vd);
    QL_CHECK_EQ(vd, 10 * TICK + 20 * TICK + 5);
    ql_timer_del(ws[1].t);
    ws[1].expire = -1;
    ql__timers_timeout(ctx, &vd);
    QL_CHECK_EQ(vd, 10 * TICK + 30 * TICK);
    run_to(ctx, 10 * TICK + 60 * TICK, TICK);
    QL_CHECK_EQ(fired, 2);
    QL_CHECK_EQ(misordered, 0);
    destroy(ctx, ws, N);
}

/* A callback deletes and re-arms timers of the bucket being run. */
static W *del_victims;
static void del_cb(void *opaque)
{
    W *w = opaque;
    w_cb(w);
    W *v = &del_victims[(w - del_victims + 1) % 64];
    ql_timer_del(v->t);
    v->expire = -1;
}

static void test_wheel_del_and_rearm_during_run(void)
{
    QLContext *ctx = setup();
    enum { N = 64 };
    W *ws = calloc(N, sizeof *ws);
    del_victims = ws;
    for (int i = 0; i < N; i++) {
        ws[i].t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, i % 2 ? del_cb : w_cb, &ws[i], "d");
        ws[i].expire = -1;
    }
    for (int i = 0; i < N; i++) {
        arm(&ws[i], TICK * (1 + i % 4) + i);
    }
    run_to(ctx, TICK * 8, TICK / 2);
    QL_CHECK_EQ(early, 0);
    QL_CHECK_EQ(misordered, 0);
    QL_CHECK_EQ(pending(ws, N), 0);
    QL_CHECK(fired < N); /* some were deleted before their turn */
    destroy(ctx, ws, N);
}

/* Other threads re-arm and delete timers (wheel and heap) while the home
 * thread runs them; at the end every timer armed last fires exactly once. */
enum { MT_N = 2000, MT_THREADS = 2 };
static W mt_ws[MT_N];
static pthread_mutex_t mt_lock = PTHREAD_MUTEX_INITIALIZER;
static int mt_count[MT_N];

static void mt_cb(void *opaque)
{
    W *w = opaque;
    pthread_mutex_lock(&mt_lock);
    mt_count[w - mt_ws]++;
    pthread_mutex_unlock(&mt_lock);
}

static void *mt_thread(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int k = 0; k < 20000; k++) {
        W *w = &mt_ws[rand_r(&seed) % MT_N];
        if (rand_r(&seed) % 4 == 0) {
            ql_timer_del(w->t);
        } else {
            ql_timer_mod_in(w->t, (int64_t)(rand_r(&seed) % (2 * SPAN)));
        }
    }
    return NULL;
}

static void test_wheel_mod_and_del_from_other_threads(void)
{
    QLContext *ctx = setup();
    for (int i = 0; i < MT_N; i++) {
        mt_ws[i].t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, mt_cb, &mt_ws[i], "mt");
    }
    pthread_t th[MT_THREADS];
    for (uintptr_t i = 0; i < MT_THREADS; i++) {
        pthread_create(&th[i], NULL, mt_thread, (void *)(i + 1));
    }
    for (int k = 0; k < 2000; k++) {
        ql_virtual_clock_advance(ctx, TICK / 3);
        ql_context_poll(ctx, false);
    }
    for (int i = 0; i < MT_THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    memset(mt_count, 0, sizeof mt_count);
    int armed = 0;
    for (int i = 0; i < MT_N; i++) {
        armed += ql_timer_pending(mt_ws[i].t);
    }
    ql_virtual_clock_advance(ctx, 3 * SPAN);
    while (ql_context_poll(ctx, false) > 0) {
    }
    int ran = 0;
    for (int i = 0; i < MT_N; i++) {
        QL_CHECK(mt_count[i] <= 1);
        QL_CHECK(!ql_timer_pending(mt_ws[i].t));
        ran += mt_count[i];
    }
    QL_CHECK_EQ(ran, armed);
    QL_CHECK_EQ(ctx->timers_armed, 0);
    for (int i = 0; i < MT_N; i++) {
        ql_timer_free(mt_ws[i].t);
    }
    ql_context_free(ctx);
}

/* One million pending timers spread over and beyond the wheel. */
static void test_wheel_one_million_pending(void)
{
    QLContext *ctx = setup();
    enum { N = 1000000 };
    W *ws = make(ctx, N);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < N; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        arm(&ws[i], (int64_t)(x % (uint64_t)(2 * SPAN)));
    }
    QL_CHECK_EQ(pending(ws, N), N);
    run_to(ctx, 2 * SPAN, TICK * 5 + 3);
    QL_CHECK_EQ(fired, N);
    QL_CHECK_EQ(early, 0);
    QL_CHECK_EQ(misordered, 0);
    destroy(ctx, ws, N);
}

/* ql_timer_init/deinit: a timer embedded in a caller's object. */
typedef struct Embedded {
    int fired;
    _Alignas(max_align_t) unsigned char storage[256];
} Embedded;

static void embedded_cb(void *opaque)
{
    Embedded *e = opaque;
    e->fired++;
    ql_timer_deinit((QLTimer *)e->storage); /* allowed from its own callback */
}

static void test_timer_init_and_deinit_embedded_storage(void)
{
    QLContext *ctx = setup();
    QL_CHECK(ql_timer_sizeof() <= sizeof(((Embedded *)0)->storage));
    Embedded a = {0}, b = {0};
    QLTimer *ta = (QLTimer *)a.storage, *tb = (QLTimer *)b.storage;
    QL_CHECK_EQ(ql_timer_init(ta, NULL, QL_CLOCK_VIRTUAL, embedded_cb, &a, "a"), -EINVAL);
    QL_CHECK_EQ(ql_timer_init(ta, ctx, QL_CLOCK_MAX, embedded_cb, &a, "a"), -EINVAL);
    QL_CHECK_EQ(ql_timer_init(ta, ctx, QL_CLOCK_VIRTUAL, embedded_cb, &a, "a"), 0);
    QL_CHECK_EQ(ql_timer_init(tb, ctx, QL_CLOCK_VIRTUAL, embedded_cb, &b, "b"), 0);
    QL_CHECK(!ql_timer_pending(ta));
    QL_CHECK_EQ(ql_timer_mod(ta, 5), 0);
    QL_CHECK_EQ(ql_timer_mod(tb, 3 * TICK), 0); /* in the wheel */
    QL_CHECK(ql_timer_pending(tb));
    ql_timer_deinit(tb);                        /* while armed: disarmed */
    QL_CHECK(!ql_timer_pending(tb));
    ql_virtual_clock_set(ctx, 4 * TICK);
    while (ql_context_poll(ctx, false) > 0) {
    }
    QL_CHECK_EQ(a.fired, 1);
    QL_CHECK_EQ(b.fired, 0);
    /* storage reusable after deinit */
    QL_CHECK_EQ(ql_timer_init(tb, ctx, QL_CLOCK_VIRTUAL, embedded_cb, &b, "b"), 0);
    QL_CHECK_EQ(ql_timer_mod_in(tb, 1), 0);
    ql_virtual_clock_advance(ctx, 1);
    while (ql_context_poll(ctx, false) > 0) {
    }
    QL_CHECK_EQ(b.fired, 1);
    ql_context_free(ctx);
}

QLTEST_MAIN(QLT(test_timer_init_and_deinit_embedded_storage),
            QLT(test_wheel_equal_deadlines_fire_in_arming_order),
            QLT(test_wheel_random_mod_del_matches_model),
            QLT(test_wheel_extreme_deadlines_and_big_jumps),
            QLT(test_wheel_timeout_is_the_earliest_deadline),
            QLT(test_wheel_del_and_rearm_during_run),
            QLT(test_wheel_mod_and_del_from_other_threads),
            QLT(test_wheel_one_million_pending))
