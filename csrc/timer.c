/*
 * Clocks and timers.
 *
 * Each context keeps, per clock, a min-heap of armed timers ordered by
 * (deadline, arming sequence number): equal deadlines fire in arming order.
 * In front of the heap sits a timer wheel: QL_WHEEL_SIZE unsorted buckets of
 * 2^QL_WHEEL_SHIFT ns each.  A timer whose tick (deadline >> SHIFT) is in
 * (cursor, cursor + QL_WHEEL_SIZE) is added to the bucket of its tick (O(1)
 * arm; del moves the bucket's newest entry into the hole); any other timer
 * goes to the heap.  The heap therefore holds every timer with a
 * tick <= cursor, plus far ones.  Whoever needs the earliest deadline (the
 * run pass, the timeout, a virtual clock move) first makes sure the heap
 * holds it: if no heap timer has a tick <= cursor, the cursor advances to the
 * first non-empty bucket and that bucket moves into the heap (wheel_settle).
 * The heap stays small (a bucket or two of near timers), so its pops stay in
 * cache, where a single heap of every armed timer missed the cache at each
 * level.  A bucket is a list of 8-entry chunks from a pool, so moving it
 * reads memory in order (a list of timers cost a cache miss per timer, one
 * after the other).  Deadlines and order are exact: the wheel only defers
 * sorting.
 *
 * A timer stores its position (heap index or place in its bucket), so mod
 * and del are O(log n) and allocate nothing once the arrays have grown: the
 * heap is kept large enough for every armed timer, so moving a bucket into
 * it never allocates, and emptied chunks go back to the pool.  ctx->lock
 * protects all of it, which makes mod/del safe from any thread; callbacks
 * run without the lock.
 *
 * Run pass (ql__timers_run): the clock is read once per clock, and the pass
 * runs, in deadline order, the timers that are due at that instant and were
 * armed before the pass started.  A timer armed or re-armed during the pass
 * (by a callback or another thread) runs at the earliest in the next poll,
 * even if it is already due: a timer re-arming itself for "now" on the
 * virtual clock cannot loop forever inside one poll.  The pass also stops at
 * the first such timer, so deadline order is kept.
 *
 * A new earliest deadline on any clock notifies the context, so a poll
 * sleeping with an older timeout recomputes it.
 */
#include "context-int.h"
#include "misuse.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

static int64_t os_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t clock_now(QLContext *ctx, QLClockType type)
{
    switch (type) {
    case QL_CLOCK_REALTIME:
        return os_clock_ns(CLOCK_MONOTONIC);
    case QL_CLOCK_HOST:
        return os_clock_ns(CLOCK_REALTIME);
    case QL_CLOCK_VIRTUAL:
        return __atomic_load_n(&ctx->vclock, __ATOMIC_ACQUIRE);
    default:
        return -1;
    }
}

int64_t ql_clock_get_ns(QLContext *ctx, QLClockType type)
{
    if ((unsigned)type >= QL_CLOCK_MAX || (type == QL_CLOCK_VIRTUAL && !ctx)) {
        return ql__misuse(-EINVAL, "ql_clock_get_ns: bad clock %d", (int)type);
    }
    return clock_now(ctx, type);
}

/* ---- heap ----------------------------------------------------------------- */

/* 4-ary heap (shallower than binary: fewer cache lines touched per pop);
 * slots hold (expire, seq, timer), and a move updates the timer's
 * heap_index. */
#define HEAP_D 4

static inline bool slot_before(const QLTimerSlot *a, const QLTimerSlot *b)
{
    return a->expire < b->expire || (a->expire == b->expire && a->seq < b->seq);
}

static inline void heap_place(QLTimerHeap *h, size_t i, QLTimerSlot s)
{
    h->a[i] = s;
    s.t->heap_index = i;
}

static void heap_sift_up(QLTimerHeap *h, size_t i)
{
    QLTimerSlot s = h->a[i];
    while (i > 0) {
        size_t parent = (i - 1) / HEAP_D;
        if (!slot_before(&s, &h->a[parent])) {
            break;
        }
        heap_place(h, i, h->a[parent]);
        i = parent;
    }
    heap_place(h, i, s);
}

