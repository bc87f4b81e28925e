"""In-memory channels: QIOChannelBuffer (io/channel-buffer.c) and
QIOChannelNull (io/channel-null.c)."""
import errno

from .base import FEATURE_SEEKABLE, IO_IN, IO_OUT, QIOChannel


class QIOChannelBuffer(QIOChannel):
    """A growable byte array with ONE offset shared by reads and writes.

    Writes always append at the end of the valid data (``usage``) and move
    the offset there; reads copy from the offset up to the end and return
    b"" at the end (never None).  To read back what was written, seek(0)
    first.  ``seek`` ignores ``whence`` and sets the offset.  Always ready
    for reading and writing.
    """

    def __init__(self, initial=b""):
        super().__init__()
        self.set_feature(FEATURE_SEEKABLE)
        self.data = bytearray(initial)
        self.offset = 0
        self._closed = False

    @property
    def usage(self):
        return len(self.data)

    @property
    def closed(self):
        return self._closed

    def _check(self):
        if self._closed:
            raise ValueError("I/O operation on a closed channel")

    def _io_readv(self, buffers, want_fds):
        self._check()
        n = 0
        for b in buffers:
            if self.offset >= len(self.data):
                break  # end of the data
            v = memoryview(b).cast("B")
            take = min(len(v), len(self.data) - self.offset)
            if take == 0:
                continue  # an empty buffer: fill the next ones
            v[:take] = self.data[self.offset:self.offset + take]
            self.offset += take
            n += take
        return (n, [])

    def _io_writev(self, buffers, fds):
        self._check()
        if self.offset > len(self.data):
            self.data.extend(bytes(self.offset - len(self.data)))
        n = 0
        for b in buffers:
            v = memoryview(b).cast("B")
            self.data += v
            n += len(v)
        self.offset = len(self.data)
        return n

    def getvalue(self):
        return bytes(self.data)

    def seek(self, offset, whence=0):
        self._check()
        if offset < 0:
            raise ValueError("offset must be >= 0, not %d" % offset)
        self.offset = offset
        return offset

    def close(self):
        self._drop_watches()
        self.data = bytearray()
        self.offset = 0
        self._closed = True

    def _watch_ready(self, condition):
        return condition & (IO_IN | IO_OUT)

    def wait(self, condition):
        return condition & (IO_IN | IO_OUT)


class QIOChannelNull(QIOChannel):
    """Reads return b"" (end of file), writes swallow everything and return
    its length; after close both raise OSError(EINVAL, "Channel is closed").
    Always ready: watches fire with the condition they asked for."""

    def __init__(self):
        super().__init__()
        self._closed = False

    @property
    def closed(self):
        return self._closed

    def _check(self):
        if self._closed:
            raise OSError(errno.EINVAL, "Channel is closed")

    def _io_readv(self, buffers, want_fds):
        self._check()
        return (0, [])

    def _io_writev(self, buffers, fds):
        self._check()
        return sum(memoryview(b).nbytes for b in buffers)

    def seek(self, offset, whence=0):
        return 0

    def close(self):
        self._drop_watches()
        self._closed = True

    def _watch_ready(self, condition):
        return condition

    def wait(self, condition):
        return condition
