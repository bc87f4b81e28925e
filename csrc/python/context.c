/*
 * qloop._core.AioContext: the Python face of QLContext.
 *
 * poll() keeps the GIL while it dispatches (callbacks are called directly
 * from C) and releases it only while blocked, through libqloop's blocking
 * hooks.  An exception raised by a callback stops the dispatch after that
 * callback and is raised by the poll() that ran it; whatever else was ready
 * runs in the next poll.
 */
#include "pycontext.h"
#include "glue.h"
#include "pycoro.h"

#include <errno.h>
#include <stddef.h>

/* Wrappers of contexts we do not own (main, iohandler), one per QLContext. */
static PyObject *foreign_wrappers; /* dict: address -> weakref(ContextObject) */

int qlpy_context_check_open(ContextObject *self)
{
    if (!self->ctx) {
        PyErr_SetString(PyExc_RuntimeError, "operation on a closed AioContext");
        return -1;
    }
    return 0;
}

static int parse_clock(PyObject *obj, QLClockType *out)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "clock must be one of CLOCK_REALTIME, CLOCK_VIRTUAL, "
                     "CLOCK_HOST, not %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (v < 0 || v >= QL_CLOCK_MAX) {
        PyErr_Format(PyExc_ValueError, "clock must be one of CLOCK_REALTIME, CLOCK_VIRTUAL, "
                     "CLOCK_HOST, not %ld", v);
        return -1;
    }
    *out = (QLClockType)v;
    return 0;
}

static int parse_ns(PyObject *obj, const char *argname, int64_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int (nanoseconds), not %.100s", argname,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    /* Not PyLong_AsLongLong: it takes a slow path for ints past 2**30, as
     * every absolute deadline on the monotonic clock is. */
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        PyErr_Format(PyExc_OverflowError, "%s is out of range for a 64-bit nanosecond count",
                     argname);
        return -1;
    }
    *out = v;
    return 0;
}

int qlpy_parse_clock(PyObject *obj, QLClockType *out) { return parse_clock(obj, out); }
int qlpy_parse_ns(PyObject *obj, const char *argname, int64_t *out)
{
    return parse_ns(obj, argname, out);
}

/* ---- life cycle -------------------------------------------------------- */

static PyObject *context_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "AioContext() takes no arguments");
        return NULL;
    }
    ContextObject *self = (ContextObject *)type->tp_alloc(type, 0);
    if (!self) {
        return NULL;
    }
    self->kind = "context";
    self->fd_handlers = PyDict_New();
    self->graveyard = PyList_New(0);
    if (!self->fd_handlers || !self->graveyard) {
        Py_DECREF(self);
        return NULL;
    }
    self->ctx = ql_context_new();
    if (!self->ctx) {
        int e = errno;
        Py_DECREF(self);
        return qlpy_raise_errno(-e);
    }
    self->owned = 1;
    return (PyObject *)self;
}

PyObject *qlpy_context_wrap(QLContext *ctx, const char *kind)
{
    if (!foreign_wrappers && !(foreign_wrappers = PyDict_New())) {
        return NULL;
    }
    PyObject *key = PyLong_FromVoidPtr(ctx);
    if (!key) {
        return NULL;
    }
    PyObject *obj = PyDict_GetItemWithError(foreign_wrappers, key);
    if (obj || PyErr_Occurred()) {
        Py_DECREF(key);
        return Py_XNewRef(obj);
    }
    /* qloop.AioContext (the Python subclass) when it is registered. */
    PyTypeObject *type = &QLPy_ContextType;
    PyObject *mod = PyImport_AddModule("qloop._core");
    PyObject *pytype = mod ? PyObject_GetAttrString(mod, "_context_class") : NULL;
    if (pytype && PyType_Check(pytype)) {
        type = (PyTypeObject *)pytype;
    }
    PyErr_Clear();
    ContextObject *self = (ContextObject *)type->tp_alloc(type, 0);
    Py_XDECREF(pytype);
    if (!self) {
        Py_DECREF(key);
        return NULL;
    }
    self->kind = kind;
    self->ctx = ctx;
    self->owned = 0;
    self->fd_handlers = PyDict_New();
    self->graveyard = PyList_New(0);
    if (!self->fd_handlers || !self->graveyard ||
        PyDict_SetItem(foreign_wrappers, key, (PyObject *)self) < 0) {
        Py_DECREF(key);
        Py_DECREF(self);
        return NULL;
    }
    Py_DECREF(key);
    return (PyObject *)self;
}

