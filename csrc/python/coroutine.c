/*
 * qloop.Coroutine: a Python callable run on its own C stack by the core's
 * stackful coroutines; qloop.CoroutineExit.  Module functions are in
 * coroutine-api.c, per-thread bookkeeping in pythread.c.
 *
 * Thread-state protocol (docs/python-stack-switching.md): the core never
 * calls Python; all saving and restoring happens on the coroutine's side.
 *  - co_entry(), first switch-in, on the new stack: save the resumer's state
 *    as `caller`, install a fresh state, call fn; at the end store the
 *    outcome, restore `caller`, return (the core switches back).
 *  - co_leave()/co_resume(), the core's per-coroutine switch hooks, run on
 *    the coroutine's stack around every yield, whoever initiated it (our
 *    coroutine_yield(), or the core inside a lock/queue/sleep wait):
 *    leave = save own state, restore caller; resume = save whoever entered us
 *    now as caller, restore own state.
 * Between those saves and restores no Python code runs and nothing is
 * allocated.
 *
 * Lifetime: a suspended coroutine nobody references is unwound by throwing
 * CoroutineExit into it on its owner thread (tp_finalize); from another
 * thread it is queued for its owner; once the owner is gone only memory
 * Python owns is released (its C stack and frames leak, see the README).
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

#if PY_VERSION_HEX >= 0x030D0000
#define qlpy_is_finalizing() Py_IsFinalizing()
#else
#define qlpy_is_finalizing() _Py_IsFinalizing()
#endif

PyObject *qlpy_CoroutineExit;

/* ---- errors ----------------------------------------------------------- */

void qlpy_stray_take(QLPyStray *s)
{
#if PY_VERSION_HEX >= 0x030C0000
    s->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&s->type, &s->value, &s->tb);
#endif
}

void qlpy_stray_give(QLPyStray *s)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(s->exc);
    s->exc = NULL;
#else
    PyErr_Restore(s->type, s->value, s->tb);
    s->type = s->value = s->tb = NULL;
#endif
}

static int stray_present(const QLPyStray *s)
{
#if PY_VERSION_HEX >= 0x030C0000
    return s->exc != NULL;
#else
    return s->type != NULL;
#endif
}

static int ts_error_set(PyThreadState *ts)
{
#if PY_VERSION_HEX >= 0x030C0000
    return ts->current_exception != NULL;
#else
    return ts->curexc_type != NULL;
#endif
}

/* The pending exception as one normalized instance (traceback attached);
 * clears the error indicator. */
static PyObject *fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb && v) {
        PyException_SetTraceback(v, tb);
    }
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
#endif
}

/* Raise exc (borrowed) again, keeping its traceback. */
static void raise_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(Py_NewRef(exc));
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), Py_NewRef(exc),
                  PyException_GetTraceback(exc));
#endif
}

PyObject *qlpy_co_error(int err, const char *what)
{
    switch (err) {
    case -EBUSY:
        PyErr_Format(PyExc_RuntimeError, "%s: the coroutine is already running", what);
        break;
    case -EINVAL:
        PyErr_Format(PyExc_RuntimeError, "%s: the coroutine has finished", what);
        break;
    case -EALREADY:
        PyErr_Format(PyExc_RuntimeError,
                     "%s: the coroutine is scheduled (co_schedule or co_sleep_ns) "
                     "and will be entered by its context", what);
        break;
    case -EPERM:
        PyErr_Format(PyExc_RuntimeError, "%s: not allowed here (outside a coroutine, "
                     "or the caller does not hold the lock)", what);
        break;
    case -EDEADLK:
        PyErr_Format(PyExc_RuntimeError, "%s: the calling coroutine already holds it", what);
        break;
    case -ENOMEM:
        PyErr_NoMemory();
        break;
    default:
        errno = -err;
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    }
    return NULL;
}

/* ---- switch hooks and the entry trampoline ----------------------------- */

/*
 * 3.10/3.11 default recursion budget: Python calls consume C stack (3.10) or
 * share one counter with C re-entries (3.11), so a coroutine starts deep
 * enough that the counter runs out before its stack: one level per KiB.
 * 3.12+: separate C budget, 512 bytes per unit (doc section 3.4).
 */
#define QLPY_STACK_MARGIN (12 * 1024)
/* Smallest stack a Python coroutine may ask for. */
#define QLPY_MIN_STACK (32 * 1024)

