"""QIOChannel: the abstract byte channel (QEMU's io/channel.c model).

Return conventions: ``read``/``readv``/``write``/``writev`` return ``None``
when a non-blocking channel would block (QEMU's QIO_CHANNEL_ERR_BLOCK) and
``read`` returns ``b""`` at end of file.  ``read_all``/``write_all`` loop
until done: inside a coroutine they yield until the channel is ready, outside
one they block the thread (GIL released) without running other callbacks.
A stream that ends in the middle of ``read_all`` raises
:class:`UnexpectedEOFError` (a subclass of :class:`EOFError`) whose
``partial`` attribute holds the bytes that did arrive.

Watches (``add_watch``) share one fd handler per fd and context; a coroutine
waiting inside ``read_all``/``write_all``/``yield_`` owns the fd's handler in
its context while it waits (as in QEMU): do not watch the same fd in the same
context meanwhile.  Closing a channel removes its watches and wakes the
coroutines waiting on it (they get EBADF).

OS failures are :class:`OSError` subclasses with errno (a peer that went away
mid-write gives BrokenPipeError or ConnectionResetError; SIGPIPE never kills
the process); bad arguments are TypeError/ValueError naming the argument.
"""
import errno
import select
import weakref

from .. import _core

UnexpectedEOFError = _core.UnexpectedEOFError

IO_IN = 0x001
IO_OUT = 0x004
IO_ERR = 0x008
IO_HUP = 0x010
_IO_ALL = IO_IN | IO_OUT | IO_ERR | IO_HUP

SHUTDOWN_READ = 1
SHUTDOWN_WRITE = 2
SHUTDOWN_BOTH = 3

FEATURE_FD_PASS = 0
FEATURE_SHUTDOWN = 1
FEATURE_LISTEN = 2
FEATURE_WRITE_ZERO_COPY = 3
FEATURE_READ_MSG_PEEK = 4
FEATURE_SEEKABLE = 5

MAX_FDS = _core.CHANNEL_MAX_FDS


def in_coroutine():
    """True when called from inside a qloop coroutine."""
    import qloop

    f = getattr(qloop, "in_coroutine", None)
    return bool(f()) if f is not None else False


def default_context():
    """The context that watches and tasks use when none is given."""
    import qloop

    getter = getattr(qloop, "get_aio_context", None)
    if getter is not None:
        return getter()
    ctx = _core._current_context() if hasattr(_core, "_current_context") else None
    if ctx is None:
        raise ValueError("context is required: qloop has no main loop yet and this thread "
                         "is not polling an AioContext")
    return ctx


def check_condition(condition, name="condition"):
    if not isinstance(condition, int) or isinstance(condition, bool):
        raise TypeError("%s must be an int made of IO_IN, IO_OUT, IO_ERR, IO_HUP, not %s"
                        % (name, type(condition).__name__))
    if condition <= 0 or condition & ~_IO_ALL:
        raise ValueError("%s must be a combination of IO_IN, IO_OUT, IO_ERR, IO_HUP, not %r"
                         % (name, condition))
    return condition


def _check_size(n, name="n"):
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError("%s must be an int, not %s" % (name, type(n).__name__))
    if n < 0:
        raise ValueError("%s must be >= 0, not %d" % (name, n))
    return n


