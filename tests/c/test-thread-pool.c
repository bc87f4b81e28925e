/* Thread pool: completions in the home thread, FIFO batches, cancel,
 * thread limits and idle exit, shutdown with requests in flight. */
#include "qltest.h"
#include "qloop/blocking.h"
#include "qloop/context.h"
#include "qloop/thread-pool.h"
#include "qloop/qemu-compat.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sys/wait.h>
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------- */

/* Work items block on a shared gate until the test opens it (or their own
 * `go` flag is set), so the test decides who is running and who finishes. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_open;
static int entered, running, peak, finished;

typedef struct Job {
    int id;
    int ret;            /* what func returns */
    int gated;          /* wait for the gate (or go) */
    int go;             /* per-job release */
    int ran;            /* func ran (count) */
    pthread_t worker;   /* thread that ran func */
    int calls;          /* completion calls */
    int got;            /* ret seen by the completion */
    pthread_t cb_thread;
    QLThreadPoolRequest *req;
    int *log, *nlog;    /* completion order */
    void (*extra)(struct Job *);
    QLContext *ctx;
    QLThreadPool *pool;
} Job;

static void gate_reset(void)
{
    pthread_mutex_lock(&gate_lock);
    gate_open = entered = running = peak = finished = 0;
    pthread_mutex_unlock(&gate_lock);
}

