/*
 * csrc/python/pystate.h - the slice of PyThreadState that belongs to one
 * stackful coroutine, per CPython version (3.10 - 3.13).
 *
 * See docs/python-stack-switching.md for what each field is and what breaks
 * when it is not switched.  Everything here is inline and allocation-free:
 * it runs in the switch hooks, between "leave one stack" and "enter the
 * other", where no Python code may run.
 *
 * A QLPyState is a record of the fields; it owns one strong reference to
 * `context` while it holds the state (the running side's reference lives in
 * the thread state).  Saving moves the fields out of the thread state,
 * restoring moves them back (the record's `context` becomes NULL).
 *
 * What is deliberately not in the record:
 *  - the handled-exception stack is switched by pointer only: every coroutine
 *    has its own bottom _PyErr_StackItem (QLPyCoroutine's exc_item), so its
 *    chain never reaches the thread state's embedded exc_state, whose contents
 *    therefore never need copying;
 *  - the error indicator (curexc_* / current_exception): it must be empty at
 *    every switch; the hooks move a stray one across explicitly;
 *  - per-thread things: tracing/profiling functions and the `tracing` depth,
 *    eval_breaker, async exceptions, the trashcan's delete_later list.
 */
#ifndef QLOOP_PY_PYSTATE_H
#define QLOOP_PY_PYSTATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>

#if PY_VERSION_HEX < 0x030A0000 || PY_VERSION_HEX >= 0x030E0000
#error "qloop's coroutine glue supports CPython 3.10 to 3.13"
#endif
#ifdef Py_GIL_DISABLED
#error "qloop's coroutine glue does not support free-threaded CPython yet"
#endif

#if PY_VERSION_HEX >= 0x030B0000
#define QLPY_HAVE_DATASTACK 1      /* 3.11+: frames live in data-stack chunks */
#endif
#if PY_VERSION_HEX < 0x030D0000
#define QLPY_HAVE_CFRAME 1         /* 3.10 - 3.12: C-stack frame link */
#endif
#if PY_VERSION_HEX < 0x030C0000
#define QLPY_HAVE_USE_TRACING 1    /* 3.10, 3.11: cframe->use_tracing */
#endif
#if PY_VERSION_HEX >= 0x030C0000
#define QLPY_HAVE_C_RECURSION 1    /* 3.12+: separate C recursion budget */
#endif

#if PY_VERSION_HEX < 0x030B0000
typedef CFrame QLPyCFrame;
#elif PY_VERSION_HEX < 0x030D0000
typedef _PyCFrame QLPyCFrame;
#endif

#if PY_VERSION_HEX >= 0x030D0000
#define QLPY_C_RECURSION_LIMIT Py_C_RECURSION_LIMIT
#elif PY_VERSION_HEX >= 0x030C0000
#define QLPY_C_RECURSION_LIMIT C_RECURSION_LIMIT
#endif

typedef struct QLPyState {
#if PY_VERSION_HEX < 0x030B0000
    PyFrameObject *frame;           /* borrowed: innermost frame */
#elif PY_VERSION_HEX >= 0x030D0000
    struct _PyInterpreterFrame *current_frame;
#endif
#ifdef QLPY_HAVE_CFRAME
    /* Innermost C-frame link; on 3.11/3.12 it also carries current_frame,
     * which stays in the struct (on the owner's C stack) while switched out. */
    QLPyCFrame *cframe;
#endif
    int py_depth;                   /* Python recursion depth (limit - remaining) */
#ifdef QLPY_HAVE_C_RECURSION
    int c_recursion_remaining;
#endif
#if PY_VERSION_HEX < 0x030D0000
    int trash_delete_nesting;
#endif
#ifdef QLPY_HAVE_DATASTACK
    _PyStackChunk *datastack_chunk;
    PyObject **datastack_top;
    PyObject **datastack_limit;
#endif
    _PyErr_StackItem *exc_info;     /* top of the handled-exception stack */
    PyObject *context;              /* strong reference while in the record */
} QLPyState;

/* Move the coroutine-specific fields of ts into r (r takes ts's reference to
 * the context; ts->context is left dangling and must be overwritten by a
 * restore before anything else runs). */
