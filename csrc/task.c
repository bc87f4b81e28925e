/*
 * QIOTask in C (see qloop/task.h).
 *
 * Lifetime: a task has up to two references: the owner's (dropped by
 * ql_task_complete, after the callback) and, while ql_task_run_in_thread's
 * request is in flight, the thread pool's (dropped by that request's
 * completion).  The last one frees the task.
 *
 * Concurrency: while its worker runs, the task's error and result belong to
 * the worker; the home thread reads them only after the request completed
 * (the pool's lock orders the worker's writes before the completion) or
 * after ql_task_wait_thread saw worker_done under task->lock.
 */
#include "qloop/task.h"
#include "qloop/blocking.h"
#include "qloop/thread-pool.h"
#include "misuse.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum { TASK_NEW, TASK_RUNNING, TASK_DONE };

struct QLTask {
    void *source;
    QLTaskDestroy *source_release;
    QLTaskFunc *func;
    void *opaque;
    QLTaskDestroy *destroy;

    int err;                    /* first error, 0 if none */
    char *message;              /* its message or NULL */
    void *result;
    QLTaskDestroy *result_destroy;

    int state;                  /* [home] TASK_* */
    int refs;                   /* [home] */

    /* worker thread */
    QLTaskFunc *worker;
    void *worker_opaque;
    QLTaskDestroy *worker_destroy;
    bool waited;                /* [home] completed by ql_task_wait_thread */
    pthread_mutex_t lock;       /* worker_done, for ql_task_wait_thread */
    pthread_cond_t cond;
    bool worker_done;           /* [lock] */
};

QLTask *ql_task_new(void *source, QLTaskDestroy *source_release, QLTaskFunc *func, void *opaque,
                    QLTaskDestroy *destroy)
{
    if (!func) {
        errno = EINVAL;
        return NULL;
    }
    QLTask *t = calloc(1, sizeof *t);
    if (!t) {
        errno = ENOMEM;
        return NULL;
    }
    if (pthread_mutex_init(&t->lock, NULL)) {
        goto fail_mutex;
    }
    if (pthread_cond_init(&t->cond, NULL)) {
        goto fail_cond;
    }
    t->source = source;
    t->source_release = source_release;
    t->func = func;
    t->opaque = opaque;
    t->destroy = destroy;
    t->state = TASK_NEW;
    t->refs = 1;
    return t;

fail_cond:
    pthread_mutex_destroy(&t->lock);
fail_mutex:
    free(t);
    errno = ENOMEM;
    return NULL;
}

static void task_free(QLTask *t)
{
    if (t->worker_destroy) {
        t->worker_destroy(t->worker_opaque);
    }
    if (t->destroy) {
        t->destroy(t->opaque);
    }
    if (t->result_destroy) {
        t->result_destroy(t->result);
    }
    free(t->message);
    if (t->source_release) {
        t->source_release(t->source);
    }
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static void task_unref(QLTask *t)
{
    if (--t->refs == 0) {
        task_free(t);
    }
}

void *ql_task_get_source(QLTask *task)
{
    return task->source;
}

void ql_task_set_error(QLTask *task, int err, const char *message)
{
    if (err == 0 || task->err != 0) {
        return;
    }
    task->err = err;
    task->message = message ? strdup(message) : NULL;
}

int ql_task_get_error(QLTask *task, const char **message)
{
    if (message) {
        *message = task->message;
    }
    return task->err;
}

int ql_task_propagate_error(QLTask *task, char **message)
{
    int err = task->err;
    if (message) {
        *message = task->message;
    } else {
        free(task->message);
    }
    task->err = 0;
    task->message = NULL;
    return err;
}

void ql_task_set_result_pointer(QLTask *task, void *result, QLTaskDestroy *destroy)
{
    if (task->result_destroy) {
        task->result_destroy(task->result);
    }
    task->result = result;
    task->result_destroy = destroy;
}

void *ql_task_get_result_pointer(QLTask *task)
{
    return task->result;
}

static void task_finish(QLTask *t)
{
    t->state = TASK_DONE;
    t->func(t, t->opaque);
    task_unref(t);
}

int ql_task_complete(QLTask *task)
{
    if (task->state != TASK_NEW) {
        return ql__misuse(-EINVAL, "ql_task_complete: task %s", task->state == TASK_DONE
                          ? "already completed" : "has a worker thread running");
    }
    task_finish(task);
    return 0;
}

int ql_task_abort(QLTask *task, int err, const char *message)
{
    if (task->state != TASK_NEW) {
        return ql_task_complete(task); /* reports the misuse */
    }
    ql_task_set_error(task, err, message);
    task_finish(task);
    return 0;
}

/* Worker thread. */
static int task_thread_work(void *opaque)
{
    QLTask *t = opaque;
    t->worker(t, t->worker_opaque);
    pthread_mutex_lock(&t->lock);
    t->worker_done = true;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
    return 0;
}

/* Home thread, from the pool's completion. */
static void task_thread_done(void *opaque, int ret)
{
    QLTask *t = opaque;
    if (!t->waited) {
        if (ret == -ECANCELED) {
            ql_task_set_error(t, -ECANCELED, "the task's context was freed before its "
                              "worker ran");
        }
        task_finish(t);
    }
    task_unref(t); /* the pool's reference */
}

int ql_task_run_in_thread(QLTask *task, QLTaskFunc *worker, void *worker_opaque,
                          QLTaskDestroy *destroy, QLContext *ctx)
{
    if (!ctx) {
        ctx = ql_context_current();
    }
    if (!ctx || !worker || task->state != TASK_NEW) {
        return ql__misuse(-EINVAL, "ql_task_run_in_thread: %s", !ctx ? "no context"
                          : !worker ? "NULL worker" : "task completed or already running");
    }
    QLThreadPool *pool = ql_context_thread_pool(ctx);
    if (!pool) {
        return -errno;
    }
    task->worker = worker;
    task->worker_opaque = worker_opaque;
    task->worker_destroy = destroy;
    task->state = TASK_RUNNING;
    task->refs++;
    if (!ql_thread_pool_submit(pool, task_thread_work, task, task_thread_done, task)) {
        int e = errno;
        task->refs--;
        task->state = TASK_NEW;
        task->worker = NULL;
        task->worker_opaque = NULL;
        task->worker_destroy = NULL;
        return -e;
    }
    return 0;
}

int ql_task_wait_thread(QLTask *task)
{
    if (task->state != TASK_RUNNING || task->waited) {
        return ql__misuse(-EINVAL, "ql_task_wait_thread: no worker thread running for the task");
    }
    void *token = ql_blocking_begin();
    pthread_mutex_lock(&task->lock);
    while (!task->worker_done) {
        pthread_cond_wait(&task->cond, &task->lock);
    }
    pthread_mutex_unlock(&task->lock);
    ql_blocking_end(token);
    task->waited = true;
    task_finish(task);
    return 0;
}