static void gate_set_open(void)
{
    pthread_mutex_lock(&gate_lock);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

static void job_release(Job *j)
{
    pthread_mutex_lock(&gate_lock);
    j->go = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

static int work(void *arg)
{
    Job *j = arg;
    pthread_mutex_lock(&gate_lock);
    j->ran++;
    j->worker = pthread_self();
    entered++;
    running++;
    if (running > peak) {
        peak = running;
    }
    pthread_cond_broadcast(&gate_cond);
    while (j->gated && !gate_open && !j->go) {
        pthread_cond_wait(&gate_cond, &gate_lock);
    }
    running--;
    finished++;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
    return j->ret;
}

static void done_cb(void *opaque, int ret)
{
    Job *j = opaque;
    j->calls++;
    j->got = ret;
    j->cb_thread = pthread_self();
    if (j->log) {
        j->log[(*j->nlog)++] = j->id;
    }
    if (j->extra) {
        j->extra(j);
    }
}

/* Wait (without polling) until at least n work items entered func. */
static int wait_entered(int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 60;
    pthread_mutex_lock(&gate_lock);
    int r = 0;
    while (entered < n && r == 0) {
        r = pthread_cond_timedwait(&gate_cond, &gate_lock, &dl);
    }
    int ok = entered >= n;
    pthread_mutex_unlock(&gate_lock);
    return ok;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait until the pool has n idle workers: every request they ran has been
 * put on the done list (a worker goes idle only after that). */
static int wait_idle(QLThreadPool *pool, int n)
{
    for (int i = 0; i < 60000; i++) {
        if (ql_thread_pool_num_idle(pool) >= n) {
            return 1;
        }
        nap_ms(1);
    }
    return 0;
}

static int wait_threads(QLThreadPool *pool, int n)
{
    for (int i = 0; i < 60000; i++) {
        if (ql_thread_pool_num_threads(pool) == n) {
            return 1;
        }
        nap_ms(1);
    }
    return 0;
}

static void poll_until_calls(QLContext *ctx, Job *jobs, int n)
{
    for (;;) {
        int all = 1;
        for (int i = 0; i < n; i++) {
            all &= jobs[i].calls > 0;
        }
        if (all) {
            return;
        }
        ql_context_poll(ctx, true);
    }
}

static int count_tasks(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    if (!d) {
        return -1;
    }
    while ((e = readdir(d))) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n;
}

/* Wait until the process has n threads.  pthread_join() returns once the
 * kernel has cleared the thread's tid, which comes before the task is
 * released: its /proc/self/task entry can outlive the join for a moment. */
static int tasks_settle(int n)
{
    for (int i = 0; i < 60000; i++) {
        if (count_tasks() == n) {
            return 1;
        }
        nap_ms(1);
    }
    return 0;
}

/* Blocking hooks that count calls (shutdown must bracket its waits). */
static int hook_begins, hook_ends;
static void *count_begin(void)
{
    __atomic_add_fetch(&hook_begins, 1, __ATOMIC_SEQ_CST);
    return &hook_begins;
}

/* Opens the gate when the pool's shutdown starts waiting: by then queued
 * requests have been cancelled, so the test is deterministic. */
static void *open_gate_begin(void)
{
    gate_set_open();
    return count_begin();
}
static void count_end(void *token)
{
    (void)token;
    __atomic_add_fetch(&hook_ends, 1, __ATOMIC_SEQ_CST);
}

/* ---- tests --------------------------------------------------------------- */

static void test_thread_pool_completion_runs_in_home_thread(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    QL_CHECK(pool);
    Job jobs[8] = {{0}};
    for (int i = 0; i < 8; i++) {
        jobs[i].id = i;
        jobs[i].ret = 100 + i;
        QL_CHECK(ql_thread_pool_submit(pool, work, &jobs[i], done_cb, &jobs[i]));
    }
    poll_until_calls(ctx, jobs, 8);
    for (int i = 0; i < 8; i++) {
        QL_CHECK_EQ(jobs[i].calls, 1);
        QL_CHECK_EQ(jobs[i].got, 100 + i);
        QL_CHECK(pthread_equal(jobs[i].cb_thread, pthread_self()));
        QL_CHECK(!pthread_equal(jobs[i].worker, pthread_self()));
    }
    QL_CHECK_EQ(ql_thread_pool_num_in_flight(pool), 0);
    ql_context_free(ctx);
}

/* Four gated jobs on up to four workers, all running when this returns
 * (1; 0 if they did not start).  extra, if given, is the completion extra
 * of the first three. */
static int submit_gated_batch(QLContext *ctx, QLThreadPool *pool, Job jobs[4], int *log,
                              int *nlog, void (*extra)(Job *))
{
    if (ql_thread_pool_set_sizes(pool, 0, 4) != 0) {
        return 0;
    }
    for (int i = 0; i < 4; i++) {
        jobs[i].id = i;
        jobs[i].gated = 1;
        jobs[i].log = log;
        jobs[i].nlog = nlog;
        jobs[i].ctx = ctx;
        jobs[i].extra = i < 3 ? extra : NULL;
        if (!ql_thread_pool_submit(pool, work, &jobs[i], done_cb, &jobs[i])) {
            return 0;
        }
    }
    return wait_entered(4);
}

static void test_thread_pool_batch_completes_in_submission_order(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    int log[4], nlog = 0;
    Job jobs[4] = {{0}};
    QL_CHECK(submit_gated_batch(ctx, pool, jobs, log, &nlog, NULL));
    /* finish them newest first, one at a time */
    for (int i = 3; i >= 0; i--) {
        job_release(&jobs[i]);
        QL_CHECK(wait_idle(pool, 4 - i));
    }
    QL_CHECK_EQ(nlog, 0); /* nothing is delivered outside a poll */
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(nlog, 4);
    for (int i = 0; i < 4; i++) {
        QL_CHECK_EQ(log[i], i);
    }
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_context_free(ctx);
}

static void stop_dispatch_extra(Job *j)
{
    ql_context_stop_dispatch(j->ctx);
}

/* A completion callback that stops the dispatch (as the Python glue does
 * when a callback raised) ends the batch there: the rest of the batch is
 * delivered by the next polls, in order, one poll per stopping callback. */
static void test_thread_pool_stop_dispatch_leaves_rest_of_batch_to_next_poll(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    int log[4], nlog = 0;
    Job jobs[4] = {{0}};
    QL_CHECK(submit_gated_batch(ctx, pool, jobs, log, &nlog, stop_dispatch_extra));
    gate_set_open();
    QL_CHECK(wait_idle(pool, 4));
    for (int i = 0; i < 3; i++) {
        QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
        QL_CHECK_EQ(nlog, i + 1);
    }
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1); /* the last one does not stop */
    QL_CHECK_EQ(nlog, 4);
    for (int i = 0; i < 4; i++) {
        QL_CHECK_EQ(log[i], i);
    }
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_context_free(ctx);
}

static void test_thread_pool_cancel_queued_request_gets_ecanceled(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 0, 1), 0);
    Job a = {.id = 0, .ret = 7, .gated = 1}, b = {.id = 1, .ret = 8};
    QL_CHECK(ql_thread_pool_submit(pool, work, &a, done_cb, &a));
    QLThreadPoolRequest *rb = ql_thread_pool_submit(pool, work, &b, done_cb, &b);
    QL_CHECK(rb);
    QL_CHECK(wait_entered(1));
    QL_CHECK_EQ(ql_thread_pool_cancel(rb), 1);
    QL_CHECK_EQ(b.calls, 0); /* never called from inside cancel */
    gate_set_open();
    for (;;) {
        if (a.calls && b.calls) {
            break;
        }
        ql_context_poll(ctx, true);
    }
    QL_CHECK_EQ(a.got, 7);
    QL_CHECK_EQ(b.got, -ECANCELED);
    QL_CHECK_EQ(b.ran, 0);
    QL_CHECK_EQ(b.calls, 1);
    QL_CHECK(pthread_equal(b.cb_thread, pthread_self()));
    ql_context_free(ctx);
}

