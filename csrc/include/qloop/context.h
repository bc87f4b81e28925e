/*
 * qloop/context.h - AioContext: bottom halves, timers and clocks, fd handlers,
 * notify/poll and GSource-style embedding.
 *
 * Model: QEMU's AioContext.  One thread at a time runs a context ("its home
 * thread": the thread calling ql_context_poll/dispatch).  Scheduling a BH,
 * ql_context_notify(), ql_timer_mod()/ql_timer_del() and ql_co_schedule() are
 * safe from any thread; everything else belongs to the home thread.
 *
 * Order inside one poll: bottom halves, then ready fd handlers, then expired
 * timers (REALTIME, VIRTUAL, HOST).  BHs scheduled while BHs are being
 * dispatched run in the next poll.  Callbacks may call ql_context_poll()
 * (nested poll): it dispatches what is ready, continuing the outer batch of
 * BHs first.
 */
#ifndef QLOOP_CONTEXT_H
#define QLOOP_CONTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qloop/notifier.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
typedef struct QLContext QLContext;
typedef struct QLBH QLBH;
typedef struct QLTimer QLTimer;

/* Clocks.  Timers of one context run in this order within a poll. */
typedef enum QLClockType {
    QL_CLOCK_REALTIME = 0, /* CLOCK_MONOTONIC */
    QL_CLOCK_VIRTUAL = 1,  /* owned by the context; moves only when told */
    QL_CLOCK_HOST = 2,     /* CLOCK_REALTIME (wall clock, may jump) */
    QL_CLOCK_MAX = 3
} QLClockType;

typedef void QLBHFunc(void *opaque);
typedef void QLTimerFunc(void *opaque);
typedef void QLIOHandler(void *opaque);
/* QEMU's io_flush: return true while requests are in flight on this fd. */
typedef bool QLFlushFunc(void *opaque);

/* ---- context ---------------------------------------------------------- */

/* New context with its event notifier and fd monitor (epoll, or poll when
 * QLOOP_FDMON=poll).  NULL with errno set on failure.  Any thread. */
QLContext *ql_context_new(void);

/* Free a context: remaining BHs are deleted without running (their dequeue
 * hooks run), timers are detached, handlers removed.  Home thread, not from
 * inside one of its callbacks. */
void ql_context_free(QLContext *ctx);

/* One iteration.  blocking: wait until something is ready (never while a
 * non-idle BH is pending; a notify from any thread between the check and the
 * sleep is not lost).  Returns 1 if a BH, fd handler or timer callback ran
 * (progress), 0 if not (a bare ql_context_notify() wakes a blocking poll that
 * then returns 0), or a negative errno: -EBADF when a registered fd was found
 * closed (see ql_context_bad_fd()).  The GIL-style blocking hooks
 * (qloop/blocking.h) bracket the wait.  Home thread; callbacks may nest it.
 * Closed fds: the poll monitor sees POLLNVAL at once; with epoll (the kernel
 * silently drops closed files) they are found by a check before a wait that
 * may sleep, at most once per second - a poll never sleeps forever on one.
 * With -EBADF nothing was dispatched: BHs, fds and timers stay ready. */
int ql_context_poll(QLContext *ctx, bool blocking);

/* Wake a blocking ql_context_poll() (or the embedding loop).  Cheap when
 * nobody is blocked (no system call).  Any thread; async-signal-safe. */
void ql_context_notify(QLContext *ctx);

/* Ask the dispatch in progress to return after the callback now running;
 * whatever else was ready stays ready for the next poll.  Used by language
 * bindings when a callback raised.  Home thread, from a callback. */
void ql_context_stop_dispatch(QLContext *ctx);

/* True if work is ready now (a scheduled BH, a ready fd with a handler, an
 * expired timer) - QEMU's aio_pending.  Does not sleep.  Home thread. */
bool ql_context_pending(QLContext *ctx);

/* QEMU's aio_flush: poll (blocking) until every flush callback reports no
 * request in flight.  Returns 0 or a negative errno from poll.  Home thread. */
int ql_context_flush(QLContext *ctx);

/* After ql_context_poll() returned -EBADF: the fd found closed (its handler
 * has been removed), else -1. */
