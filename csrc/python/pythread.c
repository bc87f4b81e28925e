/*
 * Per-thread bookkeeping of Python coroutines: the thread's record (which
 * coroutines it owns, references to release later, coroutines dropped by
 * other threads and waiting to be unwound here), its end (a sentinel in the
 * thread state's dict), the atexit unwinding, and the data-stack chunk cache.
 * Everything runs with the GIL held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"
#include "pycoro.h"
#include "qloop/coroutine.h"

/* ---- per-thread bookkeeping ------------------------------------------ */

QLPY_TLS QLPyThread *qlpy_tl_thread;
QLPY_TLS QLPyCoroutine *qlpy_tl_current;
int qlpy_service_pending; /* some thread has zombies or kills queued */

void qlpy_thread_unref(QLPyThread *t)
{
    if (--t->refcnt == 0) {
        free(t);
    }
}

typedef struct {
    PyObject_HEAD
    QLPyThread *thread;
} ThreadSentinel;

/* Runs when the thread state's dict is cleared: the thread is gone. */
static void sentinel_dealloc(ThreadSentinel *s)
{
    QLPyThread *t = s->thread;
    if (t) {
        t->alive = 0;
        if (qlpy_tl_thread == t) {
            qlpy_tl_thread = NULL;
        }
        PyObject *k = t->kill_queue, *z = t->zombies;
        t->kill_queue = t->zombies = NULL;
        Py_XDECREF(k); /* their owner is dead now: they only free memory */
        Py_XDECREF(z);
        qlpy_thread_unref(t);
    }
    PyObject_Free(s);
}

static PyTypeObject ThreadSentinel_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop._core._ThreadSentinel",
    .tp_basicsize = sizeof(ThreadSentinel),
    .tp_dealloc = (destructor)sentinel_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

/* The calling thread's record, created on first use.  NULL + exception. */
QLPyThread *qlpy_thread_get(PyThreadState *ts)
{
    QLPyThread *t = qlpy_tl_thread;
    if (t && t->id == ts->id) {
        return t;
    }
    PyObject *dict = PyThreadState_GetDict();
    if (!dict) {
        PyErr_SetString(PyExc_RuntimeError, "qloop: no thread state dict");
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        PyErr_NoMemory();
        return NULL;
    }
    t->id = ts->id;
    t->alive = 1;
    t->refcnt = 1;
    ThreadSentinel *s = PyObject_New(ThreadSentinel, &ThreadSentinel_Type);
    if (!s) {
        free(t);
        return NULL;
    }
    s->thread = t;
    int r = PyDict_SetItemString(dict, "qloop._coroutine_thread", (PyObject *)s);
    Py_DECREF(s);
    if (r < 0) {
        return NULL; /* the sentinel freed t */
    }
    qlpy_tl_thread = t;
    return t;
}

void qlpy_live_add(QLPyCoroutine *self)
{
    QLPyThread *t = self->owner;
    self->live_prev = NULL;
    self->live_next = t->live;
    if (t->live) {
        t->live->live_prev = self;
    }
    t->live = self;
}

void qlpy_live_remove(QLPyCoroutine *self)
{
    if (self->live_prev) {
        self->live_prev->live_next = self->live_next;
    } else if (self->owner->live == self) {
        self->owner->live = self->live_next;
    } else {
        return; /* not listed */
    }
    if (self->live_next) {
        self->live_next->live_prev = self->live_prev;
    }
    self->live_prev = self->live_next = NULL;
}

/* Keep a reference to `o` until the next qlpy_coroutine_service() of this
 * thread (used when dropping it now would free a coroutine on its own
 * stack).  Steals the reference.  0, or -1 if the list could not grow (the
 * reference then leaks). */
int qlpy_zombie_add(QLPyThread *t, PyObject *o)
{
    if (!t->zombies) {
        t->zombies = PyList_New(0);
        if (!t->zombies) {
            PyErr_Clear();
            return -1;
        }
    }
    int r = PyList_Append(t->zombies, o);
    if (r < 0) {
        PyErr_Clear();
        return -1;
    }
    Py_DECREF(o);
    qlpy_service_pending = 1;
    return 0;
}

QLPyCoroutine *qlpy_current(void)
{
    return qlpy_tl_current;
}

/* ---- data-stack chunk cache (3.11+) ------------------------------------ */