static size_t usable_stack(QLPyCoroutine *self)
{
    size_t used = qlpy_root_chunk_bytes(self->stack_size) + QLPY_STACK_MARGIN;
    return self->stack_size > used ? self->stack_size - used : 0;
}

static void co_leave(QLCoroutine *co, void *opaque)
{
    QLPyCoroutine *self = opaque;
    PyThreadState *ts = self->ts;
    (void)co;
    if (ts_error_set(ts)) {
        qlpy_stray_take(&self->own_stray); /* no Python runs in these calls */
    }
    qlpy_state_switch(&self->own, &self->caller, ts);
    if (stray_present(&self->caller_stray)) {
        qlpy_stray_give(&self->caller_stray);
    }
    qlpy_tl_current = self->prev_current;
    self->state = QLPY_CO_SUSPENDED;
}

static void co_resume(QLCoroutine *co, void *opaque)
{
    QLPyCoroutine *self = opaque;
    PyThreadState *ts = self->ts;
    (void)co;
    if (qlpy_tl_thread != self->owner) { /* cheaper than asking CPython for ts */
        Py_FatalError("qloop: a Python coroutine was resumed in a thread that "
                      "does not own it");
    }
    if (ts_error_set(ts)) {
        qlpy_stray_take(&self->caller_stray);
    }
    qlpy_state_switch(&self->caller, &self->own, ts);
    if (stray_present(&self->own_stray)) {
        qlpy_stray_give(&self->own_stray);
    }
    self->prev_current = qlpy_tl_current;
    qlpy_tl_current = self;
    self->frame_base = qlpy_top_frame;
    self->state = QLPY_CO_RUNNING;
    self->held += self->pins;
    self->pins = 0;
}

/* Drop the references the coroutine holds on itself, if someone else holds
 * one too (so this never frees it). */
void qlpy_drop_held(QLPyCoroutine *self)
{
    while (self->held > 0 && Py_REFCNT(self) > 1) {
        self->held--;
        Py_DECREF(self);
    }
}

static void free_spilled_chunks(PyThreadState *ts, void *root)
{
#ifdef QLPY_HAVE_DATASTACK
    _PyStackChunk *c = ts->datastack_chunk;
    if (c == root || !c) {
        return;
    }
    PyObjectArenaAllocator alloc;
    PyObject_GetArenaAllocator(&alloc);
    while (c && c != root) {
        _PyStackChunk *prev = c->previous;
        alloc.free(alloc.ctx, c, c->size);
        c = prev;
    }
#else
    (void)ts;
    (void)root;
#endif
}

