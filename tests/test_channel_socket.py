"""QIOChannelSocket over real TCP (v4, v6) and UNIX sockets."""
import errno
import os
import signal
import socket
import threading

import pytest

import qloop
from chanutil import needs_ipv6, open_fds


def sockopt(ch, level, opt, value=None):
    s = ch._sock()
    try:
        if value is None:
            return s.getsockopt(level, opt)
        s.setsockopt(level, opt, value)
    finally:
        s.detach()


def tcp_pair(host="127.0.0.1"):
    srv = qloop.QIOChannelSocket()
    srv.listen_sync((host, 0))
    cli = qloop.QIOChannelSocket()
    cli.connect_sync(srv.local_address[:2])
    acc = srv.accept()
    srv.close()
    return cli, acc


def test_tcp_v4_roundtrip_and_addresses():
    cli, acc = tcp_pair()
    assert cli.remote_address == acc.local_address
    assert acc.remote_address == cli.local_address
    assert cli.family == socket.AF_INET
    assert cli.has_feature(qloop.FEATURE_SHUTDOWN)
    assert not cli.has_feature(qloop.FEATURE_FD_PASS)
    assert cli.write(b"ping") == 4
    assert acc.read_all(4) == b"ping"
    cli.close()
    acc.close()


@needs_ipv6
def test_tcp_v6_roundtrip():
    cli, acc = tcp_pair("::1")
    assert cli.family == socket.AF_INET6
    acc.write_all(b"six")
    assert cli.read_all(3) == b"six"
    cli.close()
    acc.close()


def test_unix_path_roundtrip_and_unlink_on_close(tmp_path):
    path = str(tmp_path / "sock")
    srv = qloop.QIOChannelSocket()
    srv.listen_sync(path)
    assert srv.has_feature(qloop.FEATURE_LISTEN)
    assert os.path.exists(path)
    cli = qloop.QIOChannelSocket()
    cli.connect_sync(path)
    acc = srv.accept()
    assert acc.has_feature(qloop.FEATURE_FD_PASS)
    cli.write_all(b"unix")
    assert acc.read_all(4) == b"unix"
    srv.close()
    assert not os.path.exists(path)
    srv.close()  # twice is a no-op
    cli.close()
    acc.close()