static void test_thread_pool_cancel_running_request_reports_real_result(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    Job a = {.id = 0, .ret = 42, .gated = 1};
    QLThreadPoolRequest *ra = ql_thread_pool_submit(pool, work, &a, done_cb, &a);
    QL_CHECK(ra);
    QL_CHECK(wait_entered(1));
    QL_CHECK_EQ(ql_thread_pool_cancel(ra), 0);
    gate_set_open();
    poll_until_calls(ctx, &a, 1);
    QL_CHECK_EQ(a.got, 42);
    QL_CHECK_EQ(a.ran, 1);
    QL_CHECK_EQ(a.calls, 1);
    ql_context_free(ctx);
}

static void cancel_self(Job *j)
{
    j->got = ql_thread_pool_cancel(j->req) == 0 ? j->got : -9999;
}

static void test_thread_pool_cancel_done_request_is_noop(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    Job a = {.id = 0, .ret = 5, .extra = cancel_self};
    a.req = ql_thread_pool_submit(pool, work, &a, done_cb, &a);
    QL_CHECK(a.req);
    QL_CHECK(wait_idle(pool, 1)); /* finished, not delivered yet */
    QL_CHECK_EQ(ql_thread_pool_cancel(a.req), 0);
    poll_until_calls(ctx, &a, 1);
    QL_CHECK_EQ(a.got, 5); /* and cancel from its own callback returned 0 */
    QL_CHECK_EQ(a.calls, 1);
    ql_context_free(ctx);
}

static void test_thread_pool_set_sizes_rejects_bad_values(void)
{
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 1, 0), -EINVAL);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 0, 0), -EINVAL);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 0, -3), -EINVAL);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, -1, 4), -EINVAL);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 5, 4), -EINVAL);
    QL_CHECK_EQ(ql_thread_pool_set_idle_timeout(pool, -2), -EINVAL);
    QL_CHECK_EQ(ql_thread_pool_num_threads(pool), 0); /* unchanged: lazy */
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 2, 2), 0);
    QL_CHECK_EQ(ql_thread_pool_num_threads(pool), 2); /* min started at once */
    ql_context_free(ctx);
}

static void test_thread_pool_max_threads_bounds_concurrency(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_thread_pool_new(ctx);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 0, 3), 0);
    Job jobs[10] = {{0}};
    for (int i = 0; i < 10; i++) {
        jobs[i].id = i;
        jobs[i].gated = 1;
        QL_CHECK(ql_thread_pool_submit(pool, work, &jobs[i], done_cb, &jobs[i]));
    }
    QL_CHECK(wait_entered(3));
    QL_CHECK_EQ(ql_thread_pool_num_threads(pool), 3);
    gate_set_open();
    poll_until_calls(ctx, jobs, 10);
    QL_CHECK_EQ(peak, 3);
    ql_thread_pool_free(pool);
    ql_context_free(ctx);
}

static void test_thread_pool_idle_workers_exit_down_to_min(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_thread_pool_new(ctx);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 1, 4), 0);
    QL_CHECK_EQ(ql_thread_pool_set_idle_timeout(pool, 1000000), 0); /* 1 ms */
    Job jobs[4] = {{0}};
    for (int i = 0; i < 4; i++) {
        jobs[i].gated = 1;
        QL_CHECK(ql_thread_pool_submit(pool, work, &jobs[i], done_cb, &jobs[i]));
    }
    QL_CHECK(wait_entered(4));
    QL_CHECK_EQ(ql_thread_pool_num_threads(pool), 4);
    gate_set_open();
    poll_until_calls(ctx, jobs, 4);
    QL_CHECK(wait_threads(pool, 1));
    nap_ms(30); /* many idle timeouts later, min_threads still lives */
    QL_CHECK_EQ(ql_thread_pool_num_threads(pool), 1);
    /* and a pool without a timeout keeps its workers */
    QL_CHECK_EQ(ql_thread_pool_set_idle_timeout(pool, -1), 0);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 3, 4), 0);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 0, 4), 0);
    nap_ms(30);
    QL_CHECK_EQ(ql_thread_pool_num_threads(pool), 3);
    /* lowering max makes the excess exit */
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 0, 1), 0);
    QL_CHECK(wait_threads(pool, 1));
    ql_thread_pool_free(pool);
    ql_context_free(ctx);
}

