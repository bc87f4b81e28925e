"""The fd-backed channels' common base: the I/O methods live in C.

``read``, ``write``, ``read_all``, ``write_all``, ``wait`` and ``yield_``
come from ``qloop._core.FdChannel``: one call into C each, where the EAGAIN
retry loop, the poll(2) wait and the coroutine yield happen.
"""
from .. import _core
from .base import FEATURE_FD_PASS, MAX_FDS, QIOChannel


class FdChannelBase(_core.FdChannel, QIOChannel):
    """A channel over one fd, or a read fd and a write fd."""

    def __init__(self):
        QIOChannel.__init__(self)

    def readv(self, buffers, *, fds=False):
        if fds and not self.has_feature(FEATURE_FD_PASS):
            raise ValueError("fds: channel does not support file descriptor passing")
        return self._readv(buffers, bool(fds))

    def writev(self, buffers, *, fds=()):
        if fds:
            if not self.has_feature(FEATURE_FD_PASS):
                raise ValueError("fds: channel does not support file descriptor passing")
            if len(fds) > MAX_FDS:
                raise ValueError("fds: only %d file descriptors can be sent, got %d"
                                 % (MAX_FDS, len(fds)))
        return self._writev(buffers, fds)

    def _io_readv(self, buffers, want_fds):
        return self._readv(buffers, want_fds)

    def _io_writev(self, buffers, fds):
        return self._writev(buffers, fds)

    def set_blocking(self, blocking):
        self._set_blocking(bool(blocking))

    def close(self):
        """Close the fd(s).  Closing twice does nothing."""
        self._drop_watches()
        self._close_fds()

    def _watch_fds(self):
        if self.closed:
            raise ValueError("I/O operation on a closed channel")
        return (self.fileno(), self._write_fd)

    def __repr__(self):
        fd = -1 if self.closed else self.fileno()
        return "<%s fd=%d%s>" % (type(self).__name__, fd, " closed" if self.closed else "")
