"""The channel core through cffi (qloop.lib): the C API embedders use."""
import errno
import os
import socket

from qloop import ffi, lib


def test_cffi_read_write_block_and_eof():
    s1, s2 = socket.socketpair()
    a = lib.ql_channel_new(s1.detach(), -1, lib.QL_CHANNEL_AUTO)
    b = lib.ql_channel_new(s2.detach(), -1, lib.QL_CHANNEL_AUTO)
    assert lib.ql_channel_is_socket(a)
    assert lib.ql_channel_set_blocking(b, False) == 0
    buf = bytearray(16)
    assert lib.ql_channel_read(b, ffi.from_buffer(buf), 16) == lib.QL_CHANNEL_ERR_BLOCK
    assert lib.QL_CHANNEL_ERR_BLOCK < -4095  # never a negative errno
    assert lib.ql_channel_write(a, b"hello", 5) == 5
    done = ffi.new("size_t *")
    assert lib.ql_channel_read_all(b, ffi.from_buffer(buf), 5, done) == 1
    assert done[0] == 5 and bytes(buf[:5]) == b"hello"
    assert lib.ql_channel_free(a) == 0
    assert lib.ql_channel_read(b, ffi.from_buffer(buf), 16) == 0  # EOF
    assert lib.ql_channel_free(b) == 0


def test_cffi_errors_are_negative_errno():
    r, w = os.pipe()
    c = lib.ql_channel_new(w, -1, lib.QL_CHANNEL_AUTO)
    os.close(r)
    assert lib.ql_channel_write(c, b"x", 1) == -errno.EPIPE
    assert lib.ql_channel_close(c) == 0
    assert lib.ql_channel_read_fd(c) == -1
    assert lib.ql_channel_write(c, b"x", 1) == -errno.EBADF
    assert lib.ql_channel_yield(c, lib.QL_CHANNEL_IN) == -errno.EPERM
    lib.ql_channel_free(c)
