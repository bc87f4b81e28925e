/* The main loop: contexts, main_loop_wait, notify_event, iohandlers,
 * polling callbacks, child watches with real children, iothread lock. */
#include "qltest.h"
#include "qloop/main-loop.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_main_loop_init_creates_main_and_iohandler_contexts(void)
{
    QL_CHECK(ql_get_aio_context() == NULL);
    QL_CHECK_EQ(ql_main_loop_wait(true), -EINVAL);
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    QL_CHECK_EQ(ql_main_loop_init(), 0); /* idempotent */
    QL_CHECK(ql_get_aio_context() != NULL);
    QL_CHECK(ql_get_iohandler_context() != NULL);
    QL_CHECK(ql_get_aio_context() != ql_get_iohandler_context());
    QL_CHECK(ql_context_current() == ql_get_aio_context());
    QL_CHECK(ql_main_loop_wait(true) >= 0);
    ql_main_loop_cleanup();
    QL_CHECK(ql_get_aio_context() == NULL);
    QL_CHECK(ql_context_current() == NULL);
}

static void *notify_later(void *opaque)
{
    (void)opaque;
    usleep(20000);
    ql_notify_event();
    return NULL;
}

static void test_main_loop_notify_event_wakes_wait(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    pthread_t th;
    pthread_create(&th, NULL, notify_later, NULL);
    /* nothing else would ever wake it */
    QL_CHECK_EQ(ql_main_loop_wait(false), 1);
    pthread_join(th, NULL);
    QL_CHECK_EQ(ql_main_loop_wait(true), 0);
    ql_main_loop_cleanup();
}

static int io_reads;
static int io_fd;
static void io_read(void *opaque)
{
    (void)opaque;
    char buf[16];
    while (read(io_fd, buf, sizeof buf) > 0) {
    }
    io_reads++;
}

static void test_main_loop_iohandlers_run_only_from_main_loop(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    int p[2];
    QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
    io_fd = p[0];
    io_reads = 0;
    QL_CHECK_EQ(ql_set_fd_handler(p[0], io_read, NULL, NULL), 0);
    QL_CHECK_EQ(write(p[1], "x", 1), 1);
    /* a (nested-style) poll of the main context does not run iohandlers */
    QL_CHECK_EQ(ql_context_poll(ql_get_aio_context(), false), 0);
    QL_CHECK_EQ(io_reads, 0);
    QL_CHECK_EQ(ql_main_loop_wait(false), 1);
    QL_CHECK_EQ(io_reads, 1);
    QL_CHECK_EQ(ql_set_fd_handler(p[0], NULL, NULL, NULL), 0);
    close(p[0]);
    close(p[1]);
    ql_main_loop_cleanup();
}

static int timer_runs;
static void timer_cb(void *opaque)
{
    (void)opaque;
    timer_runs++;
}

static void test_main_loop_runs_main_context_bhs_and_timers(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    timer_runs = 0;
    QLTimer *t = ql_timer_new(ql_get_aio_context(), QL_CLOCK_REALTIME, timer_cb, NULL, "t");
    ql_timer_mod_in(t, 1000000);
    while (timer_runs == 0) {
        QL_CHECK(ql_main_loop_wait(false) >= 0);
    }
    QLTimer *it = ql_timer_new(ql_get_iohandler_context(), QL_CLOCK_REALTIME, timer_cb, NULL,
                               "iot");
    ql_timer_mod_in(it, 1000000); /* the iohandler context's deadline counts too */
    while (timer_runs == 1) {
        QL_CHECK(ql_main_loop_wait(false) >= 0);
    }
    ql_timer_free(t);
    ql_timer_free(it);
    ql_main_loop_cleanup();
}

static int polls_seen;
static bool polling_cb(void *opaque)
{
    polls_seen++;
    return *(bool *)opaque;
}

static void test_main_loop_polling_cb_runs_each_iteration_and_can_force_nonblocking(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    bool force = true;
    polls_seen = 0;
    QL_CHECK_EQ(ql_add_polling_cb(polling_cb, &force), 0);
    /* nothing to do and blocking: returns only because the callback said so */
    QL_CHECK_EQ(ql_main_loop_wait(false), 0);
    QL_CHECK_EQ(ql_main_loop_wait(false), 0);
    QL_CHECK_EQ(polls_seen, 2);
    QL_CHECK_EQ(ql_del_polling_cb(polling_cb, &force), 0);
    QL_CHECK_EQ(ql_del_polling_cb(polling_cb, &force), -ENOENT);
    QL_CHECK_EQ(ql_main_loop_wait(true), 0);
    QL_CHECK_EQ(polls_seen, 2);
    ql_main_loop_cleanup();
}

static int ml_log[8], ml_nlog;
static void log_bh(void *opaque)
{
    ml_log[ml_nlog++] = (int)(intptr_t)opaque;
}

static void stop_io_bh(void *opaque)
{
    log_bh(opaque);
    ql_context_stop_dispatch(ql_get_iohandler_context());
}