static void heap_sift_down(QLTimerHeap *h, size_t i)
{
    QLTimerSlot s = h->a[i];
    for (;;) {
        size_t first = HEAP_D * i + 1;
        if (first >= h->n) {
            break;
        }
        size_t last = first + HEAP_D < h->n ? first + HEAP_D : h->n;
        size_t c = first;
        for (size_t k = first + 1; k < last; k++) {
            if (slot_before(&h->a[k], &h->a[c])) {
                c = k;
            }
        }
        if (!slot_before(&h->a[c], &s)) {
            break;
        }
        heap_place(h, i, h->a[c]);
        i = c;
    }
    heap_place(h, i, s);
}

/* Restore heap order after the key of the slot at i changed. */
static void heap_fix(QLTimerHeap *h, size_t i)
{
    if (i > 0 && slot_before(&h->a[i], &h->a[(i - 1) / HEAP_D])) {
        heap_sift_up(h, i);
    } else {
        heap_sift_down(h, i);
    }
}

/* Double the chunk pool; the new chunks go on the free list. */
static int chunk_grow(QLTimerHeap *h)
{
    uint32_t cap = h->nchunks ? h->nchunks * 2 : 16;
    if ((uint64_t)cap * QL_WHEEL_CHUNK > UINT32_MAX) {
        return -ENOMEM; /* entry positions are 32-bit */
    }
    QLWheelEntry *went = realloc(h->went, (size_t)cap * QL_WHEEL_CHUNK * sizeof *went);
    if (!went) {
        return -ENOMEM;
    }
    h->went = went;
    uint32_t *next = realloc(h->chunk_next, (size_t)cap * sizeof *next);
    if (!next) {
        return -ENOMEM; /* went grew, nchunks did not: harmless */
    }
    h->chunk_next = next;
    for (uint32_t c = h->nchunks; c + 1 < cap; c++) {
        next[c] = c + 1;
    }
    next[cap - 1] = h->chunk_free;
    h->chunk_free = h->nchunks;
    h->nchunks = cap;
    return 0;
}

/* Make room in the heap for every armed timer plus one more (so that moving
 * wheel buckets into it never allocates). */
static int heap_reserve(QLTimerHeap *h)
{
    size_t need = h->n + h->wcount + 1;
    if (need > h->cap) {
        size_t cap = h->cap ? h->cap : 16;
        while (cap < need) {
            cap *= 2;
        }
        if (cap > UINT32_MAX) {
            return -ENOMEM; /* 4 G armed timers on one clock: the limit */
        }
        QLTimerSlot *a = realloc(h->a, cap * sizeof *a);
        if (!a) {
            return -ENOMEM;
        }
        h->a = a;
        h->cap = cap;
        if (!h->wheel) {
            /* First arm on this clock: the wheel comes with the heap (so that
             * both are allocated during warm-up).  Without it (no memory)
             * every timer goes to the heap, which is just slower. */
            h->wheel = malloc(QL_WHEEL_SIZE * sizeof *h->wheel);
            for (size_t b = 0; h->wheel && b < QL_WHEEL_SIZE; b++) {
                h->wheel[b] = (QLWheelBucket){QL_WHEEL_NONE, 0};
            }
            h->chunk_free = QL_WHEEL_NONE;
        }
        /* Chunks for every armed timer packed in the wheel, and a few spare
         * for partly filled buckets, grow with the heap (during warm-up);
         * a wheel spread thinner grows the pool on demand.  Failing here is
         * harmless: a timer with no chunk goes to the heap. */
        while (h->wheel && (size_t)h->nchunks < cap / QL_WHEEL_CHUNK + 16 && chunk_grow(h) == 0) {
        }
    }
    return 0;
}

/* Insert t (room reserved). */
static void heap_insert(QLTimerHeap *h, QLTimer *t)
{
    size_t i = h->n;
    __atomic_store_n(&h->n, i + 1, __ATOMIC_RELAXED);
    heap_place(h, i, (QLTimerSlot){t->expire, t->seq, t});
    heap_sift_up(h, i);
}

static void heap_remove(QLTimerHeap *h, QLTimer *t)
{
    size_t i = t->heap_index;
    size_t last = h->n - 1;
    __atomic_store_n(&h->n, last, __ATOMIC_RELAXED);
    t->heap_index = QL_TIMER_NOT_IN_HEAP;
    if (i != last) {
        heap_place(h, i, h->a[last]);
        heap_fix(h, i);
    }
}


/* ---- wheel ---------------------------------------------------------------- */

