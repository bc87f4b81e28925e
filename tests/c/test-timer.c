/* Clocks and timers: ordering, never early, virtual clock, autojump, scale. */
#include "qltest.h"
#include "context-int.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

typedef struct T {
    QLTimer *t;
    int id;
    int count;
    int64_t fired_at;
    void (*extra)(struct T *);
} T;

static int order[64];
static int norder;
static QLContext *g_ctx;

static void t_cb(void *opaque)
{
    T *x = opaque;
    x->count++;
    x->fired_at = ql_clock_get_ns(g_ctx, ql_timer_clock(x->t));
    if (norder < 64) {
        order[norder++] = x->id;
    }
    if (x->extra) {
        x->extra(x);
    }
}

static QLContext *setup(void)
{
    norder = 0;
    g_ctx = ql_context_new();
    return g_ctx;
}

static void test_timer_fires_after_deadline_never_early(void)
{
    QLContext *ctx = setup();
    T a = {.id = 1};
    a.t = ql_timer_new(ctx, QL_CLOCK_REALTIME, t_cb, &a, "a");
    int64_t deadline = ql_clock_get_ns(ctx, QL_CLOCK_REALTIME) + 3000000; /* 3 ms */
    ql_timer_mod(a.t, deadline);
    QL_CHECK(ql_timer_pending(a.t));
    QL_CHECK_EQ(ql_timer_expire_time(a.t), deadline);
    while (a.count == 0) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0);
    }
    QL_CHECK(a.fired_at >= deadline);
    QL_CHECK(!ql_timer_pending(a.t));
    QL_CHECK_EQ(ql_timer_expire_time(a.t), -1);
    ql_timer_free(a.t);
    ql_context_free(ctx);
}

static void test_timer_host_clock_fires(void)
{
    QLContext *ctx = setup();
    T a = {.id = 1};
    a.t = ql_timer_new(ctx, QL_CLOCK_HOST, t_cb, &a, "a");
    ql_timer_mod_in(a.t, 1000000);
    while (a.count == 0) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0);
    }
    ql_timer_free(a.t);
    ql_context_free(ctx);
}

static void test_timer_timeout_rounds_up_to_ms(void)
{
    QL_CHECK_EQ(ql__timeout_ns_to_ms(-1), -1);
    QL_CHECK_EQ(ql__timeout_ns_to_ms(0), 0);
    QL_CHECK_EQ(ql__timeout_ns_to_ms(1), 1);
    QL_CHECK_EQ(ql__timeout_ns_to_ms(999999), 1);
    QL_CHECK_EQ(ql__timeout_ns_to_ms(1000000), 1);
    QL_CHECK_EQ(ql__timeout_ns_to_ms(1000001), 2);
    QL_CHECK_EQ(ql__timeout_ns_to_ms(INT64_MAX), INT32_MAX);
}

static void test_timer_equal_deadlines_fire_in_arming_order(void)
{
    QLContext *ctx = setup();
    T x[6];
    for (int i = 0; i < 6; i++) {
        x[i] = (T){.id = i};
        x[i].t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &x[i], "x");
    }
    int arm[6] = {4, 2, 5, 0, 3, 1};
    for (int i = 0; i < 6; i++) {
        ql_timer_mod(x[arm[i]].t, 1000);
    }
    ql_timer_mod(x[2].t, 1000); /* re-arming moves it to the back */
    ql_virtual_clock_advance(ctx, 1000);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    int want[6] = {4, 5, 0, 3, 1, 2};
    QL_CHECK_EQ(norder, 6);
    for (int i = 0; i < 6; i++) {
        QL_CHECK_EQ(order[i], want[i]);
    }
    for (int i = 0; i < 6; i++) {
        ql_timer_free(x[i].t);
    }
    ql_context_free(ctx);
}

