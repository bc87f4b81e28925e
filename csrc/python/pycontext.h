/*
 * Internal to the CPython glue: the AioContext, BH and Timer objects and the
 * per-thread stack of running dispatches that carries callback exceptions
 * back to the poll() that ran them.
 */
#ifndef QLOOP_PY_CONTEXT_H
#define QLOOP_PY_CONTEXT_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

#include "qloop/context.h"

typedef struct BHObject BHObject;
typedef struct TimerObject TimerObject;
typedef struct OneshotNode OneshotNode;

typedef struct ContextObject {
    PyObject_HEAD
    QLContext *ctx;          /* NULL once closed */
    int owned;               /* created by us: freed by close() */
    const char *kind;        /* "context", "main", "iohandler" */
    PyObject *fd_handlers;   /* dict fd -> FdRecord (keeps callables alive) */
    PyObject *graveyard;     /* list of replaced FdRecords, freed after the outermost dispatch */
    BHObject *bhs;           /* live BH objects (intrusive list, for close) */
    TimerObject *timers;     /* live Timer objects (intrusive list, for close) */
    OneshotNode *oneshot_free; /* recycled oneshot nodes */
    OneshotNode *oneshot_pending; /* scheduled oneshot nodes (their callables are
                                   * ours: reported by tp_traverse) */
    int oneshot_free_count;
    int dispatch_depth;      /* polls of this context running (nesting) */
    unsigned long poll_thread; /* thread running poll() when dispatch_depth > 0 */
    uint64_t poll_tstate_id; /* PyThreadState id of the thread that polled it last (0: never) */
    int stop_requested;      /* run_forever() returns at its next iteration */
    int running_forever;     /* run_forever() calls in progress */
    PyObject *weakreflist;
} ContextObject;

/* One running poll()/dispatch() of a context in this thread.  Exceptions of
 * the callbacks it runs are stored here and raised when it returns. */
typedef struct DispatchFrame {
    struct DispatchFrame *prev;
    ContextObject *ctx;
    PyObject *exc;           /* first exception raised by a callback */
    int signals_before_sleep; /* run_forever: signal handlers run in the
                               * blocking hook, before the poll sleeps (see
                               * qlpy_signals_before_sleep) */
    struct DispatchFrame *link; /* non-NULL: one run with that frame (main_loop_wait
                                 * dispatches two contexts): exceptions go there */
} DispatchFrame;

extern PyTypeObject QLPy_ContextType;
extern PyTypeObject QLPy_BHType;
extern PyTypeObject QLPy_TimerType;

/* Record the exception now set (PyErr_Occurred) as raised by a callback of
 * ctx: the running poll() of this thread re-raises it and the dispatch stops
 * after the current callback.  Clears the error indicator. */
void qlpy_callback_failed(ContextObject *ctx);

/* 1 if a callback of ctx already raised in the dispatch that would raise
 * the next one (see qlpy_callback_failed): that dispatch is ending. */
int qlpy_callback_exception_pending(ContextObject *ctx);

/* Call cb(*args); args is NULL or a tuple.  On exception, qlpy_callback_failed. */
void qlpy_call_callback(ContextObject *ctx, PyObject *cb, PyObject *args);

/* The innermost running dispatch of this thread. */
/* initial-exec TLS: no __tls_get_addr() call per access (see context-int.h). */
#define QLPY_TLS_MODEL __attribute__((tls_model("initial-exec")))
extern _Thread_local DispatchFrame *qlpy_top_frame QLPY_TLS_MODEL;

/* Take the raised exception as one object (traceback attached), or NULL. */
PyObject *qlpy_fetch_exception(void);

/* Set exc (a reference is stolen) as the raised exception. */
void qlpy_restore_exception(PyObject *exc);

/* Bracket a run of ctx's callbacks (poll, dispatch, main_loop_wait):
 * enter refuses a second polling thread and a closed context; leave raises
 * the first callback exception, converts ret < 0 to OSError and returns
 * Py_True/Py_False for ret > 0 / ret == 0. */
int qlpy_enter_dispatch(ContextObject *self, DispatchFrame *f);
PyObject *qlpy_leave_dispatch(ContextObject *self, DispatchFrame *f, int ret);

int qlpy_mainloop_register(PyObject *module);

/* Called by the blocking hook with the GIL held, before a wait: if the
 * innermost dispatch is a run_forever() whose context is the one about to
 * sleep, run pending signal handlers now; an exception they raise ends that
 * run_forever() (the context is notified so the wait returns at once). */
void qlpy_signals_before_sleep(void);

/* Let go of ThreadPool objects whose last reference was dropped by one of
 * their own completions (see threadpool.c).  Call after every call into
 * libqloop that may run completions, once it has returned.  Keeps a pending
 * exception. */
void qlpy_threadpool_release_parked(void);

/* -errno -> OSError (returns NULL); the same conversion as qloop._errors. */
PyObject *qlpy_raise_errno(int neg_errno);

/* RuntimeError("... closed AioContext") unless ctx is open. */
int qlpy_context_check_open(ContextObject *self);

/* Wrap a context we do not own (main / iohandler context); cached. */
PyObject *qlpy_context_wrap(QLContext *ctx, const char *kind);

int qlpy_context_register_types(PyObject *module);
int qlpy_bh_register(PyObject *module);
int qlpy_timer_register(PyObject *module);

/* Used by close(): detach every BH / Timer object and drop the oneshot pool. */
void qlpy_bh_detach_all(ContextObject *ctx);
void qlpy_timer_detach_all(ContextObject *ctx);

/* tp_traverse helpers: visit the BH objects whose reference the pending list
 * holds (deleted ones still queued included), the callables and arguments
 * of scheduled oneshots, and the Timer objects whose reference the timer
 * list holds. */
int qlpy_bh_traverse_pending(ContextObject *ctx, visitproc visit, void *arg);
int qlpy_oneshot_traverse_pending(ContextObject *ctx, visitproc visit, void *arg);
int qlpy_timer_traverse_armed(ContextObject *ctx, visitproc visit, void *arg);

/* schedule_oneshot(cb, *args) implementation (METH_FASTCALL). */
PyObject *qlpy_context_schedule_oneshot(ContextObject *self, PyObject *const *args,
                                        Py_ssize_t nargs);

#endif
