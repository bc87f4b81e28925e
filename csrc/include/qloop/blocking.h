/*
 * qloop/blocking.h - hooks around every place where libqloop may block.
 *
 * libqloop never blocks a thread (poll, condition waits, joins) without first
 * calling the installed "begin" hook and calling the "end" hook when it wakes.
 * A language runtime plugs its lock in here: the qloop Python package installs
 * hooks that release the GIL while the thread is blocked and take it back
 * afterwards, so everything else in libqloop runs with the GIL held.
 * Without hooks installed both calls do nothing.
 */
#ifndef QLOOP_BLOCKING_H
#define QLOOP_BLOCKING_H

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
/* begin() returns a token handed to end(); it may return NULL. */
typedef void *(*QLBlockingBeginFunc)(void);
typedef void (*QLBlockingEndFunc)(void *token);

/* Install process-wide hooks (NULL, NULL removes them).  Call once at start-up,
 * before other threads use libqloop. */
void ql_set_blocking_hooks(QLBlockingBeginFunc begin, QLBlockingEndFunc end);

/* Bracket a blocking section: token = ql_blocking_begin(); ...block...;
 * ql_blocking_end(token).  Any thread.  Used by libqloop itself and available
 * to embedders that block in their own code. */
void *ql_blocking_begin(void);
void ql_blocking_end(void *token);
/* cffi:end */

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_BLOCKING_H */
