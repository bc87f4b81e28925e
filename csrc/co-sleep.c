/*
 * Coroutine sleep (QEMU's qemu_co_sleep_ns_wakeable).
 *
 * The sleeper arms a timer on the current context's clock and marks itself
 * scheduled ("ql_co_sleep_ns") so that entering it directly, or scheduling
 * it, is refused while it sleeps.  The timer callback, or an early
 * ql_co_sleep_wake(), clears the mark and wakes it in its context; the
 * sleeper then deletes its timer, so an early wake cancels the timeout.
 * QLCoSleep.to_wake is only touched in the home thread of the sleeper's
 * context.
 */
#include "context-int.h"
#include "coroutine-int.h"
#include "misuse.h"

#include <errno.h>
#include <stdlib.h>

struct QLCoSleep {
    QLCoroutine *to_wake;   /* the sleeper, NULL when none */
    bool early;             /* woken by ql_co_sleep_wake, not the timer */
};

static const char sleep_name[] = "ql_co_sleep_ns";

QLCoSleep *ql_co_sleep_new(void)
{
    QLCoSleep *w = calloc(1, sizeof *w);

    if (!w) {
        errno = ENOMEM;
    }
    return w;
}

void ql_co_sleep_free(QLCoSleep *w)
{
    if (w && w->to_wake) {
        ql__misuse(-EBUSY, "QLCoSleep freed while a coroutine sleeps on it");
    }
    free(w);
}

static void co_sleep_wake(QLCoSleep *w, bool early)
{
    QLCoroutine *co = w->to_wake;
    const char *expected = sleep_name;

    if (!co) {
        return;
    }
    w->to_wake = NULL;
    w->early = early;
    __atomic_compare_exchange_n(&co->scheduled, &expected, NULL, false,
                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    ql_co_wake(co);
}

static void co_sleep_timer_cb(void *opaque)
{
    QLCoroutine *co = opaque;

    if (co->sleep_w) {
        co_sleep_wake(co->sleep_w, false);
    }
}

/* The record's timer if it fits (same live context, same clock), else a
 * new one replacing it: steady-state sleeps allocate nothing. */
static QLTimer *co_sleep_timer(QLCoroutine *self, QLContext *ctx, QLClockType clock)
{
    QLTimer *t = self->sleep_timer;

    if (t && __atomic_load_n(&t->ctx, __ATOMIC_RELAXED) == ctx && t->type == clock) {
        return t;
    }
    ql_timer_free(t);
    self->sleep_timer = ql_timer_new(ctx, clock, co_sleep_timer_cb, self, sleep_name);
    return self->sleep_timer;
}

void ql_co_sleep_wake(QLCoSleep *w)
{
    co_sleep_wake(w, true);
}

int ql_co_sleep_ns_wakeable(QLCoSleep *w, QLClockType clock, int64_t ns)
{
    QLCoroutine *self = ql_coroutine_self();
    QLContext *ctx = ql_context_current();
    QLCoSleep local = {NULL, false};
    const char *old = NULL;
    QLTimer *t;

    if (!self) {
        return ql__misuse(-EPERM, "ql_co_sleep_ns outside a coroutine");
    }
    if (!ctx) {
        return ql__misuse(-EINVAL, "ql_co_sleep_ns without a current context");
    }
    if ((unsigned)clock >= QL_CLOCK_MAX) {
        return -EINVAL;
    }
    if (!w) {
        w = &local;
    }
    if (w->to_wake) {
        return ql__misuse(-EBUSY, "QLCoSleep already has a sleeper");
    }
    t = co_sleep_timer(self, ctx, clock);
    if (!t) {
        return -ENOMEM;
    }
    if (!__atomic_compare_exchange_n(&self->scheduled, &old, sleep_name, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        return ql__misuse(-EALREADY, "Co-routine was already scheduled in '%s'", old);
    }
    w->to_wake = self;
    w->early = false;
    self->sleep_w = w;
    ql_timer_mod_in(t, ns);
    ql__coroutine_yield();
    self->sleep_w = NULL;
    ql_timer_del(t); /* cancels the timeout after an early wake */
    return w->early ? 1 : 0;
}

int ql_co_sleep_ns(QLClockType clock, int64_t ns)
{
    return ql_co_sleep_ns_wakeable(NULL, clock, ns);
}
