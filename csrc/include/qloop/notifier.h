/*
 * qloop/notifier.h - event notifier: a pollable, thread- and signal-safe flag.
 *
 * An event notifier is one bit of state behind a file descriptor.  Any thread,
 * and any signal handler, may set it; the owner polls its read fd and clears it
 * with ql_notifier_test_and_clear().  On Linux it is an eventfd; elsewhere, or
 * when the environment variable QLOOP_NOTIFIER=pipe is set when the notifier is
 * created, it is a non-blocking pipe pair.  Both fds are close-on-exec.
 */
#ifndef QLOOP_NOTIFIER_H
#define QLOOP_NOTIFIER_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
/* Which kernel object backs a notifier. */
typedef enum QLNotifierKind {
    QL_NOTIFIER_EVENTFD = 0,
    QL_NOTIFIER_PIPE = 1
} QLNotifierKind;

/* An event notifier.  Embed it or allocate it; initialise with
 * ql_notifier_init().  rfd == wfd for an eventfd.  Both are -1 once closed. */
typedef struct QLNotifier {
    int rfd;
    int wfd;
    QLNotifierKind kind;
} QLNotifier;

/* Initialise `n` in the cleared state.  Honors QLOOP_NOTIFIER=pipe.
 * Returns 0, or a negative errno (-EMFILE, -ENFILE, -ENOMEM) with `n` left
 * closed (both fds -1).  Any thread. */
int ql_notifier_init(QLNotifier *n);

/* Like ql_notifier_init() but with an explicit backend, ignoring the
 * environment.  Returns -ENOSYS for QL_NOTIFIER_EVENTFD where eventfd is not
 * available. */
int ql_notifier_init_kind(QLNotifier *n, QLNotifierKind kind);

/* Set the notifier: its read fd becomes readable until it is cleared.
 * Setting a set notifier is a no-op.  Thread-safe and async-signal-safe
 * (one write(2), errno preserved).  Returns 0, or -EBADF once closed. */
int ql_notifier_set(QLNotifier *n);

/* Clear the notifier and report whether it was set (1) or not (0).
 * Returns -EBADF once closed.  Meant for the one thread that polls it; a
 * set() racing with it is either consumed now or seen by the next call. */
int ql_notifier_test_and_clear(QLNotifier *n);

/* Block until the notifier is set or `timeout_ns` passes (negative: no
 * limit).  Does not clear it.  Returns 1 if set, 0 on timeout, -EBADF once
 * closed, -EINTR if a signal handler interrupted the wait (not retried: the
 * caller runs its own signal handling, then calls again with the time left).
 * Brackets the wait with ql_blocking_begin()/end().  Any thread. */
int ql_notifier_wait(QLNotifier *n, long long timeout_ns);

/* The fd to poll for readability, or -EBADF once closed. */
int ql_notifier_fd(const QLNotifier *n);

/* Close both fds.  Idempotent.  No other thread may use `n` concurrently. */
void ql_notifier_close(QLNotifier *n);

/* The backend ql_notifier_init() would pick now ("eventfd" or "pipe"). */
const char *ql_notifier_default_kind(void);
/* cffi:end */

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_NOTIFIER_H */
