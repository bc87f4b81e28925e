/* Exceptions across the C boundary: -errno -> OSError, and callback
 * exceptions carried from a dispatch back to the poll() that ran it. */
#include "pycontext.h"

#include <string.h>

PyObject *qlpy_raise_errno(int neg_errno)
{
    errno = -neg_errno;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* The innermost running dispatch of this thread (see DispatchFrame). */
_Thread_local DispatchFrame *qlpy_top_frame QLPY_TLS_MODEL;

/* Take the raised exception as one object (traceback attached). */
PyObject *qlpy_fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (!type) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb) {
        PyException_SetTraceback(value, tb);
        Py_DECREF(tb);
    }
    Py_DECREF(type);
    return value;
#endif
}

void qlpy_restore_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyObject *tb = PyException_GetTraceback(exc);
    PyObject *type = (PyObject *)Py_TYPE(exc);
    Py_INCREF(type);
    PyErr_Restore(type, exc, tb);
#endif
}

/* The dispatch that raises what a callback of ctx (NULL: no context) raises:
 * the innermost one of that very context, else the innermost one. */
static DispatchFrame *frame_for(ContextObject *ctx)
{
    DispatchFrame *f = qlpy_top_frame;
    if (ctx) {
        DispatchFrame *g = f;
        while (g && g->ctx != ctx) {
            g = g->prev;
        }
        if (g) {
            f = g;
        }
    }
    while (f && f->link) {
        f = f->link;
    }
    return f;
}

int qlpy_callback_exception_pending(ContextObject *ctx)
{
    DispatchFrame *f = frame_for(ctx);
    return f && f->exc;
}

static void defer(ContextObject *ctx, PyObject *exc)
{
    DispatchFrame *f = frame_for(ctx);
    if (!f) {
        /* Nobody in Python will see it: report it rather than swallow it. */
        qlpy_restore_exception(exc);
        PyErr_WriteUnraisable(ctx ? (PyObject *)ctx : Py_None);
        return;
    }
    if (f->exc) {
        /* A second failure in the same dispatch: keep the first, report this. */
        qlpy_restore_exception(exc);
        PyErr_WriteUnraisable((PyObject *)f->ctx);
        return;
    }
    f->exc = exc;
    /* Stop the dispatch that ran the callback (it may be another context
     * than the frame's, e.g. the iohandler context under main_loop_wait),
     * and those of the frames linked to this one. */
    if (ctx && ctx->ctx) {
        ql_context_stop_dispatch(ctx->ctx);
    }
    for (DispatchFrame *g = qlpy_top_frame; g; g = g->prev) { /* linked ones are above f */
        if ((g == f || g->link == f) && g->ctx && g->ctx->ctx && g->ctx != ctx) {
            ql_context_stop_dispatch(g->ctx->ctx);
        }
        if (g == f) {
            break;
        }
    }
}

void qlpy_callback_failed(ContextObject *ctx)
{
    PyObject *exc = qlpy_fetch_exception();
    if (exc) {
        defer(ctx, exc);
    }
}

void qlpy_defer_exception(PyObject *exc)
{
    defer(NULL, exc);
}

void qlpy_call_callback(ContextObject *ctx, PyObject *cb, PyObject *args)
{
    PyObject *r;
    Py_INCREF(cb); /* the callback may drop the last other reference to itself */
    Py_XINCREF(args);
    vectorcallfunc vc = PyVectorcall_Function(cb);
    if (args) {
        r = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(args, 0),
                                (size_t)PyTuple_GET_SIZE(args), NULL);
    } else if (vc) {
        /* Straight to the callable's vectorcall (what PyObject_CallNoArgs
         * ends up calling, minus two levels of calls). */
        r = vc(cb, NULL, 0, NULL);
        if (!r && !PyErr_Occurred()) {
            PyErr_Format(PyExc_SystemError, "%R returned NULL without setting an exception",
                         cb);
        }
    } else {
        r = PyObject_CallNoArgs(cb);
    }
    Py_DECREF(cb);
    Py_XDECREF(args);
    if (r) {
        Py_DECREF(r);
    } else {
        qlpy_callback_failed(ctx);
    }
}
