/*
 * Temporary stand-in for qlpy_defer_exception(): the context glue
 * (csrc/python/context.c) replaces it with the real thing, which hands the
 * exception to the AioContext.poll() that ran the coroutine.  Until then an
 * exception from a coroutine resumed by C is reported as unraisable.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "glue.h"

void qlpy_defer_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
    PyErr_WriteUnraisable(NULL);
}
