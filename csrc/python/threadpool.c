/*
 * qloop._core.ThreadPool and ThreadPoolRequest: Python work on libqloop's
 * worker threads, completions in the pool's context.
 *
 * A request's C work function runs on a worker thread without the GIL; it
 * takes the GIL (PyGILState_Ensure), calls fn(*args), stores the result or
 * the exception (traceback attached) and lets the GIL go.  The completion
 * runs in the context's thread from a bottom half during poll() (GIL held:
 * poll keeps it while dispatching) and calls callback(request); an exception
 * it raises is raised by that poll().
 *
 * References: while a request is in flight libqloop holds one reference to
 * the request object (taken at submit, dropped after the completion), and
 * the request holds its pool, which holds its context: nothing in flight
 * can outlive what it completes into.  The default pool of a context belongs
 * to the QLContext and is freed with it; its wrapper checks that the context
 * is open before each use.
 */
#include "pycontext.h"
#include "glue.h"
#include "qloop/thread-pool.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>

typedef struct ThreadPoolObject {
    PyObject_HEAD
    ContextObject *ctx;     /* strong */
    QLThreadPool *pool;     /* NULL once closed */
    int is_default;         /* the context's pool: freed with the context */
    int delivering;         /* completion callbacks running (close() refuses) */
    PyObject *weakreflist;
} ThreadPoolObject;

enum { REQ_PENDING, REQ_DONE, REQ_CANCELLED };

typedef struct RequestObject {
    PyObject_HEAD
    ThreadPoolObject *pool; /* strong */
    QLThreadPoolRequest *req; /* NULL once completed */
    PyObject *fn, *args;    /* cleared once run (or cancelled) */
    PyObject *callback;
    PyObject *result;
    PyObject *exc;          /* exception instance, traceback attached */
    int ran;                /* the worker called fn */
    int state;              /* REQ_* */
} RequestObject;

static PyTypeObject ThreadPoolType;
static PyTypeObject RequestType;
static PyObject *CancelledError;

/* ---- the work and the completion ------------------------------------------ */

/* Python thread state of a worker thread, kept between requests: creating
 * and destroying one per request (PyGILState_Ensure/Release) costs an
 * allocation of its frame stack each time, and in a threaded process
 * giving memory back to the OS costs cross-CPU TLB flushes.  The first
 * request on a worker creates it; the pthread key's destructor deletes it
 * when the worker exits (idle timeout or pool shutdown). */
static pthread_key_t worker_ts_key;
static _Thread_local PyThreadState *worker_ts;