static void test_thread_pool_free_waits_running_cancels_queued_joins_workers(void)
{
    gate_reset();
    int tasks_before = count_tasks();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_thread_pool_new(ctx);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 0, 2), 0);
    Job jobs[5] = {{0}};
    for (int i = 0; i < 5; i++) {
        jobs[i].id = i;
        jobs[i].ret = i;
        jobs[i].gated = 1;
        QL_CHECK(ql_thread_pool_submit(pool, work, &jobs[i], done_cb, &jobs[i]));
    }
    QL_CHECK(wait_entered(2));
    QL_CHECK_EQ(count_tasks(), tasks_before + 2);
    hook_begins = hook_ends = 0;
    ql_set_blocking_hooks(open_gate_begin, count_end);
    ql_thread_pool_free(pool);
    ql_set_blocking_hooks(NULL, NULL);
    QL_CHECK(hook_begins >= 1);
    QL_CHECK_EQ(hook_begins, hook_ends);
    for (int i = 0; i < 5; i++) {
        QL_CHECK_EQ(jobs[i].calls, 1);
        QL_CHECK(pthread_equal(jobs[i].cb_thread, pthread_self()));
    }
    QL_CHECK_EQ(jobs[0].got, 0);
    QL_CHECK_EQ(jobs[1].got, 1);
    for (int i = 2; i < 5; i++) {
        QL_CHECK_EQ(jobs[i].got, -ECANCELED);
        QL_CHECK_EQ(jobs[i].ran, 0);
    }
    QL_CHECK(tasks_settle(tasks_before)); /* every worker joined */
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_context_free(ctx);
}

static void resubmit(Job *j)
{
    errno = 0;
    QL_CHECK(!ql_thread_pool_submit(j->pool, work, j, done_cb, j));
    j->got = -errno;
}

static void test_thread_pool_context_free_shuts_down_its_pools(void)
{
    gate_reset();
    int tasks_before = count_tasks();
    QLContext *ctx = ql_context_new();
    /* Pools are shut down newest first: def's shutdown, which opens the
     * gate through the blocking hook, comes before own's. */
    QLThreadPool *own = ql_thread_pool_new(ctx);
    QLThreadPool *def = ql_context_thread_pool(ctx);
    QL_CHECK(def && own && def != own);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(def, 0, 1), 0);
    Job a = {.id = 0, .ret = 1, .gated = 1}, b = {.id = 1, .ret = 2};
    Job c = {.id = 2, .ret = 3, .extra = resubmit, .pool = own};
    QL_CHECK(ql_thread_pool_submit(own, work, &c, done_cb, &c));
    QL_CHECK(wait_idle(own, 1)); /* c finished, not delivered */
    QL_CHECK(ql_thread_pool_submit(def, work, &a, done_cb, &a));
    QL_CHECK(ql_thread_pool_submit(def, work, &b, done_cb, &b));
    QL_CHECK(wait_entered(2));
    ql_set_blocking_hooks(open_gate_begin, count_end);
    ql_context_free(ctx);
    ql_set_blocking_hooks(NULL, NULL);
    QL_CHECK_EQ(a.calls, 1);
    QL_CHECK_EQ(a.got, 1);
    QL_CHECK_EQ(b.calls, 1);
    QL_CHECK_EQ(b.got, -ECANCELED); /* queued behind a when the context went */
    QL_CHECK_EQ(c.calls, 1);
    QL_CHECK_EQ(c.got, -ESHUTDOWN); /* its callback's resubmit was refused */
    QL_CHECK(ql_thread_pool_context(own) == NULL);
    errno = 0;
    QL_CHECK(!ql_thread_pool_submit(own, work, &b, done_cb, &b));
    QL_CHECK_EQ(errno, ESHUTDOWN);
    ql_thread_pool_free(own);
    QL_CHECK(tasks_settle(tasks_before));
}