static void co_entry(void *opaque)
{
    QLPyCoroutine *self = opaque;
    PyThreadState *ts = PyThreadState_Get();

    if (ts != self->ts) {
        /* Started by the core in another thread (e.g. scheduled into that
         * thread's context): a coroutine that never ran has no state, so it
         * simply belongs to this thread from now on. */
        QLPyThread *t = qlpy_thread_get(ts);
        if (!t) {
            Py_FatalError("qloop: cannot start a Python coroutine in this thread");
        }
        t->refcnt++;
        qlpy_thread_unref(self->owner);
        self->owner = t;
        self->owner_id = ts->id;
        self->ts = ts;
    }

#ifdef QLPY_HAVE_DATASTACK
    size_t chunk_bytes = qlpy_root_chunk_bytes(self->stack_size);
    /* Root data-stack chunk on this stack (never written until used). */
    _PyStackChunk *chunk = __builtin_alloca(chunk_bytes);
#else
    void *chunk = NULL;
#endif
#ifdef QLPY_HAVE_CFRAME
    /* Base C-frame link on our own stack (doc section 3.2). */
    QLPyCFrame base = *ts->cframe;
    base.previous = &ts->root_cframe;
#if PY_VERSION_HEX >= 0x030B0000
    base.current_frame = NULL;
#endif
#endif
    size_t usable = usable_stack(self);

    /* ---- no Python code from here ... */
    if (ts_error_set(ts)) {
        qlpy_stray_take(&self->caller_stray);
    }
    qlpy_state_save(&self->caller, ts);
#if PY_VERSION_HEX < 0x030B0000
    {
        int limit = Py_GetRecursionLimit();
        int budget = (int)(usable / 1024);
        ts->frame = NULL;
        ts->recursion_depth = limit > budget ? limit - budget : 0;
    }
#elif PY_VERSION_HEX < 0x030C0000
    {
        int budget = (int)(usable / 1024);
        int limit = ts->recursion_limit;
        ts->recursion_remaining = limit > budget ? budget : limit;
    }
#else
    ts->py_recursion_remaining = ts->py_recursion_limit;
    {
        size_t c = usable / 512;
        ts->c_recursion_remaining = c < QLPY_C_RECURSION_LIMIT ? (int)c : QLPY_C_RECURSION_LIMIT;
    }
#endif
#if PY_VERSION_HEX >= 0x030D0000
    ts->current_frame = NULL;
#endif
#ifdef QLPY_HAVE_CFRAME
    ts->cframe = &base;
#endif
#if PY_VERSION_HEX < 0x030C0000
    ts->trash_delete_nesting = 0;
#elif PY_VERSION_HEX < 0x030D0000
    ts->trash.delete_nesting = 0;
#endif
#ifdef QLPY_HAVE_DATASTACK
    chunk->previous = NULL;
    chunk->size = chunk_bytes;
    chunk->top = 0;
    ts->datastack_chunk = chunk;
    ts->datastack_top = &chunk->data[1]; /* data[0] unused: never popped */
    ts->datastack_limit = (PyObject **)((char *)chunk + chunk_bytes);
#endif
    memset(&self->exc_item, 0, sizeof(self->exc_item));
    ts->exc_info = &self->exc_item;
    ts->context = self->own.context; /* our copy of the creator's context */
    self->own.context = NULL;
    ts->context_ver++;
    self->prev_current = qlpy_tl_current;
    qlpy_tl_current = self;
    self->frame_base = qlpy_top_frame;
    self->state = QLPY_CO_RUNNING;
    self->held += self->pins;
    self->pins = 0;
    /* ... to here. */

    qlpy_live_add(self);
    PyObject *res = PyObject_Call(self->fn, self->args, NULL);
    PyObject *exc = res ? NULL : fetch_exception();
    self->state = QLPY_CO_DONE; /* from now on it may not yield */
    qlpy_live_remove(self);
    Py_CLEAR(self->fn); /* may run Python code: still ours */
    Py_CLEAR(self->args);
    if (exc && self->kill && PyErr_GivenExceptionMatches(exc, qlpy_CoroutineExit)) {
        Py_CLEAR(exc); /* the kill worked */
        res = Py_NewRef(Py_None);
    }
    self->result = res;
    self->exc = exc;
    int joined = 0;
    if (self->joiners && !ql_co_queue_empty(self->joiners)) {
        joined = 1;
        ql_co_queue_restart_all(self->joiners); /* they run once we are gone */
    }
    if (exc && !self->py_entering && !joined) {
        /* Nobody is waiting for this outcome: the loop that ran us raises it. */
        qlpy_defer_exception(Py_NewRef(exc));
    }
    if (self->held) {
        /* Resumed by the core with nobody else referencing us: release the
         * last reference only once we are off this stack. */
        qlpy_drop_held(self);
        if (self->held) {
            self->held--;
            if (qlpy_zombie_add(self->owner, (PyObject *)self) < 0) {
                self->held++; /* leak rather than free a running coroutine */
            }
        }
    }
    /* Empty our bottom exception item and context (may run Python code). */
#if PY_VERSION_HEX < 0x030B0000
    Py_CLEAR(self->exc_item.exc_type);
    Py_CLEAR(self->exc_item.exc_traceback);
#endif
    Py_CLEAR(self->exc_item.exc_value);
    for (int i = 0; i < 3 && ts->context; i++) {
        PyObject *ctx = ts->context;
        ts->context = NULL;
        ts->context_ver++;
        Py_DECREF(ctx);
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable((PyObject *)self);
    }

    /* ---- no Python code from here on: back to the resumer. */
    free_spilled_chunks(ts, chunk);
    qlpy_tl_current = self->prev_current;
    {
        int tracing = qlpy_state_tracing_flag(ts);
        qlpy_state_restore(&self->caller, ts);
        qlpy_state_set_tracing_flag(ts, tracing);
    }
    if (stray_present(&self->caller_stray)) {
        qlpy_stray_give(&self->caller_stray);
    }
}

/* ---- the Coroutine type ------------------------------------------------- */