static int interpreter_alive(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsInitialized() && !Py_IsFinalizing();
#else
    return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

static void worker_ts_destroy(void *value)
{
    PyThreadState *ts = value;
    if (!ts || !interpreter_alive()) {
        return; /* the interpreter is going away: leave it be */
    }
    /* Not PyGILState_Release: the C library has already cleared every
     * thread-specific value of this exiting thread, CPython's own included. */
    PyEval_RestoreThread(ts);
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent(); /* and drops the GIL */
}

/* Worker thread, GIL not held. */
static int request_work(void *arg)
{
    RequestObject *r = arg;
    if (worker_ts) {
        PyEval_RestoreThread(worker_ts);
    } else {
        PyGILState_Ensure();
    }
    r->ran = 1;
    PyObject *res = PyObject_Call(r->fn, r->args, NULL);
    if (res) {
        r->result = res;
    } else {
        r->exc = qlpy_fetch_exception();
    }
    Py_CLEAR(r->fn);
    Py_CLEAR(r->args);
    if (!worker_ts) {
        pthread_setspecific(worker_ts_key, PyThreadState_Get());
    }
    worker_ts = PyEval_SaveThread();
    return res ? 0 : -1;
}

/* Pool objects whose last reference went away inside a completion.
 * Freeing the QLThreadPool there would pull it from under libqloop, which
 * still uses it once the completion returns (it recycles the request, then
 * looks at the rest of the batch).  request_done() parks such a pool here
 * instead; qlpy_threadpool_release_parked() lets them go once the call into
 * libqloop that ran the completion has returned (poll/dispatch/flush/
 * main_loop_wait, ThreadPool.close(), AioContext.close()).  Nothing else of
 * the parked pool runs in between: it has no request left (each holds it),
 * so its completion code returns without calling Python again.  GIL held. */
static PyObject *parked_pools;

void qlpy_threadpool_release_parked(void)
{
    if (!parked_pools || PyList_GET_SIZE(parked_pools) == 0) {
        return;
    }
    /* Deallocating a pool joins its idle workers (GIL released): take the
     * list first so that a concurrent release sees an empty one. */
    PyObject *batch = parked_pools;
    parked_pools = NULL;
    PyObject *exc = qlpy_fetch_exception(); /* keep a pending callback exception */
    Py_DECREF(batch);
    if (exc) {
        qlpy_restore_exception(exc);
    }
}

static void park_pool(ThreadPoolObject *pool)
{
    if (!parked_pools && !(parked_pools = PyList_New(0))) {
        goto fail;
    }
    if (PyList_Append(parked_pools, (PyObject *)pool) < 0) {
        goto fail;
    }
    Py_DECREF(pool);
    return;
fail:
    /* Out of memory: leaking the pool is the lesser evil. */
    PyErr_Clear();
}

/* Home thread, GIL held (poll, or the shutdown in close()). */
static void request_done(void *opaque, int ret)
{
    RequestObject *r = opaque;
    ThreadPoolObject *pool = r->pool;
    Py_INCREF(pool); /* outlives the request: see parked_pools */
    r->req = NULL;
    if (!r->ran) {
        (void)ret; /* -ECANCELED: never ran */
        r->state = REQ_CANCELLED;
        Py_CLEAR(r->fn);
        Py_CLEAR(r->args);
    } else {
        r->state = REQ_DONE;
    }
    PyObject *cb = r->callback;
    if (cb) {
        r->callback = NULL;
        pool->delivering++;
        PyObject *arg = (PyObject *)r;
        PyObject *res = PyObject_Vectorcall(cb, &arg, 1, NULL);
        pool->delivering--;
        if (res) {
            Py_DECREF(res);
        } else {
            qlpy_callback_failed(pool->ctx);
        }
        Py_DECREF(cb);
    }
    Py_DECREF(r); /* libqloop's reference */
    if (Py_REFCNT(pool) == 1) {
        park_pool(pool); /* ours is the last reference */
    } else {
        Py_DECREF(pool);
    }
}

/* ---- ThreadPool ------------------------------------------------------------ */

/* The context a pool created without one delivers into: the one this thread
 * is polling, else the main context when the main loop exists. */
static ContextObject *default_context(void)
{
    if (qlpy_top_frame && qlpy_top_frame->ctx && qlpy_top_frame->ctx->ctx) {
        return (ContextObject *)Py_NewRef(qlpy_top_frame->ctx);
    }
    PyObject *mod = PyImport_ImportModule("qloop");
    PyObject *fn = mod ? PyObject_GetAttrString(mod, "get_aio_context") : NULL;
    Py_XDECREF(mod);
    if (!fn) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "context is required: this thread is not polling an "
                        "AioContext and qloop has no main loop");
        return NULL;
    }
    PyObject *ctx = PyObject_CallNoArgs(fn);
    Py_DECREF(fn);
    if (ctx && !PyObject_TypeCheck(ctx, &QLPy_ContextType)) {
        Py_DECREF(ctx);
        PyErr_SetString(PyExc_TypeError, "get_aio_context() did not return an AioContext");
        return NULL;
    }
    return (ContextObject *)ctx;
}

/* The open context a pool delivers into, from a `name` argument that is an
 * AioContext or None (default_context()).  New reference, or NULL with
 * TypeError / the closed-context error. */
static ContextObject *context_arg(PyObject *ctxarg, const char *name)
{
    ContextObject *ctx;
    if (ctxarg == Py_None) {
        if (!(ctx = default_context())) {
            return NULL;
        }
    } else if (PyObject_TypeCheck(ctxarg, &QLPy_ContextType)) {
        ctx = (ContextObject *)Py_NewRef(ctxarg);
    } else {
        PyErr_Format(PyExc_TypeError, "%s must be an AioContext or None, not %.100s", name,
                     Py_TYPE(ctxarg)->tp_name);
        return NULL;
    }
    if (qlpy_context_check_open(ctx) < 0) {
        Py_DECREF(ctx);
        return NULL;
    }
    return ctx;
}

static int pool_check(ThreadPoolObject *self)
{
    if (!self->pool || !self->ctx->ctx) {
        PyErr_SetString(PyExc_RuntimeError, self->pool ? "thread pool's AioContext is closed"
                                                        : "thread pool is closed");
        return -1;
    }
    return 0;
}