static void test_thread_pool_default_pool_is_one_per_context(void)
{
    QLContext *c1 = ql_context_new(), *c2 = ql_context_new();
    QLThreadPool *p1 = ql_context_thread_pool(c1);
    QL_CHECK(p1);
    QL_CHECK(ql_context_thread_pool(c1) == p1);
    QL_CHECK(ql_context_thread_pool(c2) != p1);
    QL_CHECK(ql_thread_pool_context(p1) == c1);
    /* freeing the default pool directly is refused; it stays usable */
    ql_thread_pool_free(p1);
    QL_CHECK(ql_context_thread_pool(c1) == p1);
    QL_CHECK(ql_thread_pool_context(p1) == c1);
    errno = 0;
    QL_CHECK(!ql_context_thread_pool(NULL));
    QL_CHECK_EQ(errno, EINVAL);
    ql_context_free(c1);
    ql_context_free(c2);
}

static int count_only(void *arg)
{
    __atomic_add_fetch((int *)arg, 1, __ATOMIC_RELAXED);
    return 0;
}

static int delivered;
static void count_cb(void *opaque, int ret)
{
    (void)opaque;
    (void)ret;
    delivered++;
}

static void test_thread_pool_10000_requests_in_flight_complete(void)
{
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    int ran = 0;
    delivered = 0;
    for (int i = 0; i < 10000; i++) {
        QL_CHECK(ql_thread_pool_submit(pool, count_only, &ran, count_cb, NULL));
    }
    while (delivered < 10000) {
        ql_context_poll(ctx, true);
    }
    QL_CHECK_EQ(__atomic_load_n(&ran, __ATOMIC_RELAXED), 10000);
    QL_CHECK_EQ(ql_thread_pool_num_in_flight(pool), 0);
    QL_CHECK(ql_thread_pool_num_threads(pool) <= 64);
    ql_context_free(ctx);
}

static void test_thread_pool_request_without_callback_completes(void)
{
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    int ran = 0;
    QL_CHECK(ql_thread_pool_submit(pool, count_only, &ran, NULL, NULL));
    while (ql_thread_pool_num_in_flight(pool) > 0) {
        ql_context_poll(ctx, true);
    }
    QL_CHECK_EQ(__atomic_load_n(&ran, __ATOMIC_RELAXED), 1);
    errno = 0;
    QL_CHECK(!ql_thread_pool_submit(pool, NULL, NULL, NULL, NULL));
    QL_CHECK_EQ(errno, EINVAL);
    ql_context_free(ctx);
}

/* A callback that polls the context until another request of the same
 * batch has been delivered: the nested poll must deliver it. */
static void wait_for_next(Job *j)
{
    Job *other = j + 1;
    for (int i = 0; i < 1000 && !other->calls; i++) {
        ql_context_poll(j->ctx, false);
    }
    j->got = other->calls ? j->got : -9999;
}

static void test_thread_pool_callback_may_poll_for_another_completion(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    Job jobs[2] = {{.id = 0, .ret = 1, .gated = 1, .extra = wait_for_next, .ctx = ctx},
                   {.id = 1, .ret = 2, .gated = 1}};
    QL_CHECK(ql_thread_pool_submit(pool, work, &jobs[0], done_cb, &jobs[0]));
    QL_CHECK(ql_thread_pool_submit(pool, work, &jobs[1], done_cb, &jobs[1]));
    QL_CHECK(wait_entered(2));
    gate_set_open();
    QL_CHECK(wait_idle(pool, 2));
    QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
    QL_CHECK_EQ(jobs[0].calls, 1);
    QL_CHECK_EQ(jobs[0].got, 1);
    QL_CHECK_EQ(jobs[1].calls, 1);
    QL_CHECK_EQ(jobs[1].got, 2);
    /* the extra run scheduled for the nested poll was dropped */
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_context_free(ctx);
}

typedef struct Submitter {
    QLThreadPool *pool;
    Job *jobs;
    int n;
} Submitter;

static void *submit_from_thread(void *arg)
{
    Submitter *s = arg;
    for (int i = 0; i < s->n; i++) {
        ql_thread_pool_submit(s->pool, work, &s->jobs[i], done_cb, &s->jobs[i]);
    }
    return NULL;
}

