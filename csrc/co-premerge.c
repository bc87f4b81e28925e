/*
 * TEMPORARY (until the AioContext core lands on this branch): no contexts
 * exist, so every coroutine lives in the NULL context of its thread and a
 * wake is always local.  Replaced by context.c and co-schedule.c.
 */
#include "coroutine-int.h"

QLContext *ql_context_current(void)
{
    return NULL;
}

int ql_co_enter(QLContext *ctx, QLCoroutine *co)
{
    if (ql_in_coroutine()) {
        ql__coroutine_defer_wake(co);
        return 0;
    }
    return ql__coroutine_enter_ctx(ctx, co);
}

int ql_co_wake(QLCoroutine *co)
{
    return ql_co_enter(ql_coroutine_get_context(co), co);
}
