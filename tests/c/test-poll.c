/* notify / poll: the wakeup protocol, dispatch order, current context,
 * blocking hooks.  Run under both fd monitors where it matters. */
#include "qltest.h"
#include "context-int.h"
#include "qloop/blocking.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

static const char *mons[] = {"epoll", "poll"};
#define FOR_EACH_MONITOR(ctx)                                                   \
    for (int m_ = 0; m_ < 2; m_++)                                              \
        for (QLContext *ctx = ql__context_new_fdmon(mons[m_]); ctx;             \
             ql_context_free(ctx), ctx = NULL)

static void nop(void *opaque)
{
    (void)opaque;
}

static void test_poll_bare_notify_makes_blocking_poll_return_0(void)
{
    FOR_EACH_MONITOR(ctx) {
        ql_context_notify(ctx);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        /* the poll that did not sleep left notify_me balanced: later
         * notifies stay syscall-free */
        QL_CHECK_EQ(ctx->notify_me, 0);
        ql_context_notify(ctx);
        QL_CHECK_EQ(ql_notifier_test_and_clear(&ctx->notifier), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 0);
    }
}

static void test_poll_notify_without_sleeper_makes_no_syscall(void)
{
    QLContext *ctx = ql_context_new();
    ql_context_notify(ctx);
    ql_context_notify(ctx);
    /* nobody was blocked: the notifier was never written */
    QL_CHECK_EQ(ql_notifier_test_and_clear(&ctx->notifier), 0);
    QL_CHECK(ctx->notified);
    ql_context_poll(ctx, false);
    QL_CHECK(!ctx->notified);
    ql_context_free(ctx);
}

static void *notify_later(void *opaque)
{
    usleep(20000);
    ql_context_notify(opaque);
    return NULL;
}

static void test_poll_notify_from_thread_wakes_blocking_poll(void)
{
    FOR_EACH_MONITOR(ctx) {
        pthread_t th;
        pthread_create(&th, NULL, notify_later, ctx);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 0); /* would sleep forever */
        pthread_join(th, NULL);
        /* the notifier was drained: nothing left over */
        QL_CHECK_EQ(ql_notifier_test_and_clear(&ctx->notifier), 0);
    }
}

static void test_poll_notifier_events_are_not_progress(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
        ql_context_set_fd_handler(ctx, p[0], nop, NULL, NULL, NULL);
        pthread_t th;
        pthread_create(&th, NULL, notify_later, ctx);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 0);
        pthread_join(th, NULL);
        ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL);
        close(p[0]);
        close(p[1]);
    }
}

static void schedule_bh(void *opaque)
{
    ql_bh_schedule(opaque);
}

static void test_poll_blocking_never_sleeps_with_pending_bh(void)
{
    FOR_EACH_MONITOR(ctx) {
        QLBH *bh = ql_bh_new(ctx, nop, NULL, "nop");
        ql_bh_schedule(bh);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        /* also when it was scheduled from inside a dispatch (no notify) */
        ql_bh_schedule_oneshot(ctx, schedule_bh, bh, "resched");
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        ql_bh_delete(bh);
    }
}

/* Ping-pong: the other thread schedules a BH and waits until it ran; the
 * home thread only does blocking polls.  A lost wakeup hangs the test. */
typedef struct PingPong {
    QLContext *ctx;
    QLBH *bh;
    int ran;      /* [atomic] */
    int n;
} PingPong;

static void pp_cb(void *opaque)
{
    PingPong *pp = opaque;
    __atomic_add_fetch(&pp->ran, 1, __ATOMIC_RELEASE);
}

static void *pp_thread(void *opaque)
{
    PingPong *pp = opaque;
    for (int i = 1; i <= pp->n; i++) {
        ql_bh_schedule(pp->bh);
        while (__atomic_load_n(&pp->ran, __ATOMIC_ACQUIRE) < i) {
            /* spin: the poller must wake by itself */
        }
    }
    return NULL;
}

