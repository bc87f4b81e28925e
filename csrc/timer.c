/*
 * Clocks and timers.
 *
 * Each context keeps one binary min-heap of armed timers per clock, ordered
 * by (deadline, arming sequence number): equal deadlines fire in arming
 * order.  A timer stores its heap position, so mod and del are O(log n) and
 * allocate nothing once the heap array has grown (it doubles).  ctx->lock
 * protects the heaps and every timer's expire/seq/heap_index, which makes
 * mod/del safe from any thread; callbacks run without the lock.
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

static int heap_insert(QLTimerHeap *h, QLTimer *t)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        QLTimerSlot *a = realloc(h->a, cap * sizeof *a);
        if (!a) {
            return -ENOMEM;
        }
        h->a = a;
        h->cap = cap;
    }
    size_t i = h->n;
    __atomic_store_n(&h->n, i + 1, __ATOMIC_RELAXED);
    heap_place(h, i, (QLTimerSlot){t->expire, t->seq, t});
    heap_sift_up(h, i);
    return 0;
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

/* ---- timers --------------------------------------------------------------- */

QLTimer *ql_timer_new(QLContext *ctx, QLClockType type, QLTimerFunc *cb, void *opaque,
                      const char *name)
{
    if (!ctx || !cb || (unsigned)type >= QL_CLOCK_MAX) {
        errno = EINVAL;
        return NULL;
    }
    QLTimer *t = calloc(1, sizeof *t);
    if (!t) {
        errno = ENOMEM;
        return NULL;
    }
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
    return t;
}

/* Arm t at expire (anticipate: only if idle or earlier). */
static int timer_arm(QLTimer *t, int64_t expire, bool anticipate)
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
    pthread_mutex_lock(&ctx->lock);
    if (t->heap_index != QL_TIMER_NOT_IN_HEAP) {
        if (anticipate && t->expire <= expire) {
            pthread_mutex_unlock(&ctx->lock);
            return 0;
        }
        __atomic_store_n(&t->expire, expire, __ATOMIC_RELAXED);
        t->seq = ctx->timer_seq++;
        h->a[t->heap_index].expire = expire;
        h->a[t->heap_index].seq = t->seq;
        heap_fix(h, t->heap_index);
    } else {
        __atomic_store_n(&t->expire, expire, __ATOMIC_RELAXED);
        t->seq = ctx->timer_seq++;
        int r = heap_insert(h, t);
        if (r < 0) {
            __atomic_store_n(&t->expire, -1, __ATOMIC_RELAXED);
            pthread_mutex_unlock(&ctx->lock);
            return r;
        }
    }
    bool new_head = t->heap_index == 0;
    pthread_mutex_unlock(&ctx->lock);
    if (new_head && !ql__in_dispatch(ctx)) {
        ql_context_notify(ctx);
    }
    return 0;
}

int ql_timer_mod(QLTimer *t, int64_t expire_ns)
{
    return timer_arm(t, expire_ns, false);
}

int ql_timer_mod_anticipate(QLTimer *t, int64_t expire_ns)
{
    return timer_arm(t, expire_ns, true);
}

int ql_timer_mod_in(QLTimer *t, int64_t delay_ns)
{
    QLContext *ctx = __atomic_load_n(&t->ctx, __ATOMIC_RELAXED);
    if (!ctx) {
        return timer_arm(t, 0, false); /* reports the misuse */
    }
    int64_t now = clock_now(ctx, t->type);
    int64_t expire = delay_ns > INT64_MAX - now ? INT64_MAX : now + (delay_ns < 0 ? 0 : delay_ns);
    return timer_arm(t, expire, false);
}

void ql_timer_del(QLTimer *t)
{
    QLContext *ctx = __atomic_load_n(&t->ctx, __ATOMIC_RELAXED);
    if (!ctx) {
        return;
    }
    pthread_mutex_lock(&ctx->lock);
    if (t->heap_index != QL_TIMER_NOT_IN_HEAP) {
        heap_remove(&ctx->heap[t->type], t);
    }
    __atomic_store_n(&t->expire, -1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ctx->lock);
}

void ql_timer_free(QLTimer *t)
{
    if (!t) {
        return;
    }
    QLContext *ctx = __atomic_load_n(&t->ctx, __ATOMIC_RELAXED);
    if (ctx) {
        pthread_mutex_lock(&ctx->lock);
        if (t->heap_index != QL_TIMER_NOT_IN_HEAP) {
            heap_remove(&ctx->heap[t->type], t);
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
    size_t armed = 0;
    for (int type = 0; type < QL_CLOCK_MAX; type++) {
        armed |= __atomic_load_n(&ctx->heap[type].n, __ATOMIC_RELAXED);
    }
    if (!armed) {
        return 0; /* a timer armed concurrently runs next poll anyway */
    }
    pthread_mutex_lock(&ctx->lock);
    uint64_t limit = ctx->timer_seq; /* armed from now on: next poll */
    pthread_mutex_unlock(&ctx->lock);
    for (int type = 0; type < QL_CLOCK_MAX; type++) {
        QLTimerHeap *h = &ctx->heap[type];
        if (__atomic_load_n(&h->n, __ATOMIC_RELAXED) == 0) {
            continue;
        }
        int64_t now = clock_now(ctx, (QLClockType)type); /* once per pass */
        pthread_mutex_lock(&ctx->lock);
        while (h->n > 0) {
            if (h->a[0].expire > now || h->a[0].seq >= limit) {
                break;
            }
            QLTimer *t = h->a[0].t;
            heap_remove(h, t);
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
    size_t armed = 0;
    for (int type = 0; type < QL_CLOCK_MAX; type++) {
        armed |= __atomic_load_n(&ctx->heap[type].n, __ATOMIC_RELAXED);
    }
    if (!armed) {
        /* Racing arms notify the context (new head), so the wait wakes. */
        return -1;
    }
    pthread_mutex_lock(&ctx->lock);
    for (int type = 0; type < QL_CLOCK_MAX; type++) {
        QLTimerHeap *h = &ctx->heap[type];
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
    for (int i = 0; i < QL_CLOCK_MAX; i++) {
        free(ctx->heap[i].a);
        ctx->heap[i] = (QLTimerHeap){0};
    }
    pthread_mutex_unlock(&ctx->lock);
}
