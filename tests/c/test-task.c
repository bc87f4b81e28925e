/* QIOTask in C: callback once, error rules, free order, worker threads. */
#include "qltest.h"
#include "qloop/blocking.h"
#include "qloop/context.h"
#include "qloop/task.h"
#include "qloop/thread-pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static char freed[16];
static int nfreed;

static void note_free(void *data)
{
    freed[nfreed++] = *(char *)data;
}

typedef struct Outcome {
    int calls;
    int err;
    char *message;
    void *result;
    void *source;
    pthread_t thread;
} Outcome;

static void record(QLTask *task, void *opaque)
{
    Outcome *o = opaque;
    o->calls++;
    o->thread = pthread_self();
    o->source = ql_task_get_source(task);
    o->result = ql_task_get_result_pointer(task);
    o->err = ql_task_propagate_error(task, &o->message);
}

static void test_task_complete_runs_callback_once_then_frees_in_order(void)
{
    static char src = 's', res = 'r';
    Outcome o = {0};
    nfreed = 0;
    QLTask *t = ql_task_new(&src, note_free, record, &o, NULL);
    QL_CHECK(t);
    QL_CHECK(ql_task_get_source(t) == &src);
    ql_task_set_result_pointer(t, &res, note_free);
    QL_CHECK_EQ(ql_task_complete(t), 0);
    QL_CHECK_EQ(o.calls, 1);
    QL_CHECK(o.source == &src && o.result == &res);
    QL_CHECK_EQ(o.err, 0);
    QL_CHECK(o.message == NULL);
    QL_CHECK_EQ(nfreed, 2);
    QL_CHECK(memcmp(freed, "rs", 2) == 0); /* result, then source */
}

static void noop_cb(QLTask *task, void *opaque)
{
    (void)task;
    (void)opaque;
}

static void set_result_worker(QLTask *task, void *opaque)
{
    (void)opaque;
    static char res = 'r';
    ql_task_set_result_pointer(task, &res, note_free);
}

static void test_task_free_releases_worker_opaque_opaque_result_source_in_order(void)
{
    static char src = 's', op = 'o', wop = 'w';
    QLContext *ctx = ql_context_new();
    nfreed = 0;
    QLTask *t = ql_task_new(&src, note_free, noop_cb, &op, note_free);
    QL_CHECK_EQ(ql_task_run_in_thread(t, set_result_worker, &wop, note_free, ctx), 0);
    while (nfreed < 4) {
        ql_context_poll(ctx, true);
    }
    QL_CHECK(memcmp(freed, "wors", 4) == 0);
    ql_context_free(ctx);
}

static void test_task_first_error_wins_and_propagate_moves_it(void)
{
    Outcome o = {0};
    QLTask *t = ql_task_new(NULL, NULL, record, &o, NULL);
    ql_task_set_error(t, 0, "ignored");
    QL_CHECK_EQ(ql_task_get_error(t, NULL), 0);
    ql_task_set_error(t, -ECONNREFUSED, "refused");
    ql_task_set_error(t, -EIO, "later");
    const char *msg;
    QL_CHECK_EQ(ql_task_get_error(t, &msg), -ECONNREFUSED);
    QL_CHECK(strcmp(msg, "refused") == 0);
    QL_CHECK_EQ(ql_task_complete(t), 0);
    QL_CHECK_EQ(o.err, -ECONNREFUSED);
    QL_CHECK(o.message && strcmp(o.message, "refused") == 0);
    free(o.message);
}

static void test_task_abort_completes_with_the_error(void)
{
    Outcome o = {0};
    QLTask *t = ql_task_new(NULL, NULL, record, &o, NULL);
    QL_CHECK_EQ(ql_task_abort(t, -ETIMEDOUT, NULL), 0);
    QL_CHECK_EQ(o.calls, 1);
    QL_CHECK_EQ(o.err, -ETIMEDOUT);
    QL_CHECK(o.message == NULL);
}

static void double_complete(QLTask *task, void *opaque)
{
    int *r = opaque;
    *r = ql_task_complete(task); /* from its own callback: refused */
}

static void test_task_complete_twice_is_refused(void)
{
    int r = 1;
    QLTask *t = ql_task_new(NULL, NULL, double_complete, &r, NULL);
    QL_CHECK_EQ(ql_task_complete(t), 0);
    QL_CHECK_EQ(r, -EINVAL);
    errno = 0;
    QL_CHECK(!ql_task_new(NULL, NULL, NULL, NULL, NULL));
    QL_CHECK_EQ(errno, EINVAL);
}

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_open;