static void test_timer_fires_in_deadline_order(void)
{
    QLContext *ctx = setup();
    T x[5];
    int64_t dl[5] = {50, 10, 40, 20, 30};
    for (int i = 0; i < 5; i++) {
        x[i] = (T){.id = i};
        x[i].t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &x[i], "x");
        ql_timer_mod(x[i].t, dl[i]);
    }
    ql_virtual_clock_advance(ctx, 35);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(norder, 3);
    QL_CHECK_EQ(order[0], 1);
    QL_CHECK_EQ(order[1], 3);
    QL_CHECK_EQ(order[2], 4);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_virtual_clock_set(ctx, 50);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(norder, 5);
    QL_CHECK_EQ(order[3], 2);
    QL_CHECK_EQ(order[4], 0);
    for (int i = 0; i < 5; i++) {
        ql_timer_free(x[i].t);
    }
    ql_context_free(ctx);
}

static void test_timer_del_prevents_fire_and_is_idempotent(void)
{
    QLContext *ctx = setup();
    T a = {.id = 1};
    a.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &a, "a");
    ql_timer_del(a.t); /* not pending: no-op */
    ql_timer_mod(a.t, 10);
    ql_timer_del(a.t);
    ql_timer_del(a.t);
    QL_CHECK(!ql_timer_pending(a.t));
    ql_virtual_clock_advance(ctx, 100);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(a.count, 0);
    ql_timer_free(a.t);
    ql_context_free(ctx);
}

static void test_timer_mod_rearms_and_anticipate_only_moves_earlier(void)
{
    QLContext *ctx = setup();
    T a = {.id = 1};
    a.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &a, "a");
    ql_timer_mod(a.t, 100);
    ql_timer_mod(a.t, 200);
    QL_CHECK_EQ(ql_timer_expire_time(a.t), 200);
    ql_timer_mod_anticipate(a.t, 300);
    QL_CHECK_EQ(ql_timer_expire_time(a.t), 200);
    ql_timer_mod_anticipate(a.t, 150);
    QL_CHECK_EQ(ql_timer_expire_time(a.t), 150);
    ql_timer_del(a.t);
    ql_timer_mod_anticipate(a.t, 500);
    QL_CHECK_EQ(ql_timer_expire_time(a.t), 500);
    ql_timer_mod(a.t, -5); /* negative clamps to 0 */
    QL_CHECK_EQ(ql_timer_expire_time(a.t), 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(a.count, 1);
    ql_timer_free(a.t);
    ql_context_free(ctx);
}

static void test_timer_virtual_clock_moves_only_when_told(void)
{
    QLContext *ctx = setup();
    QL_CHECK_EQ(ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL), 0);
    QL_CHECK_EQ(ql_virtual_clock_advance(ctx, 5), 0);
    QL_CHECK_EQ(ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL), 5);
    QL_CHECK_EQ(ql_virtual_clock_set(ctx, 100), 0);
    QL_CHECK_EQ(ql_virtual_clock_set(ctx, 50), -EINVAL);
    QL_CHECK_EQ(ql_virtual_clock_advance(ctx, -1), -EINVAL);
    QL_CHECK_EQ(ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL), 100);
    T a = {.id = 1};
    a.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &a, "a");
    ql_timer_mod_in(a.t, 10);
    QL_CHECK_EQ(ql_timer_expire_time(a.t), 110);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_virtual_clock_advance(ctx, 9);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_virtual_clock_advance(ctx, 1);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(a.fired_at, 110);
    ql_timer_free(a.t);
    ql_context_free(ctx);
}

static void periodic(T *x)
{
    if (x->count < 60) {
        ql_timer_mod_in(x->t, 1000000000LL); /* 1 s of virtual time */
    }
}

static void test_timer_autojump_runs_a_minute_instantly(void)
{
    QLContext *ctx = setup();
    ql_virtual_clock_set_autojump(ctx, true);
    QL_CHECK(ql_virtual_clock_get_autojump(ctx));
    T a = {.id = 1, .extra = periodic};
    a.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &a, "tick");
    ql_timer_mod_in(a.t, 1000000000LL);
    while (a.count < 60) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0);
    }
    QL_CHECK_EQ(ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL), 60 * 1000000000LL);
    QL_CHECK(!ql_timer_pending(a.t));
    ql_timer_free(a.t);
    ql_context_free(ctx);
}

