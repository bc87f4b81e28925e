/*
 * qloop/main-loop.h - the process-wide main loop (QEMU's util/main-loop.c).
 *
 * ql_main_loop_init() creates two contexts: the main AioContext (BHs,
 * timers, block-layer style fd handlers; what ql_get_aio_context() returns)
 * and the iohandler context, which holds the handlers registered with
 * ql_set_fd_handler().  ql_main_loop_wait() runs both: it embeds each
 * through its ql_context_fd() (prepare, one poll(2) on the two fds,
 * check, dispatch: main context first, then the iohandler context), so
 * iohandlers run only from the main loop, never from a ql_context_poll() of
 * the main context (a nested poll of the main context does not run them).
 *
 * The iothread lock (QEMU's BQL) is a process-wide mutex.
 * ql_main_loop_wait() holds it while it dispatches and drops it while it is
 * blocked in poll(2); a thread that takes it meanwhile makes the main loop
 * wait for it before dispatching.  If the caller of ql_main_loop_wait()
 * does not hold it, it is taken for the call and released at the end.
 */
#ifndef QLOOP_MAIN_LOOP_H
#define QLOOP_MAIN_LOOP_H

#include <stdbool.h>

#include "qloop/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
/* Polling callback: called at the start of every main-loop iteration;
 * returning true makes that iteration non-blocking. */
typedef bool QLPollingFunc(void *opaque);
/* Child watch callback: the child exited; status as from waitpid(2), or -1
 * if it could not be collected (someone else reaped it). */
typedef void QLChildWatchFunc(int pid, int status, void *opaque);

/* Create the main and iohandler contexts (idempotent) and make the main
 * context the calling thread's current context.  0 or a negative errno. */
int ql_main_loop_init(void);
/* Undo ql_main_loop_init(): free both contexts, forget watches and polling
 * callbacks, restore the previous SIGCHLD handler.  For tests and clean
 * shutdown; the thread that ran the main loop, outside of it. */
void ql_main_loop_cleanup(void);

/* The main context / the iohandler context, or NULL before init. */
QLContext *ql_get_aio_context(void);
QLContext *ql_get_iohandler_context(void);

/* One main-loop iteration: polling callbacks, then wait (unless
 * nonblocking or a polling callback returned true) until either context
 * has work, then dispatch both.  The iteration counts as one dispatch: a
 * callback that calls ql_context_stop_dispatch() on either context (a
 * polling callback or one of the main context's, e.g. the iohandler
 * context's) makes the iteration skip that context's dispatch if it has not
 * started yet (and not wait); its work stays ready for the next iteration.
 * Returns 1 if a callback ran, 0 if not, or
 * a negative errno (-EINVAL before init; -EBADF as ql_context_poll()).
 * The main loop's thread. */
int ql_main_loop_wait(bool nonblocking);

/* Wake the main loop (schedules a BH that does nothing, F122).  Any
 * thread; async-signal-safe once the main loop exists. */
void ql_notify_event(void);

/* fd handlers on the iohandler context (both NULL removes).  0 or a
 * negative errno.  The main loop's thread. */
int ql_set_fd_handler(int fd, QLIOHandler *fd_read, QLIOHandler *fd_write, void *opaque);

/* Polling callbacks.  add: 0 or -ENOMEM; del removes the first entry with
 * the same fn and opaque (0, or -ENOENT).  The main loop's thread (a
 * callback may add or remove callbacks). */
int ql_add_polling_cb(QLPollingFunc *fn, void *opaque);
int ql_del_polling_cb(QLPollingFunc *fn, void *opaque);

/* Report the exit of child `pid` through cb(pid, status, opaque), from the
 * main loop.  A SIGCHLD handler (installed on first use, chaining to the
 * previous handler) only schedules a BH; the BH reaps with
 * waitpid(pid, WNOHANG) only the watched pids, so other children's statuses
 * are left to their owners.  A child that exited before the watch was added
 * is reported too.  Returns 0, 1 if pid was already watched, or a negative
 * errno (-EINVAL before init or for pid <= 0).  Any thread. */
int ql_add_child_watch(int pid, QLChildWatchFunc *cb, void *opaque);

/* The iothread lock.  lock blocks (bracketed by the blocking hooks) until
 * the mutex is free; taking it twice in one thread or unlocking it without
 * holding it is misuse (ignored, or abort with ql_set_abort_on_misuse). */
void ql_iothread_lock(void);
void ql_iothread_unlock(void);
/* True if the calling thread holds it. */
bool ql_iothread_locked(void);
/* cffi:end */

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_MAIN_LOOP_H */
