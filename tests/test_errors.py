"""qloop._errors: negative errno values from libqloop become OSError subclasses."""
import errno
import os

import pytest

from qloop import check_errno
from qloop._errors import oserror


def test_check_errno_enoent_raises_file_not_found():
    with pytest.raises(FileNotFoundError) as ei:
        check_errno(-errno.ENOENT)
    assert ei.value.errno == errno.ENOENT
    assert ei.value.strerror == os.strerror(errno.ENOENT)


def test_check_errno_literal_minus_two_is_enoent():
    # The values libqloop returns are Linux errno numbers.
    with pytest.raises(FileNotFoundError) as ei:
        check_errno(-2)
    assert ei.value.errno == errno.ENOENT == 2


def test_check_errno_eagain_raises_blocking_io_error():
    with pytest.raises(BlockingIOError) as ei:
        check_errno(-11)
    assert ei.value.errno == errno.EAGAIN == 11


@pytest.mark.parametrize("code, exc", [
    (errno.EBADF, OSError),
    (errno.EPIPE, BrokenPipeError),
    (errno.ECONNRESET, ConnectionResetError),
    (errno.EINTR, InterruptedError),
    (errno.ETIMEDOUT, TimeoutError),
    (errno.EEXIST, FileExistsError),
    (errno.EACCES, PermissionError),
])
def test_check_errno_maps_to_os_error_subclass(code, exc):
    with pytest.raises(exc) as ei:
        check_errno(-code)
    assert type(ei.value) is exc
    assert ei.value.errno == code
    assert ei.value.strerror == os.strerror(code)


def test_check_errno_passes_filename():
    with pytest.raises(FileNotFoundError) as ei:
        check_errno(-errno.ENOENT, "/no/such/file")
    assert ei.value.filename == "/no/such/file"


@pytest.mark.parametrize("value", [0, 1, 5, 2**31 - 1])
def test_check_errno_returns_non_negative_values(value):
    assert check_errno(value) == value


def test_oserror_builds_without_raising():
    e = oserror(-errno.ENOENT)
    assert isinstance(e, FileNotFoundError)
    assert e.errno == errno.ENOENT
