/*
 * fd monitor on epoll (Linux; the default).
 *
 * Level-triggered registrations, node pointer in epoll_event.data.  Waits
 * keep ns precision with epoll_pwait2 (falls back to epoll_wait with the
 * timeout rounded UP to whole ms where the kernel lacks it).  The context's
 * embedding fd (ql_context_fd) is a second epoll fd, made on first request,
 * whose only member is the first: readable when the set has events, and the
 * same file for as long as the context lives (see the rebuild below).
 *
 * Fds epoll refuses (EPERM: regular files, /dev/null) are "always ready":
 * every wait reports them with the events asked for and does not sleep.
 *
 * Closed fds: the kernel drops a closed file from the epoll set silently, so
 * a handler on a closed fd would simply never run and a poll with nothing
 * else to wait for would sleep forever.  A sweep - one poll(2) with no
 * events over the registered fds, which reports POLLNVAL for closed ones -
 * runs before a wait that may sleep, at most once per second; a sleeping
 * wait is cut into slices so that the next sweep is not postponed more than
 * a second.  A closed fd is reported as a POLLNVAL event (the context then
 * fails the poll with -EBADF).  An fd number reused by a new file cannot be
 * told from the old one (same as with poll(2)).
 *
 * A handler removed after its fd was closed: epoll keys a registration by
 * file, not by number, so if the file is still open elsewhere (a dup(), a
 * forked child) the registration outlives the close, EPOLL_CTL_DEL cannot
 * reach it any more, and its level-triggered events would wake every wait
 * for nothing.  The set is rebuilt then (a new epoll fd with the current
 * registrations, swapped into the embedding fd's set, so that an outer loop
 * watching that fd - by number or by file - keeps its registration).
 */
#include "context-int.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define SWEEP_INTERVAL_NS 1000000000LL
#define EPOLL_BATCH 64

typedef struct EpollState {
    int epfd;
    int outer;                 /* embedding fd: -1 until ql_context_fd() asks */
    bool no_pwait2;            /* epoll_pwait2 returned ENOSYS */
    QLFdHandler **always;      /* always-ready nodes */
    int nalways, calways;
    struct pollfd *sweep_pfd;  /* scratch for sweeps */
    QLFdHandler **sweep_node;
    int sweep_cap;
    int64_t last_sweep;        /* CLOCK_MONOTONIC ns */
} EpollState;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint32_t to_epoll(uint32_t ev)
{
    return ((ev & POLLIN) ? EPOLLIN : 0) | ((ev & POLLOUT) ? EPOLLOUT : 0) |
           ((ev & POLLHUP) ? EPOLLHUP : 0) | ((ev & POLLERR) ? EPOLLERR : 0);
}

static uint32_t from_epoll(uint32_t ev)
{
    return ((ev & EPOLLIN) ? POLLIN : 0) | ((ev & EPOLLOUT) ? POLLOUT : 0) |
           ((ev & EPOLLHUP) ? POLLHUP : 0) | ((ev & EPOLLERR) ? POLLERR : 0);
}

static int epoll_init(QLContext *ctx)
{
    EpollState *st = calloc(1, sizeof *st);
    if (!st) {
        return -ENOMEM;
    }
    st->outer = -1;
    st->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (st->epfd < 0) {
        int err = errno;
        free(st);
        return -err;
    }
    ctx->fdmon_state = st;
    return 0;
}

static void epoll_cleanup(QLContext *ctx)
{
    EpollState *st = ctx->fdmon_state;
    if (!st) {
        return;
    }
    close(st->epfd);
    if (st->outer >= 0) {
        close(st->outer);
    }
    free(st->always);
    free(st->sweep_pfd);
    free(st->sweep_node);
    free(st);
    ctx->fdmon_state = NULL;
}

static int always_add(QLContext *ctx, EpollState *st, QLFdHandler *node)
{
    if (st->nalways == st->calways) {
        int cap = st->calways ? st->calways * 2 : 8;
        QLFdHandler **a = realloc(st->always, cap * sizeof *a);
        if (!a) {
            return -ENOMEM;
        }
        st->always = a;
        st->calways = cap;
    }
    st->always[st->nalways++] = node;
    node->always_ready = true;
    ctx->n_always_ready++;
    return 0;
}

