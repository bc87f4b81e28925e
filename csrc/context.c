/*
 * AioContext: the poll iteration, notify protocol, fd handlers, embedding.
 *
 * notify_me / notified (QEMU's Dekker-style handshake, F18-F21):
 *   poller:   notify_me += 2; full fence; if notified: don't sleep; else wait
 *             on the fd monitor (the notifier is one of its fds);
 *             then clear the notifier if it was reported ready, notify_me -= 2,
 *             and "accept": notified = false; kicked = false; full fence;
 *             then dispatch (BHs, fds, timers).
 *   notifier: notified = true; full fence; if notify_me != 0 and kicked was
 *             false (exchange): write the event notifier.
 * Either the poller sees notified (and does not sleep) or the notifier sees
 * notify_me (and wakes it).  `kicked` only saves redundant writes when many
 * threads notify one sleeping poller; it is reset after the notifier was
 * drained, so a sleeping poller always has either a pending write or a set
 * notifier.  Work published before a notify (a BH push, a timer insertion)
 * is visible to the dispatch after the accept fence.  When nobody may sleep
 * (notify_me == 0), notify is a store, a fence and a load: no system call.
 * Embedding uses bit 0 of notify_me (prepare sets it, check clears it).
 *
 * The iteration (context_poll):
 *   timeout  = blocking ? min(BH timeout, timer deadlines) : 0
 *   wait     = fd monitor wait(timeout) (or a jump of the virtual clock)
 *   accept   = notifier drained, notified cleared
 *   dispatch = bottom halves, ready fd handlers, expired timers
 *
 * fd handler nodes may be removed from any callback: while a poll holds
 * node pointers (fd_walking > 0) removed nodes are only marked deleted and
 * freed when the outermost poll ends.
 */
#include "context-int.h"
#include "misuse.h"
#include "thread-pool-int.h"
#include "qloop/blocking.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#define QL_POLL_BATCH 64

static QL_TLS QLContext *tl_current;     /* ql_context_current() */
/* Callbacks of this ctx are running (ql__in_dispatch(), context-int.h). */
QL_TLS QLContext *ql__tl_dispatching;

QLContext *ql_context_current(void)
{
    return tl_current;
}

void ql_context_set_current(QLContext *ctx)
{
    tl_current = ctx;
}

QLContext *ql__dispatching(void)
{
    return ql__tl_dispatching;
}

int ql__timeout_ns_to_ms(int64_t ns)
{
    if (ns < 0) {
        return -1;
    }
    int64_t ms = ns / 1000000 + (ns % 1000000 != 0);
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

const char *ql_context_fdmon_name(QLContext *ctx)
{
    return ctx->fdmon->name;
}

/* ---- notify ----------------------------------------------------------- */

void ql_context_notify(QLContext *ctx)
{
    /* Pairs with the fence after notify_me += 2 in context_poll() and
     * after notify_me |= 1 in ql_context_prepare(). */
    __atomic_store_n(&ctx->notified, true, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&ctx->notify_me, __ATOMIC_RELAXED) &&
        !__atomic_exchange_n(&ctx->kicked, true, __ATOMIC_ACQ_REL)) {
        ql_notifier_set(&ctx->notifier);
    }
}

/* The poller took note of every notify so far.  drained: the notifier was
 * just cleared (kicked must be reset).  [home] */
