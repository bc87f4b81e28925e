/*
 * Bottom halves.
 *
 * Scheduling pushes the BH on ctx->bh_list, a lock-free LIFO, the first time
 * its PENDING bit goes from 0 to 1; every other state change is a bit in the
 * atomic flags word (so schedule, cancel and delete are safe from any thread
 * and schedule is wait-free apart from the push's compare-and-swap retry on
 * contention, and async-signal-safe).
 *
 * The home thread takes the whole list with one exchange, reverses it (so
 * BHs run in scheduling order, FIFO per scheduling thread) and appends it to
 * the ready queue ctx->bh_ready_*, then pops from the front until the queue
 * is empty.  BHs linked meanwhile land on the fresh bh_list and run in the
 * next poll.  A nested poll from a callback appends its own batch behind the
 * outer one and drains the queue from the front, so it finishes the outer
 * batch first.  ql_context_stop_dispatch() leaves the rest of the queue for
 * the next poll.
 *
 * Pairing: the release CAS of bh_push() pairs with the acquire exchange in
 * ql__bh_poll() (writes made before scheduling are visible to the callback);
 * the acq_rel fetch_or that sets PENDING pairs with the acq_rel fetch_and
 * that clears it at dequeue, so bh->next is rewritten by a new push only
 * after the home thread is done with it.
 */
#include "context-int.h"
#include "misuse.h"

#include <errno.h>
#include <stdlib.h>

/* Cap on recycled oneshot nodes kept per context. */
#define QL_BH_FREE_MAX 1024

/* Address of this is a cheap per-thread identity. */
static __thread char tl_thread_id;

void *ql__thread_id(void)
{
    return &tl_thread_id;
}

static void bh_registry_add(QLContext *ctx, QLBH *bh)
{
    pthread_mutex_lock(&ctx->lock);
    bh->all_prev = NULL;
    bh->all_next = ctx->bh_all;
    if (ctx->bh_all) {
        ctx->bh_all->all_prev = bh;
    }
    ctx->bh_all = bh;
    pthread_mutex_unlock(&ctx->lock);
}

static void bh_registry_del(QLContext *ctx, QLBH *bh)
{
    pthread_mutex_lock(&ctx->lock);
    if (bh->all_prev) {
        bh->all_prev->all_next = bh->all_next;
    } else {
        ctx->bh_all = bh->all_next;
    }
    if (bh->all_next) {
        bh->all_next->all_prev = bh->all_prev;
    }
    pthread_mutex_unlock(&ctx->lock);
}

QLBH *ql_bh_new(QLContext *ctx, QLBHFunc *cb, void *opaque, const char *name)
{
    if (!ctx || !cb) {
        errno = EINVAL;
        return NULL;
    }
    QLBH *bh = calloc(1, sizeof *bh);
    if (!bh) {
        errno = ENOMEM;
        return NULL;
    }
    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    bh->name = name;
    bh_registry_add(ctx, bh);
    return bh;
}

