/* Bottom halves: scheduling, order, cancel/delete, oneshot, idle, hooks. */
#include "qltest.h"
#include "context-int.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

typedef struct Rec {
    int log[64];
    int n;
} Rec;

static void rec_add(Rec *r, int v)
{
    if (r->n < 64) {
        r->log[r->n++] = v;
    }
}

typedef struct Item {
    Rec *rec;
    int id;
    QLBH *bh;
    int count;
    void (*extra)(struct Item *);
} Item;

static void item_cb(void *opaque)
{
    Item *it = opaque;
    it->count++;
    if (it->rec) {
        rec_add(it->rec, it->id);
    }
    if (it->extra) {
        it->extra(it);
    }
}

static int counter;
static void count_cb(void *opaque)
{
    (void)opaque;
    counter++;
}

static void test_bh_schedule_runs_once_in_next_poll(void)
{
    QLContext *ctx = ql_context_new();
    Item it = {0};
    it.bh = ql_bh_new(ctx, item_cb, &it, "it");
    QL_CHECK(it.bh);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(ql_bh_schedule(it.bh), 1);
    QL_CHECK_EQ(it.count, 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(it.count, 1);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(it.count, 1);
    ql_bh_delete(it.bh);
    ql_context_free(ctx);
}

static void test_bh_scheduled_twice_runs_once(void)
{
    QLContext *ctx = ql_context_new();
    Item it = {0};
    it.bh = ql_bh_new(ctx, item_cb, &it, "it");
    QL_CHECK_EQ(ql_bh_schedule(it.bh), 1);
    QL_CHECK_EQ(ql_bh_schedule(it.bh), 0);
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
    QL_CHECK_EQ(it.count, 1);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(it.count, 1);
    ql_bh_delete(it.bh);
    ql_context_free(ctx);
}

static void test_bh_runs_in_scheduling_order(void)
{
    QLContext *ctx = ql_context_new();
    Rec rec = {0};
    Item it[5];
    for (int i = 0; i < 5; i++) {
        it[i] = (Item){.rec = &rec, .id = i};
        it[i].bh = ql_bh_new(ctx, item_cb, &it[i], "it");
    }
    /* created 0..4, scheduled in another order */
    int order[5] = {3, 1, 4, 0, 2};
    for (int i = 0; i < 5; i++) {
        ql_bh_schedule(it[order[i]].bh);
    }
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(rec.n, 5);
    for (int i = 0; i < 5; i++) {
        QL_CHECK_EQ(rec.log[i], order[i]);
    }
    for (int i = 0; i < 5; i++) {
        ql_bh_delete(it[i].bh);
    }
    ql_context_free(ctx);
}

static void reschedule_self(Item *it)
{
    ql_bh_schedule(it->bh);
}

static void test_bh_scheduled_during_dispatch_runs_next_poll(void)
{
    QLContext *ctx = ql_context_new();
    Item it = {.extra = reschedule_self};
    it.bh = ql_bh_new(ctx, item_cb, &it, "self");
    ql_bh_schedule(it.bh);
    for (int i = 1; i <= 10; i++) {
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(it.count, i);
    }
    ql_bh_delete(it.bh);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(it.count, 10);
    ql_context_free(ctx);
}

static int fd_calls;
static void fd_read_cb(void *opaque)
{
    (void)opaque;
    fd_calls++;
}

static void test_bh_self_rescheduling_does_not_starve_fds_or_timers(void)
{
    QLContext *ctx = ql_context_new();
    int p[2];
    QL_CHECK_EQ(pipe(p), 0);
    QL_CHECK_EQ(write(p[1], "x", 1), 1);
    fd_calls = 0;
    counter = 0;
    QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[0], fd_read_cb, NULL, NULL, NULL), 0);
    QLTimer *t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, count_cb, NULL, "t");
    ql_timer_mod(t, 0);
    Item it = {.extra = reschedule_self};
    it.bh = ql_bh_new(ctx, item_cb, &it, "self");
    ql_bh_schedule(it.bh);
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
    QL_CHECK_EQ(it.count, 1);
    QL_CHECK_EQ(fd_calls, 1);
    QL_CHECK_EQ(counter, 1);
    ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL);
    ql_bh_delete(it.bh);
    ql_timer_free(t);
    ql_context_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void test_bh_cancel_prevents_run(void)
{
    QLContext *ctx = ql_context_new();
    Item it = {0};
    it.bh = ql_bh_new(ctx, item_cb, &it, "it");
    ql_bh_schedule(it.bh);
    ql_bh_cancel(it.bh);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(it.count, 0);
    /* still usable */
    QL_CHECK_EQ(ql_bh_schedule(it.bh), 1);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(it.count, 1);
    ql_bh_delete(it.bh);
    ql_context_free(ctx);
}

