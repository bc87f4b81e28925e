/*
 * csrc/python/glue.h - functions of the CPython glue that the cffi module
 * exposes.  Everything here runs with the GIL held (see README.md).
 */
#ifndef QLOOP_PY_GLUE_H
#define QLOOP_PY_GLUE_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include "qloop/coroutine.h"

/* cffi:begin */
/* 1 if the calling thread holds the GIL (PyGILState_Check()), else 0. */
int qlpy_gil_held(void);
/* cffi:end */

/* An exception escaped Python code that the loop ran (a coroutine resumed by
 * C, say).  Steals a reference to the exception instance.  The innermost
 * poll()/dispatch() running in this thread re-raises it when it returns, and
 * stops dispatching after the current callback; with none running it is
 * reported through sys.unraisablehook. */
void qlpy_defer_exception(PyObject *exc);

/* Install libqloop's blocking hooks (release the GIL while blocked). */
void qlpy_install_blocking_hooks(void);

/* ---- Python coroutines (coroutine.c); not for cffi: they use PyObject ---- */
#ifdef Py_PYTHON_H

/* An exception escaped a Python coroutine that was resumed by C (a BH,
 * co_wake from a lock, co_schedule) and that nobody join()s: the
 * AioContext.poll() / main_loop_wait() that ran it re-raises it once control
 * is back out of C.  Steals the reference.  Implemented by the context glue
 * (defer-stub.c is a stand-in that reports it as unraisable). */
void qlpy_defer_exception(PyObject *exc);

/* The core coroutine of a qloop.Coroutine (borrowed; valid while the object
 * lives), or NULL + TypeError. */
QLCoroutine *qlpy_coroutine_cptr(PyObject *co);
/* Keep a qloop.Coroutine alive until it next runs: call it when handing the
 * core coroutine to something that will enter it later (ql_co_schedule, an fd
 * handler...).  The coroutine drops the reference itself once it runs; if
 * the hand-off fails, undo with qlpy_coroutine_unpin(). */
void qlpy_coroutine_pin(PyObject *co);
void qlpy_coroutine_unpin(PyObject *co);
/* coroutine_yield() for C glue: 0 once re-entered, -1 with an exception
 * (RuntimeError outside a coroutine, CoroutineExit when it is killed). */
int qlpy_coroutine_yield(void);
/* Release references deferred by coroutines that finished on their own
 * stack, and unwind coroutines dropped by other threads.  Call after any C
 * call that may have run coroutines (poll, dispatch).  Cheap when idle. */
void qlpy_coroutine_service(void);

#endif

#endif