static void notify_accept(QLContext *ctx, bool drained)
{
    /* Nothing to take note of: no store, no fence.  A notify whose store
     * to `notified` comes after these loads stays visible to the next poll,
     * which then does not sleep. */
    if (!drained && !__atomic_load_n(&ctx->notified, __ATOMIC_RELAXED) &&
        !__atomic_load_n(&ctx->kicked, __ATOMIC_RELAXED)) {
        return;
    }
    __atomic_store_n(&ctx->notified, false, __ATOMIC_RELAXED);
    __atomic_store_n(&ctx->kicked, false, __ATOMIC_RELAXED);
    /* Pairs with the fence in ql_context_notify(): what was published
     * before a notify we just consumed is visible to the dispatch. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* ---- creation / destruction ------------------------------------------- */

static const QLFdMonOps *fdmon_by_name(const char *name)
{
    if (name && strcmp(name, "poll") == 0) {
        return &ql__fdmon_poll_ops;
    }
#ifdef __linux__
    if (!name || strcmp(name, "epoll") == 0) {
        return &ql__fdmon_epoll_ops;
    }
    return NULL;
#else
    return name ? NULL : &ql__fdmon_poll_ops;
#endif
}

QLContext *ql__context_new_fdmon(const char *fdmon)
{
    const QLFdMonOps *ops = fdmon_by_name(fdmon);
    if (!ops) {
        errno = EINVAL;
        return NULL;
    }
    QLContext *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        errno = ENOMEM;
        return NULL;
    }
    int r;
    ctx->bad_fd = -1;
    ctx->max_fd = -1;
    pthread_mutex_init(&ctx->lock, NULL);
    ql__timers_init(ctx);
    r = ql_notifier_init(&ctx->notifier);
    if (r < 0) {
        goto fail_notifier;
    }
    ctx->fdmon = ops;
    r = ops->init(ctx);
    if (r < 0) {
        goto fail_fdmon;
    }
    ctx->notifier_node.fd = ql_notifier_fd(&ctx->notifier);
    ctx->notifier_node.events = POLLIN;
    ctx->notifier_node.internal = true;
    ctx->notifier_node.mon_index = -1;
    r = ops->update(ctx, &ctx->notifier_node, 0);
    if (r < 0) {
        goto fail_register;
    }
    ctx->co_sched_bh = ql_bh_new(ctx, ql__co_sched_bh_cb, ctx, "co_schedule");
    if (!ctx->co_sched_bh) {
        r = -errno;
        goto fail_register;
    }
    return ctx;

fail_register:
    ops->cleanup(ctx);
fail_fdmon:
    ql_notifier_close(&ctx->notifier);
fail_notifier:
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
    errno = -r;
    return NULL;
}

QLContext *ql_context_new(void)
{
    const char *env = getenv("QLOOP_FDMON");
    return ql__context_new_fdmon(env && strcmp(env, "poll") == 0 ? "poll" : NULL);
}

static void free_deferred_handlers(QLContext *ctx)
{
    QLFdHandler *node;
    while ((node = ctx->fd_deferred) != NULL) {
        ctx->fd_deferred = node->deferred_next;
        free(node);
    }
}

void ql_context_free(QLContext *ctx)
{
    if (!ctx) {
        return;
    }
    /* First, while BHs still work: thread pools deliver their last
     * completions and join their workers. */
    ql__thread_pools_context_free(ctx);
    ql_bh_delete(ctx->co_sched_bh);
    ql__bh_free_all(ctx);
    for (int fd = 0; fd <= ctx->max_fd; fd++) {
        free(ctx->fd_table[fd]);
    }
    free(ctx->fd_table);
    free_deferred_handlers(ctx);
    ql__timers_cleanup(ctx);
    ctx->fdmon->cleanup(ctx);
    ql_notifier_close(&ctx->notifier);
    pthread_mutex_destroy(&ctx->lock);
    if (tl_current == ctx) {
        tl_current = NULL;
    }
    free(ctx);
}

/* ---- fd handlers ------------------------------------------------------ */

static void handler_remove(QLContext *ctx, QLFdHandler *node)
{
    uint32_t old = node->events;
    node->events = 0;
    ctx->fdmon->update(ctx, node, old); /* errors: the fd is gone anyway */
    ctx->fd_table[node->fd] = NULL;
    ctx->nhandlers--;
    while (ctx->max_fd >= 0 && !ctx->fd_table[ctx->max_fd]) {
        ctx->max_fd--;
    }
    node->deleted = true;
    node->io_read = node->io_write = NULL;
    node->io_flush = NULL;
    if (ctx->fd_walking) {
        node->deferred_next = ctx->fd_deferred;
        ctx->fd_deferred = node;
    } else {
        free(node);
    }
}

/* Make fd_table[fd] exist.  The caller has checked that fd is open, so it
 * is below the process's fd limit; doubling stops at fd + 1 where it would
 * overflow an int. */
