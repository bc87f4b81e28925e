/* Hooks around blocking sections (see qloop/blocking.h). */
#include "qloop/blocking.h"

#include <stddef.h>

static QLBlockingBeginFunc hook_begin;
static QLBlockingEndFunc hook_end;

void ql_set_blocking_hooks(QLBlockingBeginFunc begin, QLBlockingEndFunc end)
{
    hook_begin = begin;
    hook_end = end;
}

void *ql_blocking_begin(void)
{
    return hook_begin ? hook_begin() : NULL;
}

void ql_blocking_end(void *token)
{
    if (hook_end) {
        hook_end(token);
    }
}
