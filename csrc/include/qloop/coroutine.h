/*
 * qloop/coroutine.h - stackful coroutines (QEMU's qemu-coroutine.h model).
 *
 * A coroutine runs `entry(opaque)` on its own C stack.  ql_coroutine_enter()
 * runs it until it yields or returns; then the caller continues after the
 * enter call.  Coroutines belong to the thread that enters them; switching
 * is a register swap (no system call).  Stacks are mmap'd with a guard page
 * and pooled; an overflow is reported on stderr as a coroutine stack overflow
 * naming the stack size.
 *
 * Lifetime: a coroutine is freed when its entry function returns, unless a
 * reference was taken with ql_coroutine_ref(); then the finished coroutine
 * stays valid (ql_coroutine_finished() is true, entering it returns -EINVAL)
 * until the last ql_coroutine_unref().  Its stack is recycled at termination
 * either way.  A coroutine that was never entered is freed by the
 * ql_coroutine_unref() that drops the last reference taken on it.
 *
 * Stacks come from large mappings with guard pages installed by
 * madvise(MADV_GUARD_INSTALL) (Linux >= 6.13), so 100,000 suspended
 * coroutines fit within vm.max_map_count; on older kernels (or with
 * QLOOP_STACK_GUARD=mprotect) guards use mprotect(), each stack then costs two
 * mappings and creation fails with ENOMEM near max_map_count / 2.  A
 * suspended coroutine keeps about one page of its stack resident.
 *
 * Functions marked "coroutine only" must be called from inside a coroutine.
 */
#ifndef QLOOP_COROUTINE_H
#define QLOOP_COROUTINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qloop/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
typedef struct QLCoroutine QLCoroutine;
typedef void QLCoroutineFunc(void *opaque);

/* Create a coroutine (not started) with the default stack size.  NULL +
 * errno (ENOMEM) on failure.  Any thread.  The first coroutine created or
 * entered in a thread installs an alternate signal stack there (unless the
 * thread has one) and, once per process, a SIGSEGV handler that reports
 * guard-page hits and passes other faults to the previous handler. */
QLCoroutine *ql_coroutine_create(QLCoroutineFunc *entry, void *opaque);
/* Same with an explicit stack size in bytes (0: default; rounded up to whole
 * pages; minimum 16 KiB). */
QLCoroutine *ql_coroutine_create_full(QLCoroutineFunc *entry, void *opaque, size_t stack_size);

/* Run co until it yields or finishes.  Coroutines it woke meanwhile (see
 * ql_co_wake) run before this returns.  Returns 0, -EBUSY if co is running or
 * suspended in a nested enter, -EINVAL if it finished, -EALREADY if it is
 * scheduled (ql_co_schedule, ql_co_sleep_ns, or woken by ql_co_wake from a
 * coroutine and waiting for that one to yield).  Any context; the coroutine
 * then belongs to the calling thread's current context. */
int ql_coroutine_enter(QLCoroutine *co);
/* Enter co only if it is not already entered (running or in the caller
 * chain).  Returns 0 or the errors of ql_coroutine_enter(). */
int ql_coroutine_enter_if_inactive(QLCoroutine *co);

/* Give control back to whoever entered the current coroutine.  Returns 0
 * once re-entered, or -EPERM outside a coroutine.  Coroutine only. */
int ql_coroutine_yield(void);

/* The running coroutine, or NULL outside one. */
QLCoroutine *ql_coroutine_self(void);
bool ql_in_coroutine(void);
/* True while co is running or suspended in the chain of entered coroutines. */
bool ql_coroutine_entered(QLCoroutine *co);
bool ql_coroutine_finished(QLCoroutine *co);
size_t ql_coroutine_stack_size(QLCoroutine *co);
/* The context co last ran in (NULL before it first ran). */
QLContext *ql_coroutine_get_context(QLCoroutine *co);

void ql_coroutine_ref(QLCoroutine *co);
void ql_coroutine_unref(QLCoroutine *co);

