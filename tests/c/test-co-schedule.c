/* Coroutines and contexts: ql_co_schedule, ql_co_enter/ql_co_wake across
 * threads, CoMutex hand-off between threads, sleep on a context clock.
 * Run once per switch backend. */
#include "qltest.h"
#include "qloop/context.h"
#include "qloop/coroutine.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

static char order[256];
static size_t norder;

static void mark(char c)
{
    if (norder < sizeof order - 1) {
        order[norder++] = c;
        order[norder] = 0;
    }
}

static void reset_order(void)
{
    norder = 0;
    order[0] = 0;
}

static pid_t tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

static void co_mark(void *opaque)
{
    mark(*(char *)opaque);
}

/* Drain pending work without sleeping. */
static void poll_all(QLContext *ctx)
{
    while (ql_context_poll(ctx, false) > 0) {
    }
}

/* ---- ql_co_schedule --------------------------------------------------- */

static void test_co_schedule_runs_in_next_poll_in_order(void)
{
    QLContext *ctx = ql_context_new();
    char names[] = "abc";

    reset_order();
    ql_context_set_current(ctx);
    poll_all(ctx);
    for (int i = 0; i < 3; i++) {
        QL_CHECK_EQ(ql_co_schedule(ctx, ql_coroutine_create(co_mark, &names[i])), 0);
    }
    QL_CHECK(strcmp(order, "") == 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK(strcmp(order, "abc") == 0);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

static void test_co_schedule_twice_is_ealready_and_enter_refused(void)
{
    QLContext *ctx = ql_context_new();
    char a = 'a';
    QLCoroutine *co = ql_coroutine_create(co_mark, &a);

    reset_order();
    ql_context_set_current(ctx);
    QL_CHECK_EQ(ql_co_schedule(ctx, co), 0);
    QL_CHECK_EQ(ql_co_schedule(ctx, co), -EALREADY);
    QL_CHECK_EQ(ql_coroutine_enter(co), -EALREADY);
    QL_CHECK(strcmp(order, "") == 0);
    poll_all(ctx);
    QL_CHECK(strcmp(order, "a") == 0);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

/* A coroutine that reschedules itself runs again in the next poll. */
static void co_reschedule_self(void *opaque)
{
    int *n = opaque;
    for (int i = 0; i < 3; i++) {
        (*n)++;
        ql_co_schedule(ql_context_current(), ql_coroutine_self());
        ql_coroutine_yield();
    }
}

static void test_co_schedule_self_then_yield_resumes_next_poll(void)
{
    QLContext *ctx = ql_context_new();
    int n = 0;

    ql_context_set_current(ctx);
    ql_coroutine_enter(ql_coroutine_create(co_reschedule_self, &n));
    QL_CHECK_EQ(n, 1);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(n, 2);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(n, 3);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1); /* finishes */
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

/* ---- across threads --------------------------------------------------- */

struct enter_arg {
    QLContext *ctx;
    QLCoroutine *co;
    int ret;
};

static void *co_enter_thread(void *opaque)
{
    struct enter_arg *a = opaque;
    a->ret = ql_co_enter(a->ctx, a->co);
    return NULL;
}

static pid_t ran_tid;

static void co_record_tid(void *opaque)
{
    (void)opaque;
    ran_tid = tid();
}

static void test_co_enter_from_thread_without_context_schedules(void)
{
    QLContext *ctx = ql_context_new();
    struct enter_arg a = {ctx, ql_coroutine_create(co_record_tid, NULL), 1};
    pthread_t th;

    ran_tid = 0;
    ql_context_set_current(ctx);
    pthread_create(&th, NULL, co_enter_thread, &a);
    pthread_join(th, NULL);
    QL_CHECK_EQ(a.ret, 0);
    QL_CHECK_EQ(ran_tid, 0); /* not run by the other thread */
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(ran_tid, tid());
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

/* A worker thread runs its own context; a coroutine of it is woken from
 * the main thread and must run in the worker. */
struct worker {
    QLContext *ctx;
    QLCoroutine *co;
    int ready;          /* atomic: co is suspended and published */
    int done;           /* atomic */
    int woken;          /* atomic: the waker's ql_co_wake() has returned */
    pid_t ran_in;
    pid_t worker_tid;
};

static void co_wait_for_wake(void *opaque)
{
    struct worker *w = opaque;
    ql_coroutine_yield();
    w->ran_in = tid();
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;

    w->worker_tid = tid();
    w->ctx = ql_context_new();
    ql_context_set_current(w->ctx);
    w->co = ql_coroutine_create(co_wait_for_wake, w);
    ql_coroutine_enter(w->co);
    __atomic_store_n(&w->ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) {
        ql_context_poll(w->ctx, true);
    }
    /* The coroutine can run (and set done) while the waker is still inside
     * ql_co_wake(), touching the context's scheduling BH: the context may
     * only be freed once that call has returned. */
    while (!__atomic_load_n(&w->woken, __ATOMIC_ACQUIRE)) {
        sched_yield();
    }
    ql_context_set_current(NULL);
    ql_context_free(w->ctx);
    return NULL;
}

static void test_co_wake_from_other_thread_runs_in_its_context_thread(void)
{
    struct worker w = {0};
    pthread_t th;

    pthread_create(&th, NULL, worker_main, &w);
    while (!__atomic_load_n(&w.ready, __ATOMIC_ACQUIRE)) {
        sched_yield();
    }
    QL_CHECK_EQ(ql_co_wake(w.co), 0);
    __atomic_store_n(&w.woken, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    QL_CHECK_EQ(w.ran_in, w.worker_tid);
    QL_CHECK(w.ran_in != tid());
}

/* Two threads, each with a context and coroutines contending on one
 * CoMutex; the critical section goes back to the loop while holding it. */
#define XT_COS 4
#define XT_ROUNDS 200

static QLCoMutex *xt_mutex;
static long xt_counter;
static int xt_errors;
static int xt_threads_done;

static void co_xt_locker(void *opaque)
{
    int *finished = opaque;

    for (int i = 0; i < XT_ROUNDS; i++) {
        if (ql_co_mutex_lock(xt_mutex) != 0) {
            __atomic_fetch_add(&xt_errors, 1, __ATOMIC_RELAXED);
        }
        long v = xt_counter;
        /* Back to the loop while holding the lock. */
        ql_co_schedule(ql_context_current(), ql_coroutine_self());
        ql_coroutine_yield();
        xt_counter = v + 1;
        if (ql_co_mutex_unlock(xt_mutex) != 0) {
            __atomic_fetch_add(&xt_errors, 1, __ATOMIC_RELAXED);
        }
    }
    (*finished)++;
}

static void *xt_thread(void *opaque)
{
    (void)opaque;
    QLContext *ctx = ql_context_new();
    int finished = 0;

    ql_context_set_current(ctx);
    for (int i = 0; i < XT_COS; i++) {
        ql_coroutine_enter(ql_coroutine_create(co_xt_locker, &finished));
    }
    while (finished < XT_COS) {
        ql_context_poll(ctx, true);
    }
    /* The other thread may still be scheduling into our context (a lock
     * hand-off in flight) until all its coroutines are done too. */
    __atomic_fetch_add(&xt_threads_done, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&xt_threads_done, __ATOMIC_ACQUIRE) < 2) {
        sched_yield();
    }
    ql_context_set_current(NULL);
    ql_context_free(ctx);
    return NULL;
}

static void test_comutex_hands_off_across_threads(void)
{
    pthread_t th[2];

    xt_mutex = ql_co_mutex_new();
    xt_counter = 0;
    xt_errors = 0;
    xt_threads_done = 0;
    for (int i = 0; i < 2; i++) {
        pthread_create(&th[i], NULL, xt_thread, NULL);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
    }
    QL_CHECK_EQ(xt_errors, 0);
    QL_CHECK_EQ(xt_counter, 2 * XT_COS * XT_ROUNDS);
    QL_CHECK(!ql_co_mutex_locked(xt_mutex));
    ql_co_mutex_free(xt_mutex);
}

/* Coroutines moving from one thread's context to another's, many times:
 * a coroutine may only be scheduled into another thread's context once it
 * has yielded, so it asks its current context (a oneshot there, which runs
 * after the yield) to do the scheduling.  Each hop resumes the coroutine in
 * the target context and none is lost. */
#define HOP_THREADS 3
#define HOP_COS 4
#define HOP_ROUNDS 300

struct hop {
    QLCoroutine *co;
    QLContext *to;
};

static QLContext *hop_ctx[HOP_THREADS];
static int hop_finished;
static int hop_errors;
static long hop_runs[HOP_THREADS];

static pid_t hop_tid[HOP_THREADS];
static int hop_ready;

/* A hopping coroutine is done; the last one wakes every thread's poll. */
static void hop_finish(void)
{
    if (__atomic_add_fetch(&hop_finished, 1, __ATOMIC_ACQ_REL) == HOP_THREADS * HOP_COS) {
        for (int t = 0; t < HOP_THREADS; t++) {
            ql_context_notify(hop_ctx[t]);
        }
    }
}

static void hop_schedule_bh(void *opaque)
{
    struct hop *h = opaque;

    if (ql_co_schedule(h->to, h->co) != 0) {
        __atomic_fetch_add(&hop_errors, 1, __ATOMIC_RELAXED);
    }
}

static void co_hopper(void *opaque)
{
    int at = (int)(intptr_t)opaque;
    struct hop h = {ql_coroutine_self(), NULL};

    for (int i = 0; i < HOP_ROUNDS; i++) {
        int to = (at + 1 + i % 2) % HOP_THREADS;
        h.to = hop_ctx[to];
        ql_bh_schedule_oneshot(ql_context_current(), hop_schedule_bh, &h, "hop");
        ql_coroutine_yield();
        if (ql_context_current() != hop_ctx[to]) {
            __atomic_fetch_add(&hop_errors, 1, __ATOMIC_RELAXED);
        }
        __atomic_fetch_add(&hop_runs[to], 1, __ATOMIC_RELAXED);
        at = to;
    }
    hop_finish();
}

/* One thread polling hop_ctx[opaque]: it starts HOP_COS coroutines running
 * hop_entry (once every thread has recorded its id) and polls until all
 * coroutines of all threads are done. */
static QLCoroutineFunc *hop_entry;

static void *hop_thread(void *opaque)
{
    int me = (int)(intptr_t)opaque;
    QLContext *ctx = hop_ctx[me];

    ql_context_set_current(ctx);
    hop_tid[me] = tid();
    __atomic_add_fetch(&hop_ready, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&hop_ready, __ATOMIC_ACQUIRE) < HOP_THREADS) {
        sched_yield();
    }
    for (int i = 0; i < HOP_COS; i++) {
        ql_coroutine_enter(ql_coroutine_create(hop_entry, opaque));
    }
    while (__atomic_load_n(&hop_finished, __ATOMIC_ACQUIRE) < HOP_THREADS * HOP_COS) {
        ql_context_poll(ctx, true);
    }
    poll_all(ctx); /* the last coroutines' leftovers */
    ql_context_set_current(NULL);
    return NULL;
}

/* Run HOP_COS coroutines of `entry` per thread on HOP_THREADS threads, each
 * polling its own context; check no errors, every round run, and every
 * thread visited. */
static void run_hoppers(QLCoroutineFunc *entry)
{
    pthread_t th[HOP_THREADS];
    long total = 0;

    for (int t = 0; t < HOP_THREADS; t++) {
        hop_ctx[t] = ql_context_new();
        hop_runs[t] = 0;
    }
    hop_finished = 0;
    hop_errors = 0;
    hop_ready = 0;
    hop_entry = entry;
    for (int t = 0; t < HOP_THREADS; t++) {
        pthread_create(&th[t], NULL, hop_thread, (void *)(intptr_t)t);
    }
    for (int t = 0; t < HOP_THREADS; t++) {
        pthread_join(th[t], NULL);
    }
    for (int t = 0; t < HOP_THREADS; t++) {
        total += hop_runs[t];
        ql_context_free(hop_ctx[t]);
    }
    QL_CHECK_EQ(hop_errors, 0);
    QL_CHECK_EQ(total, (long)HOP_THREADS * HOP_COS * HOP_ROUNDS);
    for (int t = 0; t < HOP_THREADS; t++) {
        QL_CHECK(hop_runs[t] > 0);
    }
}

static void test_co_schedule_moves_coroutines_between_thread_contexts(void)
{
    run_hoppers(co_hopper);
}

/* ---- ql_co_reschedule_self ------------------------------------------- */

/* Hops through the thread contexts with ql_co_reschedule_self: after each
 * return it runs in the target's thread, with the target current. */
static void co_rescheduler(void *opaque)
{
    int at = (int)(intptr_t)opaque;

    for (int i = 0; i < HOP_ROUNDS; i++) {
        int to = (at + 1 + i % 2) % HOP_THREADS;
        if (ql_co_reschedule_self(hop_ctx[to]) != 0 || ql_context_current() != hop_ctx[to] ||
            tid() != hop_tid[to]) {
            __atomic_fetch_add(&hop_errors, 1, __ATOMIC_RELAXED);
        }
        __atomic_fetch_add(&hop_runs[to], 1, __ATOMIC_RELAXED);
        at = to;
    }
    /* Moving to where it is already: 0, and it keeps running. */
    if (ql_co_reschedule_self(hop_ctx[at]) != 0 || tid() != hop_tid[at]) {
        __atomic_fetch_add(&hop_errors, 1, __ATOMIC_RELAXED);
    }
    hop_finish();
}

static void test_co_reschedule_self_moves_the_coroutine_to_the_other_thread(void)
{
    run_hoppers(co_rescheduler);
}

static int resched_result;

static void co_resched_to(void *opaque)
{
    resched_result = ql_co_reschedule_self(opaque);
    mark('r');
}

static void test_co_reschedule_self_misuse_is_reported(void)
{
    QLContext *ctx = ql_context_new();

    QL_CHECK_EQ(ql_co_reschedule_self(ctx), -EPERM); /* not in a coroutine */
    reset_order();
    /* No current context to move from: refused, the coroutine goes on. */
    ql_context_set_current(NULL);
    ql_coroutine_enter(ql_coroutine_create(co_resched_to, ctx));
    QL_CHECK_EQ(resched_result, -EINVAL);
    ql_coroutine_enter(ql_coroutine_create(co_resched_to, NULL));
    QL_CHECK_EQ(resched_result, -EINVAL);
    QL_CHECK(strcmp(order, "rr") == 0);
    /* Same thread, other context: it moves there and runs in its poll. */
    QLContext *other = ql_context_new();
    ql_context_set_current(ctx);
    reset_order();
    resched_result = 1;
    ql_coroutine_enter(ql_coroutine_create(co_resched_to, other));
    QL_CHECK(strcmp(order, "") == 0);
    poll_all(ctx); /* the oneshot schedules it into other */
    QL_CHECK(strcmp(order, "") == 0);
    ql_context_set_current(other);
    poll_all(other);
    QL_CHECK(strcmp(order, "r") == 0);
    QL_CHECK_EQ(resched_result, 0);
    ql_context_set_current(NULL);
    ql_context_free(other);
    ql_context_free(ctx);
}

/* ---- sleep ------------------------------------------------------------ */

struct sleeper {
    QLCoSleep *w;
    int64_t ns;
    int ret;
    bool done;
};

static void co_sleeper(void *opaque)
{
    struct sleeper *s = opaque;
    s->ret = ql_co_sleep_ns_wakeable(s->w, QL_CLOCK_VIRTUAL, s->ns);
    s->done = true;
}

static void test_co_sleep_ns_returns_after_virtual_time(void)
{
    QLContext *ctx = ql_context_new();
    struct sleeper s = {NULL, 1000, -1, false};

    ql_context_set_current(ctx);
    ql_coroutine_enter(ql_coroutine_create(co_sleeper, &s));
    QL_CHECK(!s.done);
    poll_all(ctx);
    QL_CHECK(!s.done);
    ql_virtual_clock_advance(ctx, 999);
    poll_all(ctx);
    QL_CHECK(!s.done);
    ql_virtual_clock_advance(ctx, 1);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK(s.done);
    QL_CHECK_EQ(s.ret, 0);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

static void test_co_sleep_wake_early_returns_1_and_cancels_timeout(void)
{
    QLContext *ctx = ql_context_new();
    struct sleeper s = {ql_co_sleep_new(), 1000000000, -1, false};

    ql_context_set_current(ctx);
    ql_co_sleep_wake(s.w); /* nobody sleeps: no-op */
    ql_coroutine_enter(ql_coroutine_create(co_sleeper, &s));
    QL_CHECK(!s.done);
    ql_co_sleep_wake(s.w); /* outside a coroutine: runs it now */
    QL_CHECK(s.done);
    QL_CHECK_EQ(s.ret, 1);
    ql_co_sleep_wake(s.w); /* twice: no-op */
    ql_virtual_clock_advance(ctx, 2000000000);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0); /* the timer is gone */
    ql_co_sleep_free(s.w);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

static void test_co_sleeping_coroutine_cannot_be_entered_or_scheduled(void)
{
    QLContext *ctx = ql_context_new();
    struct sleeper s = {NULL, 10, -1, false};
    QLCoroutine *co = ql_coroutine_create(co_sleeper, &s);

    ql_context_set_current(ctx);
    ql_coroutine_ref(co);
    ql_coroutine_enter(co);
    QL_CHECK_EQ(ql_coroutine_enter(co), -EALREADY);
    QL_CHECK_EQ(ql_co_schedule(ctx, co), -EALREADY);
    ql_virtual_clock_advance(ctx, 10);
    poll_all(ctx);
    QL_CHECK(s.done);
    QL_CHECK_EQ(s.ret, 0);
    QL_CHECK(ql_coroutine_finished(co));
    ql_coroutine_unref(co);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

static void co_sleep_twice(void *opaque)
{
    struct sleeper *s = opaque;
    s->ret = ql_co_sleep_ns(QL_CLOCK_VIRTUAL, s->ns);
    s->ret += ql_co_sleep_ns(QL_CLOCK_VIRTUAL, s->ns);
    s->done = true;
}

/* The timer kept with a pooled record must follow the record to a new
 * context (the old one was freed; a new one may reuse its address). */
static void test_co_sleep_after_context_freed_uses_new_context(void)
{
    for (int round = 0; round < 3; round++) {
        QLContext *ctx = ql_context_new();
        struct sleeper s = {NULL, 100, -1, false};

        ql_context_set_current(ctx);
        ql_coroutine_enter(ql_coroutine_create(co_sleep_twice, &s));
        ql_virtual_clock_advance(ctx, 100);
        poll_all(ctx);
        QL_CHECK(!s.done);
        ql_virtual_clock_advance(ctx, 100);
        poll_all(ctx);
        QL_CHECK(s.done);
        QL_CHECK_EQ(s.ret, 0);
        ql_context_set_current(NULL);
        ql_context_free(ctx);
    }
}

static void test_co_sleep_outside_coroutine_is_eperm(void)
{
    QL_CHECK_EQ(ql_co_sleep_ns(QL_CLOCK_VIRTUAL, 1), -EPERM);
}

QLTEST_MAIN(QLT(test_co_schedule_runs_in_next_poll_in_order),
            QLT(test_co_schedule_twice_is_ealready_and_enter_refused),
            QLT(test_co_schedule_self_then_yield_resumes_next_poll),
            QLT(test_co_enter_from_thread_without_context_schedules),
            QLT(test_co_wake_from_other_thread_runs_in_its_context_thread),
            QLT(test_comutex_hands_off_across_threads),
            QLT(test_co_schedule_moves_coroutines_between_thread_contexts),
            QLT(test_co_reschedule_self_moves_the_coroutine_to_the_other_thread),
            QLT(test_co_reschedule_self_misuse_is_reported),
            QLT(test_co_sleep_ns_returns_after_virtual_time),
            QLT(test_co_sleep_wake_early_returns_1_and_cancels_timeout),
            QLT(test_co_sleeping_coroutine_cannot_be_entered_or_scheduled),
            QLT(test_co_sleep_after_context_freed_uses_new_context),
            QLT(test_co_sleep_outside_coroutine_is_eperm))