class QIOChannel:
    """Abstract byte channel.

    Subclasses implement ``_io_readv(buffers, want_fds) -> (n, fds) | None``
    and ``_io_writev(buffers, fds) -> int | None`` and, for watches and
    waits, ``_watch_fds()`` (the fds to poll: ``(read_fd, write_fd)``) or
    ``_watch_ready(condition)`` (conditions ready without polling, for
    buffered or in-memory channels).
    """

    def __init__(self):
        self._features = 0
        self.name = None

    # ---- features ------------------------------------------------------
    def has_feature(self, feature):
        """True if the channel has ``feature`` (FEATURE_FD_PASS, ...)."""
        return bool(self._features & (1 << feature))

    def set_feature(self, feature):
        self._features |= 1 << feature

    # ---- single operations ---------------------------------------------
    def readv(self, buffers, *, fds=False):
        """One read into ``buffers`` (writable buffers).

        Returns ``(n, fds)``: the byte count (0 at end of file) and the list
        of file descriptors received (only with ``fds=True``, on channels
        with FEATURE_FD_PASS; the caller owns them), or None if it would
        block.
        """
        if fds and not self.has_feature(FEATURE_FD_PASS):
            raise ValueError("fds: channel does not support file descriptor passing")
        return self._io_readv(list(buffers), bool(fds))

    def writev(self, buffers, *, fds=()):
        """One write of ``buffers``, with ``fds`` attached (FEATURE_FD_PASS).

        Returns the byte count written (may be short) or None if it would
        block.
        """
        fds = list(fds)
        if fds and not self.has_feature(FEATURE_FD_PASS):
            raise ValueError("fds: channel does not support file descriptor passing")
        if len(fds) > MAX_FDS:
            raise ValueError("fds: only %d file descriptors can be sent, got %d"
                             % (MAX_FDS, len(fds)))
        return self._io_writev(list(buffers), fds)

    def read(self, n):
        """One read of up to ``n`` bytes: bytes, b"" at EOF, None if it would block."""
        _check_size(n)
        buf = bytearray(n)
        r = self._io_readv([buf], False)
        if r is None:
            return None
        return bytes(buf[:r[0]])

    def readinto(self, buffer):
        r = self._io_readv([buffer], False)
        return None if r is None else r[0]

    def write(self, data):
        """One write: the number of bytes written, or None if it would block."""
        return self._io_writev([data], [])

    # ---- loops ------------------------------------------------------------
    def _wait_io(self, condition):
        if in_coroutine():
            self.yield_(condition)
        else:
            self.wait(condition)

    def _read_all(self, n, eof_ok):
        _check_size(n)
        buf = bytearray(n)
        view = memoryview(buf)
        done = 0
        while done < n:
            r = self._io_readv([view[done:]], False)
            if r is None:
                self._wait_io(IO_IN)
                continue
            if r[0] == 0:
                if done == 0 and eof_ok:
                    return b""
                exc = UnexpectedEOFError("Unexpected end-of-file before all data were read")
                exc.partial = bytes(buf[:done])
                exc.expected = n
                raise exc
            done += r[0]
        return bytes(buf)

    def read_all(self, n):
        """Read exactly ``n`` bytes; UnexpectedEOFError if the stream ends first."""
        return self._read_all(n, False)

    def read_all_eof(self, n):
        """As read_all, but b"" if the stream ends before the first byte."""
        return self._read_all(n, True)

    def readv_all(self, buffers, *, fds=False):
        """Fill every buffer; returns the fds received (only with the first read)."""
        views = [memoryview(b).cast("B") for b in buffers]
        got = []
        first = True
        total = sum(len(v) for v in views)
        done = 0
        while done < total or (first and total == 0 and fds):
            r = self.readv(views, fds=bool(fds) and first)
            if r is None:
                self._wait_io(IO_IN)
                continue
            n, f = r
            first = False
            got.extend(f)
            if n == 0 and not f:
                for fd in got:
                    _close_fd(fd)
                exc = UnexpectedEOFError("Unexpected end-of-file before all data were read")
                exc.partial = b""
                exc.expected = total
                raise exc
            done += n
            while n and views:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0
            if total == 0:
                break
        return got

    def write_all(self, data):
        """Write all of ``data``."""
        self.writev_all([data])

    def writev_all(self, buffers, *, fds=()):
        """Write every buffer; ``fds`` go with the first successful write."""
        views = [memoryview(b).cast("B") for b in buffers]
        views = [v for v in views if len(v)]
        fds = list(fds)
        while views or fds:
            n = self.writev(views, fds=fds)
            if n is None:
                self._wait_io(IO_OUT)
                continue
            fds = []
            while n and views:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0

    # ---- control ----------------------------------------------------------
    def close(self):
        raise NotImplementedError

    def _drop_watches(self):
        """Remove the watches still attached to this channel (it is closing:
        their fd handlers must not outlive the fds)."""
        for w in list(self.__dict__.get("_watch_set", ())):
            w.remove()

    def shutdown(self, how):
        """Shut down reading, writing or both (SHUTDOWN_READ/WRITE/BOTH)."""
        raise OSError(errno.ENOTSUP, "Data path shutdown not supported")

    def set_blocking(self, blocking):
        """Blocking mode (default True): read/write wait instead of returning None."""

    def set_cork(self, enabled):
        """TCP_CORK on sockets; ignored by channels without it."""

    def set_delay(self, enabled):
        """Nagle's algorithm (enabled=False sets TCP_NODELAY); ignored elsewhere."""

    def seek(self, offset, whence=0):
        raise OSError(errno.ESPIPE, "Channel does not support random access")

    def flush(self):
        """Zero-copy flush (QEMU's qio_channel_flush): nothing to do here; returns 0."""
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- readiness --------------------------------------------------------
    def _watch_fds(self):
        """(read_fd, write_fd) to poll, or None for a channel without fds."""
        return None

    def _watch_ready(self, condition):
        """Conditions already ready without polling (buffered data...)."""
        return 0

    def wait(self, condition):
        """Block until the channel is ready for ``condition`` (QEMU's
        qio_channel_wait): the thread waits (GIL released) and no other
        callback runs meanwhile.  Returns the ready conditions."""
        check_condition(condition)
        ready = self._watch_ready(condition)
        if ready:
            return ready
        fds = self._watch_fds()
        if fds is None:
            raise OSError(errno.ENOTSUP, "channel cannot wait for readiness")
        rfd, wfd = fds
        p = select.poll()
        if condition & (IO_IN | IO_HUP | IO_ERR):
            p.register(rfd, select.POLLIN)
        if condition & IO_OUT:
            p.register(wfd, select.POLLOUT | (select.POLLIN if wfd == rfd and condition & IO_IN
                                              else 0))
        while True:
            ev = p.poll()
            if ev:
                r = 0
                for _, e in ev:
                    r |= e
                return r

    def yield_(self, condition):
        """In a coroutine: yield until ready for IO_IN or IO_OUT (QEMU's
        qio_channel_yield)."""
        check_condition(condition)
        if condition not in (IO_IN, IO_OUT):
            raise ValueError("condition must be exactly IO_IN or IO_OUT for yield_(), not %r"
                             % condition)
        if not in_coroutine():
            raise RuntimeError("yield_() called outside a coroutine")
        if self._watch_ready(condition):
            return
        _coroutine_wait_watch(self, condition)

    # ---- watches ----------------------------------------------------------
    def create_watch(self, condition):
        """A Watch for ``condition``, not attached to a context yet."""
        check_condition(condition)
        return Watch(self, condition)

    def add_watch(self, condition, cb, context=None):
        """Call ``cb(channel, condition)`` in ``context`` whenever the channel
        is ready for ``condition``; a false return value (False or None)
        removes the watch, as does ``Watch.remove()``."""
        w = self.create_watch(condition)
        w.attach(cb, context)
        return w