/* Per-coroutine user pointer (for bindings). */
void ql_coroutine_set_user_data(QLCoroutine *co, void *data);
void *ql_coroutine_get_user_data(QLCoroutine *co);

/* Switch hooks for a language runtime that keeps per-coroutine interpreter
 * state (the Python binding swaps the thread state in them).  Whenever co
 * yields - ql_coroutine_yield() or a wait inside a CoQueue, CoMutex,
 * CoRwlock or sleep - `leave(co, user_data)` runs on co's stack right before
 * it switches away, and `resume(co, user_data)` right after it is entered
 * again, before control returns to the code that yielded.  Neither runs at
 * the first entry nor at termination (the entry function handles those).
 * user_data is ql_coroutine_get_user_data(co) at call time.  Hooks must not
 * switch coroutines.  Either may be NULL.  Call before co first runs, from
 * the thread that creates it. */
typedef void QLCoroutineSwitchHook(QLCoroutine *co, void *user_data);
void ql_coroutine_set_switch_hooks(QLCoroutine *co, QLCoroutineSwitchHook *leave,
                                   QLCoroutineSwitchHook *resume);

/* Default stack size for new coroutines (bytes; QLOOP_STACK_SIZE in the
 * environment, in bytes or with a k/m suffix, overrides the built-in
 * 256 KiB; read once). */
size_t ql_coroutine_default_stack_size(void);
/* Name of the switch backend in use ("asm-x86_64", "asm-aarch64" or
 * "ucontext"; QLOOP_COROUTINE=ucontext forces the portable one). */
const char *ql_coroutine_backend(void);

/* ---- across contexts and threads (QEMU's aio_co_*) ------------------- */

/* Run co in ctx's next poll.  Any thread.  -EALREADY if already scheduled.
 * co must have yielded unless ctx is the context it is running in: a
 * coroutine that schedules itself into another thread's context and then
 * yields may be entered there before its yield (reported as misuse,
 * -EBUSY, and the coroutine is not resumed).  To move the running
 * coroutine, use ql_co_reschedule_self().
 * ctx must stay alive until the call has returned (as for ql_bh_schedule):
 * free a context only once no other thread can still wake into it. */
int ql_co_schedule(QLContext *ctx, QLCoroutine *co);
/* Wake co in the context where it last ran: another thread's context ->
 * scheduled there; from inside a coroutine of the same context -> runs when
 * the current coroutine yields or ends; otherwise entered now.  A coroutine
 * that never ran (no context yet) counts as belonging to the caller's
 * current context.  Returns 0 or the errors of ql_co_schedule() /
 * ql_coroutine_enter() (-EBUSY for waking oneself). */
int ql_co_wake(QLCoroutine *co);
/* QEMU's aio_co_enter: as ql_co_wake but into ctx. */
int ql_co_enter(QLContext *ctx, QLCoroutine *co);
/* QEMU's aio_co_reschedule_self: move the calling coroutine to new_ctx and
 * return once it runs there (in new_ctx's thread if another thread polls
 * it).  The move is made safely: a oneshot in the current context
 * (ql_context_current()) schedules the coroutine into new_ctx after it has
 * yielded, so new_ctx's thread cannot enter it early.  A no-op returning 0
 * when new_ctx is the current context.  Returns 0 after the move, -EINVAL
 * for a NULL new_ctx or a thread that runs no context, -EPERM outside a
 * coroutine, -ENOMEM if the oneshot cannot be allocated (nothing moved).
 * new_ctx must stay alive until the coroutine runs there.  A Python
 * coroutine (qloop.Coroutine) runs only in the thread that owns it: called
 * from one (through qloop.lib), new_ctx must be polled by that thread. */
int ql_co_reschedule_self(QLContext *new_ctx);

/* ---- CoQueue ---------------------------------------------------------- */

typedef struct QLCoQueue QLCoQueue;
typedef struct QLCoMutex QLCoMutex;
typedef struct QLCoRwlock QLCoRwlock;