static void test_poll_no_lost_wakeup_from_other_thread(void)
{
    FOR_EACH_MONITOR(ctx) {
        PingPong pp = {.ctx = ctx, .n = 5000};
        pp.bh = ql_bh_new(ctx, pp_cb, &pp, "pp");
        pthread_t th;
        pthread_create(&th, NULL, pp_thread, &pp);
        while (__atomic_load_n(&pp.ran, __ATOMIC_ACQUIRE) < pp.n) {
            QL_CHECK(ql_context_poll(ctx, true) >= 0);
        }
        pthread_join(th, NULL);
        ql_bh_delete(pp.bh);
    }
}

static void *notify_storm(void *opaque)
{
    PingPong *pp = opaque;
    for (int i = 1; i <= pp->n; i++) {
        ql_context_notify(pp->ctx);
        ql_bh_schedule(pp->bh);
        while (__atomic_load_n(&pp->ran, __ATOMIC_ACQUIRE) < i) {
            ql_context_notify(pp->ctx);
        }
    }
    return NULL;
}

static void test_poll_many_notifiers_no_lost_wakeup(void)
{
    FOR_EACH_MONITOR(ctx) {
        PingPong pp = {.ctx = ctx, .n = 3000};
        pp.bh = ql_bh_new(ctx, pp_cb, &pp, "pp");
        pthread_t th[2];
        PingPong other = {.ctx = ctx, .n = 0};
        pthread_create(&th[0], NULL, notify_storm, &pp);
        pthread_create(&th[1], NULL, notify_storm, &other);
        while (__atomic_load_n(&pp.ran, __ATOMIC_ACQUIRE) < pp.n) {
            QL_CHECK(ql_context_poll(ctx, true) >= 0);
        }
        pthread_join(th[0], NULL);
        pthread_join(th[1], NULL);
        ql_bh_delete(pp.bh);
    }
}

static char order_log[8];
static int norder;
static void log_char(void *opaque)
{
    order_log[norder++] = (char)(uintptr_t)opaque;
}

static void test_poll_order_is_bhs_then_fds_then_timers(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
        QL_CHECK_EQ(write(p[1], "x", 1), 1);
        norder = 0;
        QLTimer *t = ql_timer_new(ctx, QL_CLOCK_REALTIME, log_char, (void *)'t', "t");
        ql_timer_mod(t, 0);
        ql_context_set_fd_handler(ctx, p[0], log_char, NULL, NULL, (void *)'f');
        ql_bh_schedule_oneshot(ctx, log_char, (void *)'b', "b");
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(norder, 3);
        QL_CHECK_EQ(order_log[0], 'b');
        QL_CHECK_EQ(order_log[1], 'f');
        QL_CHECK_EQ(order_log[2], 't');
        ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL);
        ql_timer_free(t);
        close(p[0]);
        close(p[1]);
    }
}

static QLContext *seen_current[4];
static QLContext *ctx_a, *ctx_b;

static void in_b(void *opaque)
{
    (void)opaque;
    seen_current[1] = ql_context_current();
}

static void in_a(void *opaque)
{
    (void)opaque;
    seen_current[0] = ql_context_current();
    ql_bh_schedule_oneshot(ctx_b, in_b, NULL, "b");
    ql_context_poll(ctx_b, false); /* poll another context from a callback */
    seen_current[2] = ql_context_current();
}

static void test_poll_current_context_is_set_and_restored(void)
{
    ctx_a = ql_context_new();
    ctx_b = ql_context_new();
    QL_CHECK(ql_context_current() == NULL);
    ql_bh_schedule_oneshot(ctx_a, in_a, NULL, "a");
    QL_CHECK_EQ(ql_context_poll(ctx_a, false), 1);
    QL_CHECK(seen_current[0] == ctx_a);
    QL_CHECK(seen_current[1] == ctx_b);
    QL_CHECK(seen_current[2] == ctx_a);
    QL_CHECK(ql_context_current() == NULL);
    ql_context_set_current(ctx_b);
    QL_CHECK(ql_context_current() == ctx_b);
    ql_context_poll(ctx_a, false);
    QL_CHECK(ql_context_current() == ctx_b);
    ql_context_set_current(NULL);
    ql_context_free(ctx_a);
    ql_context_free(ctx_b);
}

static int begins, ends;
static void *hook_begin(void)
{
    begins++;
    return &begins;
}
static void hook_end(void *token)
{
    if (token == &begins) {
        ends++;
    }
}

