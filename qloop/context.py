"""qloop.AioContext: bottom halves, timers on several clocks, fd handlers.

The type itself is implemented in C (qloop._core.AioContext); this module adds
the parts that are plain Python: the virtual clock view, event-notifier
registration and cffi access to the underlying ``QLContext *``.
"""
from . import _core
from ._qloop import ffi

CLOCK_REALTIME = _core.CLOCK_REALTIME
CLOCK_VIRTUAL = _core.CLOCK_VIRTUAL
CLOCK_HOST = _core.CLOCK_HOST
BH = _core.BH
Timer = _core.Timer


class VirtualClock:
    """The context's CLOCK_VIRTUAL: it moves only when told to.

    ``advance(ns)`` and ``set(ns)`` move it (never backwards); timers that
    became due run in the next poll.  With ``autojump`` set, a poll that would
    sleep while a CLOCK_VIRTUAL timer is pending jumps the clock to that
    timer's deadline instead, so a test of a minute of timers runs at once and
    deterministically.
    """

    __slots__ = ("_ctx",)

    def __init__(self, ctx):
        self._ctx = ctx

    def now(self):
        """Current virtual time in ns."""
        return self._ctx.now(CLOCK_VIRTUAL)

    def advance(self, ns):
        """Move the clock forward by ``ns`` (>= 0) nanoseconds."""
        self._ctx._virtual_clock_advance(ns)

    def set(self, ns):
        """Set the clock to ``ns``; it may not go backwards."""
        self._ctx._virtual_clock_set(ns)

    @property
    def autojump(self):
        return self._ctx._autojump

    @autojump.setter
    def autojump(self, value):
        self._ctx._autojump = bool(value)

    def __repr__(self):
        return "<VirtualClock now=%d autojump=%s>" % (self.now(), self.autojump)


class AioContext(_core.AioContext):
    """An event loop in QEMU's model.

    ``poll(blocking=True)`` runs one iteration: bottom halves (in scheduling
    order; those scheduled meanwhile wait for the next poll), then ready fd
    handlers, then expired timers; it returns True if a callback ran.  An
    exception raised by a callback is raised by the poll() that ran it; what
    else was ready runs in the next poll.  ``notify()``, ``BH.schedule()`` and
    ``schedule_oneshot()`` are safe from any thread.  Use as a context manager
    or call ``close()``.
    """

    __slots__ = ()

    @property
    def virtual_clock(self):
        """The context's :class:`VirtualClock` (CLOCK_VIRTUAL)."""
        return VirtualClock(self)

    def set_event_notifier(self, notifier, read=None, flush=None):
        """Call ``read(notifier)`` when the :class:`EventNotifier` is set.

        The context clears the notifier before calling ``read``.  ``flush``
        is QEMU's io_flush.  ``read=None, flush=None`` removes the handler.
        """
        from .notifier import EventNotifier

        if not isinstance(notifier, EventNotifier):
            raise TypeError("notifier must be a qloop.EventNotifier, not %s"
                            % type(notifier).__name__)
        n = notifier._live()
        addr = int(ffi.cast("uintptr_t", n))
        self._set_event_notifier(addr, notifier, read, flush)

    def run(self, fn, *args):
        """Run ``fn(*args)`` as a coroutine in this context until it finishes.

        Polls the context meanwhile (so other callbacks and coroutines run
        too) and returns fn's result; an exception raised by fn -- or by any
        callback run meanwhile -- is raised here.
        """
        from .coroutine import Coroutine

        co = Coroutine(fn, *args)
        self.co_schedule(co)
        while not co.done:
            self.poll(blocking=True)
        return co.result()

    @property
    def cdata(self):
        """The ``QLContext *`` as a cffi pointer, for qloop.lib / C extensions."""
        return ffi.cast("QLContext *", self._ptr)


_core._context_class = AioContext