static int fd_table_reserve(QLContext *ctx, int fd)
{
    if (fd < ctx->fd_table_size) {
        return 0;
    }
    int size = ctx->fd_table_size ? ctx->fd_table_size : 64;
    while (size <= fd) {
        size = size > INT_MAX / 2 ? fd + 1 : size * 2;
    }
    QLFdHandler **t = realloc(ctx->fd_table, (size_t)size * sizeof *t);
    if (!t) {
        return -ENOMEM;
    }
    memset(t + ctx->fd_table_size, 0, (size - ctx->fd_table_size) * sizeof *t);
    ctx->fd_table = t;
    ctx->fd_table_size = size;
    return 0;
}

int ql_context_set_fd_handler(QLContext *ctx, int fd, QLIOHandler *io_read,
                              QLIOHandler *io_write, QLFlushFunc *io_flush, void *opaque)
{
    if (fd < 0) {
        return ql__misuse(-EBADF, "ql_context_set_fd_handler: negative fd %d", fd);
    }
    QLFdHandler *node = fd < ctx->fd_table_size ? ctx->fd_table[fd] : NULL;
    if (!io_read && !io_write && !io_flush) {
        if (node) {
            handler_remove(ctx, node);
        }
        return 0;
    }
    uint32_t events = (io_read ? POLLIN | POLLHUP | POLLERR : 0) | (io_write ? POLLOUT | POLLERR : 0);
    if (!node) {
        /* A bad fd is refused before the table grows for it: the table is
         * indexed by fd, so a huge unopened number would otherwise grow it
         * (to gigabytes) before the monitor said EBADF.  Within the table
         * the monitor's own registration reports it, without a system call
         * more per new handler. */
        if (fd >= ctx->fd_table_size && fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            return -EBADF;
        }
        int r = fd_table_reserve(ctx, fd);
        if (r < 0) {
            return r;
        }
        node = calloc(1, sizeof *node);
        if (!node) {
            return -ENOMEM;
        }
        node->fd = fd;
        node->mon_index = -1;
        node->events = events;
        if (events) {
            r = ctx->fdmon->update(ctx, node, 0);
            if (r < 0) {
                free(node);
                return r;
            }
        }
        ctx->fd_table[fd] = node;
        ctx->nhandlers++;
        if (fd > ctx->max_fd) {
            ctx->max_fd = fd;
        }
    } else if (node->events != events) {
        uint32_t old = node->events;
        node->events = events;
        int r = ctx->fdmon->update(ctx, node, old);
        if (r < 0) {
            node->events = old;
            return r;
        }
    }
    node->io_read = io_read;
    node->io_write = io_write;
    node->io_flush = io_flush;
    node->opaque = opaque;
    node->en = NULL;
    return 0;
}

int ql_context_set_event_notifier(QLContext *ctx, QLNotifier *n, QLIOHandler *io_read,
                                  QLFlushFunc *io_flush, void *opaque)
{
    int fd = ql_notifier_fd(n);
    if (fd < 0) {
        return ql__misuse(-EBADF, "ql_context_set_event_notifier: closed notifier");
    }
    int r = ql_context_set_fd_handler(ctx, fd, io_read, NULL, io_flush, opaque);
    if (r == 0 && (io_read || io_flush)) {
        ctx->fd_table[fd]->en = n;
    }
    return r;
}

int ql_context_bad_fd(QLContext *ctx)
{
    return ctx->bad_fd;
}

/* Drain the context's notifier if the monitor reported it (*drained); drop
 * closed fds (returning -EBADF).  Returns 0 or -EBADF.  [home] */
static int process_events(QLContext *ctx, QLFdEvent *ev, int n, bool *drained)
{
    int ret = 0;
    for (int i = 0; i < n; i++) {
        QLFdHandler *node = ev[i].node;
        if (node->internal) {
            ql_notifier_test_and_clear(&ctx->notifier);
            *drained = true;
            ev[i].revents = 0;
        } else if ((ev[i].revents & POLLNVAL) && !node->deleted) {
            ctx->bad_fd = node->fd;
            handler_remove(ctx, node);
            ret = -EBADF;
        }
    }
    return ret;
}