static void always_del(QLContext *ctx, EpollState *st, QLFdHandler *node)
{
    for (int i = 0; i < st->nalways; i++) {
        if (st->always[i] == node) {
            st->always[i] = st->always[--st->nalways];
            break;
        }
    }
    node->always_ready = false;
    ctx->n_always_ready--;
}

static int epoll_rebuild(QLContext *ctx, EpollState *st);

static int epoll_update(QLContext *ctx, QLFdHandler *node, uint32_t old_events)
{
    EpollState *st = ctx->fdmon_state;
    if (node->always_ready) {
        if (node->events == 0) {
            always_del(ctx, st, node);
        }
        return 0;
    }
    struct epoll_event ev = {.events = to_epoll(node->events), .data.ptr = node};
    int op = node->events == 0 ? EPOLL_CTL_DEL : old_events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(st->epfd, op, node->fd, &ev) == 0) {
        return 0;
    }
    int err = errno;
    if (op == EPOLL_CTL_ADD && err == EPERM) {
        return always_add(ctx, st, node);
    }
    if (op == EPOLL_CTL_DEL && (err == EBADF || err == ENOENT) && old_events != 0) {
        /* Closed (and maybe reused) before its handler was removed: the
         * registration may live on through another fd of the same file. */
        return epoll_rebuild(ctx, st);
    }
    if (op == EPOLL_CTL_DEL && (err == EBADF || err == ENOENT || err == EPERM)) {
        /* never added (flush-only node) or not pollable at all: nothing to
         * undo */
        return 0;
    }
    if (op == EPOLL_CTL_MOD && err == ENOENT) {
        /* The file was closed and the number is open again: a new file that
         * the caller now means.  The old registration may live on too. */
        if (epoll_ctl(st->epfd, EPOLL_CTL_ADD, node->fd, &ev) < 0) {
            return errno == EPERM ? always_add(ctx, st, node) : -errno;
        }
        return epoll_rebuild(ctx, st);
    }
    return -err;
}

/* Replace the epoll set by a new one holding the current registrations
 * (see the header comment).  The fd number does not change. */
static int epoll_rebuild(QLContext *ctx, EpollState *st)
{
    int nfd = epoll_create1(EPOLL_CLOEXEC);
    if (nfd < 0) {
        return -errno;
    }
    for (int fd = -1; fd <= ctx->max_fd; fd++) {
        QLFdHandler *node = fd < 0 ? &ctx->notifier_node : ctx->fd_table[fd];
        if (node && node->events && !node->always_ready) {
            struct epoll_event ev = {.events = to_epoll(node->events), .data.ptr = node};
            /* a registered fd that is closed fails here; the sweep reports it */
            (void)epoll_ctl(nfd, EPOLL_CTL_ADD, node->fd, &ev);
        }
    }
    if (st->outer >= 0) {
        struct epoll_event ev = {.events = EPOLLIN};
        if (epoll_ctl(st->outer, EPOLL_CTL_ADD, nfd, &ev) < 0) {
            int err = errno;
            close(nfd);
            return -err;
        }
    }
    close(st->epfd); /* also leaves the embedding set */
    st->epfd = nfd;
    return 0;
}

/* Report registered fds that are closed.  Returns the count stored. */
static int epoll_sweep(QLContext *ctx, EpollState *st, QLFdEvent *out, int max)
{
    st->last_sweep = mono_ns();
    if (st->sweep_cap < ctx->nhandlers) {
        int cap = ctx->nhandlers * 2;
        struct pollfd *p = realloc(st->sweep_pfd, cap * sizeof *p);
        if (!p) {
            return 0;
        }
        st->sweep_pfd = p;
        QLFdHandler **n = realloc(st->sweep_node, cap * sizeof *n);
        if (!n) {
            return 0;
        }
        st->sweep_node = n;
        st->sweep_cap = cap;
    }
    int n = 0;
    for (int fd = 0; fd <= ctx->max_fd && n < st->sweep_cap; fd++) {
        QLFdHandler *node = ctx->fd_table[fd];
        if (node && !node->internal && node->events && !node->always_ready) {
            st->sweep_pfd[n] = (struct pollfd){.fd = fd, .events = 0};
            st->sweep_node[n++] = node;
        }
    }
    if (n == 0 || poll(st->sweep_pfd, n, 0) <= 0) {
        return 0;
    }
    int k = 0;
    for (int i = 0; i < n && k < max; i++) {
        if (st->sweep_pfd[i].revents & POLLNVAL) {
            out[k++] = (QLFdEvent){st->sweep_node[i], POLLNVAL};
        }
    }
    return k;
}

