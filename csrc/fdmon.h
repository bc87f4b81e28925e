/*
 * Internal: the fd monitor contract.  A monitor watches the fds of one
 * context's handler nodes and reports which are ready; it never calls user
 * callbacks (context.c does).  One file per backend: fdmon-epoll.c (default
 * on Linux), fdmon-poll.c (portable; QLOOP_FDMON=poll).
 *
 * Everything here runs in the context's home thread.
 */
#ifndef QLOOP_FDMON_H
#define QLOOP_FDMON_H

#include <stdbool.h>
#include <stdint.h>

typedef struct QLContext QLContext;
typedef struct QLFdHandler QLFdHandler;

/* Readiness bits: poll(2)'s POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL. */
typedef struct QLFdEvent {
    QLFdHandler *node;
    uint32_t revents;
} QLFdEvent;

typedef struct QLFdMonOps {
    const char *name;
    /* Set up ctx->fdmon_state.  0 or -errno. */
    int (*init)(QLContext *ctx);
    void (*cleanup)(QLContext *ctx);
    /* node->events changed from old_events (0: node is new) to
     * node->events (0: stop watching; the node is going away).  May set
     * node->always_ready for fds the backend cannot watch (they are then
     * reported ready by every wait).  0 or -errno (-EBADF: closed fd). */
    int (*update)(QLContext *ctx, QLFdHandler *node, uint32_t old_events);
    /* Wait up to timeout_ns (-1: no limit, 0: just look) and store at most
     * max ready nodes in ev.  A closed fd is reported with POLLNVAL.
     * Returns the count (0 on timeout or EINTR) or -errno. */
    int (*wait)(QLContext *ctx, int64_t timeout_ns, QLFdEvent *ev, int max);
    /* True if a zero-timeout wait() can report anything (user fds exist). */
    bool (*need_wait)(QLContext *ctx);
    /* A fd that polls readable while any watched fd (the notifier
     * included) is ready: for embedding.  -errno on failure. */
    int (*embed_fd)(QLContext *ctx);
} QLFdMonOps;

extern const QLFdMonOps ql__fdmon_epoll_ops;
extern const QLFdMonOps ql__fdmon_poll_ops;

/* Nanoseconds to whole milliseconds for APIs that take ms: rounded UP (a
 * timer must never fire early), -1 stays -1, capped at INT32_MAX. */
int ql__timeout_ns_to_ms(int64_t ns);

#endif /* QLOOP_FDMON_H */