static inline int64_t tick_of(int64_t expire)
{
    return expire >> QL_WHEEL_SHIFT;
}

/* Add t to the bucket of its tick; -ENOMEM if the pool cannot grow (the
 * caller puts t in the heap instead). */
static int wheel_link(QLTimerHeap *h, QLTimer *t, int64_t tick)
{
    size_t b = (size_t)tick & (QL_WHEEL_SIZE - 1);
    QLWheelBucket *bk = &h->wheel[b];
    if (bk->head == QL_WHEEL_NONE || bk->hn == QL_WHEEL_CHUNK) {
        if (h->chunk_free == QL_WHEEL_NONE && chunk_grow(h) < 0) {
            return -ENOMEM;
        }
        uint32_t c = h->chunk_free;
        h->chunk_free = h->chunk_next[c];
        h->chunk_next[c] = bk->head;
        bk->head = c;
        bk->hn = 0;
    }
    uint32_t i = bk->head * QL_WHEEL_CHUNK + bk->hn++;
    h->went[i] = (QLWheelEntry){t->expire, t->seq, t, t->opaque};
    h->wbits[b / 64] |= 1ull << (b % 64);
    t->wpos = i;
    t->heap_index = QL_TIMER_IN_WHEEL;
    __atomic_store_n(&h->wcount, h->wcount + 1, __ATOMIC_RELAXED);
    return 0;
}

/* Take t (in the wheel, t->expire as when it was linked) out of its bucket:
 * the bucket's newest entry moves into its place. */
static void wheel_unlink(QLTimerHeap *h, QLTimer *t)
{
    size_t b = (size_t)tick_of(t->expire) & (QL_WHEEL_SIZE - 1);
    QLWheelBucket *bk = &h->wheel[b];
    uint32_t i = t->wpos;
    uint32_t last = bk->head * QL_WHEEL_CHUNK + bk->hn - 1;
    if (i != last) {
        h->went[i] = h->went[last];
        h->went[i].t->wpos = i;
    }
    if (--bk->hn == 0) {
        uint32_t c = bk->head;
        bk->head = h->chunk_next[c];
        h->chunk_next[c] = h->chunk_free;
        h->chunk_free = c;
        if (bk->head == QL_WHEEL_NONE) {
            h->wbits[b / 64] &= ~(1ull << (b % 64)); /* the bucket is empty now */
        } else {
            bk->hn = QL_WHEEL_CHUNK; /* older chunks are full */
        }
    }
    t->heap_index = QL_TIMER_NOT_IN_HEAP;
    __atomic_store_n(&h->wcount, h->wcount - 1, __ATOMIC_RELAXED);
}

/* Buckets to go from the cursor's bucket to the first non-empty one after
 * it (1 .. QL_WHEEL_SIZE - 1), or 0 if the wheel is empty. */
static size_t wheel_next_offset(const QLTimerHeap *h)
{
    size_t start = ((size_t)h->cursor + 1) & (QL_WHEEL_SIZE - 1);
    size_t b = start;
    for (size_t scanned = 0; scanned < QL_WHEEL_SIZE + 64; ) {
        size_t w = b / 64;
        uint64_t bits = h->wbits[w] >> (b % 64);
        if (bits) {
            size_t found = b + (size_t)__builtin_ctzll(bits);
            return ((found - (size_t)h->cursor) & (QL_WHEEL_SIZE - 1));
        }
        scanned += 64 - b % 64;
        b = (w + 1) * 64 % QL_WHEEL_SIZE;
    }
    return 0;
}

/* Make the heap hold the earliest armed timer: unless a heap timer is at or
 * before the cursor, move the cursor to the first non-empty bucket and that
 * bucket into the heap.  [lock] */