/* Detach everything Python holds in the context, then free it if ours. */
static void context_shutdown(ContextObject *self)
{
    QLContext *ctx = self->ctx;
    if (!ctx) {
        return;
    }
    qlpy_timer_detach_all(self);
    qlpy_bh_detach_all(self);
    if (self->fd_handlers) {
        PyObject *fd, *rec;
        Py_ssize_t pos = 0;
        while (PyDict_Next(self->fd_handlers, &pos, &fd, &rec)) {
            ql_context_set_fd_handler(ctx, (int)PyLong_AsLong(fd), NULL, NULL, NULL, NULL);
        }
    }
    if (self->owned) {
        self->ctx = NULL; /* the dequeue hooks run by ql_context_free see it closed */
        ql_context_free(ctx); /* shuts down the pools delivering here */
        qlpy_threadpool_release_parked();
    } else {
        self->ctx = NULL;
    }
    Py_CLEAR(self->fd_handlers);
    Py_CLEAR(self->graveyard);
}

static PyObject *context_close(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (self->dispatch_depth > 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot close an AioContext while it is polling");
        return NULL;
    }
    if (!self->owned && self->ctx) {
        PyErr_Format(PyExc_RuntimeError, "the %s AioContext belongs to the main loop and "
                     "cannot be closed", self->kind);
        return NULL;
    }
    context_shutdown(self);
    Py_RETURN_NONE;
}

static void context_dealloc(ContextObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->owned) {
        context_shutdown(self);
    }
    Py_CLEAR(self->fd_handlers);
    Py_CLEAR(self->graveyard);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int context_traverse(ContextObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fd_handlers);
    Py_VISIT(self->graveyard);
    int r = qlpy_bh_traverse_pending(self, visit, arg);
    r = r ? r : qlpy_oneshot_traverse_pending(self, visit, arg);
    return r ? r : qlpy_timer_traverse_armed(self, visit, arg);
}

static int context_clear(ContextObject *self)
{
    /* Break cycles through fd handler callables; the context stays usable
     * only if it is not garbage, which is when tp_clear is called. */
    if (self->owned) {
        context_shutdown(self);
    }
    Py_CLEAR(self->fd_handlers);
    Py_CLEAR(self->graveyard);
    return 0;
}

/* ---- poll and friends ------------------------------------------------- */

int qlpy_enter_dispatch(ContextObject *self, DispatchFrame *f)
{
    if (qlpy_context_check_open(self) < 0) {
        return -1;
    }
    unsigned long me = PyThread_get_thread_ident();
    if (self->dispatch_depth > 0 && self->poll_thread != me) {
        PyErr_Format(PyExc_RuntimeError, "AioContext is being polled by thread %lu; it cannot "
                     "be polled from thread %lu at the same time", self->poll_thread, me);
        return -1;
    }
    f->prev = qlpy_top_frame;
    f->ctx = self;
    f->exc = NULL;
    f->signals_before_sleep = 0;
    f->link = NULL;
    qlpy_top_frame = f;
    self->dispatch_depth++;
    self->poll_thread = me;
    self->poll_tstate_id = PyThreadState_GetID(PyThreadState_Get());
    Py_INCREF(self);
    return 0;
}

/* Leave a dispatch; returns NULL with the exception set if a callback raised
 * or ret is an error, else Py_True/Py_False for ret > 0 / ret == 0. */
