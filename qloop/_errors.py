"""The one place where a negative errno from libqloop becomes an exception."""
import errno as _errno
import os


def oserror(neg_errno, *filename):
    """OSError subclass (FileNotFoundError, BlockingIOError...) for -errno."""
    code = -neg_errno
    return OSError(code, os.strerror(code), *filename)


def check_errno(ret, *filename):
    """Return ``ret`` if it is >= 0, else raise the matching OSError subclass."""
    if ret < 0:
        raise oserror(ret, *filename)
    return ret


EBADF = _errno.EBADF
