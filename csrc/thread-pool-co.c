/*
 * ql_thread_pool_submit_co: submit from a coroutine and yield until done
 * (QEMU's thread_pool_submit_co).  Separate from thread-pool.c so that the
 * pool does not depend on the coroutine core.
 */
#include "qloop/coroutine.h"
#include "qloop/thread-pool.h"
#include "misuse.h"

#include <errno.h>
#include <stdbool.h>

typedef struct CoWaiter {
    QLCoroutine *co;
    int ret;
    bool done;
} CoWaiter;

/* Completion, in the pool's home thread: record and wake the submitter. */
static void co_submit_done(void *opaque, int ret)
{
    CoWaiter *w = opaque;
    w->ret = ret;
    w->done = true;
    ql_co_wake(w->co);
}

int ql_thread_pool_submit_co(QLThreadPool *pool, QLThreadPoolFunc *func, void *arg)
{
    QLCoroutine *self = ql_coroutine_self();
    if (!self) {
        return ql__misuse(-EPERM, "ql_thread_pool_submit_co() called outside a coroutine");
    }
    CoWaiter w = {.co = self, .ret = 0, .done = false};
    if (!ql_thread_pool_submit(pool, func, arg, co_submit_done, &w)) {
        return -errno;
    }
    /* Loop: another party may wake us early; w lives on our stack until
     * the completion has run. */
    while (!w.done) {
        ql_coroutine_yield();
    }
    return w.ret;
}
