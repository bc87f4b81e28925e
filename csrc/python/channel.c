/*
 * qloop._core.FdChannel: the fd-backed half of QIOChannel.
 *
 * Every I/O method is one call into C (the retry loop, the readiness wait
 * and the coroutine yield all happen in csrc/channel.c), so read_all and
 * write_all cost one Python -> C crossing however many system calls they
 * need.  The GIL stays held except inside libqloop's blocking hooks.
 *
 * Return conventions (DESIGN.md): None = would block (QL_CHANNEL_ERR_BLOCK),
 * b"" = end of file, OSError subclasses with errno otherwise.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdbool.h>
#include <unistd.h>

#include "glue.h"
#include "pycontext.h"
#include "pycoro.h"
#include "qloop/channel.h"

typedef struct {
    PyObject_HEAD
    QLChannel *ch;   /* NULL before _open() and after close() */
    PyObject *dict;  /* Python subclasses keep their state here */
    PyObject *weakreflist;
    /* I/O calls in progress: they may yield (a coroutine waiting for the fd)
     * or block with the GIL released, and use their QLChannel meanwhile.
     * _open() on a closed channel does not free the old QLChannel while any
     * is in progress: it is kept in `retired` until the last one returns. */
    int busy;
    QLChannel **retired;
    int nretired;
} FdChannelObject;

/* Bracket every call into libqloop that may yield or block. */
static QLChannel *ch_enter(FdChannelObject *self)
{
    self->busy++;
    return self->ch;
}

static void free_retired(FdChannelObject *self)
{
    for (int i = 0; i < self->nretired; i++) {
        ql_channel_free(self->retired[i]);
    }
    PyMem_Free(self->retired);
    self->retired = NULL;
    self->nretired = 0;
}

static void ch_leave(FdChannelObject *self)
{
    if (--self->busy == 0 && self->nretired) {
        free_retired(self);
    }
}

static PyObject *eof_error; /* qloop.UnexpectedEOFError (subclass of EOFError) */

static int check_open(FdChannelObject *self)
{
    if (!self->ch || ql_channel_read_fd(self->ch) < 0) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed channel");
        return -1;
    }
    return 0;
}

/* -errno -> exception; -EINTR is never passed here. */
static PyObject *raise_err(ssize_t r)
{
    return qlpy_raise_errno((int)r);
}

/* After -EINTR from a wait: run the signal handlers; 0 to retry. */
static int interrupted(void)
{
    return PyErr_CheckSignals();
}

static PyObject *raise_eof(PyObject *partial, Py_ssize_t want)
{
    PyObject *exc = PyObject_CallFunction(eof_error, "s",
                                          "Unexpected end-of-file before all data were read");
    if (!exc) {
        return NULL;
    }
    if (PyObject_SetAttrString(exc, "partial", partial) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    PyObject *w = PyLong_FromSsize_t(want);
    if (!w || PyObject_SetAttrString(exc, "expected", w) < 0) {
        Py_XDECREF(w);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(w);
    PyErr_SetObject(eof_error, exc);
    Py_DECREF(exc);
    return NULL;
}

static Py_ssize_t parse_size(PyObject *arg, const char *name)
{
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name,
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "%s must be >= 0, not %zd", name, n);
        }
        return -1;
    }
    return n;
}

/* ---- life cycle -------------------------------------------------------- */

static PyObject *fdch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    FdChannelObject *self = (FdChannelObject *)type->tp_alloc(type, 0);
    return (PyObject *)self;
}

static int fdch_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    (void)args;
    (void)kwds;
    return 0; /* subclasses take their own arguments */
}

static void fdch_dealloc(FdChannelObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->ch) {
        ql_channel_free(self->ch);
        self->ch = NULL;
    }
    free_retired(self); /* busy is 0: every call holds a reference */
    Py_CLEAR(self->dict);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int fdch_traverse(FdChannelObject *self, visitproc visit, void *arg)
{
    /* Not Py_TYPE(self): this is a static type, and the Python subclasses'
     * subtype_traverse visits their (heap) type itself. */
    Py_VISIT(self->dict);
    return 0;
}

static int fdch_clear(FdChannelObject *self)
{
    Py_CLEAR(self->dict);
    return 0;
}

