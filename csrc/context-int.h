/*
 * Internal: the AioContext structure shared by context.c, bh.c, timer.c,
 * the fd monitors and the coroutine scheduler.  Not installed.
 *
 * Ownership legend used below:
 *   [home]   only the thread polling the context touches it
 *   [atomic] any thread, through __atomic builtins (pairings documented)
 *   [lock]   protected by ctx->lock (pthread mutex)
 *   [const]  set at creation, read-only afterwards
 */
#ifndef QLOOP_CONTEXT_INT_H
#define QLOOP_CONTEXT_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "qloop/context.h"
#include "qloop/notifier.h"
#include "fdmon.h"

/* ---- bottom halves ------------------------------------------------------ */

/* BH flag bits (QLBH.flags, [atomic]). */
enum {
    QL_BH_PENDING = 1u << 0,   /* linked on ctx->bh_list or ctx->bh_ready */
    QL_BH_SCHEDULED = 1u << 1, /* callback should run at dequeue */
    QL_BH_DELETED = 1u << 2,   /* free at dequeue, never run again */
    QL_BH_ONESHOT = 1u << 3,   /* free after the callback ran */
    QL_BH_IDLE = 1u << 4,      /* scheduled as idle: no wakeup, no progress */
    QL_BH_NOREF = 1u << 5,     /* linked by delete, not by a schedule that
                                * returned 1: no dequeue hook for it */
};

struct QLBH {
    QLContext *ctx;            /* [const] */
    QLBHFunc *cb;              /* [const] (set again when a oneshot node is reused) */
    void *opaque;
    const char *name;
    QLBHFunc *dequeue_hook;    /* [home] */
    /* Link on the atomic pending list or the home-thread ready queue.
     * Written by whoever links the BH (the thread whose fetch_or moved
     * PENDING from 0 to 1), read by the home thread after it took the list. */
    struct QLBH *next;
    unsigned flags;            /* [atomic] QL_BH_* */
    /* Every non-oneshot BH of a context, for ql_context_free.  [lock] */
    struct QLBH *all_prev, *all_next;
};

/* ---- timers ------------------------------------------------------------- */

struct QLTimer {
    /* What the run pass touches first, together (one cache line when the
     * timer is 64-byte aligned; the wheel prefetches it). */
    size_t heap_index;         /* [lock] position in the heap, QL_TIMER_IN_WHEEL
                                * or QL_TIMER_NOT_IN_HEAP */
    int64_t expire;            /* [lock] for writes, [atomic] reads; -1: idle */
    QLTimerFunc *cb;           /* [const] */
    void *opaque;              /* [const] */
    uint64_t seq;              /* [lock] arming order, breaks deadline ties */
    QLContext *ctx;            /* [lock] NULL once the context was freed */
    QLClockType type;          /* [const] */
    uint32_t wpos;             /* [lock] its entry in the wheel's pool while there */
    const char *name;          /* [const] */
    int scale;                 /* ns per unit for qemu-compat.h's timer_mod() */
    struct QLTimer *all_prev, *all_next; /* [lock] every timer of the ctx */
};

#define QL_TIMER_NOT_IN_HEAP ((size_t)-1)
#define QL_TIMER_IN_WHEEL ((size_t)-2)

/* Timer wheel in front of the heap (see timer.c): QL_WHEEL_SIZE buckets of
 * 2^QL_WHEEL_SHIFT ns (262 us; the wheel spans 268 ms). */
#define QL_WHEEL_SHIFT 18
#define QL_WHEEL_SIZE 1024

/* A heap slot caches the key so that comparisons never touch the timer. */
typedef struct QLTimerSlot {
    int64_t expire;
    uint64_t seq;
    QLTimer *t;
} QLTimerSlot;

/* A wheel entry: the timer's key, in its bucket's chunk. */
typedef struct QLWheelEntry {
    int64_t expire;
    uint64_t seq;
    QLTimer *t;
    void *opaque;              /* t->opaque, prefetched with t (the callback's data) */
} QLWheelEntry;