QLCoQueue *ql_co_queue_new(void);
void ql_co_queue_free(QLCoQueue *q);
/* Wait until woken, FIFO.  If mutex is not NULL it is released while
 * waiting and retaken before returning.  Coroutine only: -EPERM outside,
 * and -EPERM if mutex is not held by the caller.
 * Threads: CoQueue, CoMutex and CoRwlock may be shared by coroutines of
 * different threads provided those coroutines run in contexts
 * (ql_context_current() set): a waiter woken from another thread is
 * scheduled into its own context. */
int ql_co_queue_wait(QLCoQueue *q, QLCoMutex *mutex);
/* Same, but queue at the head. */
int ql_co_queue_wait_insert_head(QLCoQueue *q, QLCoMutex *mutex);
/* Wake the first waiter (see ql_co_wake); true if there was one. */
bool ql_co_queue_next(QLCoQueue *q);
/* Wake all waiters. */
void ql_co_queue_restart_all(QLCoQueue *q);
bool ql_co_queue_empty(QLCoQueue *q);

/* ---- CoMutex: FIFO hand-off, no barging ------------------------------- */

QLCoMutex *ql_co_mutex_new(void);
void ql_co_mutex_free(QLCoMutex *m);
/* Coroutine only (-EPERM outside); -EDEADLK if the caller holds it. */
int ql_co_mutex_lock(QLCoMutex *m);
/* 1 if taken, 0 if held by someone else, -EDEADLK if held by the caller.
 * Coroutine only (-EPERM outside). */
int ql_co_mutex_trylock(QLCoMutex *m);
/* Hands the lock to the first waiter.  -EPERM if the caller is not the
 * holder. */
int ql_co_mutex_unlock(QLCoMutex *m);
bool ql_co_mutex_locked(QLCoMutex *m);
QLCoroutine *ql_co_mutex_holder(QLCoMutex *m);

/* ---- CoRwlock: FIFO tickets, writers are not starved ------------------ */

QLCoRwlock *ql_co_rwlock_new(void);
void ql_co_rwlock_free(QLCoRwlock *l);
int ql_co_rwlock_rdlock(QLCoRwlock *l);
int ql_co_rwlock_wrlock(QLCoRwlock *l);
/* Release a read or write hold.  -EPERM if the caller holds none (readers
 * are counted, not recorded: while the lock is read-held any coroutine's
 * unlock releases one read hold). */
int ql_co_rwlock_unlock(QLCoRwlock *l);
/* Reader -> writer (waits for the other readers; queued writers go first).
 * -EPERM if the lock is not read-held. */
int ql_co_rwlock_upgrade(QLCoRwlock *l);
/* Writer -> reader (admits queued readers).  -EPERM if the caller is not
 * the writer.  rdlock/wrlock: coroutine only (-EPERM outside); -EDEADLK
 * if the caller is the writer. */
int ql_co_rwlock_downgrade(QLCoRwlock *l);

/* ---- sleep ------------------------------------------------------------ */

typedef struct QLCoSleep QLCoSleep;
/* Sleep ns on `clock` of the current context.  Coroutine only.  Returns 0
 * after the time passed or 1 if woken early through `w` (may be NULL).
 * While it sleeps the coroutine counts as scheduled: entering or
 * scheduling it fails with -EALREADY.  Errors: -EPERM outside a coroutine,
 * -EINVAL without a current context or for a bad clock, -EBUSY if w already
 * has a sleeper, -EALREADY if the caller is scheduled, -ENOMEM. */
int ql_co_sleep_ns_wakeable(QLCoSleep *w, QLClockType clock, int64_t ns);
int ql_co_sleep_ns(QLClockType clock, int64_t ns);
QLCoSleep *ql_co_sleep_new(void);
void ql_co_sleep_free(QLCoSleep *w);
/* Wake the coroutine sleeping on w early; no-op if none.  Home thread. */
void ql_co_sleep_wake(QLCoSleep *w);
/* cffi:end */

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_COROUTINE_H */