static PyObject *co_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n < 1) {
        PyErr_SetString(PyExc_TypeError, "Coroutine() missing required argument 'fn'");
        return NULL;
    }
    PyObject *fn = PyTuple_GET_ITEM(args, 0);
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "Coroutine() argument 'fn' must be callable, not %.100s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    size_t stack_size = 0;
    if (kwds && PyDict_GET_SIZE(kwds)) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(kwds, &pos, &key, &value)) {
            if (!PyUnicode_Check(key) || PyUnicode_CompareWithASCIIString(key, "stack_size") != 0) {
                PyErr_Format(PyExc_TypeError,
                             "Coroutine() got an unexpected keyword argument '%S'", key);
                return NULL;
            }
            if (value == Py_None) {
                continue;
            }
            if (!PyLong_Check(value)) {
                PyErr_Format(PyExc_TypeError,
                             "Coroutine() argument 'stack_size' must be int or None, not %.100s",
                             Py_TYPE(value)->tp_name);
                return NULL;
            }
            long long v = PyLong_AsLongLong(value);
            if (v == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                v = -1;
            }
            if (v < QLPY_MIN_STACK || v > ((long long)1 << 34)) {
                PyErr_Format(PyExc_ValueError,
                             "Coroutine() argument 'stack_size' must be between %d and 2**34 "
                             "bytes, got %R", QLPY_MIN_STACK, value);
                return NULL;
            }
            stack_size = (size_t)v;
        }
    }
    PyThreadState *ts = PyThreadState_Get();
    QLPyThread *t = qlpy_thread_get(ts);
    if (!t) {
        return NULL;
    }
    if (qlpy_service_pending) {
        qlpy_coroutine_service();
    }
    QLPyCoroutine *self = (QLPyCoroutine *)type->tp_alloc(type, 0);
    if (!self) {
        return NULL;
    }
    self->fn = Py_NewRef(fn);
    self->args = PyTuple_GetSlice(args, 1, n);
    self->own.context = PyContext_CopyCurrent();
    if (!self->args || !self->own.context) {
        Py_DECREF(self);
        return NULL;
    }
    self->owner = t;
    t->refcnt++;
    self->owner_id = ts->id;
    self->ts = ts;
    self->co = ql_coroutine_create_full(co_entry, self, stack_size);
    if (!self->co) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    ql_coroutine_ref(self->co);
    ql_coroutine_set_user_data(self->co, self);
    ql_coroutine_set_switch_hooks(self->co, co_leave, co_resume);
    self->stack_size = ql_coroutine_stack_size(self->co);
    return (PyObject *)self;
}

static int co_traverse(QLPyCoroutine *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fn);
    Py_VISIT(self->args);
    Py_VISIT(self->result);
    Py_VISIT(self->exc);
    Py_VISIT(self->own.context);
    Py_VISIT(self->caller.context);
    Py_VISIT(self->exc_item.exc_value);
#if PY_VERSION_HEX < 0x030B0000
    Py_VISIT(self->exc_item.exc_type);
    Py_VISIT(self->exc_item.exc_traceback);
#endif
    return 0;
}

static int co_clear(QLPyCoroutine *self)
{
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    if (self->state == QLPY_CO_NEW || self->state == QLPY_CO_DONE) {
        Py_CLEAR(self->fn);
        Py_CLEAR(self->args);
        Py_CLEAR(self->own.context);
    }
    return 0;
}

int qlpy_owner_is_current(QLPyCoroutine *self, PyThreadState *ts)
{
    return self->owner->alive && self->owner_id == ts->id;
}

/* Unwind a suspended coroutine by throwing CoroutineExit into it.  Owner
 * thread, GIL held; self referenced by the caller. */
void qlpy_co_kill(QLPyCoroutine *self)
{
    self->kill = 1;
    self->py_entering = 1;
    int r = ql_coroutine_enter(self->co);
    self->py_entering = 0;
    if (r < 0) {
        return; /* scheduled or entered: whoever holds it will run it */
    }
    if (self->state != QLPY_CO_DONE) {
        PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                         "CoroutineExit did not kill %R: it is leaked", (PyObject *)self);
        if (PyErr_Occurred()) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        self->immortal = 1;
        Py_INCREF(self); /* never unwound: keep its stack alive */
        return;
    }
    if (self->exc && !self->exc_taken) {
        self->exc_taken = 1;
        raise_exception(self->exc);
        PyErr_WriteUnraisable((PyObject *)self);
    }
}

int qlpy_co_killable(QLPyCoroutine *self)
{
    return self->state == QLPY_CO_SUSPENDED && !self->blocked && !self->immortal && !self->kill &&
           !self->pins && !ql_coroutine_entered(self->co);
}