static inline void qlpy_state_save(QLPyState *r, PyThreadState *ts)
{
#if PY_VERSION_HEX < 0x030B0000
    r->frame = ts->frame;
    r->py_depth = ts->recursion_depth;
#elif PY_VERSION_HEX < 0x030C0000
    r->py_depth = ts->recursion_limit - ts->recursion_remaining;
#else
    r->py_depth = ts->py_recursion_limit - ts->py_recursion_remaining;
    r->c_recursion_remaining = ts->c_recursion_remaining;
#endif
#if PY_VERSION_HEX >= 0x030D0000
    r->current_frame = ts->current_frame;
#endif
#ifdef QLPY_HAVE_CFRAME
    r->cframe = ts->cframe;
#endif
#if PY_VERSION_HEX < 0x030C0000
    r->trash_delete_nesting = ts->trash_delete_nesting;
#elif PY_VERSION_HEX < 0x030D0000
    r->trash_delete_nesting = ts->trash.delete_nesting;
#endif
#ifdef QLPY_HAVE_DATASTACK
    r->datastack_chunk = ts->datastack_chunk;
    r->datastack_top = ts->datastack_top;
    r->datastack_limit = ts->datastack_limit;
#endif
    r->exc_info = ts->exc_info;
    r->context = ts->context;
}

/* Move r back into ts (ts takes r's context reference; r->context becomes
 * NULL) and invalidate ContextVar caches (context_ver). */
static inline void qlpy_state_restore(QLPyState *r, PyThreadState *ts)
{
#if PY_VERSION_HEX < 0x030B0000
    ts->frame = r->frame;
    ts->recursion_depth = r->py_depth;
#elif PY_VERSION_HEX < 0x030C0000
    /* As a depth, so a sys.setrecursionlimit() made meanwhile holds. */
    ts->recursion_remaining = ts->recursion_limit - r->py_depth;
#else
    ts->py_recursion_remaining = ts->py_recursion_limit - r->py_depth;
    ts->c_recursion_remaining = r->c_recursion_remaining;
#endif
#if PY_VERSION_HEX >= 0x030D0000
    ts->current_frame = r->current_frame;
#endif
#ifdef QLPY_HAVE_CFRAME
    ts->cframe = r->cframe;
#endif
#if PY_VERSION_HEX < 0x030C0000
    ts->trash_delete_nesting = r->trash_delete_nesting;
#elif PY_VERSION_HEX < 0x030D0000
    ts->trash.delete_nesting = r->trash_delete_nesting;
#endif
#ifdef QLPY_HAVE_DATASTACK
    ts->datastack_chunk = r->datastack_chunk;
    ts->datastack_top = r->datastack_top;
    ts->datastack_limit = r->datastack_limit;
#endif
    ts->exc_info = r->exc_info;
    ts->context = r->context;
    r->context = NULL;
    ts->context_ver++;
}

/* 3.10/3.11: "tracing follows the thread": the value of use_tracing of the
 * side being left is carried into the side being entered (sys.settrace()
 * only updates the running cframe). */
static inline int qlpy_state_tracing_flag(PyThreadState *ts)
{
#ifdef QLPY_HAVE_USE_TRACING
    return ts->cframe->use_tracing;
#else
    (void)ts;
    return 0;
#endif
}

static inline void qlpy_state_set_tracing_flag(PyThreadState *ts, int flag)
{
#ifdef QLPY_HAVE_USE_TRACING
    ts->cframe->use_tracing = flag;
#else
    (void)ts;
    (void)flag;
#endif
}

/* Swap: save the running side into `out`, restore `in`. */
static inline void qlpy_state_switch(QLPyState *out, QLPyState *in, PyThreadState *ts)
{
    int tracing = qlpy_state_tracing_flag(ts);
    qlpy_state_save(out, ts);
    qlpy_state_restore(in, ts);
    qlpy_state_set_tracing_flag(ts, tracing);
}

/*
 * Bytes of the coroutine's C stack given to its root data-stack chunk (3.11+)
 * for a usable stack of `stack_size` bytes: 1/16 of the stack, between 1 and
 * 16 KiB (CPython's own chunks are 16 KiB).  The chunk lives in the entry
 * function's frame on the coroutine's own stack, so a short coroutine touches
 * one contiguous run of pages and needs no allocation.
 */
static inline size_t qlpy_root_chunk_bytes(size_t stack_size)
{
#ifdef QLPY_HAVE_DATASTACK
    size_t b = stack_size / 16;
    if (b > 16384) {
        b = 16384;
    }
    if (b < 1024) {
        b = 1024;
    }
    return b & ~(size_t)15;
#else
    (void)stack_size;
    return 0;
#endif
}

#endif /* QLOOP_PY_PYSTATE_H */
