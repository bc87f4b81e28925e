/*
 * qloop._core.Timer: a QLTimer calling a Python callable.
 *
 * While armed, the timer list holds a reference to the object (taken by
 * mod()/mod_in() when the timer was not armed, dropped when it fires or is
 * cancelled), so an armed timer fires even if the program dropped it.
 *
 * The QLTimer lives in the same allocation, after the TimerObject fields
 * (ql_timer_init; tp_basicsize is set at registration).
 *
 * The reference held for the armed state is reported to the cyclic GC by the
 * context (qlpy_timer_traverse_armed), so a context dropped with armed timers
 * -- a cycle through timer->ctx -- is still collected.  Armed timers therefore
 * stay GC-tracked.
 */
#include "pycontext.h"

#include <errno.h>
#include <stddef.h>
#include <stdalign.h>

int qlpy_parse_clock(PyObject *obj, QLClockType *out);
int qlpy_parse_ns(PyObject *obj, const char *argname, int64_t *out);

struct TimerObject {
    PyObject_HEAD
    ContextObject *ctx;   /* strong */
    QLTimer *t;           /* NULL once the context closed */
    PyObject *cb;
    PyObject *args;       /* tuple or NULL */
    int armed_ref;        /* the timer list holds a reference to us */
    QLClockType clock;
    TimerObject *next, *prev; /* ctx->timers */
    PyObject *weakreflist;
};

/* Offset of the embedded QLTimer (aligned for any type). */
#define TIMER_STORAGE_OFFSET \
    ((sizeof(TimerObject) + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1))

static inline QLTimer *timer_storage(TimerObject *self)
{
    return (QLTimer *)((char *)self + TIMER_STORAGE_OFFSET);
}

static inline void drop_armed_state(TimerObject *self)
{
    self->armed_ref = 0;
}

static void timer_fire(void *opaque)
{
    TimerObject *self = opaque;
    /* The core disarmed the timer before calling us. */
    int had_ref = self->armed_ref;
    if (had_ref) {
        drop_armed_state(self);
    }
    Py_INCREF(self); /* the callback may drop the last other reference */
    qlpy_call_callback(self->ctx, self->cb, self->args);
    if (had_ref) {
        Py_DECREF(self);
    }
    Py_DECREF(self);
}

static void timer_unlink(TimerObject *self)
{
    if (self->prev) {
        self->prev->next = self->next;
    } else if (self->ctx && self->ctx->timers == self) {
        self->ctx->timers = self->next;
    }
    if (self->next) {
        self->next->prev = self->prev;
    }
    self->next = self->prev = NULL;
}

static void timer_release(TimerObject *self)
{
    if (!self->t) {
        return;
    }
    QLTimer *t = self->t;
    self->t = NULL;
    timer_unlink(self);
    ql_timer_deinit(t);
    if (self->armed_ref) {
        drop_armed_state(self);
        Py_DECREF(self);
    }
}

PyObject *qlpy_context_timer(ContextObject *ctx, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    QLClockType clock = QL_CLOCK_REALTIME;
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (PyUnicode_CompareWithASCIIString(k, "clock") != 0) {
                return PyErr_Format(PyExc_TypeError,
                                    "timer() got an unexpected keyword argument %R", k);
            }
            if (qlpy_parse_clock(args[nargs + i], &clock) < 0) {
                return NULL;
            }
        }
    }
    if (nargs < 1) {
        return PyErr_Format(PyExc_TypeError, "timer() missing required argument 'cb'");
    }
    if (!PyCallable_Check(args[0])) {
        return PyErr_Format(PyExc_TypeError, "timer(): cb must be callable, not %.100s",
                            Py_TYPE(args[0])->tp_name);
    }
    if (qlpy_context_check_open(ctx) < 0) {
        return NULL;
    }
    TimerObject *self = PyObject_GC_New(TimerObject, &QLPy_TimerType);
    if (!self) {
        return NULL;
    }
    self->ctx = (ContextObject *)Py_NewRef(ctx);
    self->cb = Py_NewRef(args[0]);
    self->args = NULL;
    self->armed_ref = 0;
    self->clock = clock;
    self->weakreflist = NULL;
    self->next = self->prev = NULL;
    self->t = NULL;
    if (nargs > 1) {
        self->args = PyTuple_New(nargs - 1);
        if (!self->args) {
            Py_DECREF(self);
            return NULL;
        }
        for (Py_ssize_t i = 1; i < nargs; i++) {
            PyTuple_SET_ITEM(self->args, i - 1, Py_NewRef(args[i]));
        }
    }
    int r = ql_timer_init(timer_storage(self), ctx->ctx, clock, timer_fire, self, "python");
    if (r < 0) {
        Py_DECREF(self);
        return qlpy_raise_errno(r);
    }
    self->t = timer_storage(self);
    self->next = ctx->timers;
    if (ctx->timers) {
        ctx->timers->prev = self;
    }
    ctx->timers = self;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int timer_check(TimerObject *self)
{
    if (!self->t) {
        PyErr_SetString(PyExc_RuntimeError, "Timer's AioContext is closed");
        return -1;
    }
    return 0;
}

static void take_armed_ref(TimerObject *self)
{
    if (!self->armed_ref) {
        self->armed_ref = 1;
        Py_INCREF(self);
    }
}