int ql_context_bad_fd(QLContext *ctx);

/* The context the calling thread runs: set by ql_context_set_current(), and
 * for the duration of ql_context_poll()/dispatch() the context being polled.
 * NULL if none.  Any thread. */
QLContext *ql_context_current(void);
void ql_context_set_current(QLContext *ctx);

/* Name of the fd monitor in use: "epoll" or "poll". */
const char *ql_context_fdmon_name(QLContext *ctx);

/* ---- embedding (GSource style: prepare / poll fd / check / dispatch) ---- */

/* One fd that becomes readable whenever the context has work or needs to be
 * polled again.  The same file for the context's life.  Created by the
 * first call: with epoll an epoll set whose one member is the context's own
 * set; with the poll monitor an epoll set mirroring the registrations
 * (-ENOSYS where there is no epoll).  A negative errno if it cannot be made
 * (e.g. -EMFILE).  Regular files cannot be watched that way: while one
 * is registered ql_context_prepare() returns 0. */
int ql_context_fd(QLContext *ctx);
/* Timeout in ns until the context needs dispatching: 0 (ready now), -1 (no
 * deadline) or positive.  Arms notification for a caller that will sleep. */
int64_t ql_context_prepare(QLContext *ctx);
/* After the caller woke: true if dispatch() has work.  Disarms notification. */
bool ql_context_check(QLContext *ctx);
/* Run what is ready (BHs, fds, timers) without sleeping.  1 progress, 0 none,
 * negative errno as ql_context_poll(). */
int ql_context_dispatch(QLContext *ctx);

/* ---- bottom halves ---------------------------------------------------- */

/* New BH, not scheduled.  `name` (may be NULL) is kept by pointer: it must
 * outlive the BH.  NULL + errno on failure.  Any thread. */
QLBH *ql_bh_new(QLContext *ctx, QLBHFunc *cb, void *opaque, const char *name);

/* Schedule: the callback runs once in the next poll of the context.
 * Scheduling a scheduled BH is a no-op.  Order: FIFO per scheduling thread.
 * Wait-free; any thread; async-signal-safe.  Returns 1 if the BH was added
 * to the pending list, 0 if it was already there. */
int ql_bh_schedule(QLBH *bh);

/* Schedule as idle: runs, but does not make a blocking poll return early:
 * a poll with only idle BHs pending sleeps at most 10 ms.  Idle BHs do not
 * count as progress.  Returns as ql_bh_schedule(). */
int ql_bh_schedule_idle(QLBH *bh);

/* Unschedule; the BH stays usable.  Any thread. */
void ql_bh_cancel(QLBH *bh);

/* Delete: the callback will not run again; the BH is freed by the next poll
 * (never immediately).  Allowed from inside its own callback.  Any thread. */
void ql_bh_delete(QLBH *bh);

/* Hook called in the home thread every time the BH leaves the pending list
 * (after its callback ran or was skipped because it was cancelled or
 * deleted, or at ql_context_free).  Bindings use it to drop the reference they
 * took when ql_bh_schedule() returned 1: it runs exactly once per schedule
 * call that returned 1 (a BH linked only by ql_bh_delete() gets no call).
 * hook(opaque) gets the BH's opaque. */
void ql_bh_set_dequeue_hook(QLBH *bh, QLBHFunc *hook);

/* Allocate (from a per-context free list), schedule, run once, free.
 * Returns 0 or -ENOMEM.  Any thread (not signal handlers). */
int ql_bh_schedule_oneshot(QLContext *ctx, QLBHFunc *cb, void *opaque, const char *name);

/* The name given to ql_bh_new(), or "<unnamed>". */
const char *ql_bh_name(const QLBH *bh);

/* ---- clocks and timers ------------------------------------------------ */

/* Current time of a clock in ns.  REALTIME/HOST read the OS clock; VIRTUAL
 * is the context's virtual time.  Any thread. */
int64_t ql_clock_get_ns(QLContext *ctx, QLClockType type);

/* Virtual clock: advance by ns (>= 0) or set to an absolute value (not
 * backwards: -EINVAL).  Timers that became due run in the next poll. */
