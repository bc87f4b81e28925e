/*
 * The module functions around qloop.Coroutine (coroutine_yield,
 * coroutine_self, in_coroutine, co_wake, co_sleep_ns), the wait helpers the
 * lock types use, and the C API other glue uses (glue.h).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"
#include "pycoro.h"
#include "pycontext.h"
#include "qloop/coroutine.h"

/* ---- waits inside the core --------------------------------------------- */

/* Checks shared by everything that may switch away from the running
 * coroutine. */
QLPyCoroutine *qlpy_switchable_current(const char *what)
{
    QLPyCoroutine *self = qlpy_tl_current;
    if (!self || ql_coroutine_self() != self->co) {
        PyErr_Format(PyExc_RuntimeError, "%s must be called from a qloop coroutine", what);
        return NULL;
    }
    if (self->state != QLPY_CO_RUNNING) {
        PyErr_Format(PyExc_RuntimeError, "%s: the coroutine is finishing and cannot yield",
                     what);
        return NULL;
    }
    if (self->ts->tracing) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s: cannot switch coroutines inside a trace or profile function", what);
        return NULL;
    }
    if (qlpy_check_switchable(what) < 0) {
        return NULL;
    }
    return self;
}

int qlpy_check_switchable(const char *what)
{
    QLPyCoroutine *self = qlpy_tl_current;
    if (self && ql_coroutine_self() == self->co && qlpy_top_frame != self->frame_base) {
        /* The poll it runs keeps its state on this coroutine's stack and in
         * the thread's chain of running polls: it must return first.  (QEMU
         * forbids polling from coroutine context for the same reason.) */
        PyErr_Format(PyExc_RuntimeError,
                     "%s: a coroutine cannot switch away while it is inside an "
                     "AioContext.poll()/dispatch()/run_forever() or main_loop_wait() that "
                     "it called itself; let that call return first", what);
        return -1;
    }
    return 0;
}

QLPyCoroutine *qlpy_wait_begin(const char *what)
{
    QLPyCoroutine *self = qlpy_switchable_current(what);
    if (self) {
        Py_INCREF(self);
        self->pins++;
        self->blocked = what;
        qlpy_drop_held(self); /* the pin keeps it alive until it is woken */
    }
    return self;
}

void qlpy_wait_end(QLPyCoroutine *self)
{
    self->blocked = NULL;
    /* Running again (or it did not have to wait): whatever pinned it is now
     * held until it next suspends or ends.  Dropping it here would let the
     * last outside reference, released by the coroutine's own code, free it
     * while it runs. */
    self->held += self->pins;
    self->pins = 0;
}

/* ---- module functions -------------------------------------------------- */

static PyObject *mod_coroutine_yield(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    QLPyCoroutine *self = qlpy_switchable_current("coroutine_yield()");
    if (!self) {
        return NULL;
    }
    if (self->held) {
        qlpy_drop_held(self);
        if (self->held) {
            /* Only our own references are left: once suspended nobody could
             * ever resume us.  Unwind now, as the garbage collector would. */
            if (!self->kill) {
                self->kill = 2;
                goto killed;
            }
            if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                                 "CoroutineExit did not kill %R: it is leaked",
                                 (PyObject *)self) < 0) {
                return NULL;
            }
        }
    }
    ql_coroutine_yield(); /* the hooks switch the thread state */
    if (self->kill == 1) {
        self->kill = 2; /* thrown once */
        goto killed;
    }
    Py_RETURN_NONE;
killed:
    PyErr_SetString(qlpy_CoroutineExit, "coroutine killed: all references to it have vanished");
    return NULL;
}

static PyObject *mod_coroutine_self(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    QLPyCoroutine *self = qlpy_tl_current;
    if (self && ql_coroutine_self() == self->co) {
        return Py_NewRef((PyObject *)self);
    }
    Py_RETURN_NONE;
}

static PyObject *mod_in_coroutine(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    return PyBool_FromLong(ql_in_coroutine());
}

/* Wake co where it last ran (ctx == NULL: QEMU's aio_co_wake) or schedule it
 * in ctx's next poll (QEMU's aio_co_schedule).  `what` names the caller in
 * error messages. */
static PyObject *wake_or_schedule(PyObject *arg, QLContext *ctx, const char *what)
{
    if (!PyObject_TypeCheck(arg, &QLPyCoroutine_Type)) {
        PyErr_Format(PyExc_TypeError, "%s argument 'co' must be qloop.Coroutine, not %.100s",
                     what, Py_TYPE(arg)->tp_name);
        return NULL;
    }
    QLPyCoroutine *co = (QLPyCoroutine *)arg;
    if (co->state == QLPY_CO_DONE) {
        PyErr_Format(PyExc_RuntimeError, "%s: the coroutine has finished", what);
        return NULL;
    }
    if (co->blocked) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s: the coroutine is waiting in %s and is woken by it", what, co->blocked);
        return NULL;
    }
    /* A running coroutine may schedule itself (QEMU's aio_co_schedule of
     * qemu_coroutine_self()): it yields next, and the context enters it again
     * in its next poll. */
    if (co->state == QLPY_CO_RUNNING && !(ctx && co == qlpy_tl_current)) {
        PyErr_Format(PyExc_RuntimeError, "%s: the coroutine is already running", what);
        return NULL;
    }
    if ((qlpy_tl_thread != co->owner || !co->owner->alive) &&
        ((!ctx && !ql_coroutine_get_context(co->co)) || !co->owner->alive)) {
        /* Nothing could carry it back to its own thread. */
        PyErr_Format(PyExc_RuntimeError,
                     co->owner->alive
                         ? "%s: the coroutine belongs to another thread and has "
                           "no AioContext to be scheduled in"
                         : "%s: the coroutine's thread has exited", what);
        return NULL;
    }
    if (qlpy_check_not_tracing(what) < 0) {
        return NULL;
    }
    Py_INCREF(co); /* pinned until it runs */
    co->pins++;
    int r = ctx ? ql_co_schedule(ctx, co->co) : ql_co_wake(co->co);
    if (r < 0) {
        co->pins--;
        Py_DECREF(co);
        return qlpy_co_error(r, what);
    }
    if (co->state != QLPY_CO_NEW && !co->pins) {
        qlpy_drop_held(co); /* it ran already; we hold a reference to it */
    }
    if (qlpy_service_pending) {
        qlpy_coroutine_service();
    }
    Py_RETURN_NONE;
}

