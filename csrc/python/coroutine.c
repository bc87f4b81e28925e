/*
 * qloop.Coroutine: a Python callable run on its own C stack by the core's
 * stackful coroutines, and the module functions around it (coroutine_yield,
 * coroutine_self, in_coroutine, co_wake, co_sleep_ns, CoroutineExit).
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
#include "qloop/coroutine.h"

#if PY_VERSION_HEX >= 0x030D0000
#define qlpy_is_finalizing() Py_IsFinalizing()
#define qlpy_ts_unchecked() PyThreadState_GetUnchecked()
#else
#define qlpy_is_finalizing() _Py_IsFinalizing()
#define qlpy_ts_unchecked() _PyThreadState_UncheckedGet()
#endif

PyObject *qlpy_CoroutineExit;

/* Sleeping needs the AioContext core (co-sleep.c); until it is linked in,
 * co_sleep_ns() reports that it is unavailable. */
int ql_co_sleep_ns(QLClockType clock, int64_t ns) __attribute__((weak));

/* ---- per-thread bookkeeping ------------------------------------------ */

struct QLPyThread {
    uint64_t id;              /* PyThreadState id (never reused) */
    int alive;                /* cleared when the thread state is cleared */
    Py_ssize_t refcnt;        /* sentinel (while alive) + coroutines owning it */
    QLPyCoroutine *live;      /* started, unfinished coroutines */
    PyObject *kill_queue;     /* list: dropped in other threads, to unwind here */
    PyObject *zombies;        /* list: references to release later */
};

/* All fields are touched with the GIL held only. */
static _Thread_local QLPyThread *tl_thread;
static _Thread_local QLPyCoroutine *tl_current;
static int service_pending; /* some thread has zombies or kills queued */

static void thread_unref(QLPyThread *t)
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
        if (tl_thread == t) {
            tl_thread = NULL;
        }
        PyObject *k = t->kill_queue, *z = t->zombies;
        t->kill_queue = t->zombies = NULL;
        Py_XDECREF(k); /* their owner is dead now: they only free memory */
        Py_XDECREF(z);
        thread_unref(t);
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
static QLPyThread *thread_get(PyThreadState *ts)
{
    QLPyThread *t = tl_thread;
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
    tl_thread = t;
    return t;
}

static void live_add(QLPyCoroutine *self)
{
    QLPyThread *t = self->owner;
    self->live_prev = NULL;
    self->live_next = t->live;
    if (t->live) {
        t->live->live_prev = self;
    }
    t->live = self;
}

static void live_remove(QLPyCoroutine *self)
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
static int zombie_add(QLPyThread *t, PyObject *o)
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
    service_pending = 1;
    return 0;
}

QLPyCoroutine *qlpy_current(void)
{
    return tl_current;
}

/* ---- errors ----------------------------------------------------------- */

static void stray_take(QLPyStray *s)
{
#if PY_VERSION_HEX >= 0x030C0000
    s->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&s->type, &s->value, &s->tb);
#endif
}

static void stray_give(QLPyStray *s)
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
        stray_take(&self->own_stray); /* no Python runs in these calls */
    }
    qlpy_state_switch(&self->own, &self->caller, ts);
    if (stray_present(&self->caller_stray)) {
        stray_give(&self->caller_stray);
    }
    tl_current = self->prev_current;
    self->state = QLPY_CO_SUSPENDED;
}

static void co_resume(QLCoroutine *co, void *opaque)
{
    QLPyCoroutine *self = opaque;
    PyThreadState *ts = qlpy_ts_unchecked();
    (void)co;
    if (ts != self->ts) {
        Py_FatalError("qloop: a Python coroutine was resumed in a thread that "
                      "does not own it");
    }
    if (ts_error_set(ts)) {
        stray_take(&self->caller_stray);
    }
    qlpy_state_switch(&self->caller, &self->own, ts);
    if (stray_present(&self->own_stray)) {
        stray_give(&self->own_stray);
    }
    self->prev_current = tl_current;
    tl_current = self;
    self->state = QLPY_CO_RUNNING;
    self->held += self->pins;
    self->pins = 0;
}

/* Drop the references the coroutine holds on itself, if someone else holds
 * one too (so this never frees it). */
