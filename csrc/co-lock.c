/*
 * Coroutine synchronisation: CoQueue, CoMutex and CoRwlock, all built on one
 * fair FIFO wait queue of coroutines (linked through QLCoroutine.wait_next,
 * so waiting allocates nothing; a coroutine waits on one queue at a time).
 *
 * Threads: each object has a small pthread mutex (`lock`) that protects its
 * state and its wait queue; it is held only for a few instructions, never
 * across a yield or a wake.  Waking goes through ql_co_wake(): a waiter that
 * last ran in another thread's context is scheduled there; a waiter of the
 * waker's own context runs when the waking coroutine yields or ends (or
 * right away when woken from outside any coroutine).  A waiter may be popped
 * by another thread between queueing itself and yielding: the wake then
 * goes through its context's scheduling BH, which that context's thread (the
 * one running the waiter) only runs after the waiter yielded.  Coroutines
 * sharing these objects across threads must therefore run in contexts
 * (ql_context_current() not NULL).
 *
 * CoMutex hands ownership directly to the first waiter at unlock (the
 * waiter is the holder before it runs again): no barging.  CoRwlock follows
 * the ticket design: readers queue behind any queued writer, waiters are
 * admitted strictly in FIFO order, consecutive readers at the head together.
 */
#include "coroutine-int.h"
#include "misuse.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

enum { WAIT_ANY = 0, WAIT_READ = 1, WAIT_WRITE = 2 };

/* ---- the wait queue (caller holds the owner's lock) ------------------- */

typedef struct QLWaitQueue {
    QLCoroutine *head;  /* read without the lock only as a hint (empty()) */
    QLCoroutine *tail;
} QLWaitQueue;

static void wq_push(QLWaitQueue *q, QLCoroutine *co, int flags, bool front)
{
    co->wait_flags = flags;
    if (front) {
        co->wait_next = q->head;
        if (!q->head) {
            q->tail = co;
        }
        __atomic_store_n(&q->head, co, __ATOMIC_RELAXED);
    } else {
        co->wait_next = NULL;
        if (q->tail) {
            q->tail->wait_next = co;
        } else {
            __atomic_store_n(&q->head, co, __ATOMIC_RELAXED);
        }
        q->tail = co;
    }
}

static QLCoroutine *wq_pop(QLWaitQueue *q)
{
    QLCoroutine *co = q->head;

    if (co) {
        __atomic_store_n(&q->head, co->wait_next, __ATOMIC_RELAXED);
        if (!co->wait_next) {
            q->tail = NULL;
        }
        co->wait_next = NULL;
    }
    return co;
}

/* Wake a chain linked through wait_next, in order. */
static void wake_chain(QLCoroutine *co)
{
    while (co) {
        QLCoroutine *next = co->wait_next;
        co->wait_next = NULL;
        ql_co_wake(co);
        co = next;
    }
}

/* ---- CoQueue ---------------------------------------------------------- */

struct QLCoQueue {
    pthread_mutex_t lock;
    QLWaitQueue wq;
};

QLCoQueue *ql_co_queue_new(void)
{
    QLCoQueue *q = calloc(1, sizeof *q);

    if (!q) {
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&q->lock, NULL);
    return q;
}

void ql_co_queue_free(QLCoQueue *q)
{
    if (!q) {
        return;
    }
    if (q->wq.head) {
        ql__misuse(-EBUSY, "CoQueue freed with waiters");
    }
    pthread_mutex_destroy(&q->lock);
    free(q);
}

static int co_queue_wait(QLCoQueue *q, QLCoMutex *mutex, bool front)
{
    QLCoroutine *self = ql_coroutine_self();

    if (!self) {
        return ql__misuse(-EPERM, "CoQueue wait outside a coroutine");
    }
    if (mutex && ql_co_mutex_holder(mutex) != self) {
        return ql__misuse(-EPERM, "CoQueue wait with a CoMutex the coroutine does not hold");
    }
    pthread_mutex_lock(&q->lock);
    wq_push(&q->wq, self, WAIT_ANY, front);
    pthread_mutex_unlock(&q->lock);
    if (mutex) {
        ql_co_mutex_unlock(mutex);
    }
    ql__coroutine_yield();
    if (mutex) {
        ql_co_mutex_lock(mutex);
    }
    return 0;
}

int ql_co_queue_wait(QLCoQueue *q, QLCoMutex *mutex)
{
    return co_queue_wait(q, mutex, false);
}

int ql_co_queue_wait_insert_head(QLCoQueue *q, QLCoMutex *mutex)
{
    return co_queue_wait(q, mutex, true);
}