static void test_bh_cancel_then_schedule_before_poll_runs(void)
{
    QLContext *ctx = ql_context_new();
    Item it = {0};
    it.bh = ql_bh_new(ctx, item_cb, &it, "it");
    ql_bh_schedule(it.bh);
    ql_bh_cancel(it.bh);
    QL_CHECK_EQ(ql_bh_schedule(it.bh), 0); /* still linked */
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
    QL_CHECK_EQ(it.count, 1);
    ql_bh_delete(it.bh);
    ql_context_free(ctx);
}

static void test_bh_delete_scheduled_does_not_run(void)
{
    QLContext *ctx = ql_context_new();
    Item it = {0};
    it.bh = ql_bh_new(ctx, item_cb, &it, "it");
    ql_bh_schedule(it.bh);
    ql_bh_delete(it.bh);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(it.count, 0);
    ql_context_free(ctx);
}

static void delete_self(Item *it)
{
    ql_bh_delete(it->bh);
}

static void test_bh_delete_from_own_callback(void)
{
    QLContext *ctx = ql_context_new();
    Item it = {.extra = delete_self};
    it.bh = ql_bh_new(ctx, item_cb, &it, "it");
    ql_bh_schedule(it.bh);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(it.count, 1);
    /* freed by this poll (valgrind/ASan check the memory) */
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(it.count, 1);
    ql_context_free(ctx);
}

static void test_bh_oneshot_runs_once_and_recycles_node(void)
{
    QLContext *ctx = ql_context_new();
    counter = 0;
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0); /* ctx's home is this thread */
    QL_CHECK_EQ(ql_bh_schedule_oneshot(ctx, count_cb, NULL, "one"), 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(counter, 1);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    QL_CHECK_EQ(counter, 1);
    /* the node went to the free list and is reused: no malloc */
    QL_CHECK_EQ(ctx->bh_free_count, 1);
    QLBH *node = ctx->bh_free;
    QL_CHECK_EQ(ql_bh_schedule_oneshot(ctx, count_cb, NULL, "one"), 0);
    QL_CHECK_EQ(ctx->bh_free_count, 0);
    QL_CHECK(ctx->bh_ready_head == NULL);
    QL_CHECK(__atomic_load_n(&ctx->bh_list, __ATOMIC_RELAXED) == node);
    for (int i = 0; i < 1000; i++) {
        ql_context_poll(ctx, false);
        ql_bh_schedule_oneshot(ctx, count_cb, NULL, "one");
    }
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(counter, 1002);
    QL_CHECK_EQ(ctx->bh_free_count, 1);
    ql_context_free(ctx);
}

typedef struct ThreadArg {
    QLContext *ctx;
    int tid;
    int n;
} ThreadArg;

static int seen_next[4];
static int seen_bad;
static int seen_total;

static void ordered_cb(void *opaque)
{
    uintptr_t v = (uintptr_t)opaque;
    int tid = (int)(v >> 24), seq = (int)(v & 0xffffff);
    if (seen_next[tid] != seq) {
        seen_bad = 1;
    }
    seen_next[tid] = seq + 1;
    __atomic_add_fetch(&seen_total, 1, __ATOMIC_RELAXED);
}

static void *oneshot_thread(void *opaque)
{
    ThreadArg *a = opaque;
    for (int i = 0; i < a->n; i++) {
        while (ql_bh_schedule_oneshot(a->ctx, ordered_cb, (void *)(((uintptr_t)a->tid << 24) | i),
                                      "seq") < 0) {
        }
    }
    return NULL;
}

static void test_bh_fifo_per_scheduling_thread(void)
{
    QLContext *ctx = ql_context_new();
    pthread_t th[4];
    ThreadArg args[4];
    const int n = 20000;
    seen_bad = 0;
    seen_total = 0;
    for (int i = 0; i < 4; i++) {
        seen_next[i] = 0;
        args[i] = (ThreadArg){ctx, i, n};
        pthread_create(&th[i], NULL, oneshot_thread, &args[i]);
    }
    while (__atomic_load_n(&seen_total, __ATOMIC_RELAXED) < 4 * n) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    QL_CHECK_EQ(seen_bad, 0);
    QL_CHECK_EQ(seen_total, 4 * n);
    ql_context_free(ctx);
}