static void drop_held(QLPyCoroutine *self)
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
        QLPyThread *t = thread_get(ts);
        if (!t) {
            Py_FatalError("qloop: cannot start a Python coroutine in this thread");
        }
        t->refcnt++;
        thread_unref(self->owner);
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
        stray_take(&self->caller_stray);
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
    self->prev_current = tl_current;
    tl_current = self;
    self->state = QLPY_CO_RUNNING;
    self->held += self->pins;
    self->pins = 0;
    /* ... to here. */

    live_add(self);
    PyObject *res = PyObject_Call(self->fn, self->args, NULL);
    PyObject *exc = res ? NULL : fetch_exception();
    self->state = QLPY_CO_DONE; /* from now on it may not yield */
    live_remove(self);
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
        drop_held(self);
        if (self->held) {
            self->held--;
            if (zombie_add(self->owner, (PyObject *)self) < 0) {
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
    tl_current = self->prev_current;
    {
        int tracing = qlpy_state_tracing_flag(ts);
        qlpy_state_restore(&self->caller, ts);
        qlpy_state_set_tracing_flag(ts, tracing);
    }
    if (stray_present(&self->caller_stray)) {
        stray_give(&self->caller_stray);
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
    QLPyThread *t = thread_get(ts);
    if (!t) {
        return NULL;
    }
    if (service_pending) {
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

static int owner_is_current(QLPyCoroutine *self, PyThreadState *ts)
{
    return self->owner->alive && self->owner_id == ts->id;
}

/* Unwind a suspended coroutine by throwing CoroutineExit into it.  Owner
 * thread, GIL held; self referenced by the caller. */
static void co_kill(QLPyCoroutine *self)
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

static int killable(QLPyCoroutine *self)
{
    return self->state == QLPY_CO_SUSPENDED && !self->blocked && !self->immortal &&
           !self->pins && !ql_coroutine_entered(self->co);
}

static void co_finalize(QLPyCoroutine *self)
{
    if (!killable(self) || qlpy_is_finalizing()) {
        return;
    }
    PyThreadState *ts = PyThreadState_Get();
    QLPyStray saved;
    stray_take(&saved);
    if (owner_is_current(self, ts)) {
        co_kill(self);
    } else if (self->owner->alive) {
        /* Queue for the owner thread (this resurrects the object). */
        QLPyThread *t = self->owner;
        if (!t->kill_queue) {
            t->kill_queue = PyList_New(0);
        }
        if (!t->kill_queue || PyList_Append(t->kill_queue, (PyObject *)self) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        service_pending = 1;
    }
    stray_give(&saved);
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
        live_remove(self);
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
        thread_unref(self->owner);
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
    PyThreadState *ts = qlpy_ts_unchecked();
    if (self->owner_id != ts->id) {
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
    if (ts->tracing) {
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
    if (service_pending) {
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
        QLPyCoroutine *cur = tl_current;
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

/* ---- waits inside the core --------------------------------------------- */

/* Checks shared by everything that may switch away from the running
 * coroutine. */
static QLPyCoroutine *switchable_current(const char *what)
{
    QLPyCoroutine *self = tl_current;
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
    return self;
}

QLPyCoroutine *qlpy_wait_begin(const char *what)
{
    QLPyCoroutine *self = switchable_current(what);
    if (self) {
        Py_INCREF(self);
        self->pins++;
        self->blocked = what;
    }
    return self;
}

void qlpy_wait_end(QLPyCoroutine *self)
{
    self->blocked = NULL;
    self->held += self->pins; /* it did not have to wait */
    self->pins = 0;
    drop_held(self);
}

/* ---- module functions -------------------------------------------------- */

static PyObject *mod_coroutine_yield(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    QLPyCoroutine *self = switchable_current("coroutine_yield()");
    if (!self) {
        return NULL;
    }
    if (self->held) {
        drop_held(self);
        if (self->held) {
            /* Only our own references are left: once suspended nobody could
             * ever resume us.  Unwind now, as the garbage collector would. */
            self->kill = 1;
        }
    }
    if (!self->kill) {
        ql_coroutine_yield(); /* the hooks switch the thread state */
    }
    if (self->kill) {
        PyErr_SetString(qlpy_CoroutineExit,
                        "coroutine killed: all references to it have vanished");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *mod_coroutine_self(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    QLPyCoroutine *self = tl_current;
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

/* Wake co (ctx == NULL: where it last ran, QEMU's aio_co_wake) or schedule it
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
    if (co->state == QLPY_CO_RUNNING) {
        PyErr_Format(PyExc_RuntimeError, "%s: the coroutine is already running", what);
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
        drop_held(co); /* it ran already; we hold a reference to it */
    }
    if (service_pending) {
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
    if (!ql_co_sleep_ns) {
        PyErr_SetString(PyExc_NotImplementedError,
                        "co_sleep_ns(): this build has no AioContext core");
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
static PyObject *mod_kill_all(PyObject *m, PyObject *Py_UNUSED(unused))
{
    (void)m;
    PyThreadState *ts = PyThreadState_Get();
    QLPyThread *t = tl_thread;
    if (!t || t->id != ts->id) {
        Py_RETURN_NONE;
    }
    qlpy_coroutine_service();
    for (int guard = 0; guard < 1000000; guard++) {
        QLPyCoroutine *c = t->live;
        while (c && !killable(c)) {
            c = c->live_next;
        }
        if (!c) {
            break;
        }
        Py_INCREF(c);
        co_kill(c);
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
    QLPyThread *t = tl_thread;
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
    QLPyThread *t = tl_thread;
    if (!t || !ts || t->id != ts->id) {
        return;
    }
    service_pending = 0;
    for (int round = 0; round < 16 && (t->zombies || t->kill_queue); round++) {
        PyObject *z = t->zombies;
        t->zombies = NULL;
        Py_XDECREF(z);
        PyObject *k = t->kill_queue;
        t->kill_queue = NULL;
        if (k) {
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(k); i++) {
                QLPyCoroutine *c = (QLPyCoroutine *)PyList_GET_ITEM(k, i);
                if (killable(c) && owner_is_current(c, ts)) {
                    co_kill(c);
                }
            }
            Py_DECREF(k);
        }
    }
    if (t->zombies || t->kill_queue) {
        service_pending = 1;
    }
}

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
    {"_coroutine_kill_all", mod_kill_all, METH_NOARGS,
     "Unwind the suspended coroutines of this thread (atexit hook)."},
    {"_coroutine_live_count", mod_live_count, METH_NOARGS,
     "Number of started, unfinished coroutines of this thread."},
    {"_coroutine_service", mod_service, METH_NOARGS,
     "Release deferred references and unwind coroutines dropped by other threads."},
    {NULL, NULL, 0, NULL},
};

int qlpy_coroutine_init(PyObject *m)
{
    if (PyType_Ready(&ThreadSentinel_Type) < 0 || PyType_Ready(&QLPyCoroutine_Type) < 0) {
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
    return PyModule_AddFunctions(m, coroutine_functions);
}