static PyObject *timer_mod(TimerObject *self, PyObject *arg)
{
    int64_t ns;
    if (qlpy_parse_ns(arg, "expire_ns", &ns) < 0 || timer_check(self) < 0) {
        return NULL;
    }
    take_armed_ref(self);
    ql_timer_mod(self->t, ns);
    Py_RETURN_NONE;
}

static PyObject *timer_mod_in(TimerObject *self, PyObject *arg)
{
    int64_t ns;
    if (qlpy_parse_ns(arg, "delay_ns", &ns) < 0 || timer_check(self) < 0) {
        return NULL;
    }
    take_armed_ref(self);
    ql_timer_mod_in(self->t, ns);
    Py_RETURN_NONE;
}

static PyObject *timer_mod_anticipate(TimerObject *self, PyObject *arg)
{
    int64_t ns;
    if (qlpy_parse_ns(arg, "expire_ns", &ns) < 0 || timer_check(self) < 0) {
        return NULL;
    }
    take_armed_ref(self);
    ql_timer_mod_anticipate(self->t, ns);
    Py_RETURN_NONE;
}

static PyObject *timer_cancel(TimerObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->t) {
        Py_RETURN_NONE; /* nothing armed in a closed context */
    }
    ql_timer_del(self->t);
    if (self->armed_ref) {
        drop_armed_state(self);
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

static PyObject *timer_get_pending(TimerObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->t && ql_timer_pending(self->t));
}

static PyObject *timer_get_expire_time(TimerObject *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(self->t ? ql_timer_expire_time(self->t) : -1);
}

static PyObject *timer_get_clock(TimerObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->clock);
}

static PyObject *timer_get_callback(TimerObject *self, void *c)
{
    (void)c;
    return Py_NewRef(self->cb ? self->cb : Py_None);
}

static PyObject *timer_repr(TimerObject *self)
{
    if (self->t && ql_timer_pending(self->t)) {
        return PyUnicode_FromFormat("<Timer %R expire_time=%lld>", self->cb,
                                    (long long)ql_timer_expire_time(self->t));
    }
    return PyUnicode_FromFormat("<Timer %R %s>", self->cb ? self->cb : Py_None,
                                self->t ? "not armed" : "closed");
}

static int timer_traverse(TimerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cb);
    Py_VISIT(self->args);
    Py_VISIT(self->ctx);
    return 0;
}

static int timer_clear(TimerObject *self)
{
    timer_release(self);
    Py_CLEAR(self->cb);
    Py_CLEAR(self->args);
    return 0;
}

static void timer_dealloc(TimerObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    timer_release(self);
    Py_CLEAR(self->cb);
    Py_CLEAR(self->args);
    Py_CLEAR(self->ctx);
    PyObject_GC_Del(self);
}

int qlpy_timer_traverse_armed(ContextObject *ctx, visitproc visit, void *arg)
{
    /* An armed timer's reference belongs to the context (its timer list). */
    for (TimerObject *t = ctx->timers; t; t = t->next) {
        if (t->armed_ref) {
            Py_VISIT(t);
        }
    }
    return 0;
}

void qlpy_timer_detach_all(ContextObject *ctx)
{
    while (ctx->timers) {
        timer_release(ctx->timers); /* unlinks it */
    }
}

static PyMethodDef timer_methods[] = {
    {"mod", (PyCFunction)timer_mod, METH_O,
     "mod(expire_ns)\n\nArm (or re-arm) at an absolute deadline on the timer's clock.  "
     "Never fires early; equal deadlines fire in arming order.  O(log n)."},
    {"mod_in", (PyCFunction)timer_mod_in, METH_O,
     "mod_in(delay_ns)\n\nArm at now + delay_ns."},
    {"mod_anticipate", (PyCFunction)timer_mod_anticipate, METH_O,
     "mod_anticipate(expire_ns)\n\nArm at expire_ns only if not armed or if earlier."},
    {"cancel", (PyCFunction)timer_cancel, METH_NOARGS, "cancel()\n\nDisarm.  Idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef timer_getset[] = {
    {"pending", (getter)timer_get_pending, NULL, "True while armed.", NULL},
    {"expire_time", (getter)timer_get_expire_time, NULL, "Deadline in ns, -1 if not armed.",
     NULL},
    {"clock", (getter)timer_get_clock, NULL, "The timer's clock.", NULL},
    {"callback", (getter)timer_get_callback, NULL, "The callable.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject QLPy_TimerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop.Timer",
    .tp_doc = "A timer on one of a context's clocks (create with AioContext.timer).",
    .tp_basicsize = sizeof(TimerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)timer_dealloc,
    .tp_traverse = (traverseproc)timer_traverse,
    .tp_clear = (inquiry)timer_clear,
    .tp_repr = (reprfunc)timer_repr,
    .tp_methods = timer_methods,
    .tp_getset = timer_getset,
    .tp_weaklistoffset = offsetof(TimerObject, weakreflist),
};

int qlpy_timer_register(PyObject *m)
{
    QLPy_TimerType.tp_basicsize = (Py_ssize_t)(TIMER_STORAGE_OFFSET + ql_timer_sizeof());
    if (PyType_Ready(&QLPy_TimerType) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(m, "Timer", (PyObject *)&QLPy_TimerType);
}