static void gate_set(int v)
{
    pthread_mutex_lock(&gate_lock);
    gate_open = v;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

static pthread_t worker_thread;
static void worker_fn(QLTask *task, void *opaque)
{
    (void)opaque;
    worker_thread = pthread_self();
    pthread_mutex_lock(&gate_lock);
    while (!gate_open) {
        pthread_cond_wait(&gate_cond, &gate_lock);
    }
    pthread_mutex_unlock(&gate_lock);
    static char res = 'R';
    ql_task_set_result_pointer(task, &res, NULL);
    ql_task_set_error(task, -EPIPE, "from worker");
}

static void test_task_run_in_thread_completes_in_context_thread(void)
{
    static char wop = 'w';
    QLContext *ctx = ql_context_new();
    Outcome o = {0};
    gate_set(1);
    nfreed = 0;
    QLTask *t = ql_task_new(NULL, NULL, record, &o, NULL);
    QL_CHECK_EQ(ql_task_run_in_thread(t, worker_fn, &wop, note_free, ctx), 0);
    QL_CHECK_EQ(ql_task_complete(t), -EINVAL); /* the worker's completion does it */
    QL_CHECK_EQ(ql_task_run_in_thread(t, worker_fn, NULL, NULL, ctx), -EINVAL);
    while (!o.calls) {
        ql_context_poll(ctx, true);
    }
    QL_CHECK_EQ(o.calls, 1);
    QL_CHECK(pthread_equal(o.thread, pthread_self()));
    QL_CHECK(!pthread_equal(worker_thread, pthread_self()));
    QL_CHECK_EQ(*(char *)o.result, 'R');
    QL_CHECK_EQ(o.err, -EPIPE);
    QL_CHECK(strcmp(o.message, "from worker") == 0);
    free(o.message);
    QL_CHECK_EQ(nfreed, 1); /* the worker's opaque */
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_context_free(ctx);
}

static void *open_later(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL);
    gate_set(1);
    return NULL;
}

static void test_task_wait_thread_completes_now_and_only_once(void)
{
    QLContext *ctx = ql_context_new();
    Outcome o = {0};
    gate_set(0);
    QLTask *t = ql_task_new(NULL, NULL, record, &o, NULL);
    QL_CHECK_EQ(ql_task_wait_thread(t), -EINVAL); /* no worker yet */
    QL_CHECK_EQ(ql_task_run_in_thread(t, worker_fn, NULL, NULL, ctx), 0);
    pthread_t opener;
    pthread_create(&opener, NULL, open_later, NULL);
    QL_CHECK_EQ(ql_task_wait_thread(t), 0);
    pthread_join(opener, NULL);
    QL_CHECK_EQ(o.calls, 1);
    QL_CHECK(pthread_equal(o.thread, pthread_self()));
    free(o.message);
    /* the worker's queued completion runs and does nothing */
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    while (ql_thread_pool_num_in_flight(pool) > 0) {
        ql_context_poll(ctx, true);
    }
    QL_CHECK_EQ(o.calls, 1);
    ql_context_free(ctx);
}

static void *open_gate_begin(void)
{
    gate_set(1);
    return NULL;
}

static void end_noop(void *token)
{
    (void)token;
}

static void test_task_queued_worker_cancelled_by_context_free(void)
{
    QLContext *ctx = ql_context_new();
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    QL_CHECK_EQ(ql_thread_pool_set_sizes(pool, 0, 1), 0);
    gate_set(0);
    Outcome busy = {0}, queued = {0};
    QLTask *t1 = ql_task_new(NULL, NULL, record, &busy, NULL);
    QLTask *t2 = ql_task_new(NULL, NULL, record, &queued, NULL);
    QL_CHECK_EQ(ql_task_run_in_thread(t1, worker_fn, NULL, NULL, ctx), 0);
    QL_CHECK_EQ(ql_task_run_in_thread(t2, worker_fn, NULL, NULL, ctx), 0);
    /* the gate opens once the shutdown waits: t2 is cancelled by then */
    ql_set_blocking_hooks(open_gate_begin, end_noop);
    ql_context_free(ctx);
    ql_set_blocking_hooks(NULL, NULL);
    QL_CHECK_EQ(busy.calls, 1);
    QL_CHECK_EQ(queued.calls, 1);
    QL_CHECK_EQ(queued.err, -ECANCELED);
    QL_CHECK(busy.err == -EPIPE || busy.err == -ECANCELED);
    free(busy.message);
    free(queued.message);
}

QLTEST_MAIN(QLT(test_task_complete_runs_callback_once_then_frees_in_order),
            QLT(test_task_free_releases_worker_opaque_opaque_result_source_in_order),
            QLT(test_task_first_error_wins_and_propagate_moves_it),
            QLT(test_task_abort_completes_with_the_error),
            QLT(test_task_complete_twice_is_refused),
            QLT(test_task_run_in_thread_completes_in_context_thread),
            QLT(test_task_wait_thread_completes_now_and_only_once),
            QLT(test_task_queued_worker_cancelled_by_context_free))