static int parse_idle_timeout(PyObject *obj, int64_t *ns)
{
    if (obj == Py_None) {
        *ns = -1;
        return 0;
    }
    double s = PyFloat_AsDouble(obj);
    if (s == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "idle_timeout must be a number of seconds or None, not "
                     "%.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!(s >= 0) || isinf(s) || s > 1e9) {
        PyErr_Format(PyExc_ValueError, "idle_timeout must be >= 0 seconds (or None: never), "
                     "not %R", obj);
        return -1;
    }
    *ns = (int64_t)(s * 1e9);
    return 0;
}

static int apply_sizes(QLThreadPool *pool, int min_threads, int max_threads)
{
    if (min_threads < 0 || max_threads <= 0 || min_threads > max_threads) {
        PyErr_Format(PyExc_ValueError, "bad thread pool sizes: need 0 <= min_threads <= "
                     "max_threads and max_threads > 0 (got min_threads=%d, max_threads=%d)",
                     min_threads, max_threads);
        return -1;
    }
    ql_thread_pool_set_sizes(pool, min_threads, max_threads);
    return 0;
}

static PyObject *pool_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"min_threads", "max_threads", "idle_timeout", "context", NULL};
    int min_threads = 0, max_threads = 64;
    PyObject *idle = NULL, *ctxarg = Py_None;
    int64_t idle_ns = 10000000000LL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iiOO:ThreadPool", kwlist, &min_threads,
                                     &max_threads, &idle, &ctxarg)) {
        return NULL;
    }
    if (idle && parse_idle_timeout(idle, &idle_ns) < 0) {
        return NULL;
    }
    if (min_threads < 0 || max_threads <= 0 || min_threads > max_threads) {
        return PyErr_Format(PyExc_ValueError, "bad thread pool sizes: need 0 <= min_threads <= "
                            "max_threads and max_threads > 0 (got min_threads=%d, "
                            "max_threads=%d)", min_threads, max_threads);
    }
    ContextObject *ctx = context_arg(ctxarg, "context");
    if (!ctx) {
        return NULL;
    }
    ThreadPoolObject *self = (ThreadPoolObject *)type->tp_alloc(type, 0);
    if (!self) {
        Py_DECREF(ctx);
        return NULL;
    }
    self->ctx = ctx;
    self->pool = ql_thread_pool_new(ctx->ctx);
    if (!self->pool) {
        int e = errno;
        Py_DECREF(self);
        return qlpy_raise_errno(-e);
    }
    ql_thread_pool_set_idle_timeout(self->pool, idle_ns);
    ql_thread_pool_set_sizes(self->pool, min_threads, max_threads);
    return (PyObject *)self;
}

/* _core._context_thread_pool(cls, ctx): wrapper of ctx's default pool. */
static PyObject *context_thread_pool(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 2 || !PyType_Check(args[0]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], &ThreadPoolType)) {
        PyErr_SetString(PyExc_TypeError, "_context_thread_pool(cls, ctx)");
        return NULL;
    }
    PyObject *ctxarg = args[1];
    ContextObject *ctx = context_arg(ctxarg, "ctx");
    if (!ctx) {
        return NULL;
    }
    QLThreadPool *pool = ql_context_thread_pool(ctx->ctx);
    if (!pool) {
        int e = errno;
        Py_DECREF(ctx);
        return qlpy_raise_errno(-e);
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    ThreadPoolObject *self = (ThreadPoolObject *)type->tp_alloc(type, 0);
    if (!self) {
        Py_DECREF(ctx);
        return NULL;
    }
    self->ctx = ctx;
    self->pool = pool;
    self->is_default = 1;
    return (PyObject *)self;
}

static void pool_close_impl(ThreadPoolObject *self)
{
    QLThreadPool *pool = self->pool;
    if (!pool) {
        return;
    }
    self->pool = NULL;
    if (!self->is_default) {
        /* Runs outstanding completions here; waits with the GIL released. */
        ql_thread_pool_free(pool);
        qlpy_threadpool_release_parked();
    }
}