static void test_timer_autojump_does_not_jump_past_realtime_timer(void)
{
    QLContext *ctx = setup();
    ql_virtual_clock_set_autojump(ctx, true);
    T v = {.id = 1}, r = {.id = 2};
    v.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &v, "v");
    r.t = ql_timer_new(ctx, QL_CLOCK_REALTIME, t_cb, &r, "r");
    ql_timer_mod(v.t, 3600 * 1000000000LL); /* an hour of virtual time */
    ql_timer_mod_in(r.t, 2000000);          /* 2 ms real */
    while (r.count == 0) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0);
    }
    QL_CHECK_EQ(v.count, 0);
    QL_CHECK_EQ(ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL), 0);
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1); /* now it jumps */
    QL_CHECK_EQ(v.count, 1);
    ql_timer_free(v.t);
    ql_timer_free(r.t);
    ql_context_free(ctx);
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int64_t last_fire;
static long fired;
static int out_of_order;

static void million_cb(void *opaque)
{
    QLTimer *t = *(QLTimer **)opaque;
    (void)t;
    int64_t now = ql_clock_get_ns(g_ctx, QL_CLOCK_VIRTUAL);
    if (now < last_fire) {
        out_of_order = 1;
    }
    last_fire = now;
    fired++;
}

static void test_timer_one_million_pending(void)
{
    QLContext *ctx = setup();
    const long n = 1000000;
    QLTimer **ts = malloc(n * sizeof *ts);
    QL_CHECK(ts);
    for (long i = 0; i < n; i++) {
        ts[i] = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, million_cb, &ts[i], NULL);
        QL_CHECK_EQ(ql_timer_mod(ts[i], (int64_t)(rng() % 1000000000ULL) + 1), 0);
    }
    /* delete every tenth, re-arm every seventh (O(log n) each) */
    long expected = 0;
    for (long i = 0; i < n; i++) {
        if (i % 10 == 0) {
            ql_timer_del(ts[i]);
        } else {
            if (i % 7 == 0) {
                ql_timer_mod(ts[i], (int64_t)(rng() % 1000000000ULL) + 1);
            }
            expected++;
        }
    }
    ql_virtual_clock_set_autojump(ctx, true);
    fired = 0;
    last_fire = 0;
    out_of_order = 0;
    while (fired < expected) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0);
    }
    QL_CHECK_EQ(fired, expected);
    QL_CHECK_EQ(out_of_order, 0);
    QL_CHECK_EQ(ctx->heap[QL_CLOCK_VIRTUAL].n, 0);
    for (long i = 0; i < n; i++) {
        ql_timer_free(ts[i]);
    }
    free(ts);
    ql_context_free(ctx);
}

static void rearm_now(T *x)
{
    if (x->count < 3) {
        ql_timer_mod(x->t, ql_clock_get_ns(g_ctx, QL_CLOCK_VIRTUAL)); /* due now */
    }
}

static void test_timer_rearmed_due_in_own_callback_runs_next_poll(void)
{
    QLContext *ctx = setup();
    T a = {.id = 1, .extra = rearm_now};
    a.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &a, "a");
    ql_timer_mod(a.t, 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(a.count, 1);
    QL_CHECK(ql_timer_pending(a.t));
    /* due, so a blocking poll does not sleep */
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
    QL_CHECK_EQ(a.count, 2);
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
    QL_CHECK_EQ(a.count, 3);
    QL_CHECK(!ql_timer_pending(a.t));
    ql_timer_free(a.t);
    ql_context_free(ctx);
}

static void free_self(T *x)
{
    ql_timer_free(x->t);
    x->t = NULL;
}

static void test_timer_free_from_own_callback(void)
{
    QLContext *ctx = setup();
    T a = {.id = 1, .extra = free_self};
    a.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &a, "a");
    ql_timer_mod(a.t, 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK(a.t == NULL);
    ql_context_free(ctx);
}