static void co_finalize(QLPyCoroutine *self)
{
    if (!qlpy_co_killable(self) || qlpy_is_finalizing()) {
        return;
    }
    PyThreadState *ts = PyThreadState_Get();
    QLPyStray saved;
    qlpy_stray_take(&saved);
    if (qlpy_owner_is_current(self, ts)) {
        qlpy_co_kill(self);
    } else if (self->owner->alive) {
        /* Queue for the owner thread (this resurrects the object). */
        QLPyThread *t = self->owner;
        if (!t->kill_queue) {
            t->kill_queue = PyList_New(0);
        }
        if (!t->kill_queue || PyList_Append(t->kill_queue, (PyObject *)self) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        qlpy_service_pending = 1;
    }
    qlpy_stray_give(&saved);
}

static void co_dealloc(QLPyCoroutine *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return; /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakrefs) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->owner) {
        qlpy_live_remove(self);
    }
    Py_CLEAR(self->fn);
    Py_CLEAR(self->args);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->own.context);
#if PY_VERSION_HEX < 0x030B0000
    Py_CLEAR(self->exc_item.exc_type);
    Py_CLEAR(self->exc_item.exc_traceback);
#endif
    Py_CLEAR(self->exc_item.exc_value);
    if (self->co) {
        if (self->state == QLPY_CO_NEW || self->state == QLPY_CO_DONE) {
            ql_coroutine_set_user_data(self->co, NULL);
            ql_coroutine_unref(self->co);
        }
        /* else: suspended and could not be unwound (owner thread gone or
         * interpreter finalizing): its C stack and the frames on it leak. */
        self->co = NULL;
    }
    if (self->joiners) {
        ql_co_queue_free(self->joiners);
    }
    if (self->owner) {
        qlpy_thread_unref(self->owner);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static const char *state_name(QLPyCoroutine *self)
{
    switch (self->state) {
    case QLPY_CO_NEW:
        return "new";
    case QLPY_CO_RUNNING:
        return "running";
    case QLPY_CO_SUSPENDED:
        return self->blocked ? self->blocked : "suspended";
    default:
        return self->exc ? "failed" : "done";
    }
}

static PyObject *co_repr(QLPyCoroutine *self)
{
    PyObject *fn = self->fn;
    if (fn) {
        PyObject *name = PyObject_GetAttrString(fn, "__qualname__");
        if (!name) {
            PyErr_Clear();
        } else {
            PyObject *r = PyUnicode_FromFormat("<qloop.Coroutine %U %s>", name, state_name(self));
            Py_DECREF(name);
            return r;
        }
    }
    return PyUnicode_FromFormat("<qloop.Coroutine at %p %s>", self, state_name(self));
}

static PyObject *co_enter(QLPyCoroutine *self, PyObject *Py_UNUSED(unused))
{
    switch (self->state) {
    case QLPY_CO_RUNNING:
        PyErr_SetString(PyExc_RuntimeError,
                        "Coroutine.enter(): the coroutine is already running");
        return NULL;
    case QLPY_CO_DONE:
        PyErr_SetString(PyExc_RuntimeError, "Coroutine.enter(): the coroutine has finished");
        return NULL;
    default:
        break;
    }
    /* The owner's qlpy_tl_thread is its record while its thread state lives. */
    if (qlpy_tl_thread != self->owner || !self->owner->alive) {
        PyErr_SetString(PyExc_RuntimeError,
                        self->owner->alive
                            ? "Coroutine.enter(): the coroutine belongs to another thread"
                            : "Coroutine.enter(): the coroutine's thread has exited");
        return NULL;
    }
    if (self->blocked) {
        PyErr_Format(PyExc_RuntimeError,
                     "Coroutine.enter(): the coroutine is waiting in %s and is resumed by it",
                     self->blocked);
        return NULL;
    }
    if (self->ts->tracing) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Coroutine.enter(): cannot switch coroutines inside a trace or "
                        "profile function");
        return NULL;
    }
    self->py_entering = 1;
    int r = ql_coroutine_enter(self->co);
    self->py_entering = 0;
    if (r < 0) {
        return qlpy_co_error(r, "Coroutine.enter()");
    }
    if (qlpy_service_pending) {
        qlpy_coroutine_service();
    }
    if (self->exc && !self->exc_taken) {
        self->exc_taken = 1;
        raise_exception(self->exc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *co_result(QLPyCoroutine *self, PyObject *Py_UNUSED(unused))
{
    if (self->state != QLPY_CO_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "Coroutine.result(): the coroutine has not finished");
        return NULL;
    }
    if (self->exc) {
        self->exc_taken = 1;
        raise_exception(self->exc);
        return NULL;
    }
    return Py_NewRef(self->result ? self->result : Py_None);
}

static PyObject *co_join(QLPyCoroutine *self, PyObject *Py_UNUSED(unused))
{
    if (self->state != QLPY_CO_DONE) {
        QLPyCoroutine *cur = qlpy_tl_current;
        if (!cur) {
            PyErr_SetString(PyExc_RuntimeError,
                            "Coroutine.join() of an unfinished coroutine must be called "
                            "from another coroutine");
            return NULL;
        }
        if (cur == self) {
            PyErr_SetString(PyExc_RuntimeError, "Coroutine.join(): a coroutine cannot join itself");
            return NULL;
        }
        if (!self->joiners) {
            self->joiners = ql_co_queue_new();
            if (!self->joiners) {
                return PyErr_NoMemory();
            }
        }
        Py_INCREF(self);
        while (self->state != QLPY_CO_DONE) {
            QLPyCoroutine *me = qlpy_wait_begin("Coroutine.join()");
            if (!me) {
                Py_DECREF(self);
                return NULL;
            }
            int r = ql_co_queue_wait(self->joiners, NULL);
            qlpy_wait_end(me);
            if (r < 0) {
                Py_DECREF(self);
                return qlpy_co_error(r, "Coroutine.join()");
            }
        }
        Py_DECREF(self);
    }
    return co_result(self, NULL);
}

static PyObject *co_get_done(QLPyCoroutine *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->state == QLPY_CO_DONE);
}