PyObject *qlpy_leave_dispatch(ContextObject *self, DispatchFrame *f, int ret)
{
    qlpy_top_frame = f->prev;
    /* Release what coroutines that finished on their own stacks left behind,
     * and unwind coroutines dropped by other threads. */
    qlpy_coroutine_service();
    qlpy_threadpool_release_parked();
    if (--self->dispatch_depth == 0 && self->graveyard && PyList_GET_SIZE(self->graveyard)) {
        PyList_SetSlice(self->graveyard, 0, PyList_GET_SIZE(self->graveyard), NULL);
    }
    PyObject *result = NULL;
    if (f->exc) {
        qlpy_restore_exception(f->exc);
    } else if (ret < 0) {
        if (ret == -EBADF && self->ctx) {
            int fd = ql_context_bad_fd(self->ctx);
            if (fd >= 0) {
                PyObject *key = PyLong_FromLong(fd);
                if (key) {
                    PyDict_DelItem(self->fd_handlers, key);
                    PyErr_Clear();
                    Py_DECREF(key);
                }
            }
            PyObject *eargs = Py_BuildValue("(isi)", EBADF,
                                            "fd was closed while its handler was still "
                                            "registered (the handler has been removed)", fd);
            if (eargs) {
                PyErr_SetObject(PyExc_OSError, eargs);
                Py_DECREF(eargs);
            }
        } else if (ret != -EINTR) {
            qlpy_raise_errno(ret);
        }
    }
    if (!PyErr_Occurred() && PyErr_CheckSignals() == 0) {
        result = ret > 0 ? Py_True : Py_False;
        Py_INCREF(result);
    }
    Py_DECREF(self);
    return result;
}

static PyObject *context_poll(ContextObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    int blocking = 1;
    PyObject *barg = NULL;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "poll() takes at most 1 argument (blocking)");
        return NULL;
    }
    if (nargs == 1) {
        barg = args[0];
    }
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (barg || !PyUnicode_Check(k) || PyUnicode_CompareWithASCIIString(k, "blocking") != 0) {
                PyErr_Format(PyExc_TypeError, "poll() got an unexpected keyword argument %R", k);
                return NULL;
            }
            barg = args[nargs + i];
        }
    }
    if (barg && (blocking = PyObject_IsTrue(barg)) < 0) {
        return NULL;
    }
    DispatchFrame f;
    if (qlpy_enter_dispatch(self, &f) < 0) {
        return NULL;
    }
    int r = ql_context_poll(self->ctx, blocking);
    return qlpy_leave_dispatch(self, &f, r);
}

static PyObject *context_run_forever(ContextObject *self, PyObject *unused)
{
    (void)unused;
    DispatchFrame f;
    if (qlpy_enter_dispatch(self, &f) < 0) {
        return NULL;
    }
    /* A stop() that came before we started ends the loop at once (as in
     * asyncio): the flag is cleared on the way out, not on the way in. */
    self->running_forever++;
    int r = 0;
    /* One C loop of blocking polls: no Python frame per iteration.  A callback
     * exception (f.exc) or a signal handler's exception ends it.
     *
     * Signal handlers run (PyErr_CheckSignals) where a signal could otherwise
     * wait: before each poll sleeps (the blocking hook calls
     * qlpy_signals_before_sleep), after a poll a signal interrupted, and every
     * 64 polls for a loop that never sleeps and runs no Python code (Python
     * callbacks run handlers themselves).  Not after every poll: that cost
     * 50 instructions per iteration. */
    f.signals_before_sleep = 1;
    unsigned iter = 0;
    while (!self->stop_requested && !f.exc && self->ctx) {
        r = ql_context_poll(self->ctx, true);
        if (r < 0 && r != -EINTR) {
            break;
        }
        if ((r == -EINTR || (++iter & 63) == 0) && PyErr_CheckSignals() < 0) {
            break;
        }
    }
    self->running_forever--;
    self->stop_requested = 0;
    PyObject *res = qlpy_leave_dispatch(self, &f, r < 0 ? r : 0);
    if (!res) {
        return NULL;
    }
    Py_DECREF(res);
    Py_RETURN_NONE;
}