static int dispatch_fds(QLContext *ctx, QLFdEvent *ev, int n)
{
    int progress = 0;
    for (int i = 0; i < n; i++) {
        QLFdHandler *node = ev[i].node;
        uint32_t re = ev[i].revents;
        if (node->deleted || !re) {
            continue;
        }
        if ((re & (POLLIN | POLLHUP | POLLERR)) && node->io_read &&
            (!node->en || ql_notifier_test_and_clear(node->en) > 0)) {
            node->io_read(node->opaque);
            progress = 1;
            if (ctx->stop_dispatch) {
                return progress;
            }
        }
        if (!node->deleted && (re & (POLLOUT | POLLERR)) && node->io_write) {
            node->io_write(node->opaque);
            progress = 1;
            if (ctx->stop_dispatch) {
                return progress;
            }
        }
    }
    return progress;
}

/* ---- the iteration ---------------------------------------------------- */

/* Non-virtual timeout (BHs, REALTIME/HOST timers, expired VIRTUAL ones);
 * *vdeadline: the earliest pending VIRTUAL deadline, for autojump. */
static int64_t compute_timeout(QLContext *ctx, int64_t *real, int64_t *vdeadline)
{
    int64_t bh = ql__bh_timeout(ctx);
    *vdeadline = -1;
    *real = bh == 0 ? 0 : ql__timers_timeout(ctx, vdeadline);
    if (bh < 0) {
        return *real;
    }
    return (*real < 0 || bh < *real) ? bh : *real;
}

/* Should a poll about to sleep jump the virtual clock instead? */
static bool want_autojump(QLContext *ctx, int64_t real, int64_t vdeadline)
{
    if (vdeadline < 0 || !__atomic_load_n(&ctx->autojump, __ATOMIC_RELAXED)) {
        return false;
    }
    int64_t vdelay = vdeadline - __atomic_load_n(&ctx->vclock, __ATOMIC_ACQUIRE);
    return real < 0 || vdelay <= real;
}

static int context_poll(QLContext *ctx, bool blocking)
{
    QLContext *prev_current = tl_current, *prev_dispatching = ql__tl_dispatching;
    QLFdEvent ev[QL_POLL_BATCH];
    int nev = 0, ret = 0;

    tl_current = ctx;
    ql__tl_dispatching = NULL; /* a wakeup from now on must reach the wait */
    __atomic_store_n(&ctx->home_thread, ql__thread_id(), __ATOMIC_RELAXED);
    ctx->bad_fd = -1;
    ctx->fd_walking++;

    /* 1. timeout */
    int64_t real = 0, vdeadline = -1;
    int64_t timeout = blocking ? compute_timeout(ctx, &real, &vdeadline) : 0;
    bool may_sleep = timeout != 0;
    if (may_sleep) {
        __atomic_fetch_add(&ctx->notify_me, 2, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&ctx->notified, __ATOMIC_RELAXED)) {
            timeout = 0;
        }
    }

    /* 2. wait */
    if (timeout != 0 && want_autojump(ctx, real, vdeadline)) {
        /* Sleep would be next: whatever is ready first, else jump. */
        if (ctx->fdmon->need_wait(ctx)) {
            nev = ctx->fdmon->wait(ctx, 0, ev, QL_POLL_BATCH);
        }
        if (nev == 0 && !__atomic_load_n(&ctx->notified, __ATOMIC_RELAXED)) {
            ql__virtual_clock_jump(ctx, vdeadline);
        }
    } else if (timeout != 0) {
        void *token = ql_blocking_begin();
        nev = ctx->fdmon->wait(ctx, timeout, ev, QL_POLL_BATCH);
        ql_blocking_end(token);
    } else if (ctx->fdmon->need_wait(ctx)) {
        nev = ctx->fdmon->wait(ctx, 0, ev, QL_POLL_BATCH);
    }
    if (nev < 0) {
        ret = nev;
        nev = 0;
    }
    bool drained = false;
    ret = ret ? ret : process_events(ctx, ev, nev, &drained);
    if (may_sleep) {
        __atomic_fetch_sub(&ctx->notify_me, 2, __ATOMIC_RELEASE);
    }

    /* 3. accept */
    notify_accept(ctx, drained);

    /* 4. dispatch: bottom halves, fd handlers, timers */
    if (ret == 0) {
        ql__tl_dispatching = ctx;
        ctx->stop_dispatch = false;
        int progress = ql__bh_poll(ctx);
        if (!ctx->stop_dispatch) {
            progress |= dispatch_fds(ctx, ev, nev);
        }
        if (!ctx->stop_dispatch) {
            progress |= ql__timers_run(ctx);
        }
        ctx->stop_dispatch = false;
        ret = progress;
    }

    if (--ctx->fd_walking == 0) {
        free_deferred_handlers(ctx);
    }
    ql__tl_dispatching = prev_dispatching;
    tl_current = prev_current;
    return ret;
}

