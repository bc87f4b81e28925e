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

#endif
