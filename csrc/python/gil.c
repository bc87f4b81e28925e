/*
 * The GIL is the loop's lock.  libqloop calls ql_blocking_begin()/end()
 * around every blocking system call; these hooks drop the GIL there and take
 * it back afterwards.  Everything else runs with the GIL held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "glue.h"
#include "pycontext.h"
#include "qloop/blocking.h"

/* Diagnostics read by the test suite: how many blocking sections released the
 * GIL in this thread, and what PyGILState_Check() said inside the last one. */
static _Thread_local long blocked_sections __attribute__((tls_model("initial-exec")));
static _Thread_local int gil_state_while_blocked __attribute__((tls_model("initial-exec"))) = -1;

static void *begin_blocking(void)
{
    if (!PyGILState_Check()) {
        return NULL; /* caller does not hold the GIL: nothing to release */
    }
    qlpy_signals_before_sleep();
    PyThreadState *ts = PyEval_SaveThread();
    blocked_sections++;
    gil_state_while_blocked = PyGILState_Check();
    return ts;
}

static void end_blocking(void *token)
{
    if (token) {
        PyEval_RestoreThread(token);
    }
}

void qlpy_install_blocking_hooks(void)
{
    ql_set_blocking_hooks(begin_blocking, end_blocking);
}

int qlpy_gil_held(void)
{
    return PyGILState_Check();
}

long qlpy_blocked_sections(void)
{
    return blocked_sections;
}

int qlpy_gil_state_while_blocked(void)
{
    return gil_state_while_blocked;
}
