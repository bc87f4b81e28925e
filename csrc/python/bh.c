/*
 * qloop._core.BH and AioContext.schedule_oneshot().
 *
 * References: while a BH sits on the context's pending list the list holds a
 * reference to its Python object (taken when ql_bh_schedule() reports that it
 * queued the BH, dropped by the dequeue hook), so a scheduled BH runs even if
 * the program dropped it.  All of this happens under the GIL.
 */
#include "pycontext.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

struct BHObject {
    PyObject_HEAD
    ContextObject *ctx;  /* strong */
    QLBH *bh;            /* NULL once deleted or the context closed */
    PyObject *cb;
    PyObject *args;      /* tuple or NULL */
    int pending_ref;     /* references the pending list holds on us: one per
                          * ql_bh_schedule() that queued the BH, dropped by
                          * the matching dequeue.  Can be 2: a BH rescheduled
                          * from its own callback is queued again before the
                          * dequeue hook of the run in progress. */
    BHObject *next, *prev; /* ctx->bhs */
    PyObject *weakreflist;
};

static void bh_run(void *opaque)
{
    BHObject *self = opaque;
    if (self->cb) {
        qlpy_call_callback(self->ctx, self->cb, self->args);
    }
}

static void bh_unlink(BHObject *self);

static void bh_dequeued(void *opaque)
{
    BHObject *self = opaque;
    if (self->pending_ref > 0) {
        if (--self->pending_ref == 0 && !self->bh) {
            bh_unlink(self); /* deleted while pending (see bh_release) */
        }
        Py_DECREF(self);
    }
}

static void bh_unlink(BHObject *self)
{
    if (self->prev) {
        self->prev->next = self->next;
    } else if (self->ctx && self->ctx->bhs == self) {
        self->ctx->bhs = self->next;
    }
    if (self->next) {
        self->next->prev = self->prev;
    }
    self->next = self->prev = NULL;
}

/* Delete the QLBH; the core frees it at its next dequeue. */
static void bh_release(BHObject *self)
{
    QLBH *bh = self->bh;
    if (!bh) {
        return;
    }
    self->bh = NULL;
    if (!self->pending_ref) {
        /* Not on the list: the object may be gone before the core dequeues
         * the deleted BH, so nothing may point back at it. */
        bh_unlink(self);
        ql_bh_set_dequeue_hook(bh, NULL);
    }
    /* Else it stays on ctx->bhs until its dequeue (bh_dequeued unlinks
     * it): the pending list's reference to it is the context's, and the
     * context's tp_traverse reports it from there. */
    ql_bh_delete(bh);
    /* It can never run again: let go of what it would have called.  That can
     * free self (its callback's closure may hold the last reference), so
     * nothing touches self after the first release. */
    PyObject *cb = self->cb, *args = self->args;
    self->cb = self->args = NULL;
    Py_XDECREF(cb);
    Py_XDECREF(args);
}

static int parse_cb(PyObject *const *args, Py_ssize_t nargs, const char *fname, PyObject **cb,
                    PyObject **tuple)
{
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'cb'", fname);
        return -1;
    }
    if (!PyCallable_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s(): cb must be callable, not %.100s", fname,
                     Py_TYPE(args[0])->tp_name);
        return -1;
    }
    *cb = args[0];
    *tuple = NULL;
    if (nargs > 1 && !(*tuple = PyTuple_New(nargs - 1))) {
        return -1;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(*tuple, i - 1, Py_NewRef(args[i]));
    }
    return 0;
}

