/*
 * qloop/task.h - QIOTask: one asynchronous operation whose completion
 * callback runs exactly once (QEMU's io/task.c model, in C).
 *
 * A task holds a source object (given with a release function, called when
 * the task is freed: the task's "reference"), a completion callback
 * func(task, opaque) and optional error and result.  Completing runs func
 * once and frees the task; the callback reads the outcome with
 * ql_task_propagate_error() and ql_task_get_result_pointer().
 *
 * Freeing releases, in this order: the worker's opaque (its destroy), the
 * callback's opaque (destroy), the result (its destroy), the error message,
 * and finally the source (source_release).
 *
 * Errors are a negative errno with an optional message (copied).
 */
#ifndef QLOOP_TASK_H
#define QLOOP_TASK_H

#include "qloop/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
typedef struct QLTask QLTask;
typedef void QLTaskFunc(QLTask *task, void *opaque);
typedef void QLTaskDestroy(void *data);

/* New task on `source` (may be NULL; source_release(source), if given, runs
 * when the task is freed).  func(task, opaque) is the completion callback;
 * destroy(opaque), if given, runs when the task is freed.  Nothing runs
 * yet.  NULL + errno (EINVAL for a NULL func, ENOMEM).  Any thread. */
QLTask *ql_task_new(void *source, QLTaskDestroy *source_release, QLTaskFunc *func, void *opaque,
                    QLTaskDestroy *destroy);

/* The source (no new reference). */
void *ql_task_get_source(QLTask *task);

/* Record an error: err is a negative errno, message may be NULL (copied).
 * Only the first error is kept; later ones are ignored, and err == 0 is a
 * no-op.  Any thread that owns the task (its worker, while it runs). */
void ql_task_set_error(QLTask *task, int err, const char *message);

/* Peek: the stored error (0 if none); *message (if not NULL) gets the
 * stored message or NULL, owned by the task. */
int ql_task_get_error(QLTask *task, const char **message);

/* Take the error out of the task: returns it (0 if none) and clears it.
 * *message (if not NULL) receives the message, which the caller then owns
 * and frees with free(); NULL if there was none. */
int ql_task_propagate_error(QLTask *task, char **message);

/* Store a result pointer; destroy(result) runs when the task is freed (so
 * the callback must take what it needs).  Replaces (and destroys) an
 * earlier one. */
void ql_task_set_result_pointer(QLTask *task, void *result, QLTaskDestroy *destroy);
void *ql_task_get_result_pointer(QLTask *task);

/* Run the callback now, in the calling thread, then free the task (unless
 * a worker's completion still holds it; it is freed after that).  Returns
 * 0, or -EINVAL (misuse) if the task already completed or a worker thread
 * is running for it (the worker's completion, or ql_task_wait_thread,
 * completes it then). */
int ql_task_complete(QLTask *task);

/* ql_task_set_error(task, err, message) then ql_task_complete(task). */
int ql_task_abort(QLTask *task, int err, const char *message);

/* Run worker(task, worker_opaque) on a thread of ctx's default thread pool
 * (ctx NULL: the calling thread's current context).  The worker stores the
 * outcome with ql_task_set_error / ql_task_set_result_pointer.  When it
 * returns, the task is completed in ctx's thread, from ctx's poll (never on
 * the worker).  If ctx is freed before a worker took the job, the task is
 * completed during ql_context_free with error -ECANCELED.  destroy(
 * worker_opaque), if given, runs when the task is freed.  Returns 0, -EINVAL
 * (no context, task completed, or a worker already started), or the
 * errors of ql_thread_pool_submit as -errno. */
int ql_task_run_in_thread(QLTask *task, QLTaskFunc *worker, void *worker_opaque,
                          QLTaskDestroy *destroy, QLContext *ctx);

/* Block until the worker started by ql_task_run_in_thread has returned
 * (blocking hooks around the wait), then complete the task synchronously
 * here; the completion queued by the worker then does nothing.  From ctx's
 * thread, before the task completed.  Returns 0, or -EINVAL if no worker
 * was started or the task already completed. */
int ql_task_wait_thread(QLTask *task);
/* cffi:end */

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_TASK_H */
