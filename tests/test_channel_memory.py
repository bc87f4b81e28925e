"""QIOChannelBuffer (shared offset, append-only writes) and QIOChannelNull."""
import errno

import pytest

import qloop


def test_buffer_shared_offset_needs_seek_to_read_back():
    b = qloop.QIOChannelBuffer()
    assert b.write(b"hello") == 5
    assert b.read(5) == b""  # the offset is at the end
    assert b.seek(0) == 0
    assert b.read(3) == b"hel"
    assert b.read(10) == b"lo"
    assert b.read(10) == b""  # EOF, never None


def test_buffer_write_after_seek_back_appends():
    b = qloop.QIOChannelBuffer(b"abc")
    b.seek(1)
    b.write(b"XY")
    assert b.getvalue() == b"abcXY"
    assert b.offset == 5


def test_buffer_seek_past_end_zero_fills_on_write():
    b = qloop.QIOChannelBuffer(b"ab")
    b.seek(5)
    b.write(b"z")
    assert b.getvalue() == b"ab\0\0\0z"


def test_buffer_readv_writev_and_all():
    b = qloop.QIOChannelBuffer()
    assert b.writev([b"ab", memoryview(b"cd")]) == 4
    b.seek(0)
    x, y = bytearray(1), bytearray(2)
    assert b.readv([x, y]) == (3, [])
    assert (x, y) == (b"a", b"bc")
    b.seek(0)
    assert b.read_all(4) == b"abcd"
    with pytest.raises(qloop.UnexpectedEOFError):
        b.read_all(1)


def test_buffer_close_frees():
    b = qloop.QIOChannelBuffer(b"abc")
    b.close()
    assert b.usage == 0
    with pytest.raises(ValueError):
        b.read(1)


def test_buffer_watch_always_ready(ctx):
    b = qloop.QIOChannelBuffer()
    seen = []

    def cb(ch, cond):
        seen.append(cond)
        return len(seen) < 3

    b.add_watch(qloop.IO_IN | qloop.IO_HUP, cb, ctx)
    for _ in range(5):
        ctx.poll(False)
    assert seen == [qloop.IO_IN] * 3  # condition & (IN|OUT); removed on False


def test_null_reads_eof_writes_swallow():
    n = qloop.QIOChannelNull()
    assert n.read(10) == b""
    assert n.write(b"12345") == 5
    assert n.writev([b"ab", b"c"]) == 3
    assert n.seek(100) == 0
    n.close()
    with pytest.raises(OSError) as ei:
        n.read(1)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        n.write(b"x")


def test_null_watch_passes_condition(ctx):
    n = qloop.QIOChannelNull()
    seen = []
    w = n.add_watch(qloop.IO_OUT | qloop.IO_HUP, lambda ch, c: seen.append(c) or True, ctx)
    ctx.poll(False)
    ctx.poll(False)
    w.remove()
    ctx.poll(False)
    assert seen == [qloop.IO_OUT | qloop.IO_HUP] * 2


def test_fd_passing_not_supported():
    with pytest.raises(ValueError, match="fds"):
        qloop.QIOChannelBuffer().writev([b"x"], fds=[0])
