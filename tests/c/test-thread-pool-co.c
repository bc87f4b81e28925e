/* ql_thread_pool_submit_co: a coroutine yields while its work runs on a
 * worker thread and resumes in its own thread with the result. */
#include "qltest.h"
#include "qloop/context.h"
#include "qloop/coroutine.h"
#include "qloop/thread-pool.h"

#include <errno.h>
#include <pthread.h>

typedef struct CoJob {
    QLThreadPool *pool;
    int in;
    int out;
    int finished;
    pthread_t worker;
    pthread_t resumed_in;
} CoJob;

static int square(void *arg)
{
    CoJob *j = arg;
    j->worker = pthread_self();
    return j->in * j->in;
}

static void co_entry(void *opaque)
{
    CoJob *j = opaque;
    j->out = ql_thread_pool_submit_co(j->pool, square, j);
    j->resumed_in = pthread_self();
    j->finished = 1;
}

static void test_thread_pool_submit_co_yields_until_done(void)
{
    QLContext *ctx = ql_context_new();
    ql_context_set_current(ctx);
    CoJob jobs[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        jobs[i].pool = ql_context_thread_pool(ctx);
        jobs[i].in = i + 2;
        QLCoroutine *co = ql_coroutine_create(co_entry, &jobs[i]);
        QL_CHECK(co);
        QL_CHECK_EQ(ql_coroutine_enter(co), 0);
        QL_CHECK_EQ(jobs[i].finished, 0); /* yielded while the worker runs */
    }
    while (!(jobs[0].finished && jobs[1].finished && jobs[2].finished)) {
        ql_context_poll(ctx, true);
    }
    for (int i = 0; i < 3; i++) {
        QL_CHECK_EQ(jobs[i].out, (i + 2) * (i + 2));
        QL_CHECK(pthread_equal(jobs[i].resumed_in, pthread_self()));
        QL_CHECK(!pthread_equal(jobs[i].worker, pthread_self()));
    }
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

static void test_thread_pool_submit_co_outside_coroutine_is_eperm(void)
{
    QLContext *ctx = ql_context_new();
    CoJob j = {.pool = ql_context_thread_pool(ctx), .in = 3};
    QL_CHECK_EQ(ql_thread_pool_submit_co(j.pool, square, &j), -EPERM);
    ql_context_free(ctx);
}

QLTEST_MAIN(QLT(test_thread_pool_submit_co_yields_until_done),
            QLT(test_thread_pool_submit_co_outside_coroutine_is_eperm))