static T pair[2];

static void del_other(T *x)
{
    ql_timer_del(pair[1 - x->id].t);
}

static void test_timer_del_other_from_callback(void)
{
    QLContext *ctx = setup();
    for (int i = 0; i < 2; i++) {
        pair[i] = (T){.id = i, .extra = del_other};
        pair[i].t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &pair[i], "p");
        ql_timer_mod(pair[i].t, 10);
    }
    ql_virtual_clock_advance(ctx, 10);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(pair[0].count, 1);
    QL_CHECK_EQ(pair[1].count, 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_timer_free(pair[0].t);
    ql_timer_free(pair[1].t);
    ql_context_free(ctx);
}

static void mod_other_later(T *x)
{
    if (x->id == 0) {
        ql_timer_mod(pair[1].t, 20);
    }
}

static void test_timer_mod_other_from_callback(void)
{
    QLContext *ctx = setup();
    for (int i = 0; i < 2; i++) {
        pair[i] = (T){.id = i, .extra = mod_other_later};
        pair[i].t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &pair[i], "p");
        ql_timer_mod(pair[i].t, 10);
    }
    ql_virtual_clock_advance(ctx, 10);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(pair[1].count, 0);
    QL_CHECK_EQ(ql_timer_expire_time(pair[1].t), 20);
    ql_virtual_clock_advance(ctx, 10);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(pair[1].count, 1);
    ql_timer_free(pair[0].t);
    ql_timer_free(pair[1].t);
    ql_context_free(ctx);
}

static void *arm_soon(void *opaque)
{
    T *x = opaque;
    usleep(20000);
    ql_timer_mod(x->t, ql_clock_get_ns(g_ctx, QL_CLOCK_REALTIME));
    return NULL;
}

static void test_timer_new_earliest_from_thread_wakes_poll(void)
{
    QLContext *ctx = setup();
    T far = {.id = 1}, near = {.id = 2};
    far.t = ql_timer_new(ctx, QL_CLOCK_REALTIME, t_cb, &far, "far");
    near.t = ql_timer_new(ctx, QL_CLOCK_REALTIME, t_cb, &near, "near");
    ql_timer_mod_in(far.t, 3600 * 1000000000LL); /* sleeping an hour if lost */
    pthread_t th;
    pthread_create(&th, NULL, arm_soon, &near);
    while (near.count == 0) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0);
    }
    pthread_join(th, NULL);
    QL_CHECK_EQ(far.count, 0);
    ql_timer_free(far.t);
    ql_timer_free(near.t);
    ql_context_free(ctx);
}

static void *advance_soon(void *opaque)
{
    usleep(20000);
    ql_virtual_clock_advance(opaque, 100);
    return NULL;
}

static void test_timer_virtual_advance_from_thread_wakes_poll(void)
{
    QLContext *ctx = setup();
    T a = {.id = 1};
    a.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &a, "a");
    ql_timer_mod(a.t, 100);
    pthread_t th;
    pthread_create(&th, NULL, advance_soon, ctx);
    while (a.count == 0) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0);
    }
    pthread_join(th, NULL);
    ql_timer_free(a.t);
    ql_context_free(ctx);
}

static void test_timer_mod_does_not_allocate_in_steady_state(void)
{
    QLContext *ctx = setup();
    QLTimer *ts[100];
    for (int i = 0; i < 100; i++) {
        ts[i] = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, NULL, NULL);
        ql_timer_mod(ts[i], i);
    }
    QLTimerSlot *arr = ctx->heap[QL_CLOCK_VIRTUAL].a;
    size_t cap = ctx->heap[QL_CLOCK_VIRTUAL].cap;
    for (int r = 0; r < 1000; r++) {
        ql_timer_mod(ts[r % 100], (int64_t)(rng() % 1000));
        if (r % 3 == 0) {
            ql_timer_del(ts[(r * 7) % 100]);
        }
    }
    QL_CHECK(ctx->heap[QL_CLOCK_VIRTUAL].a == arr);
    QL_CHECK_EQ(ctx->heap[QL_CLOCK_VIRTUAL].cap, cap);
    for (int i = 0; i < 100; i++) {
        ql_timer_free(ts[i]);
    }
    ql_context_free(ctx);
}

