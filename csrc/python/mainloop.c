/*
 * The process-wide main loop for Python: main_loop_wait, notify_event,
 * polling callbacks, child watches and the iothread lock (qloop/main-loop.h).
 */
#include "pycontext.h"

#include <errno.h>

#include "qloop/main-loop.h"

static PyObject *polling_cbs; /* list of callables; one C polling callback runs them */
static int polling_registered;

static ContextObject *main_wrapper(void)
{
    QLContext *c = ql_get_aio_context();
    return c ? (ContextObject *)qlpy_context_wrap(c, "main") : NULL;
}

static int ensure_init(void)
{
    int r = ql_main_loop_init();
    if (r < 0) {
        qlpy_raise_errno(r);
        return -1;
    }
    return 0;
}

static PyObject *ml_init(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (ensure_init() < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *ml_get_aio_context(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (ensure_init() < 0) {
        return NULL;
    }
    return (PyObject *)main_wrapper();
}

static PyObject *ml_get_iohandler_context(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (ensure_init() < 0) {
        return NULL;
    }
    return qlpy_context_wrap(ql_get_iohandler_context(), "iohandler");
}

static PyObject *ml_main_loop_wait(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"nonblocking", NULL};
    int nonblocking = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p:main_loop_wait", kwlist, &nonblocking) ||
        ensure_init() < 0) {
        return NULL;
    }
    ContextObject *m = main_wrapper();
    ContextObject *io = m ? (ContextObject *)qlpy_context_wrap(ql_get_iohandler_context(),
                                                               "iohandler") : NULL;
    if (!m || !io) {
        Py_XDECREF(m);
        return NULL;
    }
    DispatchFrame fm, fi;
    PyObject *res = NULL;
    if (qlpy_enter_dispatch(m, &fm) < 0) {
        goto out;
    }
    if (qlpy_enter_dispatch(io, &fi) < 0) {
        Py_XDECREF(qlpy_leave_dispatch(m, &fm, 0));
        goto out;
    }
    /* One run: whatever raises first -- a polling callback, a child watch,
     * a callback of either context -- is what main_loop_wait() raises. */
    fi.link = &fm;
    int r = ql_main_loop_wait(nonblocking);
    PyObject *ri = qlpy_leave_dispatch(io, &fi, 0); /* fi.exc stays NULL */
    if (ri) {
        Py_DECREF(ri);
    } else if (!fm.exc) {
        fm.exc = qlpy_fetch_exception(); /* a signal handler raised */
    } else {
        PyErr_WriteUnraisable((PyObject *)io);
    }
    res = qlpy_leave_dispatch(m, &fm, r);
out:
    Py_DECREF(m);
    Py_DECREF(io);
    return res;
}

static PyObject *ml_notify_event(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (ensure_init() < 0) {
        return NULL;
    }
    ql_notify_event();
    Py_RETURN_NONE;
}

/* ---- polling callbacks ------------------------------------------------ */

static bool run_polling_cbs(void *opaque)
{
    (void)opaque;
    if (!polling_cbs || PyList_GET_SIZE(polling_cbs) == 0) {
        return false;
    }
    PyObject *copy = PyList_GetSlice(polling_cbs, 0, PyList_GET_SIZE(polling_cbs));
    if (!copy) {
        qlpy_callback_failed(NULL);
        return false;
    }
    bool again = false;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(copy); i++) {
        PyObject *r = PyObject_CallNoArgs(PyList_GET_ITEM(copy, i));
        if (!r) {
            qlpy_callback_failed(NULL);
            break;
        }
        int b = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (b < 0) {
            qlpy_callback_failed(NULL);
            break;
        }
        again |= b > 0;
    }
    Py_DECREF(copy);
    return again;
}