/* _open(fd, wfd=-1, socket=None): take ownership of fd (and wfd). */
static PyObject *fdch_open(FdChannelObject *self, PyObject *args)
{
    int fd, wfd = -1;
    PyObject *sock = Py_None;
    if (!PyArg_ParseTuple(args, "i|iO:_open", &fd, &wfd, &sock)) {
        return NULL;
    }
    if (self->ch && ql_channel_read_fd(self->ch) >= 0) {
        PyErr_SetString(PyExc_ValueError, "channel is already open");
        return NULL;
    }
    int flags = QL_CHANNEL_AUTO;
    if (sock != Py_None) {
        int b = PyObject_IsTrue(sock);
        if (b < 0) {
            return NULL;
        }
        flags = b ? QL_CHANNEL_SOCKET : 0;
    }
    QLChannel *ch = ql_channel_new(fd, wfd, flags);
    if (!ch) {
        return qlpy_raise_errno(-errno);
    }
    if (self->ch && self->busy) {
        /* A call still uses the old one (a coroutine woken by close(), say). */
        QLChannel **v = PyMem_Realloc(self->retired, (self->nretired + 1) * sizeof(*v));
        if (!v) {
            ql_channel_detach(ch); /* the caller keeps its fds */
            ql_channel_free(ch);
            return PyErr_NoMemory();
        }
        self->retired = v;
        self->retired[self->nretired++] = self->ch;
    } else if (self->ch) {
        ql_channel_free(self->ch);
    }
    self->ch = ch;
    Py_RETURN_NONE;
}

static PyObject *fdch_close(FdChannelObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->ch) {
        Py_RETURN_NONE;
    }
    int r = ql_channel_close(self->ch);
    if (r < 0) {
        return raise_err(r);
    }
    Py_RETURN_NONE;
}

static PyObject *fdch_detach(FdChannelObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->ch) {
        return PyLong_FromLong(-1);
    }
    int fd = ql_channel_read_fd(self->ch);
    ql_channel_detach(self->ch);
    return PyLong_FromLong(fd);
}

static PyObject *fdch_fileno(FdChannelObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(ql_channel_read_fd(self->ch));
}

static PyObject *fdch_get_wfd(FdChannelObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->ch ? ql_channel_write_fd(self->ch) : -1);
}

static PyObject *fdch_get_closed(FdChannelObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(!self->ch || ql_channel_read_fd(self->ch) < 0);
}

static PyObject *fdch_get_blocking(FdChannelObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->ch ? ql_channel_get_blocking(self->ch) : 1);
}

static PyObject *fdch_get_is_socket(FdChannelObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->ch ? ql_channel_is_socket(self->ch) : 0);
}

static PyObject *fdch_set_blocking(FdChannelObject *self, PyObject *arg)
{
    int b = PyObject_IsTrue(arg);
    if (b < 0 || check_open(self) < 0) {
        return NULL;
    }
    int r = ql_channel_set_blocking(self->ch, b);
    if (r < 0) {
        return raise_err(r);
    }
    Py_RETURN_NONE;
}

/* ---- single operations ------------------------------------------------- */

/* One ql_channel_read (out false) or ql_channel_write of len bytes at buf;
 * on EINTR the signal handlers run, then it tries again.  Returns -1 with
 * the exception set if a handler raised, else 0 with *res the result
 * (bytes, QL_CHANNEL_ERR_BLOCK or another negative errno). */
static int transfer(FdChannelObject *self, bool out, void *buf, size_t len, ssize_t *res)
{
    ssize_t r;
    QLChannel *ch = ch_enter(self);
    while ((r = out ? ql_channel_write(ch, buf, len) : ql_channel_read(ch, buf, len)) == -EINTR) {
        if (interrupted() < 0) {
            ch_leave(self);
            return -1;
        }
    }
    ch_leave(self);
    *res = r;
    return 0;
}

/* read(n) reads into a spare bytes object of at least n bytes.  A short
 * result (at most half of it) is copied into a new bytes object of its own
 * size and the spare kept for the next read: a read(65536) that returns a
 * 1 KiB message costs a 1 KiB copy instead of allocating 64 KiB and shrinking
 * it.  A long result is handed out (shrunk in place if need be) and the next
 * read makes a new spare.  One spare for all channels, guarded by the GIL; a
 * read that releases the GIL (a blocking channel) owns it meanwhile. */
#define READ_SPARE_MAX (256 * 1024)
static PyObject *read_spare;

