/*
 * TEMPORARY (until the coroutine core is on this branch): without
 * coroutines every channel wait is a poll(2) wait.  Replaced by
 * channel-yield.c.
 */
#include "channel-int.h"

#include <errno.h>

bool ql__channel_in_coroutine(void)
{
    return false;
}

int ql_channel_yield(QLChannel *ch, int cond)
{
    (void)ch;
    (void)cond;
    return -EPERM;
}

void ql_channel_wake(QLChannel *ch, int cond)
{
    (void)ch;
    (void)cond;
}

void ql__channel_yield_cleanup(QLChannel *ch)
{
    (void)ch;
}
