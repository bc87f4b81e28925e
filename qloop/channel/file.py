"""QIOChannelFile: a channel over a file, pipe or tty fd (io/channel-file.c)."""
import errno
import os

from .base import FEATURE_SEEKABLE
from .fdbase import FdChannelBase

_MODES = {
    "r": os.O_RDONLY, "rb": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+": os.O_RDWR, "rb+": os.O_RDWR, "r+b": os.O_RDWR,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC, "wb+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL, "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


class QIOChannelFile(FdChannelBase):
    """``QIOChannelFile(fd)`` takes ownership of ``fd``;
    ``QIOChannelFile(path, mode="r", perms=0o666)`` opens a file (mode is a
    Python-style string or os.O_* flags).  Seekable files get
    FEATURE_SEEKABLE and ``seek``.
    """

    def __init__(self, file, mode="r", perms=0o666):
        super().__init__()
        if isinstance(file, bool):
            raise TypeError("file must be an fd (int) or a path, not bool")
        if isinstance(file, int):
            if file < 0:
                raise ValueError("file: fd must be >= 0, not %d" % file)
            fd = file
        elif isinstance(file, (str, bytes, os.PathLike)):
            if isinstance(mode, int):
                flags = mode
            elif mode in _MODES:
                flags = _MODES[mode]
            else:
                raise ValueError("mode must be one of %s or os.O_* flags, not %r"
                                 % (", ".join(sorted(_MODES)), mode))
            fd = os.open(file, flags | os.O_CLOEXEC, perms)
        else:
            raise TypeError("file must be an fd (int) or a path, not %s" % type(file).__name__)
        self._open(fd, -1, False)
        try:
            os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            pass
        else:
            self.set_feature(FEATURE_SEEKABLE)

    @classmethod
    def new_dupfd(cls, fd):
        """A channel on a duplicate of ``fd`` (the caller keeps ``fd``)."""
        return cls(os.dup(fd))

    def seek(self, offset, whence=os.SEEK_SET):
        """Move the file offset; returns the new offset."""
        if self.closed:
            raise ValueError("I/O operation on a closed channel")
        try:
            return os.lseek(self.fileno(), offset, whence)
        except OSError as e:
            if e.errno == errno.ESPIPE:
                raise OSError(errno.ESPIPE, "Channel does not support random access") from None
            raise
