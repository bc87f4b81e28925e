/*
 * qloop/thread-pool.h - worker threads for blocking work, with completions
 * delivered in an AioContext (QEMU's util/thread-pool.c model).
 *
 * A pool belongs to one context, its "home" context.  ql_thread_pool_submit()
 * queues func(arg) for a worker thread; when it has returned, the completion
 * callback cb(opaque, ret) runs in the home context's thread, from a bottom
 * half during ql_context_poll() - never on the worker.
 *
 * Threads: workers are started on demand, up to max_threads (default 64);
 * min_threads (default 0) are kept alive; a worker idle for longer than the
 * idle timeout (default 10 s) exits while more than min_threads exist.
 * Worker threads block every signal, so signals go to the application's
 * threads.
 *
 * Order: the completions a single bottom-half run finds ready are delivered
 * in submission order (FIFO).  QEMU delivers such a batch newest first; qloop
 * chooses FIFO on purpose, so that work submitted together completes in the
 * order it was asked for whenever it finished together.  Completions of
 * requests that finish at different times are delivered in finishing order.
 * A completion callback that calls ql_context_stop_dispatch() on the pool's
 * context ends the batch there: the rest is delivered, in the same order,
 * by the next poll.
 *
 * fork(): the child keeps the pools but none of their workers; its own
 * submits start new ones.  Requests the parent's workers were running never
 * complete in the child.
 *
 * Every context has a default pool, created on first use by
 * ql_context_thread_pool() and freed with the context.  Standalone pools
 * (ql_thread_pool_new) are owned by the caller; if their context is freed
 * first they are shut down with it (see ql_thread_pool_free) and only accept
 * ql_thread_pool_free() afterwards.
 */
#ifndef QLOOP_THREAD_POOL_H
#define QLOOP_THREAD_POOL_H

#include <stdint.h>

#include "qloop/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
typedef struct QLThreadPool QLThreadPool;
typedef struct QLThreadPoolRequest QLThreadPoolRequest;

/* Work run on a worker thread; its return value is handed to the completion
 * callback (by convention 0 or a negative errno). */
typedef int QLThreadPoolFunc(void *arg);
/* Completion, run in the pool's home context thread.  ret is func's return
 * value, or -ECANCELED if the request was cancelled before a worker took it. */
typedef void QLThreadPoolCompletionFunc(void *opaque, int ret);

/* The context's default pool, created on first call.  NULL + errno (EINVAL
 * for a NULL ctx, ENOMEM) on failure.  Any thread. */
QLThreadPool *ql_context_thread_pool(QLContext *ctx);

/* A standalone pool whose completions run in ctx.  NULL + errno (EINVAL for
 * a NULL ctx, ENOMEM) on failure.  Any thread. */
QLThreadPool *ql_thread_pool_new(QLContext *ctx);

/* Shut the pool down and free it.  Requests still queued are cancelled; the
 * call waits (blocking hooks around the wait) until running requests have
 * finished and every worker thread has been joined, then runs every
 * outstanding completion callback synchronously, in submission order:
 * cancelled requests get -ECANCELED, finished ones their func's result.  So
 * each callback runs exactly once, even at shutdown.  A callback that
 * submits to the pool being freed gets NULL (errno ESHUTDOWN).  Freeing the
 * context does the same for its default pool and its standalone pools.
 * Home thread, not from inside one of the pool's completion callbacks.  The
 * default pool must not be freed with this (it belongs to the context). */
void ql_thread_pool_free(QLThreadPool *pool);

/* Thread limits.  Returns -EINVAL if min_threads < 0, max_threads <= 0 or
 * min_threads > max_threads (nothing changes then), else 0.  Starts workers
 * up to min_threads now; workers above max_threads exit once their current
 * request (if any) is done.  Any thread. */
int ql_thread_pool_set_sizes(QLThreadPool *pool, int min_threads, int max_threads);

/* How long a worker waits for work before exiting (while more than
 * min_threads exist): timeout_ns >= 0, or -1 for never.  -EINVAL otherwise.
 * Takes effect for workers already waiting.  Any thread. */
int ql_thread_pool_set_idle_timeout(QLThreadPool *pool, int64_t timeout_ns);

/* Queue func(arg) for a worker; cb(opaque, ret) (may be NULL: fire and
 * forget) runs afterwards in the home context.  Returns a handle for
 * ql_thread_pool_cancel(), valid in the home thread until the completion
 * callback has returned (it is recycled afterwards).  NULL + errno on
 * failure: EINVAL (NULL func), ESHUTDOWN (pool shut down), EAGAIN (no worker
 * thread could be started and none exists), ENOMEM.  Any thread; a caller
 * outside the home thread must not use the returned handle. */
QLThreadPoolRequest *ql_thread_pool_submit(QLThreadPool *pool, QLThreadPoolFunc *func, void *arg,
                                           QLThreadPoolCompletionFunc *cb, void *opaque);

/* Cancel a request.  Still queued: it is removed and its callback will run
 * (from the completion bottom half, never inside this call) with
 * -ECANCELED; returns 1.  Already running or finished: nothing happens, the
 * callback later gets func's real result; returns 0.  Like QEMU, cancelling
 * a request whose callback already ran is not allowed (the handle has been
 * recycled); from inside its own callback it is a no-op returning 0.  Home
 * thread. */
int ql_thread_pool_cancel(QLThreadPoolRequest *req);

/* The pool's home context (NULL once that context was freed). */
QLContext *ql_thread_pool_context(QLThreadPool *pool);

/* Introspection (a snapshot; any thread): worker threads alive, of which
 * waiting for work; requests submitted whose callback has not run yet. */
int ql_thread_pool_num_threads(QLThreadPool *pool);
int ql_thread_pool_num_idle(QLThreadPool *pool);
int ql_thread_pool_num_in_flight(QLThreadPool *pool);

/* Coroutine only: submit func(arg) to pool, yield until it completed, and
 * return its result (-ECANCELED if it was cancelled).  -EPERM outside a
 * coroutine; the errors of ql_thread_pool_submit() as -errno.  The pool's
 * home context should be the coroutine's (the wakeup crosses threads
 * otherwise, through ql_co_wake).  (thread-pool-co.c) */
int ql_thread_pool_submit_co(QLThreadPool *pool, QLThreadPoolFunc *func, void *arg);
/* cffi:end */

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_THREAD_POOL_H */