#ifdef QLPY_HAVE_DATASTACK
/*
 * CPython allocates data-stack chunks of 16 KiB (more only for huge frames)
 * with its arena allocator, i.e. one mmap + munmap each, and frees a chunk as
 * soon as the frame at its bottom returns.  Coroutines start with a small
 * root chunk, so a coroutine whose frames oscillate around that size would
 * pay two system calls per call.  This wrapper keeps up to 64 freed 16 KiB
 * blocks (1 MiB) for reuse; every other size (obmalloc's arenas are 1 MiB or
 * 256 KiB) goes straight to the previous allocator.  Called with the GIL
 * held, like the allocator it wraps.
 */
#define QLPY_DATASTACK_CHUNK 16384
#define QLPY_CHUNK_CACHE_MAX 64

static PyObjectArenaAllocator prev_arena;
static void *chunk_cache[QLPY_CHUNK_CACHE_MAX];
static int n_chunk_cache;

static void *cached_arena_alloc(void *ctx, size_t size)
{
    (void)ctx;
    if (size == QLPY_DATASTACK_CHUNK && n_chunk_cache > 0) {
        return chunk_cache[--n_chunk_cache];
    }
    return prev_arena.alloc(prev_arena.ctx, size);
}

static void cached_arena_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    if (size == QLPY_DATASTACK_CHUNK && n_chunk_cache < QLPY_CHUNK_CACHE_MAX) {
        chunk_cache[n_chunk_cache++] = ptr;
        return;
    }
    prev_arena.free(prev_arena.ctx, ptr, size);
}

static void install_chunk_cache(void)
{
    if (prev_arena.alloc) {
        return;
    }
    PyObjectArenaAllocator mine = {NULL, cached_arena_alloc, cached_arena_free};
    PyObject_GetArenaAllocator(&prev_arena);
    PyObject_SetArenaAllocator(&mine);
}
#else
static void install_chunk_cache(void)
{
}
#endif

static PyObject *mod_kill_all(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    PyThreadState *ts = PyThreadState_Get();
    QLPyThread *t = qlpy_tl_thread;
    if (!t || t->id != ts->id) {
        Py_RETURN_NONE;
    }
    qlpy_coroutine_service();
    for (int guard = 0; guard < 1000000; guard++) {
        QLPyCoroutine *c = t->live;
        while (c && !qlpy_co_killable(c)) {
            c = c->live_next;
        }
        if (!c) {
            break;
        }
        Py_INCREF(c);
        qlpy_co_kill(c);
        if (c->state != QLPY_CO_DONE) {
            c->immortal = 1; /* do not try again */
        }
        Py_DECREF(c);
    }
    qlpy_coroutine_service();
    Py_RETURN_NONE;
}

static PyObject *mod_live_count(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    QLPyThread *t = qlpy_tl_thread;
    long n = 0;
    if (t && t->id == PyThreadState_Get()->id) {
        for (QLPyCoroutine *c = t->live; c; c = c->live_next) {
            n++;
        }
    }
    return PyLong_FromLong(n);
}

static PyObject *mod_service(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    qlpy_coroutine_service();
    Py_RETURN_NONE;
}

void qlpy_coroutine_service(void)
{
    PyThreadState *ts = qlpy_ts_unchecked();
    QLPyThread *t = qlpy_tl_thread;
    if (!t || !ts || t->id != ts->id) {
        return;
    }
    qlpy_service_pending = 0;
    for (int round = 0; round < 16 && (t->zombies || t->kill_queue); round++) {
        PyObject *z = t->zombies;
        t->zombies = NULL;
        Py_XDECREF(z);
        PyObject *k = t->kill_queue;
        t->kill_queue = NULL;
        if (k) {
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(k); i++) {
                QLPyCoroutine *c = (QLPyCoroutine *)PyList_GET_ITEM(k, i);
                if (qlpy_co_killable(c) && qlpy_owner_is_current(c, ts)) {
                    qlpy_co_kill(c);
                }
            }
            Py_DECREF(k);
        }
    }
    if (t->zombies || t->kill_queue) {
        qlpy_service_pending = 1;
    }
}

static PyMethodDef pythread_functions[] = {
    {"_coroutine_kill_all", mod_kill_all, METH_NOARGS,
     "Unwind the suspended coroutines of this thread (atexit hook)."},
    {"_coroutine_live_count", mod_live_count, METH_NOARGS,
     "Number of started, unfinished coroutines of this thread."},
    {"_coroutine_service", mod_service, METH_NOARGS,
     "Release deferred references and unwind coroutines dropped by other threads."},
    {NULL, NULL, 0, NULL},
};

int qlpy_pythread_init(PyObject *m)
{
    install_chunk_cache();
    if (PyType_Ready(&ThreadSentinel_Type) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(m, pythread_functions);
}
