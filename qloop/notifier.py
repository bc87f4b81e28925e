"""qloop.EventNotifier: a pollable flag that any thread or signal handler sets."""
import errno as _errno
import time

from ._errors import check_errno
from ._qloop import ffi, lib

_EINTR = _errno.EINTR


class EventNotifier:
    """An eventfd (or a non-blocking pipe pair) used as a one-bit flag.

    ``set()`` is thread-safe and async-signal-safe; ``test_and_clear()``
    returns whether it was set and clears it; ``fileno()`` gives the fd to poll
    for readability.  ``QLOOP_NOTIFIER=pipe`` in the environment forces the pipe
    backend.  ``close()`` is idempotent; any other use after it raises
    ValueError.  Also a context manager (closes on exit).
    """

    __slots__ = ("_n", "__weakref__")

    def __init__(self):
        self._n = ffi.new("QLNotifier *")
        check_errno(lib.ql_notifier_init(self._n))

    def _live(self):
        n = self._n
        if n is None or n.rfd < 0:
            raise ValueError("I/O operation on a closed EventNotifier")
        return n

    @property
    def kind(self):
        """"eventfd" or "pipe"."""
        return "eventfd" if self._live().kind == lib.QL_NOTIFIER_EVENTFD else "pipe"

    @property
    def closed(self):
        return self._n is None or self._n.rfd < 0

    def set(self):
        """Set the notifier (no-op if already set).  Any thread; signal-safe."""
        check_errno(lib.ql_notifier_set(self._live()))

    def test_and_clear(self):
        """Clear the notifier; return True if it was set."""
        return bool(check_errno(lib.ql_notifier_test_and_clear(self._live())))

    def wait(self, timeout=None):
        """Block (GIL released) until set or ``timeout`` seconds pass.

        Does not clear it.  Returns True if set, False on timeout.
        """
        if timeout is None:
            ns = -1
            deadline = None
        else:
            if timeout < 0:
                raise ValueError("timeout must be >= 0 or None, not %r" % (timeout,))
            ns = int(timeout * 1e9)
            deadline = time.monotonic_ns() + ns
        while True:
            r = lib.ql_notifier_wait(self._live(), ns)
            if r != -_EINTR:
                return bool(check_errno(r))
            # A signal interrupted the wait.  Python runs its handlers (which
            # may raise, e.g. KeyboardInterrupt) at the loop's back edge; then
            # wait again for the time left (PEP 475).
            if deadline is not None:
                ns = max(0, deadline - time.monotonic_ns())

    def fileno(self):
        return lib.ql_notifier_fd(self._live())

    def close(self):
        """Close the fds.  Idempotent."""
        if self._n is not None:
            lib.ql_notifier_close(self._n)

    def __enter__(self):
        self._live()
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        if self.closed:
            return "<EventNotifier closed>"
        return "<EventNotifier %s fd=%d>" % (self.kind, self.fileno())