static void wheel_settle(QLTimerHeap *h)
{
    if (!h->wcount || (h->n && tick_of(h->a[0].expire) <= h->cursor)) {
        return;
    }
    size_t off = wheel_next_offset(h);
    h->cursor += (int64_t)off;
    size_t b = (size_t)h->cursor & (QL_WHEEL_SIZE - 1);
    QLWheelBucket *bk = &h->wheel[b];
    h->wbits[b / 64] &= ~(1ull << (b % 64));
    size_t moved = 0;
    uint32_t c = bk->head, cn = bk->hn;
    *bk = (QLWheelBucket){QL_WHEEL_NONE, 0};
    while (c != QL_WHEEL_NONE) {
        uint32_t next = h->chunk_next[c];
        const QLWheelEntry *e = &h->went[(size_t)c * QL_WHEEL_CHUNK];
        if (next != QL_WHEEL_NONE) {
            /* The next chunk's four lines, while this one is worked on. */
            const char *nc = (const char *)&h->went[(size_t)next * QL_WHEEL_CHUNK];
            for (size_t off = 0; off < QL_WHEEL_CHUNK * sizeof *e; off += 64) {
                __builtin_prefetch(nc + off);
            }
        }
        /* Each timer gets one store (its heap index, in heap_place), and the
         * run pass reads it and its callback's data soon: fetch the chunk's
         * timers and data at once rather than one miss at a time (the
         * data's line and the 16 bytes before it: object headers such as
         * CPython's GC header).  Prefetches never fault. */
        for (uint32_t k = 0; k < cn; k++) {
            __builtin_prefetch(e[k].t, 1);
            __builtin_prefetch(e[k].opaque);
            /* opaque is any user value (not always an object pointer):
             * compute the address as an integer, pointer arithmetic on it
             * could be undefined. */
            __builtin_prefetch((const void *)((uintptr_t)e[k].opaque - 16));
        }
        for (uint32_t k = 0; k < cn; k++) {
            size_t j = h->n;
            __atomic_store_n(&h->n, j + 1, __ATOMIC_RELAXED);
            heap_place(h, j, (QLTimerSlot){e[k].expire, e[k].seq, e[k].t}); /* room reserved */
            heap_sift_up(h, j);
        }
        moved += cn;
        h->chunk_next[c] = h->chunk_free;
        h->chunk_free = c;
        c = next;
        cn = QL_WHEEL_CHUNK; /* older chunks are full */
    }
    __atomic_store_n(&h->wcount, h->wcount - moved, __ATOMIC_RELAXED);
}

/* Is t, just linked in the wheel, possibly the earliest armed timer?  (May
 * say yes when it is not; never no when it is.) */
static bool wheel_maybe_head(const QLTimerHeap *h, const QLTimer *t)
{
    if (h->n && (tick_of(h->a[0].expire) <= h->cursor || h->a[0].expire <= t->expire)) {
        return false;
    }
    /* No earlier non-empty bucket? */
    size_t mine = ((size_t)tick_of(t->expire) - (size_t)h->cursor) & (QL_WHEEL_SIZE - 1);
    return wheel_next_offset(h) == mine;
}

/* Arm t (not armed) at t->expire; now: the clock or -1 if not read.  [lock] */
static int timer_insert(QLContext *ctx, QLTimerHeap *h, QLTimer *t, int64_t now)
{
    int r = heap_reserve(h);
    if (r < 0) {
        return r;
    }
    int64_t tick = tick_of(t->expire);
    if (!h->wcount) {
        /* Empty wheel: any cursor is valid.  Put it at the present so that
         * the timers armed from now on spread over the wheel. */
        if (now < 0) {
            now = clock_now(ctx, t->type);
        }
        h->cursor = tick_of(now < 0 ? 0 : now);
        if (!h->n) {
            heap_insert(h, t); /* the only armed timer: straight to the heap */
            return 0;
        }
    }
    if (!(tick > h->cursor && tick - h->cursor < QL_WHEEL_SIZE && h->wheel &&
          wheel_link(h, t, tick) == 0)) {
        heap_insert(h, t); /* room reserved */
    }
    return 0;
}

static inline void armed_count(QLContext *ctx, int delta)
{
    __atomic_store_n(&ctx->timers_armed, ctx->timers_armed + (size_t)delta, __ATOMIC_RELAXED);
}

/* Disarm t (armed).  [lock] */
static void timer_remove(QLContext *ctx, QLTimerHeap *h, QLTimer *t)
{
    __atomic_store_n(&ctx->timers_armed, ctx->timers_armed - 1, __ATOMIC_RELAXED);
    if (t->heap_index == QL_TIMER_IN_WHEEL) {
        wheel_unlink(h, t);
    } else {
        heap_remove(h, t);
    }
}

static inline bool timer_armed(const QLTimer *t)
{
    return t->heap_index != QL_TIMER_NOT_IN_HEAP;
}

/* ---- timers --------------------------------------------------------------- */

size_t ql_timer_sizeof(void)
{
    return sizeof(QLTimer);
}