/* A bucket is a list of chunks of QL_WHEEL_CHUNK entries (256 bytes), drawn
 * from one pool per clock: moving a bucket into the heap reads its entries
 * in order, a cache miss per chunk rather than one per timer in series, and
 * buckets share the pool's memory, so a steady load allocates nothing. */
#define QL_WHEEL_CHUNK 8
#define QL_WHEEL_NONE UINT32_MAX

typedef struct QLWheelBucket {
    uint32_t head;             /* newest chunk (the only partial one), or NONE */
    uint32_t hn;               /* entries in the head chunk */
} QLWheelBucket;

typedef struct QLTimerHeap {
    QLTimerSlot *a;            /* [lock] 4-ary min-heap on (expire, seq) */
    size_t n, cap;             /* n: [lock] writes, [atomic] reads */
    /* The wheel: unsorted buckets of timers whose tick (expire >> SHIFT) is
     * in (cursor, cursor + QL_WHEEL_SIZE).  Allocated on first use. */
    QLWheelBucket *wheel;      /* [lock] QL_WHEEL_SIZE buckets, NULL before first use */
    QLWheelEntry *went;        /* [lock] chunk pool: chunk c is went[c * CHUNK ...] */
    uint32_t *chunk_next;      /* [lock] per chunk: next in its bucket or the free list */
    uint32_t nchunks;          /* [lock] chunks in the pool */
    uint32_t chunk_free;       /* [lock] free list head, or NONE */
    size_t wcount;             /* [lock] writes, [atomic] reads: timers in it */
    int64_t cursor;            /* [lock] every armed timer with tick <= cursor
                                * is in the heap */
    uint64_t wbits[QL_WHEEL_SIZE / 64]; /* [lock] non-empty buckets */
} QLTimerHeap;

/* ---- fd handlers -------------------------------------------------------- */

struct QLFdHandler {
    int fd;
    uint32_t events;           /* POLLIN|POLLHUP|POLLERR / POLLOUT|POLLERR wanted */
    QLIOHandler *io_read;
    QLIOHandler *io_write;
    QLFlushFunc *io_flush;
    void *opaque;
    QLNotifier *en;            /* set_event_notifier: cleared before io_read */
    bool internal;             /* the context's own notifier: never dispatched */
    bool deleted;              /* removed while a poll referenced it */
    bool always_ready;         /* fd the monitor cannot watch (regular file) */
    int mon_index;             /* backend private (poll: pollfd index) */
    struct QLFdHandler *deferred_next; /* on ctx->fd_deferred while deleted */
};

/* ---- the context -------------------------------------------------------- */

struct QLContext {
    /* notify protocol (see context.c, "notify_me / notified") */
    unsigned notify_me;        /* [atomic] +2 per blocked poll, bit 0: prepare */
    bool notified;             /* [atomic] set by notify, cleared by accept */
    bool kicked;               /* [atomic] notifier written since last accept */
    QLNotifier notifier;       /* [const] */
    QLFdHandler notifier_node; /* [home] the notifier as seen by the monitor */

    /* bottom halves */
    QLBH *bh_list;             /* [atomic] LIFO of newly linked BHs */
    QLBH *bh_ready_head;       /* [home] FIFO being dispatched (slices) */
    QLBH *bh_ready_tail;       /* [home] */
    QLBH *bh_free;             /* [home] recycled oneshot nodes */
    unsigned bh_free_count;    /* [home] */
    QLBH *bh_all;              /* [lock] every non-oneshot BH */
    bool stop_dispatch;        /* [home] */
    void *home_thread;         /* [atomic] ql__thread_id() of the last poller */

    /* timers and clocks */
    pthread_mutex_t lock;      /* timers, heaps, BH registry */
    QLTimerHeap heap[QL_CLOCK_MAX];
    uint64_t timer_seq;        /* [lock] */
    size_t timers_armed;       /* [lock] writes, [atomic] reads: armed timers,
                                * every clock (a poll with none skips timers) */
    QLTimer *timer_all;        /* [lock] */
    int64_t vclock;            /* [atomic] virtual time in ns */
    bool autojump;             /* [atomic] */