static int epoll_wait_ns(EpollState *st, struct epoll_event *evs, int max, int64_t timeout_ns)
{
#if defined(__GLIBC__) /* epoll_pwait2: glibc >= 2.35 */ \
     && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
    if (!st->no_pwait2 && timeout_ns > 0) {
        struct timespec ts = {.tv_sec = timeout_ns / 1000000000LL,
                              .tv_nsec = timeout_ns % 1000000000LL};
        int r = epoll_pwait2(st->epfd, evs, max, &ts, NULL);
        if (r >= 0 || errno != ENOSYS) {
            return r;
        }
        st->no_pwait2 = true;
    }
#endif
    return epoll_wait(st->epfd, evs, max, ql__timeout_ns_to_ms(timeout_ns));
}

static int epoll_do_wait(QLContext *ctx, int64_t timeout_ns, QLFdEvent *out, int max)
{
    EpollState *st = ctx->fdmon_state;
    struct epoll_event evs[EPOLL_BATCH];
    int k = 0;
    if (st->nalways) {
        timeout_ns = 0;
    }
    int64_t deadline = timeout_ns > 0 ? mono_ns() + timeout_ns : -1;
    for (;;) {
        int64_t t = timeout_ns;
        if (t != 0 && ctx->nhandlers > 0) {
            int64_t now = mono_ns();
            if (now - st->last_sweep >= SWEEP_INTERVAL_NS) {
                k = epoll_sweep(ctx, st, out, max);
                if (k > 0) {
                    return k;
                }
                now = st->last_sweep;
            }
            int64_t slice = st->last_sweep + SWEEP_INTERVAL_NS - now;
            if (deadline >= 0) {
                t = deadline - now;
                if (t <= 0) {
                    return 0;
                }
            }
            if (t < 0 || t > slice) {
                t = slice; /* come back for the next sweep */
            }
        }
        int n = epoll_wait_ns(st, evs, max < EPOLL_BATCH ? max : EPOLL_BATCH, t);
        if (n < 0) {
            return errno == EINTR ? 0 : -errno;
        }
        for (int i = 0; i < n; i++) {
            out[k++] = (QLFdEvent){evs[i].data.ptr, from_epoll(evs[i].events)};
        }
        if (k > 0 || t == timeout_ns) {
            break;
        }
        /* A slice ran out with nothing ready: sweep and wait again. */
    }
    for (int i = 0; i < st->nalways && k < max; i++) {
        QLFdHandler *node = st->always[i];
        out[k++] = (QLFdEvent){node, node->events & (POLLIN | POLLOUT)};
    }
    return k;
}

static bool epoll_need_wait(QLContext *ctx)
{
    return ctx->nhandlers > 0;
}

static int epoll_embed_fd(QLContext *ctx)
{
    EpollState *st = ctx->fdmon_state;
    if (st->outer < 0) {
        int fd = epoll_create1(EPOLL_CLOEXEC);
        if (fd < 0) {
            return -errno;
        }
        struct epoll_event ev = {.events = EPOLLIN};
        if (epoll_ctl(fd, EPOLL_CTL_ADD, st->epfd, &ev) < 0) {
            int err = errno;
            close(fd);
            return -err;
        }
        st->outer = fd;
    }
    return st->outer;
}

const QLFdMonOps ql__fdmon_epoll_ops = {
    .name = "epoll",
    .init = epoll_init,
    .cleanup = epoll_cleanup,
    .update = epoll_update,
    .wait = epoll_do_wait,
    .need_wait = epoll_need_wait,
    .embed_fd = epoll_embed_fd,
};
