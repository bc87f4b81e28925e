/*
 * Thread pool: worker threads run blocking functions; completions come back
 * to the pool's home context through a bottom half (see qloop/thread-pool.h).
 *
 * Concurrency:
 *  - pool->lock protects every field marked [lock]: the request queue, the
 *    done list, the worker bookkeeping and the recycled requests.  It is
 *    never held while user code runs (func or cb) and never while blocking
 *    hooks are entered or left: a hook may take the GIL, and a thread that
 *    holds the GIL may be waiting for pool->lock (submit from Python).
 *  - [home] fields belong to the thread that polls the home context.
 *  - A request moves QUEUED (on the queue) -> ACTIVE (a worker runs func) ->
 *    DONE (on the done list, then the home thread's ready list) -> freed
 *    after its callback.  state changes happen under the lock, so cancel()
 *    and the workers agree on who owns a request.
 *  - Registry: every pool is on a process-wide list (registry_lock) so that
 *    ql_context_thread_pool() finds the default pool of a context and
 *    freeing a context finds the pools delivering into it.
 */
#include "qloop/thread-pool.h"
#include "qloop/blocking.h"
#include "thread-pool-int.h"
#include "context-int.h"
#include "misuse.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

enum { REQ_QUEUED, REQ_ACTIVE, REQ_DONE };

#define DEFAULT_MAX_THREADS 64
#define DEFAULT_IDLE_TIMEOUT_NS (10 * 1000000000LL)
#define REQ_FREE_MAX 256

struct QLThreadPoolRequest {
    QLThreadPool *pool;
    QLThreadPoolFunc *func;
    void *arg;
    QLThreadPoolCompletionFunc *cb;
    void *opaque;
    int state;        /* [lock] REQ_* */
    int ret;          /* written before state = DONE, under the lock */
    uint64_t seq;     /* [lock] submission order */
    QLThreadPoolRequest *next, *prev; /* queue / done / ready / free links */
};

typedef struct Worker {
    pthread_t tid;
    QLThreadPool *pool;
    struct Worker *next;
} Worker;

typedef struct ReqList {
    QLThreadPoolRequest *head, *tail;
} ReqList;

struct QLThreadPool {
    /* Home context and completion BH; set at creation, cleared together when
     * the pool is detached at shutdown, under registry_lock AND pool->lock
     * (readers hold either). */
    QLContext *ctx;
    QLBH *bh;
    bool is_default;          /* [const] the context's default pool */
    pthread_mutex_t lock;
    pthread_cond_t request_cond;   /* workers wait here for work */
    pthread_cond_t worker_stopped; /* shutdown waits here for workers */

    ReqList queue;            /* [lock] QUEUED requests, FIFO */
    int queue_len;            /* [lock] */
    ReqList done;             /* [lock] DONE requests, sorted by seq */
    QLThreadPoolRequest *free_reqs; /* [lock] recycled requests */
    int free_count;           /* [lock] */
    uint64_t next_seq;        /* [lock] */
    int in_flight;            /* [lock] submitted, callback not yet run */

    int cur_threads;          /* [lock] workers alive (started, not exited) */
    int idle_threads;         /* [lock] workers waiting for work */
    int min_threads, max_threads; /* [lock] */
    int64_t idle_timeout_ns;  /* [lock] -1: never */
    bool stopping;            /* [lock] shut down: no submit, workers exit */
    Worker *exited;           /* [lock] workers that returned, to be joined */

    ReqList ready;            /* [home] taken from done, being delivered */

    QLThreadPool *reg_next, *reg_prev; /* [registry_lock] */
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static QLThreadPool *registry;

/* ---- request lists -------------------------------------------------------- */

static void list_append(ReqList *l, QLThreadPoolRequest *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail) {
        l->tail->next = r;
    } else {
        l->head = r;
    }
    l->tail = r;
}