static void test_timer_context_free_detaches_timers(void)
{
    QLContext *ctx = setup();
    T a = {.id = 1};
    a.t = ql_timer_new(ctx, QL_CLOCK_REALTIME, t_cb, &a, "a");
    ql_timer_mod_in(a.t, 1000);
    ql_context_free(ctx);
    QL_CHECK(!ql_timer_pending(a.t));
    QL_CHECK_EQ(ql_timer_mod(a.t, 5), -EINVAL);
    ql_timer_del(a.t);
    ql_timer_free(a.t);
}

static void test_timer_clocks_run_realtime_virtual_host_order(void)
{
    QLContext *ctx = setup();
    T h = {.id = 2}, v = {.id = 1}, r = {.id = 0};
    h.t = ql_timer_new(ctx, QL_CLOCK_HOST, t_cb, &h, "h");
    v.t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &v, "v");
    r.t = ql_timer_new(ctx, QL_CLOCK_REALTIME, t_cb, &r, "r");
    ql_timer_mod(h.t, 0);
    ql_timer_mod(v.t, 0);
    ql_timer_mod(r.t, 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(norder, 3);
    QL_CHECK_EQ(order[0], 0);
    QL_CHECK_EQ(order[1], 1);
    QL_CHECK_EQ(order[2], 2);
    ql_timer_free(h.t);
    ql_timer_free(v.t);
    ql_timer_free(r.t);
    ql_context_free(ctx);
}

static void stop_in_timer(T *x)
{
    (void)x;
    ql_context_stop_dispatch(g_ctx);
}

static void test_timer_stop_dispatch_leaves_rest_in_heap(void)
{
    QLContext *ctx = setup();
    T x[3];
    for (int i = 0; i < 3; i++) {
        x[i] = (T){.id = i, .extra = stop_in_timer};
        x[i].t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, t_cb, &x[i], "x");
        ql_timer_mod(x[i].t, i);
    }
    ql_virtual_clock_set(ctx, 10);
    for (int i = 0; i < 3; i++) {
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(norder, i + 1);
        QL_CHECK_EQ(order[i], i);
    }
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    for (int i = 0; i < 3; i++) {
        ql_timer_free(x[i].t);
    }
    ql_context_free(ctx);
}

QLTEST_MAIN(QLT(test_timer_fires_after_deadline_never_early),
            QLT(test_timer_host_clock_fires),
            QLT(test_timer_timeout_rounds_up_to_ms),
            QLT(test_timer_equal_deadlines_fire_in_arming_order),
            QLT(test_timer_fires_in_deadline_order),
            QLT(test_timer_del_prevents_fire_and_is_idempotent),
            QLT(test_timer_mod_rearms_and_anticipate_only_moves_earlier),
            QLT(test_timer_virtual_clock_moves_only_when_told),
            QLT(test_timer_autojump_runs_a_minute_instantly),
            QLT(test_timer_autojump_does_not_jump_past_realtime_timer),
            QLT(test_timer_one_million_pending),
            QLT(test_timer_rearmed_due_in_own_callback_runs_next_poll),
            QLT(test_timer_free_from_own_callback),
            QLT(test_timer_del_other_from_callback),
            QLT(test_timer_mod_other_from_callback),
            QLT(test_timer_new_earliest_from_thread_wakes_poll),
            QLT(test_timer_virtual_advance_from_thread_wakes_poll),
            QLT(test_timer_mod_does_not_allocate_in_steady_state),
            QLT(test_timer_context_free_detaches_timers),
            QLT(test_timer_clocks_run_realtime_virtual_host_order),
            QLT(test_timer_stop_dispatch_leaves_rest_in_heap))