static void test_bh_idle_is_not_progress(void)
{
    QLContext *ctx = ql_context_new();
    Item it = {0};
    it.bh = ql_bh_new(ctx, item_cb, &it, "idle");
    QL_CHECK_EQ(ql_bh_schedule_idle(it.bh), 1);
    QL_CHECK_EQ(ql__bh_timeout(ctx), QL_IDLE_BH_TIMEOUT_NS);
    /* blocking: sleeps at most 10 ms, runs it, reports no progress */
    QL_CHECK_EQ(ql_context_poll(ctx, true), 0);
    QL_CHECK_EQ(it.count, 1);
    /* a plain schedule of an idle-scheduled BH makes it normal */
    ql_bh_schedule_idle(it.bh);
    ql_bh_schedule(it.bh);
    QL_CHECK_EQ(ql__bh_timeout(ctx), 0);
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
    QL_CHECK_EQ(it.count, 2);
    ql_bh_delete(it.bh);
    ql_context_free(ctx);
}

typedef struct Nest {
    QLContext *ctx;
    Rec rec;
} Nest;

static Nest nest;

static void nest_cb(void *opaque)
{
    int id = (int)(uintptr_t)opaque;
    rec_add(&nest.rec, id);
    if (id == 0) {
        /* nested poll continues the outer batch (1, 2) before new work */
        ql_bh_schedule_oneshot(nest.ctx, nest_cb, (void *)(uintptr_t)9, "late");
        QL_CHECK_EQ(ql_context_poll(nest.ctx, false), 1);
    }
}

static void test_bh_nested_poll_continues_outer_batch(void)
{
    nest = (Nest){0};
    nest.ctx = ql_context_new();
    for (int i = 0; i < 3; i++) {
        ql_bh_schedule_oneshot(nest.ctx, nest_cb, (void *)(uintptr_t)i, "n");
    }
    QL_CHECK_EQ(ql_context_poll(nest.ctx, false), 1);
    QL_CHECK_EQ(nest.rec.n, 4);
    QL_CHECK_EQ(nest.rec.log[0], 0);
    QL_CHECK_EQ(nest.rec.log[1], 1);
    QL_CHECK_EQ(nest.rec.log[2], 2);
    QL_CHECK_EQ(nest.rec.log[3], 9);
    QL_CHECK_EQ(ql_context_poll(nest.ctx, false), 0);
    ql_context_free(nest.ctx);
}

static int hooks;
static void hook_cb(void *opaque)
{
    Item *it = opaque;
    /* runs after the callback */
    rec_add(it->rec, 100 + it->count);
    hooks++;
}

static void test_bh_dequeue_hook_once_per_successful_schedule(void)
{
    QLContext *ctx = ql_context_new();
    Rec rec = {0};
    Item it = {.rec = &rec, .id = 1};
    it.bh = ql_bh_new(ctx, item_cb, &it, "hooked");
    ql_bh_set_dequeue_hook(it.bh, hook_cb);
    hooks = 0;
    QL_CHECK_EQ(ql_bh_schedule(it.bh), 1);
    QL_CHECK_EQ(ql_bh_schedule(it.bh), 0);
    ql_context_poll(ctx, false);
    QL_CHECK_EQ(hooks, 1);
    QL_CHECK_EQ(rec.n, 2);
    QL_CHECK_EQ(rec.log[0], 1);
    QL_CHECK_EQ(rec.log[1], 101);
    /* cancelled: the hook still runs when it leaves the list */
    ql_bh_schedule(it.bh);
    ql_bh_cancel(it.bh);
    ql_context_poll(ctx, false);
    QL_CHECK_EQ(hooks, 2);
    QL_CHECK_EQ(it.count, 1);
    /* deleted while not scheduled: no schedule reference, no hook */
    ql_bh_delete(it.bh);
    ql_context_poll(ctx, false);
    QL_CHECK_EQ(hooks, 2);
    /* deleted while scheduled: hook runs, callback does not */
    it.bh = ql_bh_new(ctx, item_cb, &it, "hooked2");
    ql_bh_set_dequeue_hook(it.bh, hook_cb);
    ql_bh_schedule(it.bh);
    ql_bh_delete(it.bh);
    ql_context_poll(ctx, false);
    QL_CHECK_EQ(hooks, 3);
    QL_CHECK_EQ(it.count, 1);
    ql_context_free(ctx);
}