void qlpy_signals_before_sleep(void)
{
    DispatchFrame *f = qlpy_top_frame;
    if (!f || !f->signals_before_sleep || f->exc || !f->ctx->ctx ||
        ql_context_current() != f->ctx->ctx) {
        return;
    }
    if (PyErr_CheckSignals() < 0) {
        qlpy_callback_failed(f->ctx); /* stored in f: run_forever raises it */
        if (f->ctx->ctx) {
            ql_context_notify(f->ctx->ctx); /* do not sleep */
        }
    }
}

static PyObject *context_stop(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    self->stop_requested = 1;
    ql_context_notify(self->ctx);
    Py_RETURN_NONE;
}

static PyObject *context_co_schedule(ContextObject *self, PyObject *co)
{
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    if (PyObject_TypeCheck(co, &QLPyCoroutine_Type)) {
        /* A Python coroutine runs only in its own thread: refuse a context
         * that another thread polls (or, never polled, that nothing shows to
         * be polled by the owner). */
        uint64_t owner = ((QLPyCoroutine *)co)->owner_id;
        uint64_t poller = self->poll_tstate_id;
        if (poller ? poller != owner
                   : owner != PyThreadState_GetID(PyThreadState_Get())) {
            PyErr_SetString(PyExc_RuntimeError,
                            "co_schedule(): the coroutine belongs to another thread than "
                            "the one polling this AioContext (a Python coroutine runs only "
                            "in the thread that created it)");
            return NULL;
        }
    }
    return qlpy_co_schedule(self->ctx, co);
}

static PyObject *context_dispatch(ContextObject *self, PyObject *unused)
{
    (void)unused;
    DispatchFrame f;
    if (qlpy_enter_dispatch(self, &f) < 0) {
        return NULL;
    }
    int r = ql_context_dispatch(self->ctx);
    return qlpy_leave_dispatch(self, &f, r);
}

static PyObject *context_flush(ContextObject *self, PyObject *unused)
{
    (void)unused;
    DispatchFrame f;
    if (qlpy_enter_dispatch(self, &f) < 0) {
        return NULL;
    }
    int r = ql_context_flush(self->ctx);
    PyObject *res = qlpy_leave_dispatch(self, &f, r);
    if (!res) {
        return NULL;
    }
    Py_DECREF(res);
    Py_RETURN_NONE;
}

static PyObject *context_notify(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    ql_context_notify(self->ctx);
    Py_RETURN_NONE;
}

static PyObject *context_pending(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(ql_context_pending(self->ctx));
}

static PyObject *context_prepare(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong(ql_context_prepare(self->ctx));
}

static PyObject *context_check(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(ql_context_check(self->ctx));
}

static PyObject *context_fileno(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    int fd = ql_context_fd(self->ctx);
    if (fd < 0) {
        return qlpy_raise_errno(fd);
    }
    return PyLong_FromLong(fd);
}

static PyObject *context_now(ContextObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    QLClockType clock = QL_CLOCK_REALTIME;
    PyObject *carg = nargs > 0 ? args[0] : NULL;
    if (nargs > 1 || (kwnames && PyTuple_GET_SIZE(kwnames) > 1)) {
        PyErr_SetString(PyExc_TypeError, "now() takes at most 1 argument (clock)");
        return NULL;
    }
    if (kwnames && PyTuple_GET_SIZE(kwnames) == 1) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, 0);
        if (carg || PyUnicode_CompareWithASCIIString(k, "clock") != 0) {
            PyErr_Format(PyExc_TypeError, "now() got an unexpected keyword argument %R", k);
            return NULL;
        }
        carg = args[nargs];
    }
    if (carg && parse_clock(carg, &clock) < 0) {
        return NULL;
    }
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong(ql_clock_get_ns(self->ctx, clock));
}

