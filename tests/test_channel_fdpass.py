"""File-descriptor passing over UNIX socket channels (SCM_RIGHTS)."""
import array
import os
import socket

import pytest

import qloop
from chanutil import open_fds


def test_fds_arrive_owned_cloexec_and_blocking():
    a, b = qloop.QIOChannelSocket.pair()
    r, w = os.pipe()
    os.set_blocking(r, False)
    assert a.writev([b"m"], fds=[r, w]) == 1
    buf = bytearray(1)
    n, fds = b.readv([buf], fds=True)
    assert n == 1 and buf == b"m" and len(fds) == 2
    for fd in fds:
        assert not os.get_inheritable(fd)
        assert os.get_blocking(fd)  # O_NONBLOCK is reset on receipt
    os.write(fds[1], b"through")
    assert os.read(r, 7) == b"through"
    for fd in fds + [r, w]:
        os.close(fd)
    a.close()
    b.close()


def test_readv_without_fds_flag_closes_nothing_and_returns_empty_list():
    a, b = qloop.QIOChannelSocket.pair()
    a.write_all(b"ab")
    n, fds = b.readv([bytearray(2)])
    assert (n, fds) == (2, [])
    a.close()
    b.close()


def test_too_many_fds_to_send_is_valueerror():
    a, b = qloop.QIOChannelSocket.pair()
    with pytest.raises(ValueError, match="fds: only 16"):
        a.writev([b"x"], fds=[0] * 17)
    a.close()
    b.close()


def test_too_many_fds_received_reported_and_not_leaked():
    a, b = qloop.QIOChannelSocket.pair()
    s = socket.socket(fileno=os.dup(a.fileno()))
    dups = [os.dup(0) for _ in range(20)]
    s.sendmsg([b"m"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", dups))])
    for fd in dups:
        os.close(fd)
    s.close()
    before = open_fds()
    with pytest.raises(OSError) as ei:
        b.readv([bytearray(1)], fds=True)
    assert ei.value.errno == 90  # EMSGSIZE
    assert open_fds() == before
    a.close()
    b.close()


def test_fds_not_supported_on_tcp_or_pipe():
    srv = qloop.QIOChannelSocket()
    srv.listen_sync(("127.0.0.1", 0))
    cli = qloop.QIOChannelSocket()
    cli.connect_sync(srv.local_address)
    with pytest.raises(ValueError, match="fds"):
        cli.writev([b"x"], fds=[0])
    with pytest.raises(ValueError, match="fds"):
        cli.readv([bytearray(1)], fds=True)
    r, w = os.pipe()
    f = qloop.QIOChannelFile(w)
    with pytest.raises(ValueError, match="fds"):
        f.writev([b"x"], fds=[0])
    for c in (srv, cli, f):
        c.close()
    os.close(r)


def test_received_fds_closed_if_caller_raises():
    """readv_all closes the fds it got when the read then fails."""
    a, b = qloop.QIOChannelSocket.pair()
    r, w = os.pipe()
    a.writev([b"a"], fds=[r])
    a.close()
    os.close(r)
    before = open_fds()
    with pytest.raises(qloop.UnexpectedEOFError):
        b.readv_all([bytearray(4)], fds=True)  # 1 byte + fd, then EOF
    assert open_fds() == before
    b.close()
    os.close(w)


def test_readv_all_and_writev_all_send_fds_once():
    a, b = qloop.QIOChannelSocket.pair()
    r, w = os.pipe()
    a.writev_all([b"ab", b"cd"], fds=[r])
    bufs = [bytearray(1), bytearray(3)]
    fds = b.readv_all(bufs, fds=True)
    assert bytes(bufs[0] + bufs[1]) == b"abcd"
    assert len(fds) == 1
    for fd in fds + [r, w]:
        os.close(fd)
    a.close()
    b.close()