def _close_fd(fd):
    import os

    try:
        os.close(fd)
    except OSError:
        pass


def _coroutine_wait_watch(channel, condition):
    import qloop

    co = qloop.coroutine_self()
    ctx = default_context()
    state = {"woken": False}

    def ready(ch, cond):
        state["woken"] = True
        qloop.co_wake(co)
        return False

    w = channel.add_watch(condition, ready, ctx)
    try:
        while not state["woken"]:
            qloop.coroutine_yield()
    finally:
        w.remove()


# ---- watches -------------------------------------------------------------

class _FdMux:
    """All watches on one fd in one context share its fd handler."""

    __slots__ = ("ctx", "fd", "readers", "writers", "__weakref__")

    def __init__(self, ctx, fd):
        self.ctx = ctx
        self.fd = fd
        self.readers = []
        self.writers = []

    def update(self):
        r = self._on_read if self.readers else None
        w = self._on_write if self.writers else None
        self.ctx.set_fd_handler(self.fd, r, w)
        if r is None and w is None:
            _muxes.get(self.ctx, {}).pop(self.fd, None)

    def _on_read(self):
        for w in list(self.readers):
            if w in self.readers:
                w._fire_fd(IO_IN, self.fd)

    def _on_write(self):
        for w in list(self.writers):
            if w in self.writers:
                w._fire_fd(IO_OUT, self.fd)