static PyObject *mod_co_wake(PyObject *m, PyObject *arg)
{
    (void)m;
    return wake_or_schedule(arg, NULL, "co_wake()");
}

PyObject *qlpy_co_schedule(QLContext *ctx, PyObject *co)
{
    return wake_or_schedule(co, ctx, "co_schedule()");
}

static PyObject *mod_co_sleep_ns(PyObject *m, PyObject *args, PyObject *kwds)
{
    (void)m;
    static char *kwlist[] = {"ns", "clock", NULL};
    PyObject *ns_obj;
    int clock = QL_CLOCK_REALTIME;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|i:co_sleep_ns", kwlist, &ns_obj, &clock)) {
        return NULL;
    }
    if (!PyLong_Check(ns_obj)) {
        PyErr_Format(PyExc_TypeError, "co_sleep_ns() argument 'ns' must be int, not %.100s",
                     Py_TYPE(ns_obj)->tp_name);
        return NULL;
    }
    long long ns = PyLong_AsLongLong(ns_obj);
    if (ns == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (ns < 0) {
        PyErr_Format(PyExc_ValueError, "co_sleep_ns() argument 'ns' must be >= 0, got %lld", ns);
        return NULL;
    }
    if (clock < 0 || clock >= QL_CLOCK_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "co_sleep_ns() argument 'clock' must be CLOCK_REALTIME, CLOCK_VIRTUAL "
                     "or CLOCK_HOST, got %d", clock);
        return NULL;
    }
    QLPyCoroutine *self = qlpy_wait_begin("co_sleep_ns()");
    if (!self) {
        return NULL;
    }
    if (!ql_coroutine_get_context(self->co)) {
        qlpy_wait_end(self);
        PyErr_SetString(PyExc_RuntimeError,
                        "co_sleep_ns(): the coroutine does not run in an AioContext");
        return NULL;
    }
    int r = ql_co_sleep_ns((QLClockType)clock, (int64_t)ns);
    qlpy_wait_end(self);
    if (r < 0) {
        return qlpy_co_error(r, "co_sleep_ns()");
    }
    Py_RETURN_NONE;
}

/* atexit: unwind the suspended coroutines of the calling thread. */
/* ---- C API for the rest of the glue (glue.h) ---------------------------- */

QLCoroutine *qlpy_coroutine_cptr(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &QLPyCoroutine_Type)) {
        PyErr_Format(PyExc_TypeError, "expected qloop.Coroutine, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return ((QLPyCoroutine *)obj)->co;
}

void qlpy_coroutine_pin(PyObject *obj)
{
    QLPyCoroutine *co = (QLPyCoroutine *)obj;
    Py_INCREF(co);
    co->pins++;
}

void qlpy_coroutine_unpin(PyObject *obj)
{
    QLPyCoroutine *co = (QLPyCoroutine *)obj;
    if (co->pins > 0) {
        co->pins--;
        Py_DECREF(co);
    }
}

int qlpy_coroutine_yield(void)
{
    PyObject *r = mod_coroutine_yield(NULL, NULL);
    if (!r) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}
int qlpy_check_not_tracing(const char *what)
{
    PyThreadState *ts = qlpy_ts_unchecked();
    if (ts && ts->tracing) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s: cannot switch coroutines inside a trace or profile function", what);
        return -1;
    }
    return 0;
}

static PyMethodDef coroutine_functions[] = {
    {"coroutine_yield", mod_coroutine_yield, METH_NOARGS,
     "coroutine_yield()\n--\n\nGive control back to whoever entered the running coroutine; "
     "returns once it is entered again.  RuntimeError outside a coroutine."},
    {"coroutine_self", mod_coroutine_self, METH_NOARGS,
     "coroutine_self()\n--\n\nThe running qloop.Coroutine, or None."},
    {"in_coroutine", mod_in_coroutine, METH_NOARGS,
     "in_coroutine()\n--\n\nTrue inside a coroutine."},
    {"co_wake", mod_co_wake, METH_O,
     "co_wake(co)\n--\n\nWake a coroutine suspended by coroutine_yield(): from a coroutine "
     "of the same context it runs once the caller yields or ends; from another "
     "thread it is scheduled in its context; otherwise it is entered now."},
    {"co_sleep_ns", (PyCFunction)(void (*)(void))mod_co_sleep_ns, METH_VARARGS | METH_KEYWORDS,
     "co_sleep_ns(ns, clock=CLOCK_REALTIME)\n--\n\nSuspend the running coroutine for ns "
     "nanoseconds of `clock` of its AioContext."},
    {NULL, NULL, 0, NULL},
};

int qlpy_coroutine_api_init(PyObject *m)
{
    return PyModule_AddFunctions(m, coroutine_functions);
}
