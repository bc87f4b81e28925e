/*
 * qloop._core: the hand-written CPython half of the qloop extension.
 *
 * It lives in the same shared object as the cffi module qloop._qloop and is
 * loaded from that file by qloop/__init__.py, so both halves share one copy of
 * libqloop.  Hot entry points live here (METH_NOARGS/METH_O/METH_FASTCALL,
 * GIL held); see README.md in this directory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "glue.h"
#include "pycontext.h"
#include "pycoro.h"

long qlpy_blocked_sections(void);
int qlpy_gil_state_while_blocked(void);
int qlpy_threadpool_register(PyObject *module);

static PyObject *core_gil_held(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(qlpy_gil_held());
}

static PyObject *core_blocked_sections(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(qlpy_blocked_sections());
}

static PyObject *core_gil_state_while_blocked(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(qlpy_gil_state_while_blocked());
}

static PyObject *core_noop(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"_gil_held", core_gil_held, METH_NOARGS,
     "Return PyGILState_Check() as seen by a hot-path entry point (1: held)."},
    {"_blocked_sections", core_blocked_sections, METH_NOARGS,
     "Number of blocking sections in this thread that released the GIL."},
    {"_gil_state_while_blocked", core_gil_state_while_blocked, METH_NOARGS,
     "PyGILState_Check() inside the last blocking section of this thread "
     "(0: released; -1: none yet)."},
    {"_noop", core_noop, METH_NOARGS, "Do nothing (call-overhead benchmark)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "qloop._core",
    .m_doc = "qloop's hot-path types and functions (CPython API, GIL held).",
    .m_size = -1,
    .m_methods = core_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *m = PyModule_Create(&core_module);
    if (!m) {
        return NULL;
    }
    qlpy_install_blocking_hooks();
    if (qlpy_context_register_types(m) < 0 || qlpy_bh_register(m) < 0 ||
        qlpy_timer_register(m) < 0 || qlpy_mainloop_register(m) < 0 ||
        qlpy_threadpool_register(m) < 0 ||
        qlpy_coroutine_init(m) < 0 || qlpy_colock_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