static PyObject *fdch_read(FdChannelObject *self, PyObject *arg)
{
    Py_ssize_t n = parse_size(arg, "n");
    if (n < 0 || check_open(self) < 0 || qlpy_check_switchable("read()") < 0) {
        return NULL;
    }
    PyObject *b = NULL;
    if (read_spare && PyBytes_GET_SIZE(read_spare) >= n) {
        b = read_spare;
        read_spare = NULL;
    } else {
        b = PyBytes_FromStringAndSize(NULL, n);
        if (!b) {
            return NULL;
        }
    }
    ssize_t r;
    if (transfer(self, false, PyBytes_AS_STRING(b), (size_t)n, &r) < 0) {
        r = -EINTR; /* interrupted: the exception is set */
    }
    Py_ssize_t size = PyBytes_GET_SIZE(b);
    if (r >= 0 && r == size) {
        return b;
    }
    PyObject *out = NULL;
    if (r >= 0 && r > size / 2) {
        _PyBytes_Resize(&b, r); /* hand it out; on failure b is NULL */
        return b;
    }
    if (r >= 0) {
        out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(b), r);
    } else if (r == QL_CHANNEL_ERR_BLOCK) {
        out = Py_NewRef(Py_None);
    } else if (r != -EINTR) {
        out = raise_err(r);
    }
    if (!read_spare && size > 0 && size <= READ_SPARE_MAX) {
        read_spare = b;
    } else {
        Py_DECREF(b);
    }
    return out;
}

/* readinto(buffer) (out false) and write(buffer): the count, or None when
 * the channel would block. */