bool ql_co_queue_next(QLCoQueue *q)
{
    QLCoroutine *co;

    pthread_mutex_lock(&q->lock);
    co = wq_pop(&q->wq);
    pthread_mutex_unlock(&q->lock);
    if (co) {
        ql_co_wake(co);
    }
    return co != NULL;
}

void ql_co_queue_restart_all(QLCoQueue *q)
{
    QLCoroutine *all;

    pthread_mutex_lock(&q->lock);
    all = q->wq.head;
    q->wq.head = q->wq.tail = NULL;
    pthread_mutex_unlock(&q->lock);
    wake_chain(all);
}

bool ql_co_queue_empty(QLCoQueue *q)
{
    return __atomic_load_n(&q->wq.head, __ATOMIC_RELAXED) == NULL;
}

/* ---- CoMutex ---------------------------------------------------------- */

struct QLCoMutex {
    pthread_mutex_t lock;
    QLCoroutine *holder;    /* [lock]; reads without it are hints */
    QLWaitQueue wq;         /* [lock] */
};

QLCoMutex *ql_co_mutex_new(void)
{
    QLCoMutex *m = calloc(1, sizeof *m);

    if (!m) {
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&m->lock, NULL);
    return m;
}

void ql_co_mutex_free(QLCoMutex *m)
{
    if (!m) {
        return;
    }
    if (m->holder || m->wq.head) {
        ql__misuse(-EBUSY, "CoMutex freed while locked");
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

int ql_co_mutex_lock(QLCoMutex *m)
{
    QLCoroutine *self = ql_coroutine_self();

    if (!self) {
        return ql__misuse(-EPERM, "CoMutex locked outside a coroutine");
    }
    pthread_mutex_lock(&m->lock);
    if (!m->holder) {
        __atomic_store_n(&m->holder, self, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&m->lock);
        self->locks_held++;
        return 0;
    }
    if (m->holder == self) {
        pthread_mutex_unlock(&m->lock);
        return ql__misuse(-EDEADLK, "CoMutex locked twice by the same coroutine");
    }
    wq_push(&m->wq, self, WAIT_ANY, false);
    pthread_mutex_unlock(&m->lock);
    /* The unlocker makes us the holder before it wakes us. */
    ql__coroutine_yield();
    self->locks_held++;
    return 0;
}

int ql_co_mutex_trylock(QLCoMutex *m)
{
    QLCoroutine *self = ql_coroutine_self();
    int ret = 0;

    if (!self) {
        return ql__misuse(-EPERM, "CoMutex locked outside a coroutine");
    }
    pthread_mutex_lock(&m->lock);
    if (!m->holder) {
        __atomic_store_n(&m->holder, self, __ATOMIC_RELAXED);
        ret = 1;
    } else if (m->holder == self) {
        ret = -EDEADLK;
    }
    pthread_mutex_unlock(&m->lock);
    if (ret == 1) {
        self->locks_held++;
    } else if (ret < 0) {
        return ql__misuse(ret, "CoMutex locked twice by the same coroutine");
    }
    return ret;
}

int ql_co_mutex_unlock(QLCoMutex *m)
{
    QLCoroutine *self = ql_coroutine_self();
    QLCoroutine *next;

    pthread_mutex_lock(&m->lock);
    if (!self || m->holder != self) {
        pthread_mutex_unlock(&m->lock);
        return ql__misuse(-EPERM, "CoMutex unlocked by a coroutine that does not hold it");
    }
    next = wq_pop(&m->wq);
    __atomic_store_n(&m->holder, next, __ATOMIC_RELAXED); /* hand-off */
    pthread_mutex_unlock(&m->lock);
    self->locks_held--;
    if (next) {
        ql_co_wake(next);
    }
    return 0;
}

bool ql_co_mutex_locked(QLCoMutex *m)
{
    return __atomic_load_n(&m->holder, __ATOMIC_RELAXED) != NULL;
}

QLCoroutine *ql_co_mutex_holder(QLCoMutex *m)
{
    return __atomic_load_n(&m->holder, __ATOMIC_RELAXED);
}

/* ---- CoRwlock --------------------------------------------------------- */

struct QLCoRwlock {
    pthread_mutex_t lock;
    int owners;             /* [lock] >0 readers, -1 a writer, 0 free */
    QLCoroutine *writer;    /* [lock] the writer when owners == -1 */
    QLWaitQueue tickets;    /* [lock] FIFO of waiting readers and writers */
};

QLCoRwlock *ql_co_rwlock_new(void)
{
    QLCoRwlock *l = calloc(1, sizeof *l);

    if (!l) {
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&l->lock, NULL);
    return l;
}

void ql_co_rwlock_free(QLCoRwlock *l)
{
    if (!l) {
        return;
    }
    if (l->owners || l->tickets.head) {
        ql__misuse(-EBUSY, "CoRwlock freed while locked");
    }
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* Admit waiters from the head while the lock state allows: consecutive
 * readers, or one writer once free.  Returns them linked through wait_next
 * (to be woken after the lock is dropped).  Called with l->lock held. */
static QLCoroutine *rw_admit(QLCoRwlock *l)
{
    QLCoroutine *head = NULL, **tail = &head, *co;

    while ((co = l->tickets.head)) {
        if (co->wait_flags == WAIT_READ && l->owners >= 0) {
            l->owners++;
        } else if (co->wait_flags == WAIT_WRITE && l->owners == 0) {
            l->owners = -1;
            l->writer = co;
        } else {
            break;
        }
        wq_pop(&l->tickets);
        *tail = co;
        tail = &co->wait_next;
        if (l->owners < 0) {
            break;
        }
    }
    return head;
}

static int rw_lock(QLCoRwlock *l, int kind)
{
    QLCoroutine *self = ql_coroutine_self();

    if (!self) {
        return ql__misuse(-EPERM, "CoRwlock locked outside a coroutine");
    }
    pthread_mutex_lock(&l->lock);
    if (l->owners < 0 && l->writer == self) {
        pthread_mutex_unlock(&l->lock);
        return ql__misuse(-EDEADLK, "CoRwlock locked by its writer");
    }
    if (kind == WAIT_READ && (l->owners == 0 || (l->owners > 0 && !l->tickets.head))) {
        l->owners++;
    } else if (kind == WAIT_WRITE && l->owners == 0) {
        l->owners = -1;
        l->writer = self;
    } else {
        /* The one who admits us updates owners/writer for us. */
        wq_push(&l->tickets, self, kind, false);
        pthread_mutex_unlock(&l->lock);
        ql__coroutine_yield();
        self->locks_held++;
        return 0;
    }
    pthread_mutex_unlock(&l->lock);
    self->locks_held++;
    return 0;
}

int ql_co_rwlock_rdlock(QLCoRwlock *l)
{
    return rw_lock(l, WAIT_READ);
}

int ql_co_rwlock_wrlock(QLCoRwlock *l)
{
    return rw_lock(l, WAIT_WRITE);
}

int ql_co_rwlock_unlock(QLCoRwlock *l)
{
    QLCoroutine *self = ql_coroutine_self();
    QLCoroutine *wake;

    pthread_mutex_lock(&l->lock);
    if (self && l->owners < 0 && l->writer == self) {
        l->owners = 0;
        l->writer = NULL;
    } else if (self && l->owners > 0) {
        /* Readers are not tracked individually: any reader may release. */
        l->owners--;
    } else {
        pthread_mutex_unlock(&l->lock);
        return ql__misuse(-EPERM, "CoRwlock unlocked by a coroutine that does not hold it");
    }
    wake = rw_admit(l);
    pthread_mutex_unlock(&l->lock);
    self->locks_held--;
    wake_chain(wake);
    return 0;
}

int ql_co_rwlock_upgrade(QLCoRwlock *l)
{
    QLCoroutine *self = ql_coroutine_self();
    QLCoroutine *wake;

    pthread_mutex_lock(&l->lock);
    if (!self || l->owners <= 0) {
        pthread_mutex_unlock(&l->lock);
        return ql__misuse(-EPERM, "CoRwlock upgraded without a read hold");
    }
    if (l->owners == 1 && !l->tickets.head) {
        l->owners = -1;
        l->writer = self;
        pthread_mutex_unlock(&l->lock);
        return 0;
    }
    /* Drop the read hold and queue as a writer behind whoever waits. */
    l->owners--;
    wq_push(&l->tickets, self, WAIT_WRITE, false);
    wake = rw_admit(l);
    pthread_mutex_unlock(&l->lock);
    if (wake == self) {
        /* Admitted at once (cannot happen with a consistent queue: a
         * non-empty queue never starts with a grantable ticket). */
        return 0;
    }
    wake_chain(wake);
    ql__coroutine_yield();
    return 0;
}

int ql_co_rwlock_downgrade(QLCoRwlock *l)
{
    QLCoroutine *self = ql_coroutine_self();
    QLCoroutine *wake;

    pthread_mutex_lock(&l->lock);
    if (!self || l->owners >= 0 || l->writer != self) {
        pthread_mutex_unlock(&l->lock);
        return ql__misuse(-EPERM, "CoRwlock downgraded by a coroutine that is not its writer");
    }
    l->owners = 1;
    l->writer = NULL;
    wake = rw_admit(l);
    pthread_mutex_unlock(&l->lock);
    wake_chain(wake);
    return 0;
}