int ql_timer_init(QLTimer *t, QLContext *ctx, QLClockType type, QLTimerFunc *cb,
                  void *opaque, const char *name)
{
    if (!t || !ctx || !cb || (unsigned)type >= QL_CLOCK_MAX) {
        return -EINVAL;
    }
    *t = (QLTimer){0};
    t->ctx = ctx;
    t->type = type;
    t->cb = cb;
    t->opaque = opaque;
    t->name = name;
    t->expire = -1;
    t->heap_index = QL_TIMER_NOT_IN_HEAP;
    t->scale = 1;
    pthread_mutex_lock(&ctx->lock);
    t->all_next = ctx->timer_all;
    if (ctx->timer_all) {
        ctx->timer_all->all_prev = t;
    }
    ctx->timer_all = t;
    pthread_mutex_unlock(&ctx->lock);
    return 0;
}

QLTimer *ql_timer_new(QLContext *ctx, QLClockType type, QLTimerFunc *cb, void *opaque,
                      const char *name)
{
    if (!ctx || !cb || (unsigned)type >= QL_CLOCK_MAX) {
        errno = EINVAL;
        return NULL;
    }
    QLTimer *t = malloc(sizeof *t);
    if (!t) {
        errno = ENOMEM;
        return NULL;
    }
    ql_timer_init(t, ctx, type, cb, opaque, name);
    return t;
}

/* Arm t at expire (anticipate: only if idle or earlier).  now: the clock's
 * current value if the caller read it, else -1. */
static int timer_arm(QLTimer *t, int64_t expire, bool anticipate, int64_t now)
{
    QLContext *ctx = __atomic_load_n(&t->ctx, __ATOMIC_RELAXED);
    if (!ctx) {
        return ql__misuse(-EINVAL, "timer '%s' armed after its context was freed",
                          t->name ? t->name : "<unnamed>");
    }
    if (expire < 0) {
        expire = 0;
    }
    QLTimerHeap *h = &ctx->heap[t->type];
    bool new_head;
    pthread_mutex_lock(&ctx->lock);
    if (t->heap_index < QL_TIMER_IN_WHEEL) {
        if (anticipate && t->expire <= expire) {
            pthread_mutex_unlock(&ctx->lock);
            return 0;
        }
        /* In the heap: stay there (the heap may hold any timer). */
        __atomic_store_n(&t->expire, expire, __ATOMIC_RELAXED);
        t->seq = ctx->timer_seq++;
        h->a[t->heap_index].expire = expire;
        h->a[t->heap_index].seq = t->seq;
        heap_fix(h, t->heap_index);
        new_head = t->heap_index == 0;
    } else {
        if (t->heap_index == QL_TIMER_IN_WHEEL) {
            if (anticipate && t->expire <= expire) {
                pthread_mutex_unlock(&ctx->lock);
                return 0;
            }
            wheel_unlink(h, t); /* still counted as armed */
        } else {
            armed_count(ctx, 1);
        }
        __atomic_store_n(&t->expire, expire, __ATOMIC_RELAXED);
        t->seq = ctx->timer_seq++;
        int r = timer_insert(ctx, h, t, now);
        if (r < 0) {
            /* Only a timer that was not armed gets here: the heap has room
             * for every armed timer, so a re-arm from the wheel fits. */
            armed_count(ctx, -1);
            __atomic_store_n(&t->expire, -1, __ATOMIC_RELAXED);
            pthread_mutex_unlock(&ctx->lock);
            return r;
        }
        new_head = t->heap_index == QL_TIMER_IN_WHEEL ? wheel_maybe_head(h, t)
                                                      : t->heap_index == 0;
    }
    pthread_mutex_unlock(&ctx->lock);
    if (new_head && !ql__in_dispatch(ctx)) {
        ql_context_notify(ctx);
    }
    return 0;
}

int ql_timer_mod(QLTimer *t, int64_t expire_ns)
{
    return timer_arm(t, expire_ns, false, -1);
}

int ql_timer_mod_anticipate(QLTimer *t, int64_t expire_ns)
{
    return timer_arm(t, expire_ns, true, -1);
}