static bool stop_both_polling_cb(void *opaque)
{
    (void)opaque;
    ql_context_stop_dispatch(ql_get_aio_context());
    ql_context_stop_dispatch(ql_get_iohandler_context());
    return false;
}

/* A main-context callback that stops the iohandler context's dispatch
 * makes that iteration skip it; the iohandler work runs in the next one. */
static void test_main_loop_stop_dispatch_skips_the_iohandler_dispatch_of_that_iteration(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    ml_nlog = 0;
    ql_bh_schedule_oneshot(ql_get_aio_context(), stop_io_bh, (void *)(intptr_t)1, "t");
    ql_bh_schedule_oneshot(ql_get_iohandler_context(), log_bh, (void *)(intptr_t)2, "t");
    QL_CHECK_EQ(ql_main_loop_wait(true), 1);
    QL_CHECK_EQ(ml_nlog, 1);
    QL_CHECK_EQ(ml_log[0], 1);
    QL_CHECK_EQ(ql_main_loop_wait(true), 1);
    QL_CHECK_EQ(ml_nlog, 2);
    QL_CHECK_EQ(ml_log[1], 2);
    QL_CHECK_EQ(ql_main_loop_wait(true), 0);
    ql_main_loop_cleanup();
}

/* A polling callback that stops both dispatches: nothing runs and the
 * iteration does not wait (a blocking wait would hang here). */
static void test_main_loop_polling_cb_stopping_dispatch_skips_it_without_waiting(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    ml_nlog = 0;
    ql_bh_schedule_oneshot(ql_get_iohandler_context(), log_bh, (void *)(intptr_t)3, "t");
    QL_CHECK_EQ(ql_add_polling_cb(stop_both_polling_cb, NULL), 0);
    QL_CHECK_EQ(ql_main_loop_wait(false), 0);
    QL_CHECK_EQ(ql_main_loop_wait(false), 0);
    QL_CHECK_EQ(ml_nlog, 0);
    QL_CHECK_EQ(ql_del_polling_cb(stop_both_polling_cb, NULL), 0);
    QL_CHECK_EQ(ql_main_loop_wait(true), 1);
    QL_CHECK_EQ(ml_nlog, 1);
    ql_main_loop_cleanup();
}

typedef struct Child {
    int pid;
    int status;
    int reported;
} Child;

static void child_cb(int pid, int status, void *opaque)
{
    Child *c = opaque;
    if (c->pid == pid) {
        c->status = status;
        c->reported++;
    }
}

static int spawn(int code, int delay_ms)
{
    int pid = fork();
    if (pid == 0) {
        usleep(delay_ms * 1000);
        _exit(code);
    }
    return pid;
}

static int stopping_reports;
static void stopping_child_cb(int pid, int status, void *opaque)
{
    child_cb(pid, status, opaque);
    stopping_reports++;
    ql_context_stop_dispatch(ql_get_aio_context());
}

/* A child watch callback that stops the dispatch leaves the other reaped
 * children to the next iterations, one each, none lost. */
static void test_main_loop_child_watch_stop_dispatch_reports_rest_later(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    Child kids[3] = {{0}};
    stopping_reports = 0;
    for (int i = 0; i < 3; i++) {
        kids[i].pid = spawn(3 + i, 0);
        siginfo_t si;
        QL_CHECK_EQ(waitid(P_PID, kids[i].pid, &si, WEXITED | WNOWAIT), 0);
    }
    for (int i = 0; i < 3; i++) {
        QL_CHECK_EQ(ql_add_child_watch(kids[i].pid, stopping_child_cb, &kids[i]), 0);
    }
    for (int n = 1; n <= 3; n++) {
        QL_CHECK_EQ(ql_main_loop_wait(false), 1);
        QL_CHECK_EQ(stopping_reports, n);
    }
    for (int i = 0; i < 3; i++) {
        QL_CHECK_EQ(kids[i].reported, 1);
        QL_CHECK_EQ(WEXITSTATUS(kids[i].status), 3 + i);
    }
    QL_CHECK_EQ(ql_main_loop_wait(true), 0);
    ql_main_loop_cleanup();
}

static void test_main_loop_child_watch_reports_real_children(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    Child early = {0}, kids[3] = {{0}};
    /* exits before the watch exists: must still be reported */
    early.pid = spawn(7, 0);
    siginfo_t si;
    QL_CHECK_EQ(waitid(P_PID, early.pid, &si, WEXITED | WNOWAIT), 0);
    QL_CHECK_EQ(ql_add_child_watch(early.pid, child_cb, &early), 0);
    QL_CHECK_EQ(ql_add_child_watch(early.pid, child_cb, &early), 1);
    /* an unwatched child: its status must be left alone */
    int other = spawn(9, 0);
    for (int i = 0; i < 3; i++) {
        kids[i].pid = spawn(3 + i, 10 * (i + 1));
        QL_CHECK_EQ(ql_add_child_watch(kids[i].pid, child_cb, &kids[i]), 0);
    }
    for (;;) {
        int all = early.reported;
        for (int i = 0; i < 3; i++) {
            all += kids[i].reported;
        }
        if (all == 4) {
            break;
        }
        QL_CHECK(ql_main_loop_wait(false) >= 0); /* SIGCHLD -> BH wakes it */
    }
    QL_CHECK_EQ(early.reported, 1);
    QL_CHECK(WIFEXITED(early.status));
    QL_CHECK_EQ(WEXITSTATUS(early.status), 7);
    for (int i = 0; i < 3; i++) {
        QL_CHECK_EQ(kids[i].reported, 1);
        QL_CHECK(WIFEXITED(kids[i].status));
        QL_CHECK_EQ(WEXITSTATUS(kids[i].status), 3 + i);
    }
    int st;
    QL_CHECK_EQ(waitpid(other, &st, 0), other);
    QL_CHECK_EQ(WEXITSTATUS(st), 9);
    QL_CHECK_EQ(ql_add_child_watch(-1, child_cb, NULL), -EINVAL);
    ql_main_loop_cleanup();
}