    /* fd handlers */
    const QLFdMonOps *fdmon;   /* [const] */
    void *fdmon_state;         /* backend private */
    QLFdHandler **fd_table;    /* [home] fd -> node */
    int fd_table_size;
    int nhandlers;             /* [home] user handlers registered */
    int max_fd;                /* [home] highest fd with a handler, or -1 */
    unsigned fd_walking;       /* [home] polls holding node pointers */
    QLFdHandler *fd_deferred;  /* [home] deleted nodes to free at walking 0 */
    int bad_fd;                /* [home] last fd found closed, or -1 */
    int n_always_ready;        /* [home] nodes the embedding fd cannot watch */

    /* coroutine scheduling (csrc/co-schedule.c) */
    void *co_sched_head;       /* [atomic] LIFO of scheduled coroutines */
    QLBH *co_sched_bh;         /* [const] runs ql__co_sched_bh_cb */
};

/* Thread-local storage of the core.  initial-exec: a plain %fs-relative
 * access instead of a __tls_get_addr() call per access when libqloop is
 * linked into a shared object (the Python extension).  It takes a few bytes
 * of the static TLS block that the C library reserves for dlopen()ed
 * objects (the core and its Python glue use about 80 bytes in all; glibc
 * reserves 512 by default). */
#define QL_TLS __thread __attribute__((tls_model("initial-exec")))

/* A unique, cheap identity of the calling thread (bh.c). */
void *ql__thread_id(void);

/* Placeholder in csrc/co-schedule.c, replaced by the coroutine scheduler. */
void ql__co_sched_bh_cb(void *opaque);

/* ---- bh.c --------------------------------------------------------------- */
/* Run the BHs linked so far (and continue an interrupted or outer batch).
 * Returns 1 if a non-idle callback ran.  [home] */
int ql__bh_poll(QLContext *ctx);
/* Timeout contribution of BHs: 0 if a non-idle BH is scheduled, 10 ms if
 * only idle ones, -1 if none.  [home] */
int64_t ql__bh_timeout(QLContext *ctx);
/* True if any scheduled, not deleted BH (idle included) is linked.  [home] */
bool ql__bh_any_scheduled(QLContext *ctx);
/* Delete every BH of the context without running it.  [home] */
void ql__bh_free_all(QLContext *ctx);

/* ---- timer.c ------------------------------------------------------------ */
int ql__timers_init(QLContext *ctx);
/* Detach every timer (they stay allocated, owned by the user). */
void ql__timers_cleanup(QLContext *ctx);
/* Run expired timers of every clock.  1 if a callback ran.  [home] */
int ql__timers_run(QLContext *ctx);
/* ns until the earliest REALTIME/HOST deadline (0 expired, -1 none) and,
 * through *virt_deadline, the earliest VIRTUAL deadline (absolute, -1 none).
 * An expired VIRTUAL timer makes the result 0. */
int64_t ql__timers_timeout(QLContext *ctx, int64_t *virt_deadline);
/* Unit of QEMU-style timer_mod() (qemu-compat.h): SCALE_NS/US/MS. */
void ql__timer_set_scale(QLTimer *t, int scale);
int ql__timer_get_scale(const QLTimer *t);
/* Move the virtual clock forward to `to` (no-op if already there). */
void ql__virtual_clock_jump(QLContext *ctx, int64_t to);

/* ---- context.c ---------------------------------------------------------- */
/* True if the calling thread is running ctx's callbacks right now (so a
 * wakeup is unnecessary: the next poll recomputes its timeout anyway). */
static inline bool ql__in_dispatch(QLContext *ctx)
{
    extern QL_TLS QLContext *ql__tl_dispatching; /* context.c */
    return ql__tl_dispatching == ctx;
}
/* Context whose callbacks the calling thread is running, or NULL. */
QLContext *ql__dispatching(void);
/* Same as ql_context_new() with an explicit monitor ("epoll" or "poll"). */
QLContext *ql__context_new_fdmon(const char *fdmon);

/* 10 ms: the longest a poll with only idle BHs pending sleeps. */
#define QL_IDLE_BH_TIMEOUT_NS 10000000LL

#endif /* QLOOP_CONTEXT_INT_H */