static void test_bh_context_free_runs_hooks_not_callbacks(void)
{
    QLContext *ctx = ql_context_new();
    Rec rec = {0};
    Item a = {.rec = &rec, .id = 1}, b = {.rec = &rec, .id = 2};
    a.bh = ql_bh_new(ctx, item_cb, &a, "a");
    b.bh = ql_bh_new(ctx, item_cb, &b, "b");
    ql_bh_set_dequeue_hook(a.bh, hook_cb);
    ql_bh_set_dequeue_hook(b.bh, hook_cb);
    hooks = 0;
    counter = 0;
    ql_bh_schedule(a.bh);   /* scheduled: hook at free */
    (void)b;                /* never scheduled: freed silently */
    ql_bh_schedule_oneshot(ctx, count_cb, NULL, "one");
    ql_context_free(ctx);
    QL_CHECK_EQ(hooks, 1);
    QL_CHECK_EQ(a.count, 0);
    QL_CHECK_EQ(counter, 0);
}

static Item stop_items[3];
static QLContext *stop_ctx;

static void stop_first(Item *it)
{
    if (it->id == 0) {
        ql_context_stop_dispatch(stop_ctx);
    }
}

static void test_bh_stop_dispatch_keeps_rest_for_next_poll(void)
{
    QLContext *ctx = stop_ctx = ql_context_new();
    Rec rec = {0};
    for (int i = 0; i < 3; i++) {
        stop_items[i] = (Item){.rec = &rec, .id = i, .extra = stop_first};
        stop_items[i].bh = ql_bh_new(ctx, item_cb, &stop_items[i], "s");
        ql_bh_schedule(stop_items[i].bh);
    }
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(rec.n, 1);
    /* rest of the batch is still ready: a blocking poll must not sleep */
    QL_CHECK_EQ(ql__bh_timeout(ctx), 0);
    ql_bh_schedule(stop_items[0].bh); /* new work goes behind the rest */
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
    QL_CHECK_EQ(rec.n, 4); /* 1, 2, then 0 which stops again */
    QL_CHECK_EQ(rec.log[1], 1);
    QL_CHECK_EQ(rec.log[2], 2);
    QL_CHECK_EQ(rec.log[3], 0);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    for (int i = 0; i < 3; i++) {
        ql_bh_delete(stop_items[i].bh);
    }
    ql_context_free(ctx);
}

static QLBH *sig_bh;
static void on_alarm(int sig)
{
    (void)sig;
    ql_bh_schedule(sig_bh);
}

/* A helper thread takes the signal so that the poll is woken by the
 * schedule's notify, not by EINTR. */
static void *signal_taker(void *opaque)
{
    (void)opaque;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    alarm(1);
    sleep(3); /* interrupted by the signal */
    return NULL;
}

static void test_bh_schedule_from_signal_handler_wakes_poll(void)
{
    QLContext *ctx = ql_context_new();
    counter = 0;
    sig_bh = ql_bh_new(ctx, count_cb, NULL, "sig");
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    pthread_t th;
    pthread_create(&th, NULL, signal_taker, NULL);
    while (counter == 0) {
        QL_CHECK(ql_context_poll(ctx, true) >= 0); /* would sleep forever */
    }
    pthread_join(th, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    signal(SIGALRM, SIG_DFL);
    ql_bh_delete(sig_bh);
    ql_context_free(ctx);
}

QLTEST_MAIN(QLT(test_bh_schedule_runs_once_in_next_poll),
            QLT(test_bh_scheduled_twice_runs_once),
            QLT(test_bh_runs_in_scheduling_order),
            QLT(test_bh_scheduled_during_dispatch_runs_next_poll),
            QLT(test_bh_self_rescheduling_does_not_starve_fds_or_timers),
            QLT(test_bh_cancel_prevents_run),
            QLT(test_bh_cancel_then_schedule_before_poll_runs),
            QLT(test_bh_delete_scheduled_does_not_run),
            QLT(test_bh_delete_from_own_callback),
            QLT(test_bh_oneshot_runs_once_and_recycles_node),
            QLT(test_bh_fifo_per_scheduling_thread),
            QLT(test_bh_idle_is_not_progress),
            QLT(test_bh_nested_poll_continues_outer_batch),
            QLT(test_bh_dequeue_hook_once_per_successful_schedule),
            QLT(test_bh_context_free_runs_hooks_not_callbacks),
            QLT(test_bh_stop_dispatch_keeps_rest_for_next_poll),
            QLT(test_bh_schedule_from_signal_handler_wakes_poll))