static int lock_taken;      /* [atomic] */
static int in_dispatch;     /* [atomic] */
static int overlap;         /* [atomic] */

static void *take_lock_while_blocked(void *opaque)
{
    (void)opaque;
    usleep(20000); /* main thread is (very likely) blocked in poll now */
    ql_iothread_lock();
    if (__atomic_load_n(&in_dispatch, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&overlap, 1, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&lock_taken, 1, __ATOMIC_RELEASE);
    ql_iothread_unlock();
    ql_notify_event();
    return NULL;
}

static void test_main_loop_thread_takes_iothread_lock_while_loop_blocked(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    lock_taken = 0;
    pthread_t th;
    ql_iothread_lock();
    pthread_create(&th, NULL, take_lock_while_blocked, NULL);
    /* held across the call; dropped only inside the blocking poll */
    while (!__atomic_load_n(&lock_taken, __ATOMIC_ACQUIRE)) {
        QL_CHECK(ql_main_loop_wait(false) >= 0);
        QL_CHECK(ql_iothread_locked());
    }
    pthread_join(th, NULL);
    ql_iothread_unlock();
    QL_CHECK(!ql_iothread_locked());
    ql_main_loop_cleanup();
}

static void slow_bh(void *opaque)
{
    (void)opaque;
    QL_CHECK(ql_iothread_locked());
    __atomic_store_n(&in_dispatch, 1, __ATOMIC_RELEASE);
    usleep(30000); /* a thread wanting the lock must wait for us */
    __atomic_store_n(&in_dispatch, 0, __ATOMIC_RELEASE);
}

static void *grab_lock(void *opaque)
{
    (void)opaque;
    while (!__atomic_load_n(&in_dispatch, __ATOMIC_ACQUIRE)) {
    }
    ql_iothread_lock();
    if (__atomic_load_n(&in_dispatch, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&overlap, 1, __ATOMIC_RELEASE);
    }
    ql_iothread_unlock();
    return NULL;
}

static void test_main_loop_iothread_lock_held_while_dispatching(void)
{
    QL_CHECK_EQ(ql_main_loop_init(), 0);
    overlap = 0;
    in_dispatch = 0;
    QL_CHECK(!ql_iothread_locked());
    pthread_t th;
    pthread_create(&th, NULL, grab_lock, NULL);
    ql_bh_schedule_oneshot(ql_get_aio_context(), slow_bh, NULL, "slow");
    QL_CHECK_EQ(ql_main_loop_wait(false), 1);
    QL_CHECK(!ql_iothread_locked()); /* taken for the call only */
    pthread_join(th, NULL);
    QL_CHECK_EQ(overlap, 0);
    ql_main_loop_cleanup();
}

static void test_main_loop_iothread_lock_misuse_is_reported(void)
{
    ql_iothread_unlock(); /* not held: ignored */
    QL_CHECK(!ql_iothread_locked());
    ql_iothread_lock();
    ql_iothread_lock(); /* twice: ignored, still held once */
    QL_CHECK(ql_iothread_locked());
    ql_iothread_unlock();
    QL_CHECK(!ql_iothread_locked());
}

QLTEST_MAIN(QLT(test_main_loop_init_creates_main_and_iohandler_contexts),
            QLT(test_main_loop_notify_event_wakes_wait),
            QLT(test_main_loop_iohandlers_run_only_from_main_loop),
            QLT(test_main_loop_runs_main_context_bhs_and_timers),
            QLT(test_main_loop_polling_cb_runs_each_iteration_and_can_force_nonblocking),
            QLT(test_main_loop_stop_dispatch_skips_the_iohandler_dispatch_of_that_iteration),
            QLT(test_main_loop_polling_cb_stopping_dispatch_skips_it_without_waiting),
            QLT(test_main_loop_child_watch_reports_real_children),
            QLT(test_main_loop_child_watch_stop_dispatch_reports_rest_later),
            QLT(test_main_loop_thread_takes_iothread_lock_while_loop_blocked),
            QLT(test_main_loop_iothread_lock_held_while_dispatching),
            QLT(test_main_loop_iothread_lock_misuse_is_reported))