static PyObject *transfer_buffer(FdChannelObject *self, PyObject *arg, bool out)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, out ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (check_open(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    ssize_t r;
    int e = transfer(self, out, view.buf, (size_t)view.len, &r);
    PyBuffer_Release(&view);
    if (e < 0) {
        return NULL;
    }
    if (r == QL_CHANNEL_ERR_BLOCK) {
        Py_RETURN_NONE;
    }
    if (r < 0) {
        return raise_err(r);
    }
    return PyLong_FromSsize_t(r);
}

static PyObject *fdch_readinto(FdChannelObject *self, PyObject *arg)
{
    return transfer_buffer(self, arg, false);
}

static PyObject *fdch_write(FdChannelObject *self, PyObject *arg)
{
    return transfer_buffer(self, arg, true);
}

/* ---- the *_all loops --------------------------------------------------- */

/* A Python coroutine about to wait on the channel in C: pin it like the lock
 * waits do (qlpy_wait_begin), so that it stays alive while only the fd
 * handler that will wake it knows about it.  Returns NULL with *err = 0
 * outside a coroutine (the call then blocks instead), NULL with *err = -1 and
 * an exception if it may not switch now. */
static QLPyCoroutine *wait_begin(const char *what, int *err)
{
    QLPyCoroutine *me = qlpy_current();
    *err = 0;
    if (!me || ql_coroutine_self() != me->co) {
        return NULL;
    }
    me = qlpy_wait_begin(what);
    if (!me) {
        *err = -1;
    }
    return me;
}

static PyObject *read_all_impl(FdChannelObject *self, PyObject *arg, int eof_ok)
{
    Py_ssize_t n = parse_size(arg, "n");
    int err;
    if (n < 0 || check_open(self) < 0 || qlpy_check_switchable("read_all()") < 0) {
        return NULL;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    if (!b) {
        return NULL;
    }
    QLPyCoroutine *me = wait_begin("read_all()", &err);
    if (err < 0) {
        Py_DECREF(b);
        return NULL;
    }
    size_t done = 0;
    int r;
    QLChannel *ch = ch_enter(self);
    while ((r = ql_channel_read_all(ch, PyBytes_AS_STRING(b), (size_t)n, &done)) == -EINTR) {
        if (interrupted() < 0) {
            ch_leave(self);
            if (me) {
                qlpy_wait_end(me);
            }
            Py_DECREF(b);
            return NULL;
        }
    }
    ch_leave(self);
    if (me) {
        qlpy_wait_end(me);
    }
    if (r == 1) {
        return b;
    }
    if (r < 0) {
        Py_DECREF(b);
        if (r == -EPERM) {
            PyErr_SetString(PyExc_RuntimeError, "channel wait failed: not in a coroutine");
            return NULL;
        }
        return raise_err(r);
    }
    /* end of file */
    if (done == 0 && eof_ok) {
        Py_DECREF(b);
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    if (_PyBytes_Resize(&b, (Py_ssize_t)done) < 0) {
        return NULL;
    }
    raise_eof(b, n);
    Py_DECREF(b);
    return NULL;
}

static PyObject *fdch_read_all(FdChannelObject *self, PyObject *arg)
{
    return read_all_impl(self, arg, 0);
}

static PyObject *fdch_read_all_eof(FdChannelObject *self, PyObject *arg)
{
    return read_all_impl(self, arg, 1);
}

static PyObject *fdch_write_all(FdChannelObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int err;
    QLPyCoroutine *me = NULL;
    if (check_open(self) < 0 || qlpy_check_switchable("write_all()") < 0 ||
        ((me = wait_begin("write_all()", &err)), err < 0)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    size_t done = 0;
    int r;
    QLChannel *ch = ch_enter(self);
    while ((r = ql_channel_write_all(ch, view.buf, (size_t)view.len, &done)) == -EINTR) {
        if (interrupted() < 0) {
            ch_leave(self);
            if (me) {
                qlpy_wait_end(me);
            }
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    ch_leave(self);
    if (me) {
        qlpy_wait_end(me);
    }
    PyBuffer_Release(&view);
    if (r < 0) {
        return raise_err(r);
    }
    Py_RETURN_NONE;
}

/* ---- scatter/gather with fds ------------------------------------------- */

#define MAX_IOV 64

static void release_views(Py_buffer *views, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyBuffer_Release(&views[i]);
    }
}

/* Fill iov from a sequence of buffers; returns the count or -1. */
static Py_ssize_t get_views(PyObject *buffers, Py_buffer *views, struct iovec *iov,
                            int writable)
{
    PyObject *seq = PySequence_Fast(buffers, "buffers must be a sequence of buffers");
    if (!seq) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_IOV) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "buffers may hold at most %d buffers, not %zd", MAX_IOV,
                     n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        if (PyObject_GetBuffer(o, &views[i], writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "buffers[%zd] must be a %sbuffer, not %.100s", i,
                         writable ? "writable " : "", Py_TYPE(o)->tp_name);
            release_views(views, i);
            Py_DECREF(seq);
            return -1;
        }
        iov[i].iov_base = views[i].buf;
        iov[i].iov_len = (size_t)views[i].len;
    }
    Py_DECREF(seq);
    return n;
}

/* _readv(buffers, want_fds) -> (n, fds list) | None */
static PyObject *fdch_readv(FdChannelObject *self, PyObject *args)
{
    PyObject *buffers;
    int want_fds = 0;
    if (!PyArg_ParseTuple(args, "Op:_readv", &buffers, &want_fds)) {
        return NULL;
    }
    if (check_open(self) < 0) {
        return NULL;
    }
    Py_buffer views[MAX_IOV];
    struct iovec iov[MAX_IOV];
    Py_ssize_t niov = get_views(buffers, views, iov, 1);
    if (niov < 0) {
        return NULL;
    }
    int fds[QL_CHANNEL_MAX_FDS];
    size_t nfds = QL_CHANNEL_MAX_FDS;
    ssize_t r;
    QLChannel *ch = ch_enter(self);
    while ((r = ql_channel_readv(ch, iov, (int)niov, want_fds ? fds : NULL,
                                 want_fds ? &nfds : NULL)) == -EINTR) {
        if (interrupted() < 0) {
            ch_leave(self);
            release_views(views, niov);
            return NULL;
        }
    }
    ch_leave(self);
    release_views(views, niov);
    if (!want_fds) {
        nfds = 0;
    }
    if (r == QL_CHANNEL_ERR_BLOCK) {
        Py_RETURN_NONE;
    }
    if (r == -EMSGSIZE && want_fds) {
        PyObject *eargs = Py_BuildValue(
            "(is)", EMSGSIZE,
            "received more file descriptors than fit (control data truncated); "
            "the ones that arrived were closed");
        if (eargs) {
            PyErr_SetObject(PyExc_OSError, eargs);
            Py_DECREF(eargs);
        }
        return NULL;
    }
    if (r < 0) {
        return raise_err(r);
    }
    PyObject *list = PyList_New((Py_ssize_t)nfds);
    if (!list) {
        goto close_fds;
    }
    for (size_t i = 0; i < nfds; i++) {
        PyObject *v = PyLong_FromLong(fds[i]);
        if (!v) {
            Py_DECREF(list);
            goto close_fds;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    PyObject *res = Py_BuildValue("(nN)", (Py_ssize_t)r, list);
    if (!res) {
        goto close_fds; /* list was stolen and freed */
    }
    return res;
close_fds:
    for (size_t i = 0; i < nfds; i++) {
        close(fds[i]);
    }
    return NULL;
}

/* _writev(buffers, fds) -> int | None */
static PyObject *fdch_writev(FdChannelObject *self, PyObject *args)
{
    PyObject *buffers, *fdseq;
    if (!PyArg_ParseTuple(args, "OO:_writev", &buffers, &fdseq)) {
        return NULL;
    }
    if (check_open(self) < 0) {
        return NULL;
    }
    int fds[QL_CHANNEL_MAX_FDS];
    PyObject *fseq = PySequence_Fast(fdseq, "fds must be a sequence of file descriptors");
    if (!fseq) {
        return NULL;
    }
    Py_ssize_t nfds = PySequence_Fast_GET_SIZE(fseq);
    if (nfds > QL_CHANNEL_MAX_FDS) {
        Py_DECREF(fseq);
        return PyErr_Format(PyExc_ValueError, "fds: only %d file descriptors can be sent, got %zd",
                            QL_CHANNEL_MAX_FDS, nfds);
    }
    for (Py_ssize_t i = 0; i < nfds; i++) {
        fds[i] = PyObject_AsFileDescriptor(PySequence_Fast_GET_ITEM(fseq, i));
        if (fds[i] < 0) {
            Py_DECREF(fseq);
            return NULL;
        }
    }
    Py_DECREF(fseq);
    if (nfds && !ql_channel_is_socket(self->ch)) {
        return PyErr_Format(PyExc_ValueError,
                            "fds: channel does not support file descriptor passing");
    }
    Py_buffer views[MAX_IOV];
    struct iovec iov[MAX_IOV];
    Py_ssize_t niov = get_views(buffers, views, iov, 0);
    if (niov < 0) {
        return NULL;
    }
    ssize_t r;
    QLChannel *ch = ch_enter(self);
    while ((r = ql_channel_writev(ch, iov, (int)niov, fds, (size_t)nfds)) == -EINTR) {
        if (interrupted() < 0) {
            ch_leave(self);
            release_views(views, niov);
            return NULL;
        }
    }
    ch_leave(self);
    release_views(views, niov);
    if (r == QL_CHANNEL_ERR_BLOCK) {
        Py_RETURN_NONE;
    }
    if (r < 0) {
        return raise_err(r);
    }
    return PyLong_FromSsize_t(r);
}

/* ---- waiting ----------------------------------------------------------- */

static int parse_cond(PyObject *arg, int *cond)
{
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "condition must be an int (IO_IN, IO_OUT...), not %.100s",
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    long c = PyLong_AsLong(arg);
    if (c <= 0 || (c & ~(long)(QL_CHANNEL_IN | QL_CHANNEL_OUT | QL_CHANNEL_ERR | QL_CHANNEL_HUP))) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "condition must be a combination of IO_IN, IO_OUT, "
                         "IO_ERR, IO_HUP, not %ld", c);
        }
        return -1;
    }
    *cond = (int)c;
    return 0;
}

static PyObject *fdch_wait(FdChannelObject *self, PyObject *arg)
{
    int cond;
    if (parse_cond(arg, &cond) < 0 || check_open(self) < 0) {
        return NULL;
    }
    int r;
    QLChannel *ch = ch_enter(self);
    while ((r = ql_channel_wait(ch, cond)) == -EINTR) {
        if (interrupted() < 0) {
            ch_leave(self);
            return NULL;
        }
    }
    ch_leave(self);
    if (r < 0) {
        return raise_err(r);
    }
    return PyLong_FromLong(r);
}

static PyObject *fdch_yield(FdChannelObject *self, PyObject *arg)
{
    int cond;
    if (parse_cond(arg, &cond) < 0 || check_open(self) < 0) {
        return NULL;
    }
    if (cond != QL_CHANNEL_IN && cond != QL_CHANNEL_OUT) {
        return PyErr_Format(PyExc_ValueError, "condition must be exactly IO_IN or IO_OUT for "
                            "yield_(), not %d", cond);
    }
    int err;
    QLPyCoroutine *me = wait_begin("yield_()", &err);
    if (err < 0) {
        return NULL;
    }
    QLChannel *ch = ch_enter(self);
    int r = ql_channel_yield(ch, cond);
    ch_leave(self);
    if (me) {
        qlpy_wait_end(me);
    }
    if (r == -EPERM) {
        PyErr_SetString(PyExc_RuntimeError, "yield_() called outside a coroutine");
        return NULL;
    }
    if (r == -EBUSY) {
        PyErr_SetString(PyExc_RuntimeError, "another coroutine already waits on this channel "
                        "in that direction");
        return NULL;
    }
    if (r < 0) {
        return raise_err(r);
    }
    Py_RETURN_NONE;
}

static PyObject *fdch_wake(FdChannelObject *self, PyObject *arg)
{
    int cond;
    if (parse_cond(arg, &cond) < 0) {
        return NULL;
    }
    if (self->ch) {
        ql_channel_wake(self->ch, cond);
    }
    Py_RETURN_NONE;
}

static PyMethodDef fdch_methods[] = {
    {"_open", (PyCFunction)fdch_open, METH_VARARGS, NULL},
    {"_detach", (PyCFunction)fdch_detach, METH_NOARGS, NULL},
    {"_close_fds", (PyCFunction)fdch_close, METH_NOARGS, NULL},
    {"_set_blocking", (PyCFunction)fdch_set_blocking, METH_O, NULL},
    {"_readv", (PyCFunction)fdch_readv, METH_VARARGS, NULL},
    {"_writev", (PyCFunction)fdch_writev, METH_VARARGS, NULL},
    {"fileno", (PyCFunction)fdch_fileno, METH_NOARGS,
     "fileno() -> int\n\nThe (read) file descriptor."},
    {"read", (PyCFunction)fdch_read, METH_O,
     "read(n) -> bytes | None\n\nOne read of up to n bytes: b'' at end of file, None if a "
     "non-blocking channel would block."},
    {"readinto", (PyCFunction)fdch_readinto, METH_O,
     "readinto(buffer) -> int | None\n\nOne read into a writable buffer."},
    {"write", (PyCFunction)fdch_write, METH_O,
     "write(data) -> int | None\n\nOne write: bytes written, None if it would block."},
    {"read_all", (PyCFunction)fdch_read_all, METH_O,
     "read_all(n) -> bytes\n\nRead exactly n bytes (a coroutine yields, other code waits); "
     "UnexpectedEOFError if the stream ends first."},
    {"read_all_eof", (PyCFunction)fdch_read_all_eof, METH_O,
     "read_all_eof(n) -> bytes\n\nAs read_all, but b'' at a clean end of file (before the "
     "first byte)."},
    {"write_all", (PyCFunction)fdch_write_all, METH_O,
     "write_all(data)\n\nWrite all of data (a coroutine yields, other code waits)."},
    {"wait", (PyCFunction)fdch_wait, METH_O,
     "wait(condition) -> int\n\nBlock (GIL released) until the channel is ready for "
     "condition; runs no other callback.  Returns the poll events seen."},
    {"yield_", (PyCFunction)fdch_yield, METH_O,
     "yield_(condition)\n\nIn a coroutine: yield until ready for IO_IN or IO_OUT."},
    {"wake", (PyCFunction)fdch_wake, METH_O,
     "wake(condition)\n\nWake a coroutine waiting in yield_(condition) (QEMU's "
     "qio_channel_wake_read)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef fdch_getset[] = {
    {"_write_fd", (getter)fdch_get_wfd, NULL, NULL, NULL},
    {"closed", (getter)fdch_get_closed, NULL, "True once closed.", NULL},
    {"blocking", (getter)fdch_get_blocking, NULL, "Blocking mode (see set_blocking).", NULL},
    {"_is_socket", (getter)fdch_get_is_socket, NULL, NULL, NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FdChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qloop._core.FdChannel",
    .tp_doc = "Base of the fd-backed channels (socket, file, command).",
    .tp_basicsize = sizeof(FdChannelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = fdch_new,
    .tp_init = fdch_init,
    .tp_dealloc = (destructor)fdch_dealloc,
    .tp_traverse = (traverseproc)fdch_traverse,
    .tp_clear = (inquiry)fdch_clear,
    .tp_methods = fdch_methods,
    .tp_getset = fdch_getset,
    .tp_dictoffset = offsetof(FdChannelObject, dict),
    .tp_weaklistoffset = offsetof(FdChannelObject, weakreflist),
};

int qlpy_channel_register(PyObject *m)
{
    if (PyType_Ready(&FdChannelType) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "FdChannel", (PyObject *)&FdChannelType) < 0) {
        return -1;
    }
    eof_error = PyErr_NewExceptionWithDoc(
        "qloop.UnexpectedEOFError",
        "The stream ended before read_all() got every byte it asked for.\n\n"
        ".partial holds the bytes that did arrive, .expected the count asked for.",
        PyExc_EOFError, NULL);
    if (!eof_error || PyModule_AddObjectRef(m, "UnexpectedEOFError", eof_error) < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(m, "CHANNEL_MAX_FDS", QL_CHANNEL_MAX_FDS);
}