int ql_timer_mod_in(QLTimer *t, int64_t delay_ns)
{
    QLContext *ctx = __atomic_load_n(&t->ctx, __ATOMIC_RELAXED);
    if (!ctx) {
        return timer_arm(t, 0, false, -1); /* reports the misuse */
    }
    int64_t now = clock_now(ctx, t->type);
    int64_t expire = delay_ns > INT64_MAX - now ? INT64_MAX : now + (delay_ns < 0 ? 0 : delay_ns);
    return timer_arm(t, expire, false, now);
}

void ql_timer_del(QLTimer *t)
{
    QLContext *ctx = __atomic_load_n(&t->ctx, __ATOMIC_RELAXED);
    if (!ctx) {
        return;
    }
    pthread_mutex_lock(&ctx->lock);
    if (timer_armed(t)) {
        timer_remove(ctx, &ctx->heap[t->type], t);
    }
    __atomic_store_n(&t->expire, -1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ctx->lock);
}

void ql_timer_deinit(QLTimer *t)
{
    if (!t) {
        return;
    }
    QLContext *ctx = __atomic_load_n(&t->ctx, __ATOMIC_RELAXED);
    if (ctx) {
        pthread_mutex_lock(&ctx->lock);
        if (timer_armed(t)) {
            timer_remove(ctx, &ctx->heap[t->type], t);
        }
        if (t->all_prev) {
            t->all_prev->all_next = t->all_next;
        } else {
            ctx->timer_all = t->all_next;
        }
        if (t->all_next) {
            t->all_next->all_prev = t->all_prev;
        }
        pthread_mutex_unlock(&ctx->lock);
    }
    t->ctx = NULL;
    t->expire = -1;
}

void ql_timer_free(QLTimer *t)
{
    ql_timer_deinit(t);
    free(t);
}

bool ql_timer_pending(QLTimer *t)
{
    return __atomic_load_n(&t->expire, __ATOMIC_RELAXED) >= 0;
}

int64_t ql_timer_expire_time(QLTimer *t)
{
    return __atomic_load_n(&t->expire, __ATOMIC_RELAXED);
}

QLClockType ql_timer_clock(const QLTimer *t)
{
    return t->type;
}

void ql__timer_set_scale(QLTimer *t, int scale)
{
    t->scale = scale > 0 ? scale : 1;
}

int ql__timer_get_scale(const QLTimer *t)
{
    return t->scale;
}

/* ---- virtual clock -------------------------------------------------------- */

/* The virtual clock moved to `now`: wake the context if a timer is due. */
static void vclock_moved(QLContext *ctx, int64_t now)
{
    QLTimerHeap *h = &ctx->heap[QL_CLOCK_VIRTUAL];
    pthread_mutex_lock(&ctx->lock);
    wheel_settle(h);
    bool due = h->n > 0 && h->a[0].expire <= now;
    pthread_mutex_unlock(&ctx->lock);
    if (due && !ql__in_dispatch(ctx)) {
        ql_context_notify(ctx);
    }
}

int ql_virtual_clock_advance(QLContext *ctx, int64_t ns)
{
    if (ns < 0) {
        return ql__misuse(-EINVAL, "ql_virtual_clock_advance: negative step %lld", (long long)ns);
    }
    int64_t now = __atomic_add_fetch(&ctx->vclock, ns, __ATOMIC_ACQ_REL);
    vclock_moved(ctx, now);
    return 0;
}