PyObject *qlpy_context_bh(ContextObject *ctx, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *cb, *tuple;
    if (qlpy_context_check_open(ctx) < 0 || parse_cb(args, nargs, "bh", &cb, &tuple) < 0) {
        return NULL;
    }
    BHObject *self = PyObject_GC_New(BHObject, &QLPy_BHType);
    if (!self) {
        Py_XDECREF(tuple);
        return NULL;
    }
    self->ctx = (ContextObject *)Py_NewRef(ctx);
    self->cb = Py_NewRef(cb);
    self->args = tuple;
    self->pending_ref = 0;
    self->weakreflist = NULL;
    self->prev = NULL;
    self->bh = ql_bh_new(ctx->ctx, bh_run, self, "python");
    if (!self->bh) {
        self->next = NULL;
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    ql_bh_set_dequeue_hook(self->bh, bh_dequeued);
    self->next = ctx->bhs;
    if (ctx->bhs) {
        ctx->bhs->prev = self;
    }
    ctx->bhs = self;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int bh_check(BHObject *self)
{
    if (!self->bh) {
        PyErr_SetString(PyExc_RuntimeError,
                        self->ctx && self->ctx->ctx ? "BH was deleted" : "BH's AioContext is closed");
        return -1;
    }
    return 0;
}

static PyObject *bh_do_schedule(BHObject *self, int idle)
{
    if (bh_check(self) < 0) {
        return NULL;
    }
    Py_INCREF(self); /* for the pending list, if it queues us */
    int queued = idle ? ql_bh_schedule_idle(self->bh) : ql_bh_schedule(self->bh);
    if (queued > 0) {
        self->pending_ref++;
    } else {
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

static PyObject *bh_schedule(BHObject *self, PyObject *unused)
{
    (void)unused;
    return bh_do_schedule(self, 0);
}

static PyObject *bh_schedule_idle(BHObject *self, PyObject *unused)
{
    (void)unused;
    return bh_do_schedule(self, 1);
}

static PyObject *bh_cancel(BHObject *self, PyObject *unused)
{
    (void)unused;
    if (bh_check(self) < 0) {
        return NULL;
    }
    ql_bh_cancel(self->bh);
    Py_RETURN_NONE;
}

static PyObject *bh_delete(BHObject *self, PyObject *unused)
{
    (void)unused;
    bh_release(self); /* idempotent */
    Py_RETURN_NONE;
}

static PyObject *bh_get_deleted(BHObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->bh == NULL);
}

static PyObject *bh_get_callback(BHObject *self, void *c)
{
    (void)c;
    return Py_NewRef(self->cb ? self->cb : Py_None);
}

static PyObject *bh_repr(BHObject *self)
{
    return PyUnicode_FromFormat("<BH %R%s>", self->cb ? self->cb : Py_None,
                                self->bh ? "" : " deleted");
}

static int bh_traverse(BHObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cb);
    Py_VISIT(self->args);
    Py_VISIT(self->ctx);
    return 0;
}

static int bh_clear(BHObject *self)
{
    bh_release(self);
    Py_CLEAR(self->cb);
    Py_CLEAR(self->args);
    return 0;
}

static void bh_dealloc(BHObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    bh_release(self);
    Py_CLEAR(self->cb);
    Py_CLEAR(self->args);
    Py_CLEAR(self->ctx);
    PyObject_GC_Del(self);
}

int qlpy_bh_traverse_pending(ContextObject *ctx, visitproc visit, void *arg)
{
    /* The reference a scheduled BH's pending entry holds belongs to the
     * context: report it, so that a context dropped with scheduled BHs
     * (BH -> context -> pending BH) is a cycle the collector can see. */
    for (BHObject *b = ctx->bhs; b; b = b->next) {
        if (b->pending_ref) {
            Py_VISIT(b);
        }
    }
    return 0;
}

void qlpy_bh_detach_all(ContextObject *ctx)
{
    /* bh_release unlinks a BH unless it is pending; a pending one (also one
     * deleted earlier) stays linked until the context's free dequeues it.
     * Start over from the head after each release: dropping a callable can
     * run Python code that deletes other BHs (unlinking them). */
    for (;;) {
        BHObject *b = ctx->bhs;
        while (b && !b->bh) {
            b = b->next;
        }
        if (!b) {
            break;
        }
        Py_INCREF(b); /* the list's pointer is borrowed: releasing may free it */
        bh_release(b);
        Py_DECREF(b);
    }
    /* oneshot nodes are handled in qlpy_oneshot_drop_pool */
    extern void qlpy_oneshot_drop_pool(ContextObject *ctx);
    qlpy_oneshot_drop_pool(ctx);
}

static PyMethodDef bh_methods[] = {
    {"schedule", (PyCFunction)bh_schedule, METH_NOARGS,
     "schedule()\n\nRun the callback once in the next poll; a no-op if already scheduled.  "
     "Any thread."},
    {"schedule_idle", (PyCFunction)bh_schedule_idle, METH_NOARGS,
     "schedule_idle()\n\nLike schedule(), but does not wake a blocking poll early: with "
     "only idle BHs pending, poll sleeps up to 10 ms before running them."},
    {"cancel", (PyCFunction)bh_cancel, METH_NOARGS, "cancel()\n\nUnschedule; stays usable."},
    {"delete", (PyCFunction)bh_delete, METH_NOARGS,
     "delete()\n\nThe callback never runs again; also from inside it.  Idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef bh_getset[] = {
    {"deleted", (getter)bh_get_deleted, NULL, "True once deleted (or its context closed).", NULL},
    {"callback", (getter)bh_get_callback, NULL, "The callable.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject QLPy_BHType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop.BH",
    .tp_doc = "A bottom half: a callback scheduled to run in the next poll "
              "(create with AioContext.bh).",
    .tp_basicsize = sizeof(BHObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)bh_dealloc,
    .tp_traverse = (traverseproc)bh_traverse,
    .tp_clear = (inquiry)bh_clear,
    .tp_repr = (reprfunc)bh_repr,
    .tp_methods = bh_methods,
    .tp_getset = bh_getset,
    .tp_weaklistoffset = offsetof(BHObject, weakreflist),
};

/* ---- oneshot ------------------------------------------------------------
 * A pool of QLBHs per context, each with a node holding the callable while
 * it is pending; the dequeue hook drops the callable and recycles the node,
 * so steady-state schedule_oneshot() allocates nothing in C. */

#define ONESHOT_POOL_MAX 4096

struct OneshotNode {
    QLBH *bh;
    ContextObject *ctx; /* borrowed: nodes die with the context */
    PyObject *cb;
    PyObject *args;
    OneshotNode *next;  /* ctx->oneshot_free or ctx->oneshot_pending */
    OneshotNode *prev;  /* ctx->oneshot_pending only */
};

static void oneshot_unlink_pending(OneshotNode *n)
{
    if (n->prev) {
        n->prev->next = n->next;
    } else {
        n->ctx->oneshot_pending = n->next;
    }
    if (n->next) {
        n->next->prev = n->prev;
    }
    n->next = n->prev = NULL;
}

static void oneshot_run(void *opaque)
{
    OneshotNode *n = opaque;
    qlpy_call_callback(n->ctx, n->cb, n->args);
}

static void oneshot_dequeued(void *opaque)
{
    OneshotNode *n = opaque;
    ContextObject *ctx = n->ctx;
    PyObject *cb = n->cb, *args = n->args;
    n->cb = n->args = NULL;
    oneshot_unlink_pending(n);
    if (!ctx->ctx) {
        free(n); /* the context is being freed; it frees the QLBH */
    } else if (ctx->oneshot_free_count < ONESHOT_POOL_MAX) {
        n->next = ctx->oneshot_free;
        ctx->oneshot_free = n;
        ctx->oneshot_free_count++;
    } else {
        ql_bh_set_dequeue_hook(n->bh, NULL);
        ql_bh_delete(n->bh);
        free(n);
    }
    Py_XDECREF(cb);
    Py_XDECREF(args);
}

void qlpy_oneshot_drop_pool(ContextObject *ctx)
{
    while (ctx->oneshot_free) {
        OneshotNode *n = ctx->oneshot_free;
        ctx->oneshot_free = n->next;
        ql_bh_set_dequeue_hook(n->bh, NULL);
        ql_bh_delete(n->bh);
        free(n);
    }
    ctx->oneshot_free_count = 0;
}

PyObject *qlpy_context_schedule_oneshot(ContextObject *self, PyObject *const *args,
                                        Py_ssize_t nargs)
{
    PyObject *cb, *tuple;
    if (nargs == 1 && self->ctx && Py_TYPE(args[0])->tp_call) {
        cb = args[0]; /* the common case, checked inline: cb alone */
        tuple = NULL;
    } else if (qlpy_context_check_open(self) < 0 ||
               parse_cb(args, nargs, "schedule_oneshot", &cb, &tuple) < 0) {
        return NULL;
    }
    OneshotNode *n = self->oneshot_free;
    if (n) {
        self->oneshot_free = n->next;
        self->oneshot_free_count--;
    } else {
        n = malloc(sizeof *n);
        if (!n || !(n->bh = ql_bh_new(self->ctx, oneshot_run, n, "python-oneshot"))) {
            free(n);
            Py_XDECREF(tuple);
            return PyErr_NoMemory();
        }
        n->ctx = self;
        ql_bh_set_dequeue_hook(n->bh, oneshot_dequeued);
    }
    n->cb = Py_NewRef(cb);
    n->args = tuple;
    n->prev = NULL;
    n->next = self->oneshot_pending;
    if (n->next) {
        n->next->prev = n;
    }
    self->oneshot_pending = n;
    ql_bh_schedule(n->bh);
    Py_RETURN_NONE;
}

int qlpy_oneshot_traverse_pending(ContextObject *ctx, visitproc visit, void *arg)
{
    /* A pending oneshot's callable and arguments are held by the context
     * (through its C BH): report them, so that one referencing the context
     * (context -> node -> callable -> context) is a cycle the collector
     * can see.  tp_clear (closing the context) dequeues and drops them. */
    for (OneshotNode *n = ctx->oneshot_pending; n; n = n->next) {
        Py_VISIT(n->cb);
        Py_VISIT(n->args);
    }
    return 0;
}

int qlpy_bh_register(PyObject *m)
{
    if (PyType_Ready(&QLPy_BHType) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(m, "BH", (PyObject *)&QLPy_BHType);
}
