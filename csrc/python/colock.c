/*
 * qloop.CoQueue, qloop.CoMutex, qloop.CoRwlock: thin wrappers over the core's
 * coroutine synchronisation objects.  Waiting runs through
 * qlpy_wait_begin()/qlpy_wait_end(), which check that a Python coroutine is
 * running and keep it alive while the core holds it in a wait queue; the
 * thread-state switch itself happens in the coroutine's switch hooks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>

#include "pycoro.h"
#include "qloop/coroutine.h"

/* The lock types take no constructor arguments. */
static int no_args(const char *name, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", name);
        return 0;
    }
    return 1;
}

/* ---- CoMutex ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    QLCoMutex *m;
    PyObject *weakrefs;
} CoMutexObject;

static PyTypeObject CoMutex_Type;

static PyObject *mutex_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!no_args("CoMutex", args, kwds)) {
        return NULL;
    }
    CoMutexObject *self = (CoMutexObject *)type->tp_alloc(type, 0);
    if (self) {
        self->m = ql_co_mutex_new();
        if (!self->m) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
    }
    return (PyObject *)self;
}

static void mutex_dealloc(CoMutexObject *self)
{
    if (self->weakrefs) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->m) {
        /* Waiters pinned themselves and hold a reference to us through their
         * frames, so a mutex with waiters is never freed here. */
        ql_co_mutex_free(self->m);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *mutex_lock(CoMutexObject *self, PyObject *Py_UNUSED(unused))
{
    QLPyCoroutine *me = qlpy_current();
    if (me && me->state == QLPY_CO_RUNNING && ql_coroutine_self() == me->co &&
        ql_co_mutex_trylock(self->m) == 1) {
        Py_RETURN_NONE; /* uncontended: no switch */
    }
    me = qlpy_wait_begin("CoMutex.lock()");
    if (!me) {
        return NULL;
    }
    Py_INCREF(self);
    int r = ql_co_mutex_lock(self->m);
    qlpy_wait_end(me);
    Py_DECREF(self);
    if (r < 0) {
        return qlpy_co_error(r, "CoMutex.lock()");
    }
    Py_RETURN_NONE;
}

static PyObject *mutex_trylock(CoMutexObject *self, PyObject *Py_UNUSED(unused))
{
    QLPyCoroutine *me = qlpy_current();
    if (!me || ql_coroutine_self() != me->co) {
        PyErr_SetString(PyExc_RuntimeError, "CoMutex.trylock() must be called from a qloop coroutine");
        return NULL;
    }
    int r = ql_co_mutex_trylock(self->m);
    if (r < 0) {
        return qlpy_co_error(r, "CoMutex.trylock()");
    }
    return PyBool_FromLong(r);
}

static PyObject *mutex_unlock(CoMutexObject *self, PyObject *Py_UNUSED(unused))
{
    QLCoroutine *holder = ql_co_mutex_holder(self->m);
    if (!ql_co_mutex_locked(self->m)) {
        PyErr_SetString(PyExc_RuntimeError, "CoMutex.unlock(): the mutex is not locked");
        return NULL;
    }
    if (holder != ql_coroutine_self()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "CoMutex.unlock(): the calling coroutine does not hold the mutex");
        return NULL;
    }
    int r = ql_co_mutex_unlock(self->m);
    if (r < 0) {
        return qlpy_co_error(r, "CoMutex.unlock()");
    }
    Py_RETURN_NONE;
}

static PyObject *mutex_exit(CoMutexObject *self, PyObject *Py_UNUSED(args))
{
    return mutex_unlock(self, NULL);
}

static PyObject *mutex_get_locked(CoMutexObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(ql_co_mutex_locked(self->m));
}

