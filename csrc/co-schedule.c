/*
 * Placeholder for the coroutine scheduler's BH callback (ql_co_schedule).
 * The coroutine implementation replaces this file; until then the
 * context's "co_schedule" BH has nothing to run.
 */
#include "context-int.h"

void ql__co_sched_bh_cb(void *opaque)
{
    (void)opaque;
}