_muxes = weakref.WeakKeyDictionary()  # ctx -> {fd: _FdMux}


def _mux(ctx, fd):
    per = _muxes.get(ctx)
    if per is None:
        per = _muxes[ctx] = {}
    m = per.get(fd)
    if m is None:
        m = per[fd] = _FdMux(ctx, fd)
    return m


class Watch:
    """A readiness watch on a channel (QEMU's channel GSource).

    ``attach(cb, context)`` starts it; ``remove()`` stops it (idempotent).
    ``cb(channel, condition)`` receives the requested conditions that are
    ready; returning a false value removes the watch.
    """

    def __init__(self, channel, condition):
        self.channel = channel
        self.condition = condition
        self._cb = None
        self._ctx = None
        self._entries = []  # (mux, list)
        self._bh = None
        self.active = False

    def attach(self, cb, context=None):
        if not callable(cb):
            raise TypeError("cb must be callable, not %s" % type(cb).__name__)
        if self.active:
            raise RuntimeError("watch is already attached")
        ctx = default_context() if context is None else context
        if not isinstance(ctx, _core.AioContext):
            raise TypeError("context must be an AioContext or None, not %s"
                            % type(context).__name__)
        # Checked before anything is registered: a failed attach leaves the
        # watch detached (and not in the channel's set).
        fds = self.channel._watch_fds()  # ValueError on a closed channel
        if ctx.closed:
            raise RuntimeError("operation on a closed AioContext")
        self._cb = cb
        self._ctx = ctx
        self.active = True
        self.channel.__dict__.setdefault("_watch_set", set()).add(self)
        cond = self.condition
        if fds is not None:
            rfd, wfd = fds
            if cond & (IO_IN | IO_HUP | IO_ERR) and rfd >= 0:
                m = _mux(ctx, rfd)
                m.readers.append(self)
                self._entries.append((m, m.readers))
                m.update()
            if cond & IO_OUT and wfd >= 0:
                m = _mux(ctx, wfd)
                m.writers.append(self)
                self._entries.append((m, m.writers))
                m.update()
        self._bh = ctx.bh(self._fire_ready)
        if fds is None or self.channel._watch_ready(cond):
            self._bh.schedule()
        return self

    def remove(self):
        """Stop the watch.  Idempotent."""
        if not self.active:
            return
        self.active = False
        self.channel.__dict__.get("_watch_set", set()).discard(self)
        for m, lst in self._entries:
            try:
                lst.remove(self)
            except ValueError:
                pass
            if not m.ctx.closed:
                m.update()
        self._entries = []
        if self._bh is not None:
            if not self._ctx.closed:
                self._bh.delete()
            self._bh = None
        self._cb = None

    def _dispatch(self, cond):
        if not self.active:
            return
        keep = self._cb(self.channel, cond)
        if not keep:
            self.remove()
        elif self._bh is not None and self.channel._watch_ready(self.condition):
            self._bh.schedule()

    def _fire_fd(self, direction, fd):
        cond = self.condition
        if direction == IO_IN:
            got = cond & IO_IN
            if cond & (IO_HUP | IO_ERR):
                p = select.poll()
                p.register(fd, select.POLLIN)
                ev = p.poll(0)
                e = ev[0][1] if ev else 0
                got |= cond & (e & (IO_HUP | IO_ERR))
                if not (e & select.POLLIN):
                    got &= ~IO_IN
            if not got:
                return
        else:
            got = IO_OUT
        got |= self.channel._watch_ready(cond)
        self._dispatch(got)

    def _fire_ready(self):
        if not self.active:
            return
        got = self.channel._watch_ready(self.condition)
        if got:
            self._dispatch(got)