static PyMethodDef mutex_methods[] = {
    {"lock", (PyCFunction)mutex_lock, METH_NOARGS,
     "lock()\n--\n\nTake the mutex, waiting (FIFO) while another coroutine holds it.  "
     "Coroutine only; RuntimeError if the caller holds it already."},
    {"unlock", (PyCFunction)mutex_unlock, METH_NOARGS,
     "unlock()\n--\n\nRelease the mutex, handing it to the first waiter.  RuntimeError "
     "if the caller does not hold it."},
    {"trylock", (PyCFunction)mutex_trylock, METH_NOARGS,
     "trylock()\n--\n\nTake the mutex if free; True if taken.  Coroutine only."},
    {"__enter__", (PyCFunction)mutex_lock, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)mutex_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mutex_getset[] = {
    {"locked", (getter)mutex_get_locked, NULL, "True while some coroutine holds it.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CoMutex_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop.CoMutex",
    .tp_basicsize = sizeof(CoMutexObject),
    .tp_dealloc = (destructor)mutex_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CoMutex()\n--\n\nA mutex for coroutines: FIFO hand-off, no barging.  "
              "Also a context manager (with mutex: ...).",
    .tp_weaklistoffset = offsetof(CoMutexObject, weakrefs),
    .tp_methods = mutex_methods,
    .tp_getset = mutex_getset,
    .tp_new = mutex_new,
};

static QLCoMutex *mutex_arg(PyObject *lock, const char *fname)
{
    if (lock == Py_None) {
        return NULL;
    }
    if (!PyObject_TypeCheck(lock, &CoMutex_Type)) {
        PyErr_Format(PyExc_TypeError, "%s argument 'lock' must be CoMutex or None, not %.100s",
                     fname, Py_TYPE(lock)->tp_name);
        return NULL;
    }
    return ((CoMutexObject *)lock)->m;
}

/* ---- CoQueue ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    QLCoQueue *q;
    PyObject *weakrefs;
} CoQueueObject;

static PyObject *queue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!no_args("CoQueue", args, kwds)) {
        return NULL;
    }
    CoQueueObject *self = (CoQueueObject *)type->tp_alloc(type, 0);
    if (self) {
        self->q = ql_co_queue_new();
        if (!self->q) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
    }
    return (PyObject *)self;
}

static void queue_dealloc(CoQueueObject *self)
{
    if (self->weakrefs) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->q) {
        ql_co_queue_free(self->q);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *queue_wait_common(CoQueueObject *self, PyObject *args, PyObject *kwds,
                                   int head, const char *fname)
{
    static char *kwlist[] = {"lock", NULL};
    PyObject *lock = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, head ? "|O:wait_insert_head" : "|O:wait",
                                     kwlist, &lock)) {
        return NULL;
    }
    QLCoMutex *m = mutex_arg(lock, fname);
    if (!m && lock != Py_None) {
        return NULL;
    }
    if (m && ql_co_mutex_holder(m) != ql_coroutine_self()) {
        PyErr_Format(PyExc_RuntimeError, "%s: the calling coroutine does not hold 'lock'", fname);
        return NULL;
    }
    QLPyCoroutine *me = qlpy_wait_begin(fname);
    if (!me) {
        return NULL;
    }
    Py_INCREF(self);
    Py_INCREF(lock);
    int r = head ? ql_co_queue_wait_insert_head(self->q, m) : ql_co_queue_wait(self->q, m);
    qlpy_wait_end(me);
    Py_DECREF(lock);
    Py_DECREF(self);
    if (r < 0) {
        return qlpy_co_error(r, fname);
    }
    Py_RETURN_NONE;
}

static PyObject *queue_wait(CoQueueObject *self, PyObject *args, PyObject *kwds)
{
    return queue_wait_common(self, args, kwds, 0, "CoQueue.wait()");
}

static PyObject *queue_wait_insert_head(CoQueueObject *self, PyObject *args, PyObject *kwds)
{
    return queue_wait_common(self, args, kwds, 1, "CoQueue.wait_insert_head()");
}

static PyObject *queue_next(CoQueueObject *self, PyObject *Py_UNUSED(unused))
{
    bool r = ql_co_queue_next(self->q);
    qlpy_coroutine_service();
    return PyBool_FromLong(r);
}

static PyObject *queue_restart_all(CoQueueObject *self, PyObject *Py_UNUSED(unused))
{
    ql_co_queue_restart_all(self->q);
    qlpy_coroutine_service();
    Py_RETURN_NONE;
}

static PyObject *queue_empty(CoQueueObject *self, PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(ql_co_queue_empty(self->q));
}

static PyMethodDef queue_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))queue_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(lock=None)\n--\n\nWait (FIFO) until woken by next() or restart_all().  If "
     "lock (a CoMutex the caller holds) is given it is released while waiting and "
     "taken again before returning.  Coroutine only."},
    {"wait_insert_head", (PyCFunction)(void (*)(void))queue_wait_insert_head,
     METH_VARARGS | METH_KEYWORDS,
     "wait_insert_head(lock=None)\n--\n\nAs wait(), but queue first."},
    {"next", (PyCFunction)queue_next, METH_NOARGS,
     "next()\n--\n\nWake the first waiter; True if there was one."},
    {"restart_all", (PyCFunction)queue_restart_all, METH_NOARGS,
     "restart_all()\n--\n\nWake every waiter."},
    {"empty", (PyCFunction)queue_empty, METH_NOARGS,
     "empty()\n--\n\nTrue if nobody waits."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoQueue_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop.CoQueue",
    .tp_basicsize = sizeof(CoQueueObject),
    .tp_dealloc = (destructor)queue_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CoQueue()\n--\n\nA FIFO queue of waiting coroutines (QEMU's CoQueue).",
    .tp_weaklistoffset = offsetof(CoQueueObject, weakrefs),
    .tp_methods = queue_methods,
    .tp_new = queue_new,
};

/* ---- CoRwlock ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    QLCoRwlock *l;
    PyObject *weakrefs;
} CoRwlockObject;

static PyObject *rwlock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!no_args("CoRwlock", args, kwds)) {
        return NULL;
    }
    CoRwlockObject *self = (CoRwlockObject *)type->tp_alloc(type, 0);
    if (self) {
        self->l = ql_co_rwlock_new();
        if (!self->l) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
    }
    return (PyObject *)self;
}

static void rwlock_dealloc(CoRwlockObject *self)
{
    if (self->weakrefs) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->l) {
        ql_co_rwlock_free(self->l);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *rwlock_op(CoRwlockObject *self, int (*op)(QLCoRwlock *), const char *fname)
{
    QLPyCoroutine *me = qlpy_wait_begin(fname);
    if (!me) {
        return NULL;
    }
    Py_INCREF(self);
    int r = op(self->l);
    qlpy_wait_end(me);
    Py_DECREF(self);
    if (r < 0) {
        if (r == -EPERM) {
            PyErr_Format(PyExc_RuntimeError, "%s: the calling coroutine does not hold the lock "
                         "as needed", fname);
            return NULL;
        }
        return qlpy_co_error(r, fname);
    }
    Py_RETURN_NONE;
}

static PyObject *rwlock_rdlock(CoRwlockObject *self, PyObject *Py_UNUSED(unused))
{
    return rwlock_op(self, ql_co_rwlock_rdlock, "CoRwlock.rdlock()");
}

static PyObject *rwlock_wrlock(CoRwlockObject *self, PyObject *Py_UNUSED(unused))
{
    return rwlock_op(self, ql_co_rwlock_wrlock, "CoRwlock.wrlock()");
}

static PyObject *rwlock_unlock(CoRwlockObject *self, PyObject *Py_UNUSED(unused))
{
    return rwlock_op(self, ql_co_rwlock_unlock, "CoRwlock.unlock()");
}

static PyObject *rwlock_upgrade(CoRwlockObject *self, PyObject *Py_UNUSED(unused))
{
    return rwlock_op(self, ql_co_rwlock_upgrade, "CoRwlock.upgrade()");
}

static PyObject *rwlock_downgrade(CoRwlockObject *self, PyObject *Py_UNUSED(unused))
{
    return rwlock_op(self, ql_co_rwlock_downgrade, "CoRwlock.downgrade()");
}

static PyMethodDef rwlock_methods[] = {
    {"rdlock", (PyCFunction)rwlock_rdlock, METH_NOARGS,
     "rdlock()\n--\n\nTake a read hold (waits behind queued writers).  Coroutine only."},
    {"wrlock", (PyCFunction)rwlock_wrlock, METH_NOARGS,
     "wrlock()\n--\n\nTake the write hold.  Coroutine only."},
    {"unlock", (PyCFunction)rwlock_unlock, METH_NOARGS,
     "unlock()\n--\n\nRelease the caller's read or write hold."},
    {"upgrade", (PyCFunction)rwlock_upgrade, METH_NOARGS,
     "upgrade()\n--\n\nRead hold -> write hold (waits for the other readers)."},
    {"downgrade", (PyCFunction)rwlock_downgrade, METH_NOARGS,
     "downgrade()\n--\n\nWrite hold -> read hold (admits queued readers)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoRwlock_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop.CoRwlock",
    .tp_basicsize = sizeof(CoRwlockObject),
    .tp_dealloc = (destructor)rwlock_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CoRwlock()\n--\n\nA reader/writer lock for coroutines: FIFO tickets, "
              "writers are not starved; upgrade() and downgrade().",
    .tp_weaklistoffset = offsetof(CoRwlockObject, weakrefs),
    .tp_methods = rwlock_methods,
    .tp_new = rwlock_new,
};

int qlpy_colock_init(PyObject *m)
{
    if (PyType_Ready(&CoMutex_Type) < 0 || PyType_Ready(&CoQueue_Type) < 0 ||
        PyType_Ready(&CoRwlock_Type) < 0) {
        return -1;
    }
    if (PyModule_AddObject(m, "CoMutex", Py_NewRef((PyObject *)&CoMutex_Type)) < 0 ||
        PyModule_AddObject(m, "CoQueue", Py_NewRef((PyObject *)&CoQueue_Type)) < 0 ||
        PyModule_AddObject(m, "CoRwlock", Py_NewRef((PyObject *)&CoRwlock_Type)) < 0) {
        return -1;
    }
    return 0;
}
