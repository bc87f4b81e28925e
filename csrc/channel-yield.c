/*
 * Channel waits inside a coroutine (QEMU's qio_channel_yield): install an fd
 * handler on the waiting coroutine's context, yield, and let the handler
 * wake the coroutine when the fd is ready.  Each direction has one waiter
 * slot; the handlers of both directions share the fd's registration.
 */
#include "channel-int.h"

#include <errno.h>

#include "qloop/coroutine.h"

bool ql__channel_in_coroutine(void)
{
    return ql_in_coroutine();
}

/* Register, in ctx, the handlers of the directions armed in ctx. */
static int update_handlers(QLChannel *ch, QLContext *ctx);

/* The fd handler of one direction: wake its waiting coroutine.  The handler
 * stays installed while that coroutine runs (ql_co_wake enters it right
 * here when it belongs to this thread's context): if it waits again in the
 * same direction before it returns - every read or write loop does - no fd
 * registration changes, which saves two epoll_ctl calls per wait.  Otherwise
 * the handler goes once the coroutine is back. */
static void restart(QLChannel *ch, QLCoroutine **slot, QLContext **slot_ctx)
{
    QLCoroutine *co = *slot;
    QLContext *ctx = *slot_ctx;
    *slot = NULL;
    if (co) {
        bool freed = false;
        bool *outer = ch->freed;
        ch->freed = &freed;
        ql_co_wake(co);
        if (freed) {
            if (outer) {
                *outer = true; /* for the restart this one runs inside */
            }
            return; /* the coroutine freed the channel */
        }
        ch->freed = outer;
        if (*slot || *slot_ctx != ctx) {
            return; /* waiting again, or the handler moved or went already */
        }
    }
    *slot_ctx = NULL;
    if (ctx) {
        update_handlers(ch, ctx);
    }
}

static void restart_read(void *opaque)
{
    QLChannel *ch = opaque;
    restart(ch, &ch->read_co, &ch->read_ctx);
}

static void restart_write(void *opaque)
{
    QLChannel *ch = opaque;
    restart(ch, &ch->write_co, &ch->write_ctx);
}

static int update_handlers(QLChannel *ch, QLContext *ctx)
{
    QLIOHandler *r = ch->read_ctx == ctx ? restart_read : NULL;
    QLIOHandler *w = ch->write_ctx == ctx ? restart_write : NULL;
    if (ch->rfd == ch->wfd) {
        return ql_context_set_fd_handler(ctx, ch->rfd, r, w, NULL, ch);
    }
    int ret = ql_context_set_fd_handler(ctx, ch->rfd, r, NULL, NULL, ch);
    int ret2 = ql_context_set_fd_handler(ctx, ch->wfd, NULL, w, NULL, ch);
    return ret < 0 ? ret : ret2;
}

int ql_channel_yield(QLChannel *ch, int cond)
{
    if (!ql_in_coroutine()) {
        return -EPERM;
    }
    if (cond != QL_CHANNEL_IN && cond != QL_CHANNEL_OUT) {
        return -EINVAL;
    }
    if (ch->rfd < 0) {
        return -EBADF;
    }
    QLCoroutine *self = ql_coroutine_self();
    QLContext *ctx = ql_coroutine_get_context(self);
    if (!ctx) {
        ctx = ql_context_current();
    }
    if (!ctx) {
        /* Nobody polls for this coroutine: wait in poll(2) instead. */
        int r = ql_channel_wait(ch, cond);
        return r < 0 ? r : 0;
    }
    QLCoroutine **slot = cond == QL_CHANNEL_IN ? &ch->read_co : &ch->write_co;
    QLContext **slot_ctx = cond == QL_CHANNEL_IN ? &ch->read_ctx : &ch->write_ctx;
    if (*slot) {
        return -EBUSY;
    }
    if (*slot_ctx != ctx) {
        QLContext *old = *slot_ctx;
        if (old) { /* installed in another context by an earlier wait */
            *slot_ctx = NULL;
            update_handlers(ch, old);
        }
        *slot_ctx = ctx;
        int r = update_handlers(ch, ctx);
        if (r < 0) {
            *slot_ctx = NULL;
            update_handlers(ch, ctx);
            return r;
        }
    } /* else still installed: we run inside the handler that woke us */
    *slot = self;
    int r = ql_coroutine_yield();
    if (*slot == self) {
        /* Woken by someone else (ql_channel_wake, a direct enter). */
        *slot = NULL;
        *slot_ctx = NULL;
        if (ch->rfd >= 0) {
            update_handlers(ch, ctx);
        }
    }
    return r;
}

void ql_channel_wake(QLChannel *ch, int cond)
{
    if (cond & QL_CHANNEL_IN) {
        restart_read(ch);
    }
    if (cond & QL_CHANNEL_OUT) {
        restart_write(ch);
    }
}

void ql__channel_yield_cleanup(QLChannel *ch, QLCoroutine **waiters)
{
    QLContext *rc = ch->read_ctx, *wc = ch->write_ctx;
    waiters[0] = ch->read_co;
    waiters[1] = ch->write_co;
    ch->read_co = ch->write_co = NULL;
    ch->read_ctx = ch->write_ctx = NULL;
    if (rc) {
        update_handlers(ch, rc);
    }
    if (wc && wc != rc) {
        update_handlers(ch, wc);
    }
}

void ql__channel_wake_waiters(QLCoroutine **waiters)
{
    for (int i = 0; i < 2; i++) {
        if (waiters[i]) {
            ql_co_wake(waiters[i]);
        }
    }
}