def test_connected_socket_close_does_not_unlink(tmp_path):
    path = str(tmp_path / "sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen()
    ch = qloop.QIOChannelSocket(s.detach())  # not created by listen_sync
    ch.close()
    assert os.path.exists(path)


def test_unix_abstract():
    name = "\0qloop-test-%d" % os.getpid()
    srv = qloop.QIOChannelSocket()
    srv.listen_sync(name)
    cli = qloop.QIOChannelSocket()
    cli.connect_sync(name)
    acc = srv.accept()
    cli.write_all(b"abs")
    assert acc.read_all(3) == b"abs"
    for c in (srv, cli, acc):
        c.close()


def test_read_all_waits_for_slow_writer_gil_released():
    a, b = qloop.QIOChannelSocket.pair()

    def writer():
        for i in range(50):
            a.write_all(bytes([i]) * 100)

    t = threading.Thread(target=writer)
    t.start()
    data = b.read_all(5000)  # waits in C; the writer thread needs the GIL
    t.join()
    assert data == b"".join(bytes([i]) * 100 for i in range(50))
    a.close()
    b.close()


def test_write_all_bigger_than_socket_buffer():
    a, b = qloop.QIOChannelSocket.pair()
    payload = os.urandom(8 << 20)
    got = []
    t = threading.Thread(target=lambda: got.append(b.read_all(len(payload))))
    t.start()
    a.write_all(payload)
    t.join()
    assert got[0] == payload
    a.close()
    b.close()


def test_nonblocking_read_returns_none_and_eof_is_empty():
    a, b = qloop.QIOChannelSocket.pair()
    b.set_blocking(False)
    assert not b.blocking
    assert b.read(10) is None
    a.close()
    assert b.read(10) == b""
    b.close()


def test_nonblocking_write_returns_none_when_full():
    a, b = qloop.QIOChannelSocket.pair()
    a.set_blocking(False)
    n = 0
    while True:
        r = a.write(b"x" * 65536)
        if r is None:
            break
        n += r
    assert n > 0
    a.close()
    b.close()


def test_short_read_at_eof_raises_with_partial():
    a, b = qloop.QIOChannelSocket.pair()
    a.write_all(b"abc")
    a.close()
    with pytest.raises(qloop.UnexpectedEOFError) as ei:
        b.read_all(10)
    assert isinstance(ei.value, EOFError)
    assert ei.value.partial == b"abc"
    assert ei.value.expected == 10
    b.close()


def test_read_all_eof_clean_returns_empty():
    a, b = qloop.QIOChannelSocket.pair()
    a.close()
    assert b.read_all_eof(4) == b""
    with pytest.raises(qloop.UnexpectedEOFError):
        b.read_all(4)
    b.close()


def test_peer_gone_mid_write_is_brokenpipe_not_sigpipe():
    old = signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # SIGPIPE would kill us
    try:
        a, b = qloop.QIOChannelSocket.pair()
        b.close()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            a.write_all(b"x" * 1000000)
        a.close()
    finally:
        signal.signal(signal.SIGPIPE, old)


def test_tcp_reset_peer_gives_connection_error():
    cli, acc = tcp_pair()
    sockopt(acc, socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    acc.close()  # RST
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(100):
            cli.write_all(b"x" * 65536)
    cli.close()


def test_connect_refused_is_oserror_with_errno():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ch = qloop.QIOChannelSocket()
    with pytest.raises(ConnectionRefusedError) as ei:
        ch.connect_sync(("127.0.0.1", port))
    assert ei.value.errno == errno.ECONNREFUSED


def test_bad_arguments_name_the_argument():
    ch = qloop.QIOChannelSocket()
    with pytest.raises(TypeError, match="addr"):
        ch.connect_sync(12)
    with pytest.raises(ValueError, match="port"):
        ch.connect_sync(("127.0.0.1", 70000))
    a, b = qloop.QIOChannelSocket.pair()
    with pytest.raises(TypeError, match="n must be an int"):
        a.read("x")
    with pytest.raises(ValueError, match="n must be >= 0"):
        a.read(-1)
    with pytest.raises(ValueError, match="how"):
        a.shutdown(7)
    a.close()
    b.close()
    with pytest.raises(ValueError, match="closed"):
        a.read(1)


def test_shutdown_write_gives_peer_eof():
    a, b = qloop.QIOChannelSocket.pair()
    a.write_all(b"last")
    a.shutdown(qloop.SHUTDOWN_WRITE)
    assert b.read_all(4) == b"last"
    assert b.read(1) == b""
    b.write_all(b"still")  # the other direction still works
    assert a.read_all(5) == b"still"
    a.close()
    b.close()


def test_set_delay_and_cork_toggle_socket_options():
    cli, acc = tcp_pair()
    cli.set_delay(False)
    assert sockopt(cli, socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    cli.set_delay(True)
    assert sockopt(cli, socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    cli.set_cork(True)
    assert sockopt(cli, socket.IPPROTO_TCP, socket.TCP_CORK) != 0
    cli.set_cork(False)
    cli.close()
    acc.close()


def test_nonblocking_accept_returns_none():
    srv = qloop.QIOChannelSocket()
    srv.listen_sync(("127.0.0.1", 0))
    srv.set_blocking(False)
    assert srv.accept() is None
    srv.close()


def test_accepted_socket_is_cloexec_and_blocking():
    cli, acc = tcp_pair()
    assert not os.get_inheritable(acc.fileno())
    assert os.get_blocking(acc.fileno())
    cli.close()
    acc.close()


def test_connect_and_listen_async_complete_in_context():
    ctx = qloop.AioContext()
    srv = qloop.QIOChannelSocket()
    done = []
    srv.listen_async(("127.0.0.1", 0), lambda task: done.append(("listen", task.error)),
                     context=ctx)
    while not done:
        ctx.poll(True)
    assert done == [("listen", None)] and srv.has_feature(qloop.FEATURE_LISTEN)
    cli = qloop.QIOChannelSocket()
    main = threading.get_ident()
    cli.connect_async(srv.local_address, lambda task: done.append(
        ("connect", task.error, threading.get_ident() == main)), context=ctx)
    while len(done) < 2:
        ctx.poll(True)
    assert done[1] == ("connect", None, True)
    acc = srv.accept()
    cli.write_all(b"async")
    assert acc.read_all(5) == b"async"
    for c in (srv, cli, acc):
        c.close()
    ctx.close()


def test_connect_async_failure_reports_error():
    ctx = qloop.AioContext()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cli = qloop.QIOChannelSocket()
    errs = []

    def cb(task):
        try:
            task.propagate_error()
        except OSError as e:
            errs.append(e)

    cli.connect_async(("127.0.0.1", port), cb, context=ctx)
    while not errs:
        ctx.poll(True)
    assert isinstance(errs[0], ConnectionRefusedError)
    ctx.close()


def test_no_fd_leak_over_many_connections():
    before = open_fds()
    for _ in range(50):
        cli, acc = tcp_pair()
        cli.close()
        acc.close()
    assert open_fds() == before


def test_gc_closes_fd():
    a, b = qloop.QIOChannelSocket.pair()
    fd = a.fileno()
    del a
    import gc

    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)
    b.close()


def test_new_fd_picks_socket_or_file():
    from qloop.channel import new_fd

    r, w = os.pipe()
    s1, s2 = socket.socketpair()
    assert isinstance(new_fd(r), qloop.QIOChannelFile)
    assert isinstance(new_fd(s1.detach()), qloop.QIOChannelSocket)
    os.close(w)
    s2.close()


def test_failed_watch_attach_leaves_the_watch_detached():
    from qloop.channel.base import IO_IN

    a, b = qloop.QIOChannelSocket.pair()
    ctx = qloop.AioContext()
    try:
        w = a.create_watch(IO_IN)
        a.close()
        with pytest.raises(ValueError, match="closed channel"):
            w.attach(lambda ch, cond: True, ctx)
        assert not w.active
        assert w not in a.__dict__.get("_watch_set", ())
        w2 = b.create_watch(IO_IN)
        closed = qloop.AioContext()
        closed.close()
        with pytest.raises(RuntimeError, match="closed AioContext"):
            w2.attach(lambda ch, cond: True, closed)
        assert not w2.active
        w2.attach(lambda ch, cond: True, ctx)  # still usable
        assert w2.active
        w2.remove()
    finally:
        b.close()
        ctx.close()