int ql_virtual_clock_set(QLContext *ctx, int64_t ns)
{
    int64_t old = __atomic_load_n(&ctx->vclock, __ATOMIC_RELAXED);
    do {
        if (ns < old) {
            return ql__misuse(-EINVAL, "ql_virtual_clock_set: %lld is before %lld",
                              (long long)ns, (long long)old);
        }
    } while (!__atomic_compare_exchange_n(&ctx->vclock, &old, ns, true,
                                          __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
    vclock_moved(ctx, ns);
    return 0;
}

void ql_virtual_clock_set_autojump(QLContext *ctx, bool autojump)
{
    __atomic_store_n(&ctx->autojump, autojump, __ATOMIC_RELAXED);
    if (autojump && !ql__in_dispatch(ctx)) {
        ql_context_notify(ctx); /* a sleeping poll may jump now */
    }
}

bool ql_virtual_clock_get_autojump(QLContext *ctx)
{
    return __atomic_load_n(&ctx->autojump, __ATOMIC_RELAXED);
}

/* Move the virtual clock forward to `to` (never backwards). */
void ql__virtual_clock_jump(QLContext *ctx, int64_t to)
{
    int64_t old = __atomic_load_n(&ctx->vclock, __ATOMIC_RELAXED);
    while (old < to && !__atomic_compare_exchange_n(&ctx->vclock, &old, to, true,
                                                    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
    }
}

/* ---- the context's side --------------------------------------------------- */

int ql__timers_run(QLContext *ctx)
{
    int progress = 0;
    if (!__atomic_load_n(&ctx->timers_armed, __ATOMIC_RELAXED)) {
        return 0; /* a timer armed concurrently runs next poll anyway */
    }
    pthread_mutex_lock(&ctx->lock);
    uint64_t limit = ctx->timer_seq; /* armed from now on: next poll */
    pthread_mutex_unlock(&ctx->lock);
    for (int type = 0; type < QL_CLOCK_MAX; type++) {
        QLTimerHeap *h = &ctx->heap[type];
        if ((__atomic_load_n(&h->n, __ATOMIC_RELAXED) |
             __atomic_load_n(&h->wcount, __ATOMIC_RELAXED)) == 0) {
            continue;
        }
        int64_t now = clock_now(ctx, (QLClockType)type); /* once per pass */
        pthread_mutex_lock(&ctx->lock);
        for (;;) {
            wheel_settle(h);
            if (h->n == 0) {
                break;
            }
            if (h->a[0].expire > now || h->a[0].seq >= limit) {
                break;
            }
            QLTimer *t = h->a[0].t;
            heap_remove(h, t);
            armed_count(ctx, -1);
            __atomic_store_n(&t->expire, -1, __ATOMIC_RELAXED);
            pthread_mutex_unlock(&ctx->lock);
            t->cb(t->opaque); /* may free t */
            progress = 1;
            if (ctx->stop_dispatch) {
                return progress;
            }
            pthread_mutex_lock(&ctx->lock);
        }
        pthread_mutex_unlock(&ctx->lock);
    }
    return progress;
}

int64_t ql__timers_timeout(QLContext *ctx, int64_t *virt_deadline)
{
    int64_t best = -1;
    *virt_deadline = -1;
    if (!__atomic_load_n(&ctx->timers_armed, __ATOMIC_RELAXED)) {
        /* Racing arms notify the context (new head), so the wait wakes. */
        return -1;
    }
    pthread_mutex_lock(&ctx->lock);
    for (int type = 0; type < QL_CLOCK_MAX; type++) {
        QLTimerHeap *h = &ctx->heap[type];
        wheel_settle(h);
        if (h->n == 0) {
            continue;
        }
        int64_t expire = h->a[0].expire;
        int64_t d = expire - clock_now(ctx, (QLClockType)type);
        if (d <= 0) {
            best = 0;
            break;
        }
        if (type == QL_CLOCK_VIRTUAL) {
            /* Virtual time only moves when told: no timeout, but report
             * the deadline for autojump. */
            *virt_deadline = expire;
            continue;
        }
        if (best < 0 || d < best) {
            best = d;
        }
    }
    if (best == 0) {
        *virt_deadline = -1;
    }
    pthread_mutex_unlock(&ctx->lock);
    return best;
}

int ql__timers_init(QLContext *ctx)
{
    ctx->timer_seq = 0;
    ctx->timers_armed = 0;
    ctx->timer_all = NULL;
    ctx->vclock = 0;
    for (int i = 0; i < QL_CLOCK_MAX; i++) {
        ctx->heap[i] = (QLTimerHeap){0};
    }
    return 0;
}

void ql__timers_cleanup(QLContext *ctx)
{
    pthread_mutex_lock(&ctx->lock);
    for (QLTimer *t = ctx->timer_all; t; t = t->all_next) {
        t->heap_index = QL_TIMER_NOT_IN_HEAP;
        __atomic_store_n(&t->expire, -1, __ATOMIC_RELAXED);
        __atomic_store_n(&t->ctx, NULL, __ATOMIC_RELAXED);
    }
    ctx->timer_all = NULL;
    ctx->timers_armed = 0;
    for (int i = 0; i < QL_CLOCK_MAX; i++) {
        free(ctx->heap[i].a);
        free(ctx->heap[i].wheel);
        free(ctx->heap[i].went);
        free(ctx->heap[i].chunk_next);
        ctx->heap[i] = (QLTimerHeap){0};
    }
    pthread_mutex_unlock(&ctx->lock);
}