static PyObject *pool_close(ThreadPoolObject *self, PyObject *unused)
{
    (void)unused;
    if (self->is_default && self->pool) {
        PyErr_SetString(PyExc_RuntimeError, "the default thread pool of an AioContext is shut "
                        "down by closing the context");
        return NULL;
    }
    if (self->delivering) {
        PyErr_SetString(PyExc_RuntimeError, "cannot close a thread pool from one of its "
                        "completion callbacks");
        return NULL;
    }
    ContextObject *ctx = self->ctx;
    unsigned long me = PyThread_get_thread_ident();
    if (self->pool && ctx->ctx && ctx->dispatch_depth > 0 && ctx->poll_thread != me) {
        /* The shutdown delivers the outstanding completions itself and
         * frees the pool: with the polling thread delivering from the same
         * lists meanwhile (the shutdown releases the GIL while it waits for
         * the workers), both would, and that thread would be left in a
         * freed pool. */
        PyErr_Format(PyExc_RuntimeError, "cannot close a thread pool while thread %lu polls "
                     "its AioContext; close it from that thread (schedule_oneshot)",
                     ctx->poll_thread);
        return NULL;
    }
    pool_close_impl(self);
    Py_RETURN_NONE;
}

static PyObject *pool_submit(ThreadPoolObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    PyObject *callback = NULL;
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (PyUnicode_CompareWithASCIIString(k, "callback") != 0) {
                PyErr_Format(PyExc_TypeError, "submit() got an unexpected keyword argument %R", k);
                return NULL;
            }
            callback = args[nargs + i];
        }
    }
    if (callback == Py_None) {
        callback = NULL;
    }
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "submit() missing required argument 'fn'");
        return NULL;
    }
    if (!PyCallable_Check(args[0])) {
        return PyErr_Format(PyExc_TypeError, "submit(): fn must be callable, not %.100s",
                            Py_TYPE(args[0])->tp_name);
    }
    if (callback && !PyCallable_Check(callback)) {
        return PyErr_Format(PyExc_TypeError, "submit(): callback must be callable or None, not "
                            "%.100s", Py_TYPE(callback)->tp_name);
    }
    if (pool_check(self) < 0) {
        return NULL;
    }
    PyObject *fargs = PyTuple_New(nargs - 1);
    if (!fargs) {
        return NULL;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(fargs, i - 1, Py_NewRef(args[i]));
    }
    RequestObject *r = PyObject_GC_New(RequestObject, &RequestType);
    if (!r) {
        Py_DECREF(fargs);
        return NULL;
    }
    r->pool = (ThreadPoolObject *)Py_NewRef(self);
    r->fn = Py_NewRef(args[0]);
    r->args = fargs;
    r->callback = Py_XNewRef(callback);
    r->result = r->exc = NULL;
    r->ran = 0;
    r->state = REQ_PENDING;
    r->req = NULL;
    PyObject_GC_Track(r);
    Py_INCREF(r); /* libqloop's reference, dropped by request_done */
    r->req = ql_thread_pool_submit(self->pool, request_work, r, request_done, r);
    if (!r->req) {
        int e = errno;
        Py_DECREF(r);
        Py_DECREF(r);
        if (e == ESHUTDOWN) {
            PyErr_SetString(PyExc_RuntimeError, "thread pool is shut down");
            return NULL;
        }
        return qlpy_raise_errno(-e);
    }
    return (PyObject *)r;
}

static PyObject *pool_set_sizes(ThreadPoolObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"min_threads", "max_threads", NULL};
    int min_threads, max_threads;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ii:set_sizes", kwlist, &min_threads,
                                     &max_threads) ||
        pool_check(self) < 0 || apply_sizes(self->pool, min_threads, max_threads) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *pool_set_idle_timeout(ThreadPoolObject *self, PyObject *arg)
{
    int64_t ns;
    if (parse_idle_timeout(arg, &ns) < 0 || pool_check(self) < 0) {
        return NULL;
    }
    ql_thread_pool_set_idle_timeout(self->pool, ns);
    Py_RETURN_NONE;
}

static PyObject *pool_count(ThreadPoolObject *self, int (*fn)(QLThreadPool *))
{
    if (pool_check(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(fn(self->pool));
}

static PyObject *pool_get_num_threads(ThreadPoolObject *self, void *c)
{
    (void)c;
    return pool_count(self, ql_thread_pool_num_threads);
}

static PyObject *pool_get_num_idle(ThreadPoolObject *self, void *c)
{
    (void)c;
    return pool_count(self, ql_thread_pool_num_idle);
}

static PyObject *pool_get_in_flight(ThreadPoolObject *self, void *c)
{
    (void)c;
    return pool_count(self, ql_thread_pool_num_in_flight);
}

static PyObject *pool_get_context(ThreadPoolObject *self, void *c)
{
    (void)c;
    return Py_NewRef((PyObject *)self->ctx);
}

static PyObject *pool_get_closed(ThreadPoolObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(!self->pool || !self->ctx->ctx);
}

static PyObject *pool_get_is_default(ThreadPoolObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->is_default);
}

static PyObject *pool_enter(ThreadPoolObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef((PyObject *)self);
}

static PyObject *pool_exit(ThreadPoolObject *self, PyObject *args)
{
    (void)args;
    if (!self->is_default) {
        return pool_close(self, NULL);
    }
    Py_RETURN_NONE;
}

static int pool_traverse(ThreadPoolObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ctx);
    return 0;
}