int ql_virtual_clock_advance(QLContext *ctx, int64_t ns);
int ql_virtual_clock_set(QLContext *ctx, int64_t ns);
/* autojump: when a poll would sleep and a VIRTUAL timer is pending, the
 * virtual clock jumps to its deadline instead of sleeping - provided no fd
 * is ready, no notify came in, and no REALTIME/HOST timer is due sooner
 * (delays compared in ns).  ql_context_prepare() jumps the same way. */
void ql_virtual_clock_set_autojump(QLContext *ctx, bool autojump);
bool ql_virtual_clock_get_autojump(QLContext *ctx);

/* New timer (not armed) on clock `type` of ctx.  NULL + errno on failure. */
QLTimer *ql_timer_new(QLContext *ctx, QLClockType type, QLTimerFunc *cb, void *opaque,
                      const char *name);
/* Arm at absolute deadline `expire_ns` on the timer's clock (re-arms if
 * pending; negative means 0).  Never fires early; equal deadlines fire in
 * arming order.  A timer armed while the context runs its timers (e.g. by
 * its own callback) runs at the earliest in the next poll, even if already
 * due, so a timer re-arming itself for "now" cannot loop inside one poll.
 * O(log n), no allocation once the heap has grown.  Any thread.  Returns 0,
 * -ENOMEM (heap growth failed) or -EINVAL (its context was freed). */
int ql_timer_mod(QLTimer *t, int64_t expire_ns);
/* Arm at now + delay_ns. */
int ql_timer_mod_in(QLTimer *t, int64_t delay_ns);
/* Arm at expire_ns only if not pending or if that is earlier. */
int ql_timer_mod_anticipate(QLTimer *t, int64_t expire_ns);
/* Disarm.  Idempotent.  O(log n).  Any thread. */
void ql_timer_del(QLTimer *t);
/* Disarm and free.  Allowed from the timer's own callback. */
void ql_timer_free(QLTimer *t);
bool ql_timer_pending(QLTimer *t);
/* Deadline in ns, or -1 when not pending. */
int64_t ql_timer_expire_time(QLTimer *t);
QLClockType ql_timer_clock(const QLTimer *t);

/* Embedding a timer in a larger object (one allocation instead of two):
 * ql_timer_sizeof() bytes of storage aligned for any type (max_align_t),
 * initialized by ql_timer_init() and detached by ql_timer_deinit(); in
 * between it is used like a timer from ql_timer_new(), except that
 * ql_timer_free() must not be called on it. */
size_t ql_timer_sizeof(void);
/* Make `storage` a timer (not armed) on clock `type` of ctx.  Returns 0 or
 * -EINVAL (NULL ctx or cb, bad clock).  Any thread. */
int ql_timer_init(QLTimer *storage, QLContext *ctx, QLClockType type, QLTimerFunc *cb,
                  void *opaque, const char *name);
/* Disarm and detach a timer made by ql_timer_init(); the storage is the
 * caller's again.  Allowed from the timer's own callback (which must then
 * not touch the storage after freeing it).  Any thread. */
void ql_timer_deinit(QLTimer *t);

/* ---- fd handlers ------------------------------------------------------ */

/* Level-triggered handlers for fd: io_read runs while fd is readable (or
 * hung up / in error), io_write while writable.  Registering again replaces.
 * io_read == io_write == io_flush == NULL removes.  Safe from inside a
 * dispatch (a handler removed before it was reached does not run).  Works with
 * any pollable fd; regular files are always ready.  Returns 0 or a negative
 * errno: -EBADF for an fd that is not open when it is first registered
 * (nothing is allocated for it; an fd closed later is reported by the next
 * ql_context_poll()).  Home thread. */
int ql_context_set_fd_handler(QLContext *ctx, int fd, QLIOHandler *io_read,
                              QLIOHandler *io_write, QLFlushFunc *io_flush, void *opaque);

/* Handler for an event notifier: io_read runs (after the notifier was
 * cleared with test_and_clear) when it is set.  NULL handlers remove. */
int ql_context_set_event_notifier(QLContext *ctx, QLNotifier *n, QLIOHandler *io_read,
                                  QLFlushFunc *io_flush, void *opaque);
/* cffi:end */

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_CONTEXT_H */
