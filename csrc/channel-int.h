/*
 * Internal to the channel core: the QLChannel structure shared by channel.c
 * (I/O and the retry loops) and channel-yield.c (the coroutine wait).
 */
#ifndef QLOOP_CHANNEL_INT_H
#define QLOOP_CHANNEL_INT_H

#include "qloop/channel.h"

typedef struct QLCoroutine QLCoroutine;

/* All fields belong to the thread doing I/O on the channel. */
struct QLChannel {
    int rfd;              /* read fd, -1 once closed/detached */
    int wfd;              /* write fd (== rfd for a single fd) */
    bool socket;          /* recvmsg/sendmsg, MSG_DONTWAIT, MSG_NOSIGNAL */
    bool blocking;        /* QEMU's blocking mode (O_NONBLOCK mirrors it) */
    /* Coroutines waiting in ql_channel_yield, and the context whose fd
     * handler for that direction is installed (the waiting coroutine's
     * context).  A handler stays installed while the coroutine it woke runs
     * inside it, so one that waits again at once (a read loop) costs no fd
     * registration; it is removed when the coroutine returns without
     * waiting again. */
    QLCoroutine *read_co;
    QLCoroutine *write_co;
    QLContext *read_ctx;
    QLContext *write_ctx;
    bool *freed;          /* set by ql_channel_free while a handler runs */
};

/* True inside a coroutine (false when coroutines are not built in). */
bool ql__channel_in_coroutine(void);

/* The channel is closing: drop the fd handlers that waiting coroutines
 * installed and hand those coroutines (read, write; NULL if none) back in
 * waiters[2]. */
void ql__channel_yield_cleanup(QLChannel *ch, QLCoroutine **waiters);
/* Wake the coroutines returned by ql__channel_yield_cleanup: they resume in
 * their wait, retry and see the channel closed (-EBADF). */
void ql__channel_wake_waiters(QLCoroutine **waiters);

#endif
