/*
 * csrc/python/pycoro.h - internal interface between the Python coroutine
 * type (coroutine.c) and the lock types (colock.c).  GIL held everywhere.
 */
#ifndef QLOOP_PY_PYCORO_H
#define QLOOP_PY_PYCORO_H

#include "pystate.h"
#include "qloop/coroutine.h"

#include <stdint.h>

typedef struct QLPyThread QLPyThread;

#if PY_VERSION_HEX >= 0x030D0000
#define qlpy_ts_unchecked() PyThreadState_GetUnchecked()
#else
#define qlpy_ts_unchecked() _PyThreadState_UncheckedGet()
#endif

enum {
    QLPY_CO_NEW = 0,       /* created, never entered */
    QLPY_CO_RUNNING = 1,   /* running, or in the chain of entered coroutines */
    QLPY_CO_SUSPENDED = 2, /* yielded (bare yield or waiting in the core) */
    QLPY_CO_DONE = 3,      /* fn returned or raised */
};

/* Error indicator moved across a switch (must normally be empty). */
typedef struct QLPyStray {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} QLPyStray;

typedef struct QLPyCoroutine {
    PyObject_HEAD
    QLCoroutine *co;            /* core coroutine; we hold a ql_coroutine_ref */
    PyObject *fn;               /* callable and arguments, until started */
    PyObject *args;
    PyObject *result;           /* once done: return value, or NULL */
    PyObject *exc;              /* once done: exception instance, or NULL */
    PyObject *weakrefs;
    QLPyThread *owner;          /* owning thread (referenced) */
    uint64_t owner_id;          /* PyThreadState id of the owner */
    PyThreadState *ts;          /* the owner's thread state */
    struct QLPyCoroutine *live_prev, *live_next; /* owner's started coroutines */
    struct QLPyCoroutine *prev_current; /* Python coroutine current when we were entered */
    QLCoQueue *joiners;         /* coroutines in join(), created on demand */
    const char *blocked;        /* what it waits for inside the core, or NULL */
    void *frame_base;           /* the thread's innermost running poll() when we were
                                 * last switched in (see qlpy_check_switchable) */
    /* References the coroutine holds on itself.  `pins`: taken before it
     * waits in the core (or by whoever scheduled it), so the object lives
     * until it is woken; converted to `held` when it runs again.  `held`:
     * kept while it runs (its own code may drop every other reference), and
     * dropped when it suspends or ends if someone else holds a reference
     * too; a coroutine that would yield with only `held` references left is
     * garbage and is unwound in place (CoroutineExit). */
    int pins;
    int held;
    unsigned char state;
    unsigned char py_entering;  /* inside a Python-level enter() / kill */
    unsigned char kill;         /* CoroutineExit: 1 requested, 2 thrown */
    unsigned char exc_taken;    /* enter() or join() already raised exc */
    unsigned char immortal;     /* survived a kill: leaked on purpose */
    size_t stack_size;
    QLPyState own;              /* our state while switched out */
    QLPyState caller;           /* the resumer's state while we run */
    QLPyStray own_stray, caller_stray;
    _PyErr_StackItem exc_item;  /* bottom of our handled-exception stack */
} QLPyCoroutine;

extern PyTypeObject QLPyCoroutine_Type;
extern PyObject *qlpy_CoroutineExit;

/* The running Python coroutine of this thread, or NULL. */
QLPyCoroutine *qlpy_current(void);

/* ---- per-thread records (pythread.c) ---------------------------------- */

/* One per Python thread state that used coroutines.  GIL held for all. */
struct QLPyThread {
    uint64_t id;              /* PyThreadState id (never reused) */
    int alive;                /* cleared when the thread state is cleared */
    Py_ssize_t refcnt;        /* sentinel (while alive) + coroutines owning it */
    QLPyCoroutine *live;      /* started, unfinished coroutines */
    PyObject *kill_queue;     /* list: dropped in other threads, to unwind here */
    PyObject *zombies;        /* list: references to release later */
};

/* Read on every switch: initial-exec keeps them one instruction away (16
 * bytes of the static TLS surplus glibc reserves for dlopen'ed modules). */
#define QLPY_TLS _Thread_local __attribute__((tls_model("initial-exec")))
extern QLPY_TLS QLPyThread *qlpy_tl_thread;      /* this thread's record */
extern QLPY_TLS QLPyCoroutine *qlpy_tl_current;  /* running Python coroutine */
extern int qlpy_service_pending; /* some thread has zombies or kills queued */

QLPyThread *qlpy_thread_get(PyThreadState *ts); /* NULL + exception */
void qlpy_thread_unref(QLPyThread *t);
void qlpy_live_add(QLPyCoroutine *self);
void qlpy_live_remove(QLPyCoroutine *self);
/* Release `o` at the next service of this thread (steals it); -1 if the
 * list could not grow (the reference then leaks). */
int qlpy_zombie_add(QLPyThread *t, PyObject *o);
int qlpy_pythread_init(PyObject *m);

/* ---- coroutine.c / coroutine-api.c internals --------------------------- */

void qlpy_stray_take(QLPyStray *s);
void qlpy_stray_give(QLPyStray *s);
/* Drop self-held references while someone else holds one too. */
void qlpy_drop_held(QLPyCoroutine *self);
/* The running Python coroutine if it may switch now, else NULL + RuntimeError. */
QLPyCoroutine *qlpy_switchable_current(const char *what);
int qlpy_owner_is_current(QLPyCoroutine *self, PyThreadState *ts);
/* Unwind a suspended coroutine with CoroutineExit (owner thread). */
void qlpy_co_kill(QLPyCoroutine *self);
int qlpy_co_killable(QLPyCoroutine *self);
int qlpy_coroutine_api_init(PyObject *m);
/* -1 + RuntimeError naming `what` if called from a trace or profile
 * function (a switch there would hide other coroutines from the tracer). */
int qlpy_check_not_tracing(const char *what);

/* Around a wait in the core (lock, queue, sleep, join) by the running
 * coroutine: begin checks that a Python coroutine is running and may switch
 * (else -1 with RuntimeError naming `what`), and pins it; end un-pins. */
QLPyCoroutine *qlpy_wait_begin(const char *what);
void qlpy_wait_end(QLPyCoroutine *self);

/* Raise the Python exception for a negative errno from the core coroutine
 * API; `what` names the operation.  Returns NULL. */
PyObject *qlpy_co_error(int err, const char *what);

/* Release deferred references and unwind coroutines queued for killing. */
void qlpy_coroutine_service(void);

/* AioContext.co_schedule(co): run co in ctx's next poll (any thread). */
PyObject *qlpy_co_schedule(QLContext *ctx, PyObject *co);

/* -1 with RuntimeError if the running Python coroutine may not switch away
 * now because it is inside an AioContext.poll()/dispatch()/run_forever()/
 * main_loop_wait() that it called itself (that poll's state lives on its
 * stack); 0 otherwise, also outside coroutines. */
int qlpy_check_switchable(const char *what);

int qlpy_colock_init(PyObject *m);
int qlpy_coroutine_init(PyObject *m);

#endif