static PyObject *ml_add_polling_cb(PyObject *self, PyObject *fn)
{
    (void)self;
    if (!PyCallable_Check(fn)) {
        return PyErr_Format(PyExc_TypeError, "fn must be callable, not %.100s",
                            Py_TYPE(fn)->tp_name);
    }
    if (ensure_init() < 0) {
        return NULL;
    }
    if (!polling_cbs && !(polling_cbs = PyList_New(0))) {
        return NULL;
    }
    if (!polling_registered) {
        int r = ql_add_polling_cb(run_polling_cbs, NULL);
        if (r < 0) {
            return qlpy_raise_errno(r);
        }
        polling_registered = 1;
    }
    if (PyList_Append(polling_cbs, fn) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *ml_del_polling_cb(PyObject *self, PyObject *fn)
{
    (void)self;
    Py_ssize_t n = polling_cbs ? PyList_GET_SIZE(polling_cbs) : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int eq = PyObject_RichCompareBool(PyList_GET_ITEM(polling_cbs, i), fn, Py_EQ);
        if (eq < 0) {
            return NULL;
        }
        if (eq) {
            if (PySequence_DelItem(polling_cbs, i) < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
    }
    return PyErr_Format(PyExc_ValueError, "fn %R is not a registered polling callback", fn);
}

/* ---- child watch ------------------------------------------------------ */

static void child_exited(int pid, int status, void *opaque)
{
    PyObject *cb = opaque; /* reference taken by add_child_watch */
    if (cb != Py_None) {
        PyObject *r = PyObject_CallFunction(cb, "ii", pid, status);
        if (r) {
            Py_DECREF(r);
        } else {
            qlpy_callback_failed(NULL);
        }
    }
    Py_DECREF(cb);
}

static PyObject *ml_add_child_watch(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"pid", "cb", NULL};
    int pid;
    PyObject *cb = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|O:add_child_watch", kwlist, &pid, &cb)) {
        return NULL;
    }
    if (pid <= 0) {
        return PyErr_Format(PyExc_ValueError, "pid must be > 0, not %d", pid);
    }
    if (cb != Py_None && !PyCallable_Check(cb)) {
        return PyErr_Format(PyExc_TypeError, "cb must be callable or None, not %.100s",
                            Py_TYPE(cb)->tp_name);
    }
    if (ensure_init() < 0) {
        return NULL;
    }
    Py_INCREF(cb);
    int r = ql_add_child_watch(pid, child_exited, cb);
    if (r != 0) {
        Py_DECREF(cb); /* not registered (error, or pid already watched) */
    }
    if (r < 0) {
        return qlpy_raise_errno(r);
    }
    return PyBool_FromLong(r == 0);
}

/* ---- iothread lock ---------------------------------------------------- */

static PyObject *ml_iothread_lock(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (ql_iothread_locked()) {
        PyErr_SetString(PyExc_RuntimeError, "the iothread lock is already held by this thread");
        return NULL;
    }
    ql_iothread_lock(); /* releases the GIL while it waits */
    Py_RETURN_NONE;
}

static PyObject *ml_iothread_unlock(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (!ql_iothread_locked()) {
        PyErr_SetString(PyExc_RuntimeError, "the iothread lock is not held by this thread");
        return NULL;
    }
    ql_iothread_unlock();
    Py_RETURN_NONE;
}

static PyObject *ml_iothread_locked(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(ql_iothread_locked());
}

static PyMethodDef mainloop_methods[] = {
    {"init_main_loop", ml_init, METH_NOARGS, NULL},
    {"get_aio_context", ml_get_aio_context, METH_NOARGS, NULL},
    {"get_iohandler_context", ml_get_iohandler_context, METH_NOARGS, NULL},
    {"main_loop_wait", (PyCFunction)(void (*)(void))ml_main_loop_wait,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"notify_event", ml_notify_event, METH_NOARGS, NULL},
    {"add_polling_cb", ml_add_polling_cb, METH_O, NULL},
    {"del_polling_cb", ml_del_polling_cb, METH_O, NULL},
    {"add_child_watch", (PyCFunction)(void (*)(void))ml_add_child_watch,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_iothread_lock", ml_iothread_lock, METH_NOARGS, NULL},
    {"_iothread_unlock", ml_iothread_unlock, METH_NOARGS, NULL},
    {"_iothread_locked", ml_iothread_locked, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int qlpy_mainloop_register(PyObject *m)
{
    return PyModule_AddFunctions(m, mainloop_methods);
}