static PyObject *context_vclock_advance(ContextObject *self, PyObject *arg)
{
    int64_t ns;
    if (parse_ns(arg, "ns", &ns) < 0 || qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    if (ns < 0) {
        return PyErr_Format(PyExc_ValueError, "ns must be >= 0, not %lld", (long long)ns);
    }
    int r = ql_virtual_clock_advance(self->ctx, ns);
    if (r < 0) {
        return qlpy_raise_errno(r);
    }
    Py_RETURN_NONE;
}

static PyObject *context_vclock_set(ContextObject *self, PyObject *arg)
{
    int64_t ns;
    if (parse_ns(arg, "ns", &ns) < 0 || qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    int64_t now = ql_clock_get_ns(self->ctx, QL_CLOCK_VIRTUAL);
    if (ns < now) {
        return PyErr_Format(PyExc_ValueError, "ns must not move the virtual clock backwards "
                            "(now %lld, asked %lld)", (long long)now, (long long)ns);
    }
    int r = ql_virtual_clock_set(self->ctx, ns);
    if (r < 0) {
        return qlpy_raise_errno(r);
    }
    Py_RETURN_NONE;
}

static PyObject *context_get_autojump(ContextObject *self, void *c)
{
    (void)c;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(ql_virtual_clock_get_autojump(self->ctx));
}

static int context_set_autojump(ContextObject *self, PyObject *v, void *c)
{
    (void)c;
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete autojump");
        return -1;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0 || qlpy_context_check_open(self) < 0) {
        return -1;
    }
    ql_virtual_clock_set_autojump(self->ctx, b);
    return 0;
}

/* ---- fd handlers ------------------------------------------------------ */

typedef struct FdRecord {
    PyObject_HEAD
    ContextObject *ctx; /* borrowed: the context owns the record */
    int fd;
    PyObject *read, *write, *flush, *arg;
} FdRecord;

static void fdrec_dealloc(FdRecord *r)
{
    PyObject_GC_UnTrack(r);
    Py_CLEAR(r->read);
    Py_CLEAR(r->write);
    Py_CLEAR(r->flush);
    Py_CLEAR(r->arg);
    PyObject_GC_Del(r);
}

static int fdrec_traverse(FdRecord *r, visitproc visit, void *arg)
{
    Py_VISIT(r->read);
    Py_VISIT(r->write);
    Py_VISIT(r->flush);
    Py_VISIT(r->arg);
    return 0;
}

static int fdrec_clear(FdRecord *r)
{
    Py_CLEAR(r->read);
    Py_CLEAR(r->write);
    Py_CLEAR(r->flush);
    Py_CLEAR(r->arg);
    return 0;
}

static PyTypeObject FdRecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop._core._FdRecord",
    .tp_basicsize = sizeof(FdRecord),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)fdrec_dealloc,
    .tp_traverse = (traverseproc)fdrec_traverse,
    .tp_clear = (inquiry)fdrec_clear,
};

static void fd_call(FdRecord *r, PyObject *cb)
{
    if (!cb) {
        return;
    }
    if (r->arg) {
        PyObject *a = r->arg;
        PyObject *res = PyObject_Vectorcall(cb, &a, 1, NULL);
        if (res) {
            Py_DECREF(res);
        } else {
            qlpy_callback_failed(r->ctx);
        }
    } else {
        qlpy_call_callback(r->ctx, cb, NULL);
    }
}

static void fd_read_cb(void *opaque)
{
    FdRecord *r = opaque;
    fd_call(r, r->read);
}

static void fd_write_cb(void *opaque)
{
    FdRecord *r = opaque;
    fd_call(r, r->write);
}

