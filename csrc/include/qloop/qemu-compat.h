/*
 * qloop/qemu-compat.h - QEMU's event-loop names mapped onto qloop, so code
 * written against QEMU's include/block/aio.h, qemu/timer.h and
 * qemu/main-loop.h compiles by including this header instead.
 *
 * Macros and static inline functions only (not part of qloop.h, not seen by
 * cffi).  Differences from QEMU worth knowing:
 *  - aio_poll() returns true for progress; a closed registered fd makes it
 *    return false (use ql_context_poll() to see -EBADF).
 *  - BHs run in scheduling order (QEMU: LIFO); a BH's name is its callback.
 *  - Timers created without a context (timer_new_*, qemu_clock_get_*) use
 *    the main context: call qemu_init_main_loop() first.  QEMU_CLOCK_VIRTUAL
 *    is the context's virtual clock: it moves only with
 *    ql_virtual_clock_advance/set or autojump.
 *  - aio_set_fd_handler()'s io_poll / io_poll_ready (adaptive polling) are
 *    accepted and ignored: handlers run when the fd is ready.
 *  - aio_context_new()'s errp is ignored (NULL is returned on failure);
 *    aio_context_unref() frees the context (no reference counting).
 */
#ifndef QLOOP_QEMU_COMPAT_H
#define QLOOP_QEMU_COMPAT_H

#include <stdbool.h>
#include <stdint.h>

#include "qloop/qloop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Internal helpers of libqloop used below (QEMU timers carry a scale). */
void ql__timer_set_scale(QLTimer *t, int scale);
int ql__timer_get_scale(const QLTimer *t);

/* ---- types -------------------------------------------------------------- */
typedef QLContext AioContext;
typedef QLBH QEMUBH;
typedef QLBHFunc QEMUBHFunc;
typedef QLTimer QEMUTimer;
typedef QLTimerFunc QEMUTimerCB;
typedef QLIOHandler IOHandler;
typedef QLNotifier EventNotifier;
typedef void EventNotifierHandler(EventNotifier *n);
typedef bool AioPollFn(void *opaque);
typedef QLClockType QEMUClockType;
typedef QLAIOCBPool AIOPool;
typedef QLAIOCB BlockDriverAIOCB;
typedef QLAIOCBCompletionFunc BlockDriverCompletionFunc;

#define QEMU_CLOCK_REALTIME QL_CLOCK_REALTIME
#define QEMU_CLOCK_VIRTUAL QL_CLOCK_VIRTUAL
#define QEMU_CLOCK_HOST QL_CLOCK_HOST
#define QEMU_CLOCK_MAX QL_CLOCK_MAX

#define SCALE_MS 1000000
#define SCALE_US 1000
#define SCALE_NS 1

/* ---- AioContext ------------------------------------------------------- */
#define aio_context_new(errp) ((void)(errp), ql_context_new())
#define aio_context_unref(ctx) ql_context_free(ctx)
#define aio_notify(ctx) ql_context_notify(ctx)
#define aio_pending(ctx) ql_context_pending(ctx)
#define aio_get_fd(ctx) ql_context_fd(ctx)
#define qemu_get_current_aio_context() ql_context_current()
#define qemu_set_current_aio_context(ctx) ql_context_set_current(ctx)

static inline bool aio_poll(AioContext *ctx, bool blocking)
{
    return ql_context_poll(ctx, blocking) > 0;
}

static inline bool aio_dispatch(AioContext *ctx)
{
    return ql_context_dispatch(ctx) > 0;
}