static void pool_dealloc(ThreadPoolObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    /* No request is in flight (each holds a reference to us): this only
     * joins idle workers. */
    pool_close_impl(self);
    Py_CLEAR(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *pool_repr(ThreadPoolObject *self)
{
    if (!self->pool || !self->ctx->ctx) {
        return PyUnicode_FromFormat("<ThreadPool closed>");
    }
    return PyUnicode_FromFormat("<ThreadPool%s threads=%d in_flight=%d>",
                                self->is_default ? " (context default)" : "",
                                ql_thread_pool_num_threads(self->pool),
                                ql_thread_pool_num_in_flight(self->pool));
}

static PyMethodDef pool_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))pool_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(fn, *args, callback=None) -> ThreadPoolRequest\n\nRun fn(*args) on a worker "
     "thread; callback(request) then runs in the pool's context during its poll()."},
    {"set_sizes", (PyCFunction)(void (*)(void))pool_set_sizes, METH_VARARGS | METH_KEYWORDS,
     "set_sizes(min_threads, max_threads)\n\nThread limits (0 <= min <= max, max > 0); "
     "starts workers up to min_threads now."},
    {"set_idle_timeout", (PyCFunction)pool_set_idle_timeout, METH_O,
     "set_idle_timeout(seconds)\n\nHow long an idle worker above min_threads waits for work "
     "before exiting (None: forever)."},
    {"close", (PyCFunction)pool_close, METH_NOARGS,
     "close()\n\nShut down: queued requests are cancelled, running ones waited for, every "
     "worker joined, and every outstanding callback runs here.  Idempotent."},
    {"__enter__", (PyCFunction)pool_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)pool_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pool_getset[] = {
    {"num_threads", (getter)pool_get_num_threads, NULL, "Worker threads alive.", NULL},
    {"num_idle", (getter)pool_get_num_idle, NULL, "Workers waiting for work.", NULL},
    {"in_flight", (getter)pool_get_in_flight, NULL,
     "Requests submitted whose callback has not run yet.", NULL},
    {"context", (getter)pool_get_context, NULL, "The AioContext completions run in.", NULL},
    {"closed", (getter)pool_get_closed, NULL, "True once closed (or its context).", NULL},
    {"is_default", (getter)pool_get_is_default, NULL, "True for a context's own pool.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ThreadPoolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop._core.ThreadPool",
    .tp_doc = "ThreadPool(min_threads=0, max_threads=64, idle_timeout=10.0, context=None)",
    .tp_basicsize = sizeof(ThreadPoolObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = pool_new,
    .tp_dealloc = (destructor)pool_dealloc,
    .tp_traverse = (traverseproc)pool_traverse,
    .tp_repr = (reprfunc)pool_repr,
    .tp_methods = pool_methods,
    .tp_getset = pool_getset,
    .tp_weaklistoffset = offsetof(ThreadPoolObject, weakreflist),
};

/* ---- ThreadPoolRequest ----------------------------------------------------- */

static PyObject *req_cancel(RequestObject *self, PyObject *unused)
{
    (void)unused;
    if (self->state != REQ_PENDING || !self->req) {
        Py_RETURN_FALSE; /* finished: a no-op */
    }
    /* Safe from any thread: completions run with the GIL held and clear
     * self->req before libqloop recycles the request. */
    return PyBool_FromLong(ql_thread_pool_cancel(self->req) == 1);
}

static PyObject *req_result(RequestObject *self, PyObject *unused)
{
    (void)unused;
    switch (self->state) {
    case REQ_PENDING:
        PyErr_SetString(PyExc_RuntimeError, "ThreadPoolRequest is not done yet");
        return NULL;
    case REQ_CANCELLED:
        PyErr_SetString(CancelledError, "the request was cancelled before it ran");
        return NULL;
    }
    if (self->exc) {
        qlpy_restore_exception(Py_NewRef(self->exc));
        return NULL;
    }
    return Py_NewRef(self->result ? self->result : Py_None);
}

static PyObject *req_exception(RequestObject *self, PyObject *unused)
{
    (void)unused;
    if (self->state == REQ_PENDING) {
        PyErr_SetString(PyExc_RuntimeError, "ThreadPoolRequest is not done yet");
        return NULL;
    }
    if (self->state == REQ_CANCELLED) {
        PyErr_SetString(CancelledError, "the request was cancelled before it ran");
        return NULL;
    }
    return Py_NewRef(self->exc ? self->exc : Py_None);
}

static PyObject *req_get_done(RequestObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->state != REQ_PENDING);
}

static PyObject *req_get_cancelled(RequestObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->state == REQ_CANCELLED);
}

