/*
 * Coroutines across contexts and threads (QEMU's aio_co_schedule,
 * aio_co_enter, aio_co_wake).
 *
 * ql_co_schedule() may run in any thread: it claims the coroutine by
 * setting co->scheduled with a compare-and-swap (so a coroutine is on at
 * most one list), pushes it on ctx->co_sched_head (a lock-free LIFO) and
 * schedules the context's co_sched_bh.  The BH runs in the context's home
 * thread: it takes the whole list at once, reverses it so coroutines run in
 * the order they were scheduled, clears `scheduled` and enters each one.
 */
#include "context-int.h"
#include "coroutine-int.h"
#include "misuse.h"

#include <errno.h>

static const char sched_name[] = "ql_co_schedule";

int ql_co_schedule(QLContext *ctx, QLCoroutine *co)
{
    const char *old = NULL;
    QLCoroutine *head;

    if (!__atomic_compare_exchange_n(&co->scheduled, &old, sched_name, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        return ql__misuse(-EALREADY, "Co-routine was already scheduled in '%s'", old);
    }
    head = __atomic_load_n((QLCoroutine **)&ctx->co_sched_head, __ATOMIC_RELAXED);
    do {
        co->sched_next = head;
        /* Release: the BH that takes the list sees sched_next (and
         * everything the scheduler wrote before). */
    } while (!__atomic_compare_exchange_n((QLCoroutine **)&ctx->co_sched_head, &head, co,
                                          true, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    ql_bh_schedule(ctx->co_sched_bh);
    return 0;
}

void ql__co_sched_bh_cb(void *opaque)
{
    QLContext *ctx = opaque;
    /* Acquire pairs with the release push in ql_co_schedule(). */
    QLCoroutine *co = __atomic_exchange_n((QLCoroutine **)&ctx->co_sched_head, NULL,
                                          __ATOMIC_ACQUIRE);
    QLCoroutine *fifo = NULL;

    while (co) {
        QLCoroutine *next = co->sched_next;
        co->sched_next = fifo;
        fifo = co;
        co = next;
    }
    while ((co = fifo)) {
        fifo = co->sched_next;
        co->sched_next = NULL;
        __atomic_store_n(&co->scheduled, NULL, __ATOMIC_RELEASE);
        ql__coroutine_enter_ctx(ctx, co);
    }
}

/* Oneshot in the old context, run after the coroutine yielded: the move. */
static void reschedule_cb(void *opaque)
{
    QLCoroutine *co = opaque;
    QLContext *to = co->resched_ctx;
    co->resched_ctx = NULL;
    /* Only fails if someone else scheduled a coroutine that was waiting to
     * be moved (misuse, reported by ql_co_schedule); it then runs there. */
    (void)ql_co_schedule(to, co);
}

int ql_co_reschedule_self(QLContext *new_ctx)
{
    if (!new_ctx) {
        return ql__misuse(-EINVAL, "ql_co_reschedule_self: new_ctx is NULL");
    }
    if (!ql_in_coroutine()) {
        return ql__misuse(-EPERM, "ql_co_reschedule_self called outside a coroutine");
    }
    QLContext *old = ql_context_current();
    if (old == new_ctx) {
        return 0;
    }
    if (!old) {
        return ql__misuse(-EINVAL, "ql_co_reschedule_self: the calling thread runs no "
                                   "context to move the coroutine from");
    }
    QLCoroutine *self = ql_coroutine_self();
    self->resched_ctx = new_ctx;
    int r = ql_bh_schedule_oneshot(old, reschedule_cb, self, "co_reschedule_self");
    if (r < 0) {
        self->resched_ctx = NULL;
        return r;
    }
    ql_coroutine_yield();
    return 0;
}

int ql_co_enter(QLContext *ctx, QLCoroutine *co)
{
    QLContext *cur = ql_context_current();

    if (ctx && ctx != cur) {
        return ql_co_schedule(ctx, co);
    }
    if (ql_in_coroutine()) {
        if (co == ql_coroutine_self()) {
            return ql__misuse(-EBUSY, "Co-routine re-entered recursively");
        }
        /* Runs when the current coroutine yields or ends (F65). */
        return ql__coroutine_defer_wake(co);
    }
    return ql__coroutine_enter_ctx(ctx ? ctx : cur, co);
}

int ql_co_wake(QLCoroutine *co)
{
    /* Acquire pairs with the release store of co->ctx by the enterer. */
    return ql_co_enter(__atomic_load_n(&co->ctx, __ATOMIC_ACQUIRE), co);
}