static bool fd_flush_cb(void *opaque)
{
    FdRecord *r = opaque;
    if (!r->flush || qlpy_callback_exception_pending(r->ctx)) {
        /* After a callback raised, flush() is over (it raises that): do not
         * ask again, nor poll for requests to finish, nor let a second
         * exception in that the dispatch could not raise. */
        return false;
    }
    PyObject *res = PyObject_CallNoArgs(r->flush);
    if (!res) {
        qlpy_callback_failed(r->ctx);
        return false; /* the exception ends the flush */
    }
    int b = PyObject_IsTrue(res);
    Py_DECREF(res);
    if (b < 0) {
        qlpy_callback_failed(r->ctx);
        return false;
    }
    return b;
}

static int check_callable(PyObject *o, const char *name)
{
    if (o != Py_None && !PyCallable_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be callable or None, not %.100s", name,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    return 0;
}

/* Register (or remove) handlers; notifier != NULL selects the event-notifier
 * form.  `arg` (may be NULL) is passed to the callables. */
static PyObject *set_handler(ContextObject *self, int fd, QLNotifier *notifier, PyObject *read,
                             PyObject *write, PyObject *flush, PyObject *arg)
{
    if (check_callable(read, "read") < 0 || check_callable(write, "write") < 0 ||
        check_callable(flush, "flush") < 0 || qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    PyObject *key = PyLong_FromLong(fd);
    if (!key) {
        return NULL;
    }
    int remove = read == Py_None && write == Py_None && flush == Py_None;
    FdRecord *rec = NULL;
    int r;
    if (remove) {
        r = notifier ? ql_context_set_event_notifier(self->ctx, notifier, NULL, NULL, NULL)
                     : ql_context_set_fd_handler(self->ctx, fd, NULL, NULL, NULL, NULL);
    } else {
        rec = PyObject_GC_New(FdRecord, &FdRecordType);
        if (!rec) {
            Py_DECREF(key);
            return NULL;
        }
        rec->ctx = self;
        rec->fd = fd;
        rec->read = read == Py_None ? NULL : Py_NewRef(read);
        rec->write = write == Py_None ? NULL : Py_NewRef(write);
        rec->flush = flush == Py_None ? NULL : Py_NewRef(flush);
        rec->arg = Py_XNewRef(arg);
        PyObject_GC_Track(rec);
        if (notifier) {
            r = ql_context_set_event_notifier(self->ctx, notifier, rec->read ? fd_read_cb : NULL,
                                              rec->flush ? fd_flush_cb : NULL, rec);
        } else {
            r = ql_context_set_fd_handler(self->ctx, fd, rec->read ? fd_read_cb : NULL,
                                          rec->write ? fd_write_cb : NULL,
                                          rec->flush ? fd_flush_cb : NULL, rec);
        }
    }
    if (r < 0) {
        Py_XDECREF(rec);
        Py_DECREF(key);
        return qlpy_raise_errno(r);
    }
    /* The old record may still be referenced by a dispatch in progress: keep
     * it until the outermost dispatch ends. */
    PyObject *old = PyDict_GetItemWithError(self->fd_handlers, key);
    if (old && self->dispatch_depth > 0 && PyList_Append(self->graveyard, old) < 0) {
        PyErr_Clear();
    }
    int e = rec ? PyDict_SetItem(self->fd_handlers, key, (PyObject *)rec)
                : (old ? PyDict_DelItem(self->fd_handlers, key) : 0);
    Py_XDECREF(rec);
    Py_DECREF(key);
    if (e < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *context_set_fd_handler(ContextObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "read", "write", "flush", NULL};
    PyObject *fdobj, *read = Py_None, *write = Py_None, *flush = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOO:set_fd_handler", kwlist, &fdobj, &read,
                                     &write, &flush)) {
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(fdobj);
    if (fd < 0) {
        return NULL;
    }
    return set_handler(self, fd, NULL, read, write, flush, NULL);
}

/* _set_event_notifier(address, notifier, read, flush): address is the
 * QLNotifier* of a qloop.EventNotifier (cffi); the callables get the notifier. */
static PyObject *context_set_event_notifier(ContextObject *self, PyObject *args)
{
    PyObject *addr, *notifier, *read, *flush;
    if (!PyArg_ParseTuple(args, "OOOO:_set_event_notifier", &addr, &notifier, &read, &flush)) {
        return NULL;
    }
    QLNotifier *n = PyLong_AsVoidPtr(addr);
    if (!n) {
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "null notifier");
    }
    if (n->rfd < 0) {
        PyErr_SetString(PyExc_ValueError, "notifier is closed");
        return NULL;
    }
    return set_handler(self, n->rfd, n, read, Py_None, flush, notifier);
}

static PyObject *context_get_ptr(ContextObject *self, void *c)
{
    (void)c;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    return PyLong_FromVoidPtr(self->ctx);
}

static PyObject *context_get_closed(ContextObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->ctx == NULL);
}