static void list_remove(ReqList *l, QLThreadPoolRequest *r)
{
    if (r->prev) {
        r->prev->next = r->next;
    } else {
        l->head = r->next;
    }
    if (r->next) {
        r->next->prev = r->prev;
    } else {
        l->tail = r->prev;
    }
    r->next = r->prev = NULL;
}

static QLThreadPoolRequest *list_pop(ReqList *l)
{
    QLThreadPoolRequest *r = l->head;
    if (r) {
        list_remove(l, r);
    }
    return r;
}

/* Insert keeping the list sorted by seq.  Workers take requests in seq
 * order, so the right place is nearly always at or near the tail. */
static void list_insert_sorted(ReqList *l, QLThreadPoolRequest *r)
{
    QLThreadPoolRequest *after = l->tail;
    while (after && after->seq > r->seq) {
        after = after->prev;
    }
    r->prev = after;
    r->next = after ? after->next : l->head;
    if (r->next) {
        r->next->prev = r;
    } else {
        l->tail = r;
    }
    if (after) {
        after->next = r;
    } else {
        l->head = r;
    }
}

static void list_splice(ReqList *dst, ReqList *src)
{
    if (!src->head) {
        return;
    }
    if (dst->tail) {
        dst->tail->next = src->head;
        src->head->prev = dst->tail;
    } else {
        dst->head = src->head;
    }
    dst->tail = src->tail;
    src->head = src->tail = NULL;
}

/* Put a finished (or cancelled) request on the done list.  Returns true if
 * the caller must schedule the completion BH: the list was empty, so no run
 * of the BH is due to take it.  [lock] */
static bool mark_done(QLThreadPool *pool, QLThreadPoolRequest *r, int ret)
{
    bool was_empty = pool->done.head == NULL;
    r->ret = ret;
    r->state = REQ_DONE;
    list_insert_sorted(&pool->done, r);
    return was_empty;
}

/* ---- workers -------------------------------------------------------------- */

static void deadline_after(struct timespec *ts, int64_t ns)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ns / 1000000000LL;
    ts->tv_nsec += ns % 1000000000LL;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int64_t elapsed_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - start->tv_sec) * 1000000000LL + (now.tv_nsec - start->tv_nsec);
}

/* Wait for work.  Returns true if the worker should exit.  [lock] held. */
static bool worker_wait(QLThreadPool *pool)
{
    struct timespec start;
    bool timed_out = false;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pool->idle_threads++;
    while (!pool->queue.head && !pool->stopping && pool->cur_threads <= pool->max_threads) {
        /* Re-read the timeout each time: set_idle_timeout() broadcasts. */
        int64_t timeout = pool->idle_timeout_ns;
        if (timeout < 0) {
            pthread_cond_wait(&pool->request_cond, &pool->lock);
            continue;
        }
        int64_t left = timeout - elapsed_since(&start);
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct timespec dl;
        deadline_after(&dl, left);
        pthread_cond_timedwait(&pool->request_cond, &pool->lock, &dl);
    }
    pool->idle_threads--;
    return timed_out && !pool->queue.head && pool->cur_threads > pool->min_threads;
}

