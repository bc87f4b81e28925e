/*
 * fd monitor on poll(2) (portable; forced with QLOOP_FDMON=poll).
 *
 * Keeps a pollfd array in step with the handler nodes (node->mon_index is
 * the node's slot; removal swaps the last slot in).  Waits use ppoll with a
 * ns timespec.  Reports start at a rotating offset so that, when more fds
 * are ready than fit in one batch, none is starved.  A closed fd is reported
 * by the kernel as POLLNVAL.
 *
 * Embedding: poll(2) has no fd of its own, so the first ql_context_fd()
 * creates an epoll set that mirrors the registrations from then on (Linux).
 * Fds epoll refuses (regular files) are counted in ctx->n_always_ready and
 * make ql_context_prepare() return 0.  Without epoll, embedding returns
 * -ENOSYS.
 */
#include "context-int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

typedef struct PollState {
    struct pollfd *pfd;
    QLFdHandler **node;
    int n, cap;
    int rotate;
    int embed_epfd;            /* -1 until ql_context_fd() asks */
} PollState;

static int poll_init(QLContext *ctx)
{
    PollState *st = calloc(1, sizeof *st);
    if (!st) {
        return -ENOMEM;
    }
    st->embed_epfd = -1;
    ctx->fdmon_state = st;
    return 0;
}

static void poll_cleanup(QLContext *ctx)
{
    PollState *st = ctx->fdmon_state;
    if (!st) {
        return;
    }
    if (st->embed_epfd >= 0) {
        close(st->embed_epfd);
    }
    free(st->pfd);
    free(st->node);
    free(st);
    ctx->fdmon_state = NULL;
}

/* Mirror a registration change into the embedding epoll set. */
static void mirror_update(QLContext *ctx, PollState *st, QLFdHandler *node, uint32_t old_events)
{
#ifdef __linux__
    if (st->embed_epfd < 0) {
        return;
    }
    struct epoll_event ev = {.events = ((node->events & POLLIN) ? EPOLLIN : 0) |
                                       ((node->events & POLLOUT) ? EPOLLOUT : 0),
                             .data.ptr = node};
    if (node->events == 0) {
        if (node->always_ready) {
            node->always_ready = false;
            ctx->n_always_ready--;
        } else {
            epoll_ctl(st->embed_epfd, EPOLL_CTL_DEL, node->fd, &ev);
        }
        return;
    }
    if (node->always_ready) {
        return;
    }
    int op = old_events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(st->embed_epfd, op, node->fd, &ev) < 0) {
        if (op == EPOLL_CTL_MOD && errno == ENOENT &&
            epoll_ctl(st->embed_epfd, EPOLL_CTL_ADD, node->fd, &ev) == 0) {
            return;
        }
        if (errno == EPERM) {
            node->always_ready = true;
            ctx->n_always_ready++;
        }
    }
#else
    (void)ctx; (void)st; (void)node; (void)old_events;
#endif
}

static int poll_update(QLContext *ctx, QLFdHandler *node, uint32_t old_events)
{
    PollState *st = ctx->fdmon_state;
    if (node->events == 0) {
        int i = node->mon_index;
        if (old_events && i >= 0 && i < st->n && st->node[i] == node) {
            st->n--;
            if (i != st->n) {
                st->pfd[i] = st->pfd[st->n];
                st->node[i] = st->node[st->n];
                st->node[i]->mon_index = i;
            }
        }
        node->mon_index = -1;
    } else if (old_events == 0) {
        if (fcntl(node->fd, F_GETFD) < 0 && errno == EBADF) {
            return -EBADF; /* poll(2) would only say so at the next wait */
        }
        if (st->n == st->cap) {
            int cap = st->cap ? st->cap * 2 : 16;
            struct pollfd *p = realloc(st->pfd, cap * sizeof *p);
            if (!p) {
                return -ENOMEM;
            }
            st->pfd = p;
            QLFdHandler **nd = realloc(st->node, cap * sizeof *nd);
            if (!nd) {
                return -ENOMEM;
            }
            st->node = nd;
            st->cap = cap;
        }
        node->mon_index = st->n;
        st->pfd[st->n] = (struct pollfd){.fd = node->fd, .events = (short)node->events};
        st->node[st->n++] = node;
    } else {
        st->pfd[node->mon_index].events = (short)node->events;
    }
    mirror_update(ctx, st, node, old_events);
    return 0;
}

static int poll_wait(QLContext *ctx, int64_t timeout_ns, QLFdEvent *out, int max)
{
    PollState *st = ctx->fdmon_state;
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    int r = ppoll(st->pfd, st->n, tsp, NULL);
    if (r < 0) {
        return errno == EINTR ? 0 : -errno;
    }
    int k = 0;
    if (r > 0) {
        int n = st->n;
        int start = st->rotate++ % n;
        for (int i = 0; i < n && k < max; i++) {
            int j = (start + i) % n;
            if (st->pfd[j].revents) {
                out[k++] = (QLFdEvent){st->node[j], (uint32_t)st->pfd[j].revents};
            }
        }
    }
    return k;
}

static bool poll_need_wait(QLContext *ctx)
{
    return ctx->nhandlers > 0;
}

static int poll_embed_fd(QLContext *ctx)
{
#ifdef __linux__
    PollState *st = ctx->fdmon_state;
    if (st->embed_epfd >= 0) {
        return st->embed_epfd;
    }
    st->embed_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (st->embed_epfd < 0) {
        return -errno;
    }
    for (int i = 0; i < st->n; i++) {
        mirror_update(ctx, st, st->node[i], 0);
    }
    return st->embed_epfd;
#else
    (void)ctx;
    return -ENOSYS;
#endif
}

const QLFdMonOps ql__fdmon_poll_ops = {
    .name = "poll",
    .init = poll_init,
    .cleanup = poll_cleanup,
    .update = poll_update,
    .wait = poll_wait,
    .need_wait = poll_need_wait,
    .embed_fd = poll_embed_fd,
};