/* Notify once the poller is really about to sleep (notify_me raised). */
static void *notify_when_blocked(void *opaque)
{
    QLContext *ctx = opaque;
    while (__atomic_load_n(&ctx->notify_me, __ATOMIC_ACQUIRE) < 2) {
        usleep(1000);
    }
    ql_context_notify(ctx);
    return NULL;
}

static void test_poll_blocking_hooks_bracket_only_real_waits(void)
{
    FOR_EACH_MONITOR(ctx) {
        begins = ends = 0;
        ql_set_blocking_hooks(hook_begin, hook_end);
        ql_context_poll(ctx, false);
        QL_CHECK_EQ(begins, 0);
        QLBH *bh = ql_bh_new(ctx, nop, NULL, "nop");
        ql_bh_schedule(bh);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1); /* BH pending: no wait */
        QL_CHECK_EQ(begins, 0);
        pthread_t th;
        pthread_create(&th, NULL, notify_when_blocked, ctx);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 0); /* sleeps until notified */
        pthread_join(th, NULL);
        QL_CHECK_EQ(begins, 1);
        QL_CHECK_EQ(ends, 1);
        ql_set_blocking_hooks(NULL, NULL);
        ql_bh_delete(bh);
    }
}

static void stop_cb(void *opaque)
{
    log_char(opaque);
    ql_context_stop_dispatch(ql_context_current());
}

static void test_poll_stop_dispatch_skips_later_phases_until_next_poll(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
        QL_CHECK_EQ(write(p[1], "x", 1), 1);
        norder = 0;
        QLTimer *t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, log_char, (void *)'t', "t");
        ql_timer_mod(t, 0);
        ql_context_set_fd_handler(ctx, p[0], stop_cb, NULL, NULL, (void *)'f');
        ql_bh_schedule_oneshot(ctx, stop_cb, (void *)'b', "b");
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(norder, 1);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1); /* fd (level) stops */
        QL_CHECK_EQ(norder, 2);
        ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1); /* timer still armed */
        QL_CHECK_EQ(norder, 3);
        QL_CHECK_EQ(order_log[0], 'b');
        QL_CHECK_EQ(order_log[1], 'f');
        QL_CHECK_EQ(order_log[2], 't');
        ql_timer_free(t);
        close(p[0]);
        close(p[1]);
    }
}

static QLContext *sig_ctx;
static void on_alarm(int sig)
{
    (void)sig;
    ql_context_notify(sig_ctx);
}

/* The signal is taken by a helper thread so that the poller's wait is not
 * merely interrupted (EINTR): only the notify can wake it. */
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

static void test_poll_notify_from_signal_handler(void)
{
    FOR_EACH_MONITOR(ctx) {
        sig_ctx = ctx;
        struct sigaction sa = {.sa_handler = on_alarm};
        sigaction(SIGALRM, &sa, NULL);
        sigset_t set, old;
        sigemptyset(&set);
        sigaddset(&set, SIGALRM);
        pthread_sigmask(SIG_BLOCK, &set, &old);
        pthread_t th;
        pthread_create(&th, NULL, signal_taker, NULL);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 0);
        pthread_join(th, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        signal(SIGALRM, SIG_DFL);
    }
}

QLTEST_MAIN(QLT(test_poll_bare_notify_makes_blocking_poll_return_0),
            QLT(test_poll_notify_without_sleeper_makes_no_syscall),
            QLT(test_poll_notify_from_thread_wakes_blocking_poll),
            QLT(test_poll_notifier_events_are_not_progress),
            QLT(test_poll_blocking_never_sleeps_with_pending_bh),
            QLT(test_poll_no_lost_wakeup_from_other_thread),
            QLT(test_poll_many_notifiers_no_lost_wakeup),
            QLT(test_poll_order_is_bhs_then_fds_then_timers),
            QLT(test_poll_current_context_is_set_and_restored),
            QLT(test_poll_blocking_hooks_bracket_only_real_waits),
            QLT(test_poll_stop_dispatch_skips_later_phases_until_next_poll),
            QLT(test_poll_notify_from_signal_handler))