static void *worker_main(void *opaque)
{
    Worker *w = opaque;
    QLThreadPool *pool = w->pool;

    pthread_mutex_lock(&pool->lock);
    for (;;) {
        if (pool->stopping || pool->cur_threads > pool->max_threads) {
            break;
        }
        QLThreadPoolRequest *r = list_pop(&pool->queue);
        if (!r) {
            if (worker_wait(pool)) {
                break;
            }
            continue;
        }
        pool->queue_len--;
        r->state = REQ_ACTIVE;
        pthread_mutex_unlock(&pool->lock);

        int ret = r->func(r->arg);

        pthread_mutex_lock(&pool->lock);
        if (mark_done(pool, r, ret)) {
            /* The BH outlives the workers: shutdown joins them first. */
            ql_bh_schedule(pool->bh);
        }
    }
    pool->cur_threads--;
    w->next = pool->exited;
    pool->exited = w;
    pthread_cond_broadcast(&pool->worker_stopped);
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

/* Join the workers that have exited, without blocking if wait is false
 * (then a worker still on its way out stays on the list).  [lock] held;
 * with wait, the caller is inside a blocking section. */
static void reap_workers(QLThreadPool *pool, bool wait)
{
    Worker **pp = &pool->exited;
    while (*pp) {
        Worker *w = *pp;
        if (wait ? pthread_join(w->tid, NULL) == 0 : pthread_tryjoin_np(w->tid, NULL) == 0) {
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
}

/* Start one worker.  0 or a negative errno.  [lock] held. */
static int spawn_worker(QLThreadPool *pool)
{
    Worker *w = malloc(sizeof *w);
    if (!w) {
        return -ENOMEM;
    }
    w->pool = pool;
    w->next = NULL;
    /* The worker inherits a full signal mask. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&w->tid, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        free(w);
        return -err;
    }
    pthread_setname_np(w->tid, "qloop-worker");
    pool->cur_threads++;
    return 0;
}

static void spawn_min_threads(QLThreadPool *pool)
{
    while (!pool->stopping && pool->cur_threads < pool->min_threads) {
        if (spawn_worker(pool) < 0) {
            break;
        }
    }
}

/* ---- completion ----------------------------------------------------------- */

static void release_request(QLThreadPool *pool, QLThreadPoolRequest *r)
{
    pthread_mutex_lock(&pool->lock);
    pool->in_flight--;
    if (pool->free_count < REQ_FREE_MAX) {
        r->next = pool->free_reqs;
        pool->free_reqs = r;
        pool->free_count++;
        r = NULL;
    }
    pthread_mutex_unlock(&pool->lock);
    free(r);
}

static void deliver(QLThreadPool *pool, QLThreadPoolRequest *r)
{
    if (r->cb) {
        r->cb(r->opaque, r->ret);
    }
    release_request(pool, r);
}

/* The completion BH.  Takes the batch of finished requests and delivers it
 * in submission order.  Before each callback, if more of the batch is left,
 * the BH is scheduled again: a callback that polls the context (waiting for
 * another request, say) then gets the rest delivered by the nested run,
 * which works on the same ready list.  Re-entrancy safe: a request is off
 * every list before its callback runs. */
static void completion_bh(void *opaque)
{
    QLThreadPool *pool = opaque;
    bool rescheduled = false;

    pthread_mutex_lock(&pool->lock);
    list_splice(&pool->ready, &pool->done);
    pthread_mutex_unlock(&pool->lock);

    QLThreadPoolRequest *r;
    while ((r = list_pop(&pool->ready))) {
        if (pool->ready.head && r->cb) {
            ql_bh_schedule(pool->bh);
            rescheduled = true;
        }
        QLContext *ctx = pool->ctx;
        deliver(pool, r);
        if (ctx && ctx->stop_dispatch && pool->ready.head) {
            /* A callback asked the dispatch to stop (ql_context_stop_dispatch:
             * e.g. it raised and the poll must return now).  The rest of the
             * batch stays on the ready list; the BH, scheduled again above
             * before this callback ran, delivers it in the next poll. */
            return;
        }
    }
    if (rescheduled) {
        /* Everything was delivered: drop the extra run, unless requests
         * finished meanwhile (a worker's schedule may have been the one we
         * just cancelled, so look). */
        ql_bh_cancel(pool->bh);
        pthread_mutex_lock(&pool->lock);
        if (pool->done.head) {
            ql_bh_schedule(pool->bh);
        }
        pthread_mutex_unlock(&pool->lock);
    }
}

/* ---- creation and registry ------------------------------------------------ */

static pthread_once_t fork_once;
static void install_fork_handlers(void);

static QLThreadPool *pool_create(QLContext *ctx, bool is_default)
{
    pthread_once(&fork_once, install_fork_handlers);
    QLThreadPool *pool = calloc(1, sizeof *pool);
    if (!pool) {
        goto fail_alloc;
    }
    pool->ctx = ctx;
    pool->is_default = is_default;
    pool->min_threads = 0;
    pool->max_threads = DEFAULT_MAX_THREADS;
    pool->idle_timeout_ns = DEFAULT_IDLE_TIMEOUT_NS;
    if (pthread_mutex_init(&pool->lock, NULL)) {
        goto fail_mutex;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int err = pthread_cond_init(&pool->request_cond, &attr);
    pthread_condattr_destroy(&attr);
    if (err) {
        goto fail_cond;
    }
    if (pthread_cond_init(&pool->worker_stopped, NULL)) {
        goto fail_cond2;
    }
    pool->bh = ql_bh_new(ctx, completion_bh, pool, "thread-pool-completion");
    if (!pool->bh) {
        goto fail_bh;
    }
    /* registry_lock held by the caller */
    pool->reg_next = registry;
    if (registry) {
        registry->reg_prev = pool;
    }
    registry = pool;
    return pool;

fail_bh:
    pthread_cond_destroy(&pool->worker_stopped);
fail_cond2:
    pthread_cond_destroy(&pool->request_cond);
fail_cond:
    pthread_mutex_destroy(&pool->lock);
fail_mutex:
    free(pool);
fail_alloc:
    errno = ENOMEM;
    return NULL;
}

/* ---- fork ------------------------------------------------------------------
 * A child process has none of the parent's worker threads.  Around fork()
 * every pool lock is held (so no list is caught half-updated); in the child
 * the pools forget their workers, and the next submit starts new ones.
 * Requests that a worker of the parent was running are lost in the child:
 * their callbacks never run there. */

static void fork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    for (QLThreadPool *p = registry; p; p = p->reg_next) {
        pthread_mutex_lock(&p->lock);
    }
}

static void fork_parent(void)
{
    for (QLThreadPool *p = registry; p; p = p->reg_next) {
        pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void fork_child(void)
{
    for (QLThreadPool *p = registry; p; p = p->reg_next) {
        /* Other threads' waits on the condition variables vanished with
         * them: start the variables afresh. */
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&p->request_cond, &attr);
        pthread_condattr_destroy(&attr);
        pthread_cond_init(&p->worker_stopped, NULL);
        while (p->exited) {
            Worker *w = p->exited;
            p->exited = w->next;
            free(w);
        }
        p->cur_threads = 0;
        p->idle_threads = 0;
        pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_unlock(&registry_lock);
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void install_fork_handlers(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

QLThreadPool *ql_context_thread_pool(QLContext *ctx)
{
    if (!ctx) {
        errno = EINVAL;
        return NULL;
    }
    pthread_mutex_lock(&registry_lock);
    QLThreadPool *pool = registry;
    while (pool && !(pool->is_default && pool->ctx == ctx)) {
        pool = pool->reg_next;
    }
    if (!pool) {
        pool = pool_create(ctx, true);
    }
    pthread_mutex_unlock(&registry_lock);
    return pool;
}

QLThreadPool *ql_thread_pool_new(QLContext *ctx)
{
    if (!ctx) {
        errno = EINVAL;
        return NULL;
    }
    pthread_mutex_lock(&registry_lock);
    QLThreadPool *pool = pool_create(ctx, false);
    pthread_mutex_unlock(&registry_lock);
    return pool;
}

/* ---- shutdown ------------------------------------------------------------- */

/* Stop the pool: cancel queued requests, wait for running ones, join every
 * worker, deliver every outstanding completion, delete the BH.  Leaves the
 * pool detached (ctx and bh NULL) but allocated.  Home thread. */
static void pool_shutdown(QLThreadPool *pool)
{
    pthread_mutex_lock(&pool->lock);
    if (pool->stopping && !pool->bh) {
        pthread_mutex_unlock(&pool->lock);
        return; /* already done */
    }
    pool->stopping = true;
    QLThreadPoolRequest *r;
    while ((r = list_pop(&pool->queue))) {
        pool->queue_len--;
        mark_done(pool, r, -ECANCELED);
    }
    pthread_cond_broadcast(&pool->request_cond);
    bool must_wait = pool->cur_threads > 0 || pool->exited;
    pthread_mutex_unlock(&pool->lock);

    if (must_wait) {
        /* Never enter or leave a blocking section with pool->lock held. */
        void *token = ql_blocking_begin();
        pthread_mutex_lock(&pool->lock);
        while (pool->cur_threads > 0) {
            pthread_cond_wait(&pool->worker_stopped, &pool->lock);
        }
        reap_workers(pool, true);
        pthread_mutex_unlock(&pool->lock);
        ql_blocking_end(token);
    }

    /* No worker is left: deliver what is ready, then what is done, each in
     * submission order.  Callbacks may submit (and get ESHUTDOWN). */
    for (;;) {
        r = list_pop(&pool->ready);
        if (!r) {
            pthread_mutex_lock(&pool->lock);
            r = list_pop(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
        if (!r) {
            break;
        }
        deliver(pool, r);
    }

    /* Detach.  ctx and bh are read under either lock (the registry search
     * and ql_thread_pool_context), so write them under both. */
    pthread_mutex_lock(&registry_lock);
    pthread_mutex_lock(&pool->lock);
    QLBH *bh = pool->bh;
    pool->bh = NULL;
    pool->ctx = NULL;
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&registry_lock);
    ql_bh_delete(bh);
}

static void pool_destroy(QLThreadPool *pool)
{
    pthread_mutex_lock(&registry_lock);
    if (pool->reg_prev) {
        pool->reg_prev->reg_next = pool->reg_next;
    } else {
        registry = pool->reg_next;
    }
    if (pool->reg_next) {
        pool->reg_next->reg_prev = pool->reg_prev;
    }
    pthread_mutex_unlock(&registry_lock);

    while (pool->free_reqs) {
        QLThreadPoolRequest *r = pool->free_reqs;
        pool->free_reqs = r->next;
        free(r);
    }
    pthread_cond_destroy(&pool->worker_stopped);
    pthread_cond_destroy(&pool->request_cond);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}

void ql_thread_pool_free(QLThreadPool *pool)
{
    if (!pool) {
        return;
    }
    if (pool->is_default) {
        ql__misuse(-EINVAL, "ql_thread_pool_free() on a context's default thread pool "
                   "(it is freed with its context)");
        return;
    }
    pool_shutdown(pool);
    pool_destroy(pool);
}

void ql__thread_pools_context_free(QLContext *ctx)
{
    for (;;) {
        /* One pool at a time: shutdown runs callbacks, which may create or
         * free pools, so the registry is searched again each time. */
        pthread_mutex_lock(&registry_lock);
        QLThreadPool *pool = registry;
        while (pool && !(pool->ctx == ctx && pool->bh)) {
            pool = pool->reg_next;
        }
        pthread_mutex_unlock(&registry_lock);
        if (!pool) {
            break;
        }
        pool_shutdown(pool);
        if (pool->is_default) {
            pool_destroy(pool);
        }
    }
}

/* ---- submit, cancel, settings --------------------------------------------- */

QLThreadPoolRequest *ql_thread_pool_submit(QLThreadPool *pool, QLThreadPoolFunc *func, void *arg,
                                           QLThreadPoolCompletionFunc *cb, void *opaque)
{
    if (!pool || !func) {
        errno = EINVAL;
        return NULL;
    }
    pthread_mutex_lock(&pool->lock);
    if (pool->stopping) {
        pthread_mutex_unlock(&pool->lock);
        errno = ESHUTDOWN;
        return NULL;
    }
    QLThreadPoolRequest *r = pool->free_reqs;
    if (r) {
        pool->free_reqs = r->next;
        pool->free_count--;
    } else if (!(r = malloc(sizeof *r))) {
        pthread_mutex_unlock(&pool->lock);
        errno = ENOMEM;
        return NULL;
    }
    r->pool = pool;
    r->func = func;
    r->arg = arg;
    r->cb = cb;
    r->opaque = opaque;
    r->state = REQ_QUEUED;
    r->ret = 0;
    r->seq = pool->next_seq++;
    list_append(&pool->queue, r);
    pool->queue_len++;
    pool->in_flight++;

    if (pool->exited) {
        reap_workers(pool, false);
    }
    if (pool->queue_len > pool->idle_threads && pool->cur_threads < pool->max_threads) {
        int err = spawn_worker(pool);
        if (err < 0 && pool->cur_threads == 0) {
            list_remove(&pool->queue, r);
            pool->queue_len--;
            pool->in_flight--;
            r->next = pool->free_reqs;
            pool->free_reqs = r;
            pool->free_count++;
            pthread_mutex_unlock(&pool->lock);
            errno = err == -ENOMEM ? ENOMEM : EAGAIN;
            return NULL;
        }
    }
    pthread_cond_signal(&pool->request_cond);
    pthread_mutex_unlock(&pool->lock);
    return r;
}

int ql_thread_pool_cancel(QLThreadPoolRequest *req)
{
    if (!req) {
        return -EINVAL;
    }
    QLThreadPool *pool = req->pool;
    int cancelled = 0;
    pthread_mutex_lock(&pool->lock);
    if (req->state == REQ_QUEUED) {
        list_remove(&pool->queue, req);
        pool->queue_len--;
        if (mark_done(pool, req, -ECANCELED)) {
            ql_bh_schedule(pool->bh);
        }
        cancelled = 1;
    }
    pthread_mutex_unlock(&pool->lock);
    return cancelled;
}

int ql_thread_pool_set_sizes(QLThreadPool *pool, int min_threads, int max_threads)
{
    if (!pool || min_threads < 0 || max_threads <= 0 || min_threads > max_threads) {
        return -EINVAL;
    }
    pthread_mutex_lock(&pool->lock);
    pool->min_threads = min_threads;
    pool->max_threads = max_threads;
    spawn_min_threads(pool);
    /* Idle workers above the new maximum wake up and exit. */
    pthread_cond_broadcast(&pool->request_cond);
    pthread_mutex_unlock(&pool->lock);
    return 0;
}

int ql_thread_pool_set_idle_timeout(QLThreadPool *pool, int64_t timeout_ns)
{
    if (!pool || timeout_ns < -1) {
        return -EINVAL;
    }
    pthread_mutex_lock(&pool->lock);
    pool->idle_timeout_ns = timeout_ns;
    pthread_cond_broadcast(&pool->request_cond);
    pthread_mutex_unlock(&pool->lock);
    return 0;
}

QLContext *ql_thread_pool_context(QLThreadPool *pool)
{
    pthread_mutex_lock(&pool->lock);
    QLContext *ctx = pool->ctx;
    pthread_mutex_unlock(&pool->lock);
    return ctx;
}

static int read_int(QLThreadPool *pool, const int *field)
{
    pthread_mutex_lock(&pool->lock);
    int v = *field;
    pthread_mutex_unlock(&pool->lock);
    return v;
}

int ql_thread_pool_num_threads(QLThreadPool *pool)
{
    return read_int(pool, &pool->cur_threads);
}

int ql_thread_pool_num_idle(QLThreadPool *pool)
{
    return read_int(pool, &pool->idle_threads);
}

int ql_thread_pool_num_in_flight(QLThreadPool *pool)
{
    return read_int(pool, &pool->in_flight);
}