static PyObject *context_get_fdmon(ContextObject *self, void *c)
{
    (void)c;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    return PyUnicode_FromString(ql_context_fdmon_name(self->ctx));
}

static PyObject *context_get_kind(ContextObject *self, void *c)
{
    (void)c;
    return PyUnicode_FromString(self->kind);
}

static PyObject *context_enter(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (qlpy_context_check_open(self) < 0) {
        return NULL;
    }
    return Py_NewRef(self);
}

static PyObject *context_exit(ContextObject *self, PyObject *args)
{
    (void)args;
    if (!self->owned) {
        Py_RETURN_NONE;
    }
    return context_close(self, NULL);
}

static PyObject *context_repr(ContextObject *self)
{
    if (!self->ctx) {
        return PyUnicode_FromFormat("<AioContext %s closed>", self->kind);
    }
    /* no fd: asking for the embedding fd would create it */
    return PyUnicode_FromFormat("<AioContext %s %s>", self->kind,
                                ql_context_fdmon_name(self->ctx));
}

extern PyObject *qlpy_context_bh(ContextObject *self, PyObject *const *args, Py_ssize_t nargs);
extern PyObject *qlpy_context_timer(ContextObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames);

static PyMethodDef context_methods[] = {
    {"poll", (PyCFunction)(void (*)(void))context_poll, METH_FASTCALL | METH_KEYWORDS,
     "poll(blocking=True) -> bool\n\nRun one iteration: bottom halves, ready fd handlers, "
     "expired timers.  Blocking waits until something is ready.  Returns True if a "
     "callback ran."},
    {"co_schedule", (PyCFunction)context_co_schedule, METH_O,
     "co_schedule(co)\n\nRun the coroutine co in this context's next poll (QEMU's "
     "aio_co_schedule).  Any thread."},
    {"run_forever", (PyCFunction)context_run_forever, METH_NOARGS,
     "run_forever()\n\nPoll (blocking) until stop() is called, from a callback or any "
     "thread.  An exception raised by a callback ends it and is raised."},
    {"stop", (PyCFunction)context_stop, METH_NOARGS,
     "stop()\n\nMake run_forever() return after the current iteration.  Any thread."},
    {"dispatch", (PyCFunction)context_dispatch, METH_NOARGS,
     "dispatch() -> bool\n\nRun what is ready now without sleeping (embedding)."},
    {"flush", (PyCFunction)context_flush, METH_NOARGS,
     "flush()\n\nPoll until every flush callback reports no request in flight."},
    {"notify", (PyCFunction)context_notify, METH_NOARGS,
     "notify()\n\nWake a blocking poll().  Any thread."},
    {"pending", (PyCFunction)context_pending, METH_NOARGS,
     "pending() -> bool\n\nTrue if work is ready now (does not sleep)."},
    {"prepare", (PyCFunction)context_prepare, METH_NOARGS,
     "prepare() -> int\n\nTimeout in ns before the context needs dispatching (0 now, -1 "
     "never); arms fileno() for an embedding loop."},
    {"check", (PyCFunction)context_check, METH_NOARGS,
     "check() -> bool\n\nAfter the embedding loop woke: True if dispatch() has work."},
    {"fileno", (PyCFunction)context_fileno, METH_NOARGS,
     "fileno() -> int\n\nAn fd that becomes readable when the context needs dispatching."},
    {"now", (PyCFunction)(void (*)(void))context_now, METH_FASTCALL | METH_KEYWORDS,
     "now(clock=CLOCK_REALTIME) -> int\n\nCurrent time of a clock in ns."},
    {"bh", (PyCFunction)(void (*)(void))qlpy_context_bh, METH_FASTCALL,
     "bh(cb, *args) -> BH\n\nNew bottom half (not scheduled) calling cb(*args)."},
    {"schedule_oneshot", (PyCFunction)(void (*)(void))qlpy_context_schedule_oneshot,
     METH_FASTCALL,
     "schedule_oneshot(cb, *args)\n\nRun cb(*args) once in the next poll.  Any thread."},
    {"timer", (PyCFunction)(void (*)(void))qlpy_context_timer, METH_FASTCALL | METH_KEYWORDS,
     "timer(cb, *args, clock=CLOCK_REALTIME) -> Timer\n\nNew timer (not armed)."},
    {"set_fd_handler", (PyCFunction)(void (*)(void))context_set_fd_handler,
     METH_VARARGS | METH_KEYWORDS,
     "set_fd_handler(fd, read=None, write=None, flush=None)\n\nLevel-triggered handlers; "
     "registering again replaces; all None removes.  flush() returns true while requests "
     "are in flight (QEMU's io_flush)."},
    {"_set_event_notifier", (PyCFunction)context_set_event_notifier, METH_VARARGS, NULL},
    {"_virtual_clock_advance", (PyCFunction)context_vclock_advance, METH_O, NULL},
    {"_virtual_clock_set", (PyCFunction)context_vclock_set, METH_O, NULL},
    {"close", (PyCFunction)context_close, METH_NOARGS,
     "close()\n\nFree the context: pending callbacks are dropped, handlers removed.  "
     "Idempotent."},
    {"__enter__", (PyCFunction)context_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)context_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef context_getset[] = {
    {"_autojump", (getter)context_get_autojump, (setter)context_set_autojump, NULL, NULL},
    {"_ptr", (getter)context_get_ptr, NULL, "Address of the QLContext (for cffi/C).", NULL},
    {"closed", (getter)context_get_closed, NULL, "True once closed.", NULL},
    {"fdmon", (getter)context_get_fdmon, NULL, "The fd monitor: 'epoll' or 'poll'.", NULL},
    {"kind", (getter)context_get_kind, NULL, "'context', 'main' or 'iohandler'.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject QLPy_ContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop._core.AioContext",
    .tp_doc = "AioContext(): an event loop (bottom halves, timers, fd handlers).",
    .tp_basicsize = sizeof(ContextObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = context_new,
    .tp_dealloc = (destructor)context_dealloc,
    .tp_traverse = (traverseproc)context_traverse,
    .tp_clear = (inquiry)context_clear,
    .tp_repr = (reprfunc)context_repr,
    .tp_methods = context_methods,
    .tp_getset = context_getset,
    .tp_weaklistoffset = offsetof(ContextObject, weakreflist),
};

int qlpy_context_register_types(PyObject *m)
{
    if (PyType_Ready(&FdRecordType) < 0 || PyType_Ready(&QLPy_ContextType) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "AioContext", (PyObject *)&QLPy_ContextType) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(m, "CLOCK_REALTIME", QL_CLOCK_REALTIME) < 0 ||
        PyModule_AddIntConstant(m, "CLOCK_VIRTUAL", QL_CLOCK_VIRTUAL) < 0 ||
        PyModule_AddIntConstant(m, "CLOCK_HOST", QL_CLOCK_HOST) < 0) {
        return -1;
    }
    return 0;
}