/* ---- bottom halves ---------------------------------------------------- */
#define aio_bh_new(ctx, cb, opaque) ql_bh_new((ctx), (cb), (opaque), #cb)
#define aio_bh_new_full(ctx, cb, opaque, name) ql_bh_new((ctx), (cb), (opaque), (name))
#define qemu_bh_new(cb, opaque) ql_bh_new(ql_get_aio_context(), (cb), (opaque), #cb)
#define qemu_bh_schedule(bh) ((void)ql_bh_schedule(bh))
#define qemu_bh_schedule_idle(bh) ((void)ql_bh_schedule_idle(bh))
#define qemu_bh_cancel(bh) ql_bh_cancel(bh)
#define qemu_bh_delete(bh) ql_bh_delete(bh)
#define aio_bh_schedule_oneshot(ctx, cb, opaque) \
    ((void)ql_bh_schedule_oneshot((ctx), (cb), (opaque), #cb))

/* ---- fd handlers and event notifiers ---------------------------------- */
static inline void aio_set_fd_handler(AioContext *ctx, int fd, IOHandler *io_read,
                                      IOHandler *io_write, AioPollFn *io_poll,
                                      IOHandler *io_poll_ready, void *opaque)
{
    (void)io_poll;       /* adaptive polling: ignored */
    (void)io_poll_ready;
    ql_context_set_fd_handler(ctx, fd, io_read, io_write, NULL, opaque);
}

/* As in QEMU, io_read gets the notifier and clears it itself
 * (event_notifier_test_and_clear); the handler is a plain fd handler on the
 * notifier's read fd (so it is called through a void * parameter). */
#define aio_set_event_notifier(ctx, n, io_read, io_poll, io_poll_ready)            \
    ((void)(io_poll), (void)(io_poll_ready),                                       \
     (void)ql_context_set_fd_handler((ctx), ql_notifier_fd(n),                     \
                                     (QLIOHandler *)(io_read), NULL, NULL, (n)))

static inline int event_notifier_init(EventNotifier *e, int active)
{
    int r = ql_notifier_init(e);
    if (r == 0 && active) {
        ql_notifier_set(e);
    }
    return r;
}
#define event_notifier_cleanup(e) ql_notifier_close(e)
#define event_notifier_set(e) ql_notifier_set(e)
#define event_notifier_test_and_clear(e) (ql_notifier_test_and_clear(e) > 0)
#define event_notifier_get_fd(e) ql_notifier_fd(e)

/* ---- clocks and timers ------------------------------------------------ */
static inline int64_t qemu_clock_get_ns(QEMUClockType type)
{
    return ql_clock_get_ns(ql_get_aio_context(), type);
}
#define qemu_clock_get_us(type) (qemu_clock_get_ns(type) / SCALE_US)
#define qemu_clock_get_ms(type) (qemu_clock_get_ns(type) / SCALE_MS)

static inline QEMUTimer *ql__compat_timer_new(AioContext *ctx, QEMUClockType type, int scale,
                                              QEMUTimerCB *cb, void *opaque, const char *name)
{
    QEMUTimer *t = ql_timer_new(ctx, type, cb, opaque, name);
    if (t) {
        ql__timer_set_scale(t, scale);
    }
    return t;
}
#define aio_timer_new(ctx, type, scale, cb, opaque) \
    ql__compat_timer_new((ctx), (type), (scale), (cb), (opaque), #cb)
#define timer_new(type, scale, cb, opaque) \
    ql__compat_timer_new(ql_get_aio_context(), (type), (scale), (cb), (opaque), #cb)
#define timer_new_ns(type, cb, opaque) timer_new((type), SCALE_NS, (cb), (opaque))
#define timer_new_us(type, cb, opaque) timer_new((type), SCALE_US, (cb), (opaque))
#define timer_new_ms(type, cb, opaque) timer_new((type), SCALE_MS, (cb), (opaque))

static inline void timer_mod_ns(QEMUTimer *ts, int64_t expire_time)
{
    ql_timer_mod(ts, expire_time);
}
static inline void timer_mod(QEMUTimer *ts, int64_t expire_time)
{
    ql_timer_mod(ts, expire_time * ql__timer_get_scale(ts));
}
static inline void timer_mod_anticipate_ns(QEMUTimer *ts, int64_t expire_time)
{
    ql_timer_mod_anticipate(ts, expire_time);
}
static inline void timer_mod_anticipate(QEMUTimer *ts, int64_t expire_time)
{
    ql_timer_mod_anticipate(ts, expire_time * ql__timer_get_scale(ts));
}
#define timer_del(ts) ql_timer_del(ts)
#define timer_free(ts) ql_timer_free(ts)
#define timer_pending(ts) ql_timer_pending(ts)
#define timer_expire_time_ns(ts) ((uint64_t)ql_timer_expire_time(ts))
static inline bool timer_expired(QEMUTimer *ts, int64_t current_time)
{
    int64_t e = ql_timer_expire_time(ts);
    return e >= 0 && e <= current_time * ql__timer_get_scale(ts);
}

/* ---- main loop -------------------------------------------------------- */
#define qemu_init_main_loop(errp) ((void)(errp), ql_main_loop_init())
#define qemu_get_aio_context() ql_get_aio_context()
#define iohandler_get_aio_context() ql_get_iohandler_context()
#define main_loop_wait(nonblocking) ql_main_loop_wait(nonblocking)
#define qemu_notify_event() ql_notify_event()
#define qemu_set_fd_handler(fd, fd_read, fd_write, opaque) \
    ((void)ql_set_fd_handler((fd), (fd_read), (fd_write), (opaque)))
#define qemu_add_child_watch(pid) ql_add_child_watch((pid), NULL, NULL)
#define qemu_aio_wait() aio_poll(ql_get_aio_context(), true)
#define qemu_aio_flush() ((void)ql_context_flush(ql_get_aio_context()))

#define qemu_mutex_lock_iothread() ql_iothread_lock()
#define qemu_mutex_unlock_iothread() ql_iothread_unlock()
#define qemu_mutex_iothread_locked() ql_iothread_locked()
#define bql_lock() ql_iothread_lock()
#define bql_unlock() ql_iothread_unlock()
#define bql_locked() ql_iothread_locked()

/* ---- AIOCB pools (older QEMU block layer) ----------------------------- */
#define qemu_aio_get(pool, bs, cb, opaque) ((void)(bs), (void *)ql_aio_get((pool), (cb), (opaque)))
#define qemu_aio_release(p) ((void)ql_aio_release((QLAIOCB *)(p)))

/* ---- thread pool (util/thread-pool.c) ---------------------------------
 * Requests go to the default pool of the current context (the one being
 * polled, else the main context), like QEMU's.  thread_pool_submit_aio()
 * returns the request handle (for ql_thread_pool_cancel) as void *.
 * Completions of one batch run in submission order (QEMU: newest first). */
typedef QLThreadPool ThreadPool;
typedef QLThreadPoolFunc ThreadPoolFunc;
typedef QLThreadPoolCompletionFunc BlockCompletionFunc;
static inline QLThreadPool *ql__compat_current_pool(void)
{
    QLContext *ctx = ql_context_current();
    return ql_context_thread_pool(ctx ? ctx : ql_get_aio_context());
}
#define aio_get_thread_pool(ctx) ql_context_thread_pool(ctx)
#define thread_pool_submit_aio(func, arg, cb, opaque) \
    ((void *)ql_thread_pool_submit(ql__compat_current_pool(), (func), (arg), (cb), (opaque)))
#define thread_pool_submit(func, arg) \
    ((void)ql_thread_pool_submit(ql__compat_current_pool(), (func), (arg), NULL, NULL))
#define thread_pool_submit_co(func, arg) \
    ql_thread_pool_submit_co(ql__compat_current_pool(), (func), (arg))

/* ---- coroutines (QEMU's qemu/coroutine.h) ------------------------------
 * QEMU's CoMutex, CoQueue and CoRwlock are structs embedded in their owner
 * and set up by an init function; here they wrap a pointer to the qloop
 * object, which *_init allocates.  QEMU has no destroy call for them; free
 * them with the qloop extensions qemu_co_mutex_destroy / qemu_co_queue_destroy
 * / qemu_co_rwlock_destroy when the owner goes away.  Outside a coroutine
 * qemu_coroutine_self() returns NULL (QEMU returns a per-thread leader). */
typedef QLCoroutine Coroutine;
typedef QLCoroutineFunc CoroutineEntry;
#define coroutine_fn
#define qemu_coroutine_create(entry, opaque) ql_coroutine_create((entry), (opaque))
#define qemu_coroutine_enter(co) ((void)ql_coroutine_enter(co))
#define qemu_coroutine_enter_if_inactive(co) ((void)ql_coroutine_enter_if_inactive(co))
#define qemu_coroutine_yield() ((void)ql_coroutine_yield())
#define qemu_coroutine_self() ql_coroutine_self()
#define qemu_in_coroutine() ql_in_coroutine()
#define qemu_coroutine_entered(co) ql_coroutine_entered(co)
#define aio_co_schedule(ctx, co) ((void)ql_co_schedule((ctx), (co)))
#define aio_co_wake(co) ((void)ql_co_wake(co))
#define aio_co_enter(ctx, co) ((void)ql_co_enter((ctx), (co)))
#define aio_co_reschedule_self(ctx) ((void)ql_co_reschedule_self(ctx))
#define qemu_co_sleep_ns(type, ns) ((void)ql_co_sleep_ns((type), (ns)))

typedef struct CoMutex {
    QLCoMutex *m;
} CoMutex;
typedef struct CoQueue {
    QLCoQueue *q;
} CoQueue;
typedef struct CoRwlock {
    QLCoRwlock *l;
} CoRwlock;

static inline void qemu_co_mutex_init(CoMutex *m) { m->m = ql_co_mutex_new(); }
static inline void qemu_co_mutex_destroy(CoMutex *m) { ql_co_mutex_free(m->m); m->m = NULL; }
static inline void qemu_co_mutex_lock(CoMutex *m) { (void)ql_co_mutex_lock(m->m); }
static inline void qemu_co_mutex_unlock(CoMutex *m) { (void)ql_co_mutex_unlock(m->m); }
static inline QLCoMutex *ql__compat_lockable(CoMutex *m) { return m ? m->m : NULL; }

static inline void qemu_co_queue_init(CoQueue *q) { q->q = ql_co_queue_new(); }
static inline void qemu_co_queue_destroy(CoQueue *q) { ql_co_queue_free(q->q); q->q = NULL; }
#define qemu_co_queue_wait(queue, lock) \
    ((void)ql_co_queue_wait((queue)->q, ql__compat_lockable(lock)))
#define qemu_co_queue_next(queue) ql_co_queue_next((queue)->q)
#define qemu_co_queue_restart_all(queue) ql_co_queue_restart_all((queue)->q)
#define qemu_co_queue_empty(queue) ql_co_queue_empty((queue)->q)

static inline void qemu_co_rwlock_init(CoRwlock *l) { l->l = ql_co_rwlock_new(); }
static inline void qemu_co_rwlock_destroy(CoRwlock *l) { ql_co_rwlock_free(l->l); l->l = NULL; }
#define qemu_co_rwlock_rdlock(lock) ((void)ql_co_rwlock_rdlock((lock)->l))
#define qemu_co_rwlock_wrlock(lock) ((void)ql_co_rwlock_wrlock((lock)->l))
#define qemu_co_rwlock_unlock(lock) ((void)ql_co_rwlock_unlock((lock)->l))
#define qemu_co_rwlock_upgrade(lock) ((void)ql_co_rwlock_upgrade((lock)->l))
#define qemu_co_rwlock_downgrade(lock) ((void)ql_co_rwlock_downgrade((lock)->l))

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_QEMU_COMPAT_H */