/* Link bh on ctx->bh_list.  Only the thread whose fetch_or set PENDING. */
static void bh_push(QLContext *ctx, QLBH *bh)
{
    QLBH *head = __atomic_load_n(&ctx->bh_list, __ATOMIC_RELAXED);
    do {
        bh->next = head;
    } while (!__atomic_compare_exchange_n(&ctx->bh_list, &head, bh, true,
                                          __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
}

/* Set flags, link if needed, wake the context.  Returns 1 if linked. */
static int bh_enqueue(QLBH *bh, unsigned set)
{
    QLContext *ctx = bh->ctx;
    unsigned old = __atomic_fetch_or(&bh->flags, QL_BH_PENDING | set, __ATOMIC_ACQ_REL);
    int linked = 0;
    if (!(old & QL_BH_PENDING)) {
        bh_push(ctx, bh);
        linked = 1;
    }
    /* Whoever set SCHEDULED first notifies after its push; a repeated
     * schedule of a scheduled (non-idle) BH needs no second wakeup.  The
     * running dispatch needs none either: its next poll looks at the list
     * before it sleeps.  Nor does a context already notified: the push
     * (seq_cst RMW) precedes the seq_cst load of `notified`; if that load
     * still sees true, the accept that clears it comes later and is
     * followed by the seq_cst fence and list exchange of the next
     * ql__bh_poll(), which therefore sees this push. */
    if ((!(old & QL_BH_SCHEDULED) || (old & QL_BH_IDLE)) && !ql__in_dispatch(ctx) &&
        !__atomic_load_n(&ctx->notified, __ATOMIC_SEQ_CST)) {
        ql_context_notify(ctx);
    }
    return linked;
}

int ql_bh_schedule(QLBH *bh)
{
    int linked = bh_enqueue(bh, QL_BH_SCHEDULED);
    /* A plain schedule of a BH scheduled as idle makes it a normal one.  If
     * the dequeue cleared IDLE meanwhile this is a harmless no-op. */
    if (__atomic_load_n(&bh->flags, __ATOMIC_RELAXED) & QL_BH_IDLE) {
        __atomic_fetch_and(&bh->flags, ~(unsigned)QL_BH_IDLE, __ATOMIC_RELAXED);
    }
    return linked;
}

int ql_bh_schedule_idle(QLBH *bh)
{
    return bh_enqueue(bh, QL_BH_SCHEDULED | QL_BH_IDLE);
}

void ql_bh_cancel(QLBH *bh)
{
    __atomic_fetch_and(&bh->flags, ~(unsigned)(QL_BH_SCHEDULED | QL_BH_IDLE), __ATOMIC_ACQ_REL);
}

void ql_bh_delete(QLBH *bh)
{
    if (!bh) {
        return;
    }
    unsigned old = __atomic_load_n(&bh->flags, __ATOMIC_RELAXED);
    unsigned want;
    do {
        want = old | QL_BH_DELETED | QL_BH_PENDING;
        if (!(old & QL_BH_PENDING)) {
            want |= QL_BH_NOREF; /* linked by us: no schedule reference */
        }
    } while (!__atomic_compare_exchange_n(&bh->flags, &old, want, true,
                                          __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
    if (!(old & QL_BH_PENDING)) {
        bh_push(bh->ctx, bh);
    }
    /* No wakeup: freeing can wait for the next poll. */
}

void ql_bh_set_dequeue_hook(QLBH *bh, QLBHFunc *hook)
{
    bh->dequeue_hook = hook;
}

const char *ql_bh_name(const QLBH *bh)
{
    return bh->name ? bh->name : "<unnamed>";
}

int ql_bh_schedule_oneshot(QLContext *ctx, QLBHFunc *cb, void *opaque, const char *name)
{
    if (!ctx || !cb) {
        return ql__misuse(-EINVAL, "ql_bh_schedule_oneshot: NULL %s", ctx ? "callback" : "context");
    }
    QLBH *bh = NULL;
    /* The free list belongs to the home thread (the last thread that polled
     * ctx); other threads allocate. */
    if (__atomic_load_n(&ctx->home_thread, __ATOMIC_RELAXED) == ql__thread_id() && ctx->bh_free) {
        bh = ctx->bh_free;
        ctx->bh_free = bh->next;
        ctx->bh_free_count--;
    } else {
        bh = malloc(sizeof *bh);
        if (!bh) {
            return -ENOMEM;
        }
    }
    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    bh->name = name;
    bh->dequeue_hook = NULL;
    bh->next = NULL;
    bh->all_prev = bh->all_next = NULL;
    __atomic_store_n(&bh->flags, 0, __ATOMIC_RELAXED);
    bh_enqueue(bh, QL_BH_SCHEDULED | QL_BH_ONESHOT);
    return 0;
}

/* Free a dequeued BH that was deleted or was a oneshot.  [home] */
static void bh_release(QLContext *ctx, QLBH *bh, unsigned old)
{
    if (old & QL_BH_ONESHOT) {
        if (ctx->bh_free_count < QL_BH_FREE_MAX) {
            bh->next = ctx->bh_free;
            ctx->bh_free = bh;
            ctx->bh_free_count++;
            return;
        }
    } else {
        bh_registry_del(ctx, bh);
    }
    free(bh);
}

/* Move the BHs linked so far to the tail of the ready queue, FIFO. */
static void bh_take_list(QLContext *ctx)
{
    /* An empty list needs no locked exchange; a push racing with this load
     * is taken by the next poll (its notify keeps that poll from sleeping). */
    if (!__atomic_load_n(&ctx->bh_list, __ATOMIC_RELAXED)) {
        return;
    }
    QLBH *list = __atomic_exchange_n(&ctx->bh_list, NULL, __ATOMIC_SEQ_CST);
    if (!list) {
        return;
    }
    QLBH *rev = NULL, *tail = list;
    while (list) {
        QLBH *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    if (ctx->bh_ready_tail) {
        ctx->bh_ready_tail->next = rev;
    } else {
        ctx->bh_ready_head = rev;
    }
    ctx->bh_ready_tail = tail;
    tail->next = NULL;
}

int ql__bh_poll(QLContext *ctx)
{
    int progress = 0;
    bh_take_list(ctx);
    QLBH *bh;
    while ((bh = ctx->bh_ready_head) != NULL) {
        ctx->bh_ready_head = bh->next;
        if (!ctx->bh_ready_head) {
            ctx->bh_ready_tail = NULL;
        }
        /* Unlink before clearing PENDING: after the fetch_and another thread
         * may push the BH again and rewrite bh->next. */
        unsigned old = __atomic_fetch_and(&bh->flags,
                                          ~(unsigned)(QL_BH_PENDING | QL_BH_SCHEDULED |
                                                      QL_BH_IDLE | QL_BH_NOREF),
                                          __ATOMIC_ACQ_REL);
        /* Read what we need now: the callback may delete the BH and a
         * nested poll may free it before we are back. */
        QLBHFunc *hook = (old & QL_BH_NOREF) ? NULL : bh->dequeue_hook;
        void *opaque = bh->opaque;
        bool ran = false;
        if ((old & (QL_BH_SCHEDULED | QL_BH_DELETED)) == QL_BH_SCHEDULED) {
            if (!(old & QL_BH_IDLE)) {
                progress = 1;
            }
            ran = true;
            bh->cb(opaque);
        }
        if (hook) {
            hook(opaque);
        }
        if (old & (QL_BH_DELETED | QL_BH_ONESHOT)) {
            bh_release(ctx, bh, old);
        }
        if (ran && ctx->stop_dispatch) {
            break;
        }
    }
    return progress;
}

/* Scan one chain of linked BHs for scheduled work. */
static int64_t bh_scan(QLBH *bh, int64_t timeout)
{
    for (; bh; bh = bh->next) {
        unsigned f = __atomic_load_n(&bh->flags, __ATOMIC_RELAXED);
        if ((f & (QL_BH_SCHEDULED | QL_BH_DELETED)) == QL_BH_SCHEDULED) {
            if (!(f & QL_BH_IDLE)) {
                return 0;
            }
            timeout = QL_IDLE_BH_TIMEOUT_NS;
        }
    }
    return timeout;
}

int64_t ql__bh_timeout(QLContext *ctx)
{
    int64_t t = bh_scan(ctx->bh_ready_head, -1);
    if (t == 0) {
        return 0;
    }
    /* Nodes below the head are stable: only this thread unlinks. */
    return bh_scan(__atomic_load_n(&ctx->bh_list, __ATOMIC_ACQUIRE), t);
}

bool ql__bh_any_scheduled(QLContext *ctx)
{
    return ql__bh_timeout(ctx) >= 0;
}

void ql__bh_free_all(QLContext *ctx)
{
    /* Dequeue whatever is linked, running hooks but no callbacks. */
    bh_take_list(ctx);
    QLBH *bh;
    while ((bh = ctx->bh_ready_head) != NULL) {
        ctx->bh_ready_head = bh->next;
        unsigned old = __atomic_fetch_and(&bh->flags, ~(unsigned)(QL_BH_PENDING | QL_BH_SCHEDULED |
                                                                  QL_BH_IDLE | QL_BH_NOREF),
                                          __ATOMIC_ACQ_REL);
        if (!(old & QL_BH_NOREF) && bh->dequeue_hook) {
            bh->dequeue_hook(bh->opaque);
        }
        if (old & QL_BH_ONESHOT) {
            free(bh);
        }
    }
    ctx->bh_ready_tail = NULL;
    /* Then every registered BH, scheduled or not. */
    while ((bh = ctx->bh_all) != NULL) {
        ctx->bh_all = bh->all_next;
        free(bh);
    }
    while ((bh = ctx->bh_free) != NULL) {
        ctx->bh_free = bh->next;
        free(bh);
    }
    ctx->bh_free_count = 0;
}