static PyObject *req_get_pool(RequestObject *self, void *c)
{
    (void)c;
    return Py_NewRef((PyObject *)self->pool);
}

static int req_traverse(RequestObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pool);
    Py_VISIT(self->fn);
    Py_VISIT(self->args);
    Py_VISIT(self->callback);
    Py_VISIT(self->result);
    Py_VISIT(self->exc);
    return 0;
}

static int req_clear(RequestObject *self)
{
    /* In flight, libqloop holds a reference: never garbage then. */
    Py_CLEAR(self->callback);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    return 0;
}

static void req_dealloc(RequestObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->fn);
    Py_CLEAR(self->args);
    Py_CLEAR(self->callback);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->pool);
    PyObject_GC_Del(self);
}

static PyObject *req_repr(RequestObject *self)
{
    static const char *names[] = {"pending", "done", "cancelled"};
    return PyUnicode_FromFormat("<ThreadPoolRequest %s>", names[self->state]);
}

static PyMethodDef req_methods[] = {
    {"cancel", (PyCFunction)req_cancel, METH_NOARGS,
     "cancel() -> bool\n\nStill queued: removed, its callback runs later with the request "
     "cancelled; returns True.  Running or done: nothing changes, returns False."},
    {"result", (PyCFunction)req_result, METH_NOARGS,
     "result()\n\nfn's return value; raises fn's exception, CancelledError if cancelled, "
     "RuntimeError if not done."},
    {"exception", (PyCFunction)req_exception, METH_NOARGS,
     "exception()\n\nThe exception fn raised, or None."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef req_getset[] = {
    {"done", (getter)req_get_done, NULL, "True once the completion ran.", NULL},
    {"cancelled", (getter)req_get_cancelled, NULL, "True if cancelled before it ran.", NULL},
    {"pool", (getter)req_get_pool, NULL, "The ThreadPool.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop.ThreadPoolRequest",
    .tp_doc = "A request submitted to a ThreadPool.",
    .tp_basicsize = sizeof(RequestObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)req_dealloc,
    .tp_traverse = (traverseproc)req_traverse,
    .tp_clear = (inquiry)req_clear,
    .tp_repr = (reprfunc)req_repr,
    .tp_methods = req_methods,
    .tp_getset = req_getset,
};

/* _core._current_context(): the AioContext this thread is polling, or None. */
static PyObject *current_context(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    if (qlpy_top_frame && qlpy_top_frame->ctx && qlpy_top_frame->ctx->ctx) {
        return Py_NewRef((PyObject *)qlpy_top_frame->ctx);
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_context_thread_pool", (PyCFunction)(void (*)(void))context_thread_pool, METH_FASTCALL,
     NULL},
    {"_current_context", current_context, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int qlpy_threadpool_register(PyObject *m)
{
    if (PyType_Ready(&ThreadPoolType) < 0 || PyType_Ready(&RequestType) < 0) {
        return -1;
    }
    static int key_created;
    if (!key_created) {
        if (pthread_key_create(&worker_ts_key, worker_ts_destroy) != 0) {
            PyErr_NoMemory();
            return -1;
        }
        key_created = 1;
    }
    CancelledError = PyErr_NewExceptionWithDoc(
        "qloop.CancelledError", "A thread-pool request was cancelled before it ran.", NULL, NULL);
    if (!CancelledError || PyModule_AddObjectRef(m, "CancelledError", CancelledError) < 0 ||
        PyModule_AddObjectRef(m, "ThreadPool", (PyObject *)&ThreadPoolType) < 0 ||
        PyModule_AddObjectRef(m, "ThreadPoolRequest", (PyObject *)&RequestType) < 0 ||
        PyModule_AddFunctions(m, module_methods) < 0) {
        return -1;
    }
    return 0;
}