static PyObject *co_get_state(QLPyCoroutine *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(state_name(self));
}

static PyObject *co_get_stack_size(QLPyCoroutine *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->stack_size);
}

static PyMethodDef co_methods[] = {
    {"enter", (PyCFunction)co_enter, METH_NOARGS,
     "enter()\n--\n\nRun the coroutine until it yields or finishes; re-raise its "
     "exception if it failed.  Owner thread only."},
    {"result", (PyCFunction)co_result, METH_NOARGS,
     "result()\n--\n\nThe return value of fn, or raise its exception.  RuntimeError "
     "if not finished."},
    {"join", (PyCFunction)co_join, METH_NOARGS,
     "join()\n--\n\nFrom another coroutine: wait until this one finishes, then "
     "return its result (or raise its exception)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef co_getset[] = {
    {"done", (getter)co_get_done, NULL, "True once fn returned or raised.", NULL},
    {"state", (getter)co_get_state, NULL,
     "'new', 'running', 'suspended', what it waits for, 'done' or 'failed'.", NULL},
    {"stack_size", (getter)co_get_stack_size, NULL, "Usable C stack bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject QLPyCoroutine_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop.Coroutine",
    .tp_basicsize = sizeof(QLPyCoroutine),
    .tp_dealloc = (destructor)co_dealloc,
    .tp_repr = (reprfunc)co_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Coroutine(fn, *args, stack_size=None)\n--\n\n"
              "Run fn(*args) on its own C stack.  It runs when entered (enter(), "
              "co_wake(), AioContext.co_schedule()) and gives control back with "
              "coroutine_yield() or by waiting on a CoMutex, CoQueue, CoRwlock or "
              "co_sleep_ns() - at any call depth.  It runs in a copy of the "
              "contextvars context current at its creation and belongs to the "
              "thread that created it.",
    .tp_traverse = (traverseproc)co_traverse,
    .tp_clear = (inquiry)co_clear,
    .tp_weaklistoffset = offsetof(QLPyCoroutine, weakrefs),
    .tp_methods = co_methods,
    .tp_getset = co_getset,
    .tp_new = co_new,
    .tp_finalize = (destructor)co_finalize,
};


int qlpy_coroutine_init(PyObject *m)
{
    if (PyType_Ready(&QLPyCoroutine_Type) < 0) {
        return -1;
    }
    if (!qlpy_CoroutineExit) {
        qlpy_CoroutineExit = PyErr_NewExceptionWithDoc(
            "qloop.CoroutineExit",
            "Thrown into a suspended coroutine that became garbage, to unwind it "
            "(finally blocks and with-exits run).",
            PyExc_BaseException, NULL);
        if (!qlpy_CoroutineExit) {
            return -1;
        }
    }
    if (PyModule_AddObject(m, "CoroutineExit", Py_NewRef(qlpy_CoroutineExit)) < 0 ||
        PyModule_AddObject(m, "Coroutine", Py_NewRef((PyObject *)&QLPyCoroutine_Type)) < 0) {
        return -1;
    }
    if (qlpy_pythread_init(m) < 0) {
        return -1;
    }
    return qlpy_coroutine_api_init(m);
}