int ql_context_poll(QLContext *ctx, bool blocking)
{
    return context_poll(ctx, blocking);
}

void ql_context_stop_dispatch(QLContext *ctx)
{
    ctx->stop_dispatch = true;
}

/* Any user fd ready now?  Drains the context notifier when drain is set. */
static bool fds_ready(QLContext *ctx, bool drain, bool *drained)
{
    QLFdEvent ev[QL_POLL_BATCH];
    int n = ctx->fdmon->wait(ctx, 0, ev, QL_POLL_BATCH);
    bool ready = false;
    for (int i = 0; i < n; i++) {
        if (ev[i].node->internal) {
            if (drain) {
                ql_notifier_test_and_clear(&ctx->notifier);
                *drained = true;
            }
        } else {
            ready = true;
        }
    }
    return ready;
}

static bool timers_expired(QLContext *ctx)
{
    int64_t vdeadline;
    return ql__timers_timeout(ctx, &vdeadline) == 0;
}

bool ql_context_pending(QLContext *ctx)
{
    if (ql__bh_any_scheduled(ctx) || timers_expired(ctx)) {
        return true;
    }
    bool drained = false;
    return (ctx->fdmon->need_wait(ctx) || ctx->n_always_ready) && fds_ready(ctx, false, &drained);
}

int ql_context_flush(QLContext *ctx)
{
    for (;;) {
        bool busy = false;
        ctx->fd_walking++;
        for (int fd = 0; fd <= ctx->max_fd && !busy; fd++) {
            QLFdHandler *node = ctx->fd_table[fd];
            if (node && node->io_flush && node->io_flush(node->opaque)) {
                busy = true;
            }
        }
        if (--ctx->fd_walking == 0) {
            free_deferred_handlers(ctx);
        }
        if (!busy) {
            return 0;
        }
        int r = ql_context_poll(ctx, true);
        if (r < 0) {
            return r;
        }
    }
}

/* ---- embedding -------------------------------------------------------- */

int ql_context_fd(QLContext *ctx)
{
    return ctx->fdmon->embed_fd(ctx);
}

int64_t ql_context_prepare(QLContext *ctx)
{
    __atomic_fetch_or(&ctx->notify_me, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* pairs with ql_context_notify() */
    if (__atomic_load_n(&ctx->notified, __ATOMIC_RELAXED) || ctx->n_always_ready) {
        return 0;
    }
    int64_t real, vdeadline;
    int64_t timeout = compute_timeout(ctx, &real, &vdeadline);
    if (timeout != 0 && want_autojump(ctx, real, vdeadline)) {
        /* The caller would sleep: jump instead (fds that are ready now
         * run in the same dispatch as the timers). */
        ql__virtual_clock_jump(ctx, vdeadline);
        return 0;
    }
    return timeout;
}

bool ql_context_check(QLContext *ctx)
{
    __atomic_fetch_and(&ctx->notify_me, ~1u, __ATOMIC_RELEASE);
    bool drained = false;
    bool ready = fds_ready(ctx, true, &drained); /* the notifier is in the set */
    notify_accept(ctx, drained);
    return ready || ql__bh_any_scheduled(ctx) || timers_expired(ctx);
}

int ql_context_dispatch(QLContext *ctx)
{
    return context_poll(ctx, false);
}