static void test_thread_pool_submit_from_other_thread_completes_in_home(void)
{
    gate_reset();
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    Job jobs[16] = {{0}};
    Submitter s = {pool, jobs, 16};
    pthread_t t;
    pthread_create(&t, NULL, submit_from_thread, &s);
    pthread_join(t, NULL);
    poll_until_calls(ctx, jobs, 16);
    for (int i = 0; i < 16; i++) {
        QL_CHECK_EQ(jobs[i].calls, 1);
        QL_CHECK(pthread_equal(jobs[i].cb_thread, pthread_self()));
    }
    ql_context_free(ctx);
}

/* QEMU's names from qloop/qemu-compat.h reach the current context's pool. */
static void test_thread_pool_qemu_compat_names_use_current_context(void)
{
    QLContext *ctx = ql_context_new();
    ql_context_set_current(ctx);
    QL_CHECK(aio_get_thread_pool(ctx) == ql_context_thread_pool(ctx));
    Job a = {.id = 0, .ret = 9};
    int ran = 0;
    QL_CHECK(thread_pool_submit_aio(work, &a, done_cb, &a) != NULL);
    thread_pool_submit(count_only, &ran);
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    while (a.calls == 0 || ql_thread_pool_num_in_flight(pool) > 0) {
        ql_context_poll(ctx, true);
    }
    QL_CHECK_EQ(a.got, 9);
    QL_CHECK_EQ(__atomic_load_n(&ran, __ATOMIC_RELAXED), 1);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

/* After fork() the child has none of the parent's workers: the pool starts
 * new ones for the child's requests. */
static void test_thread_pool_works_in_a_forked_child(void)
{
#if defined(__SANITIZE_THREAD__)
    return; /* ThreadSanitizer refuses threads after a multi-threaded fork */
#endif
#ifdef RUNNING_ON_VALGRIND
    /* The child inherits the parent's thread bookkeeping (stacks, TLS) for
     * threads that do not exist there: Valgrind reports it as leaked. */
    if (RUNNING_ON_VALGRIND) {
        return;
    }
#endif
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 2, 4), 0);
    QL_CHECK_EQ(ql_thread_pool_num_threads(pool), 2);
    pid_t pid = fork();
    QL_CHECK(pid >= 0);
    if (pid == 0) {
        int ran = 0;
        delivered = 0;
        int ok = ql_thread_pool_num_threads(pool) == 0 &&
                 ql_thread_pool_submit(pool, count_only, &ran, count_cb, NULL) != NULL;
        while (ok && delivered < 1) {
            ql_context_poll(ctx, true);
        }
        _exit(ok && __atomic_load_n(&ran, __ATOMIC_RELAXED) == 1 ? 0 : 1);
    }
    int status = 0;
    QL_CHECK_EQ(waitpid(pid, &status, 0), pid);
    QL_CHECK(WIFEXITED(status));
    QL_CHECK_EQ(WEXITSTATUS(status), 0);
    QL_CHECK_EQ(ql_thread_pool_num_threads(pool), 2); /* the parent's are intact */
    ql_context_free(ctx);
}

QLTEST_MAIN(QLT(test_thread_pool_completion_runs_in_home_thread),
            QLT(test_thread_pool_batch_completes_in_submission_order),
            QLT(test_thread_pool_stop_dispatch_leaves_rest_of_batch_to_next_poll),
            QLT(test_thread_pool_cancel_queued_request_gets_ecanceled),
            QLT(test_thread_pool_cancel_running_request_reports_real_result),
            QLT(test_thread_pool_cancel_done_request_is_noop),
            QLT(test_thread_pool_set_sizes_rejects_bad_values),
            QLT(test_thread_pool_max_threads_bounds_concurrency),
            QLT(test_thread_pool_idle_workers_exit_down_to_min),
            QLT(test_thread_pool_free_waits_running_cancels_queued_joins_workers),
            QLT(test_thread_pool_context_free_shuts_down_its_pools),
            QLT(test_thread_pool_default_pool_is_one_per_context),
            QLT(test_thread_pool_10000_requests_in_flight_complete),
            QLT(test_thread_pool_request_without_callback_completes),
            QLT(test_thread_pool_callback_may_poll_for_another_completion),
            QLT(test_thread_pool_submit_from_other_thread_completes_in_home),
            QLT(test_thread_pool_qemu_compat_names_use_current_context),
            QLT(test_thread_pool_works_in_a_forked_child))
