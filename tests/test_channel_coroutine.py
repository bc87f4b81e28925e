"""Channel waits inside coroutines: read_all/write_all/yield_ give control
back to the loop (QEMU's qio_channel_yield) instead of blocking it."""
import threading

import pytest

import qloop
from conftest import epoll_members
from tlsutil import contexts, make_pki


def run_all(ctx, *fns):
    cos = [qloop.Coroutine(f) for f in fns]
    for co in cos:
        ctx.schedule_oneshot(co.enter)
    n = 0
    while not all(co.done for co in cos):
        ctx.poll(True)
        n += 1
        assert n < 100000
    return [co.result() for co in cos]


def test_read_all_yields_to_other_coroutines(ctx):
    a, b = qloop.QIOChannelSocket.pair()
    order = []

    def reader():
        order.append("reader waits")
        data = b.read_all(6)
        order.append("reader got")
        return data

    def writer():
        order.append("writer runs")  # only possible if the reader yielded
        a.write_all(b"abc")
        qloop.co_sleep_ns(1000000)
        a.write_all(b"def")
        return None

    assert run_all(ctx, reader, writer)[0] == b"abcdef"
    assert order == ["reader waits", "writer runs", "reader got"]
    a.close()
    b.close()


def test_full_duplex_big_transfer_in_one_thread(ctx):
    """Both ends write more than the socket buffers hold: only works if
    write_all yields while the peer coroutine drains."""
    a, b = qloop.QIOChannelSocket.pair()
    big = bytes(range(256)) * 16384  # 4 MiB

    def side(ch):
        def fn():
            got = []

            def rd():
                got.append(ch.read_all(len(big)))

            co = qloop.Coroutine(rd)
            ctx.schedule_oneshot(co.enter)
            ch.write_all(big)
            while not co.done:
                qloop.co_sleep_ns(100000)
            return got[0]
        return fn

    r1, r2 = run_all(ctx, side(a), side(b))
    assert r1 == big and r2 == big
    a.close()
    b.close()


def test_eof_in_coroutine_raises_unexpected_eof(ctx):
    a, b = qloop.QIOChannelSocket.pair()

    def reader():
        with pytest.raises(qloop.UnexpectedEOFError) as ei:
            b.read_all(10)
        return ei.value.partial

    def closer():
        a.write_all(b"xy")
        a.close()

    assert run_all(ctx, reader, closer)[0] == b"xy"
    b.close()


def test_yield_outside_coroutine_is_runtime_error():
    a, b = qloop.QIOChannelSocket.pair()
    with pytest.raises(RuntimeError, match="outside a coroutine"):
        b.yield_(qloop.IO_IN)
    with pytest.raises(ValueError, match="exactly IO_IN or IO_OUT"):
        b.yield_(qloop.IO_IN | qloop.IO_OUT)
    a.close()
    b.close()


def test_second_waiter_same_direction_is_runtime_error(ctx):
    a, b = qloop.QIOChannelSocket.pair()
    errors = []

    def first():
        b.yield_(qloop.IO_IN)

    def second():
        try:
            b.yield_(qloop.IO_IN)
        except RuntimeError as e:
            errors.append(str(e))
        a.write(b"x")

    run_all(ctx, first, second)
    assert errors and "already waits" in errors[0]
    a.close()
    b.close()


def test_wake_interrupts_yield(ctx):
    a, b = qloop.QIOChannelSocket.pair()

    def waiter():
        b.yield_(qloop.IO_IN)
        return "woken"

    def waker():
        b.wake(qloop.IO_IN)

    assert run_all(ctx, waiter, waker)[0] == "woken"
    a.close()
    b.close()


def test_exception_after_resume_keeps_python_state(ctx):
    a, b = qloop.QIOChannelSocket.pair()

    def deep(n):
        if n:
            return deep(n - 1)
        data = b.read_all(2)
        raise ValueError("after " + data.decode())

    def reader():
        try:
            deep(20)
        except ValueError as e:
            import traceback

            tb = traceback.extract_tb(e.__traceback__)
            return str(e), sum(1 for f in tb if f.name == "deep")

    def writer():
        a.write_all(b"ok")

    assert run_all(ctx, reader, writer)[0] == ("after ok", 21)
    a.close()
    b.close()


def test_buffer_read_all_in_coroutine_does_not_wait(ctx):
    buf = qloop.QIOChannelBuffer(b"12345")
    assert run_all(ctx, lambda: buf.read_all(5)) == [b"12345"]


def test_tls_handshake_and_io_in_coroutines(ctx, tmp_path):
    sctx, cctx = contexts(make_pki(tmp_path))
    a, b = qloop.QIOChannelSocket.pair()
    a.set_blocking(False)
    b.set_blocking(False)
    srv = qloop.QIOChannelTLS.new_server(a, sctx)
    cli = qloop.QIOChannelTLS.new_client(b, cctx, "localhost")

    def server():
        srv.handshake()
        msg = srv.read_all(100000)
        srv.write_all(msg[::-1])
        return len(msg)

    def client():
        cli.handshake()
        cli.write_all(b"q" * 99999 + b"!")
        return cli.read_all(100000)[:1]

    assert run_all(ctx, server, client) == [100000, b"!"]
    srv.close()
    cli.close()


def test_websock_handshake_in_coroutine(ctx):
    from qloop.channel import websock as ws

    a, b = qloop.QIOChannelSocket.pair()
    a.set_blocking(False)
    srv = qloop.QIOChannelWebsock.new_server(a)

    def server():
        srv.handshake()
        return srv.read_all(4)

    got = []

    def client_thread():
        c = ws.WebsockClient(b)
        got.append(c.handshake()[0])
        c.send(b"wsco")

    t = threading.Thread(target=client_thread)
    t.start()
    assert run_all(ctx, server) == [b"wsco"]
    t.join()
    assert got == [101]
    srv.close()
    b.close()


def test_echo_demo_uses_coroutine_clients(capsys):
    from qloop import _echo

    _echo.run(clients=2, size=10, seconds=0.2, progress=False)
    assert "coroutine clients" in capsys.readouterr().out


def test_close_wakes_a_waiting_coroutine_with_ebadf(ctx):
    a, b = qloop.QIOChannelSocket.pair()

    def reader():
        with pytest.raises(OSError) as ei:
            b.read_all(4)
        return ei.value.errno

    def closer():
        b.close()

    import errno

    assert run_all(ctx, reader, closer)[0] == errno.EBADF
    a.close()


def test_connect_and_accept_yield_in_coroutines(ctx):
    srv = qloop.QIOChannelSocket()
    srv.listen_sync(("127.0.0.1", 0))
    addr = srv.local_address
    order = []

    def acceptor():
        order.append("accept waits")
        conn = srv.accept()  # blocking listener: yields instead of blocking
        order.append("accepted")
        data = conn.read_all(5)
        conn.close()
        return data

    def connector():
        order.append("connect")
        c = qloop.QIOChannelSocket()
        c.connect_sync(addr)
        assert c.remote_address == addr
        c.write_all(b"hello")
        c.close()

    assert run_all(ctx, acceptor, connector)[0] == b"hello"
    assert order[:2] == ["accept waits", "connect"]
    srv.close()


def test_connect_refused_in_coroutine(ctx):
    import socket as pysocket

    s = pysocket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    def connector():
        c = qloop.QIOChannelSocket()
        with pytest.raises(ConnectionRefusedError):
            c.connect_sync(("127.0.0.1", port))
        return c.closed

    assert run_all(ctx, connector) == [True]


def test_coroutine_waiting_in_read_all_needs_no_other_reference():
    """The wait pins the coroutine (as lock waits do): nobody else has to keep
    a reference for it to be woken by its data, instead of being "killed" at
    its wait and leaked."""
    import gc
    import weakref

    with qloop.AioContext() as ctx:
        a, b = qloop.QIOChannelSocket.pair()
        got = []

        def serve(ch):
            got.append(ch.read_all(5))

        co = qloop.Coroutine(serve, b)
        co_ref = weakref.ref(co)
        ctx.schedule_oneshot(co.enter)
        del co  # no reference kept
        for _ in range(3):
            ctx.poll(blocking=False)
        assert got == []
        a.write_all(b"hello")
        for _ in range(20):
            if got:
                break
            ctx.poll(blocking=True)
        assert got == [b"hello"]
        a.close()
        b.close()
    gc.collect()
    assert co_ref() is None  # finished and freed, not killed at its wait and leaked


@pytest.mark.parametrize("wait", ["yield_", "read_all"])
def test_coroutine_woken_by_channel_survives_losing_its_last_outside_reference(wait):
    """Woken by its fd, the coroutine drops the only other reference to
    itself while running (a server's table of connections): it stays alive
    until it ends, then is freed."""
    import gc
    import weakref

    with qloop.AioContext() as ctx:
        a, b = qloop.QIOChannelSocket.pair()
        b.set_blocking(False)
        box = {}
        alive = []

        def serve(ch):
            if wait == "yield_":
                ch.yield_(qloop.IO_IN)
            else:
                ch.read_all(5)
            me = weakref.ref(box.pop("co"))  # the last outside reference
            gc.collect()
            alive.append(me() is not None)

        box["co"] = qloop.Coroutine(serve, b)
        co_ref = weakref.ref(box["co"])
        ctx.schedule_oneshot(box["co"].enter)
        for _ in range(3):
            ctx.poll(blocking=False)
        a.write_all(b"hello")
        for _ in range(20):
            if alive:
                break
            ctx.poll(blocking=True)
        assert alive == [True]
        a.close()
        b.close()
    gc.collect()
    assert co_ref() is None


def test_read_loop_keeps_its_fd_registered_between_waits():
    """A coroutine woken by its fd that waits again before returning (every
    read loop) finds its handler still installed: no fd registration per
    wait.  Once it returns without waiting again, the handler goes, so
    unread data does not keep the loop busy.  Checked in the kernel's own
    view of the epoll set."""
    with qloop.AioContext() as ctx:
        if epoll_members(ctx) is None:
            pytest.skip("the kernel's view of the epoll set cannot be read")
        a, b = qloop.QIOChannelSocket.pair()
        b.set_blocking(False)
        fd = b.fileno()
        seen = []

        def reader():
            for _ in range(3):
                b.yield_(qloop.IO_IN)
                seen.append(fd in epoll_members(ctx))  # still registered
                b.read(1)
            # returns with data still unread: nobody waits any more

        co = qloop.Coroutine(reader)
        ctx.schedule_oneshot(co.enter)
        for _ in range(3):
            ctx.poll(blocking=False)
        assert fd in epoll_members(ctx)
        a.write_all(b"xxxx")
        for _ in range(10):
            if co.done:
                break
            ctx.poll(blocking=True)
        assert co.done and seen == [True, True, True]
        assert fd not in epoll_members(ctx)
        assert ctx.poll(blocking=False) is False  # no handler left to run
        a.close()
        b.close()


@pytest.mark.parametrize("how", ["close", "drop"])
def test_coroutine_may_close_or_drop_the_channel_whose_handler_woke_it(how):
    """The handler that woke the coroutine is still on the stack while it
    runs; closing the channel, or dropping and freeing it, there is safe
    (no fd handler left behind, no use of freed memory under ASan)."""
    import gc

    with qloop.AioContext() as ctx:
        a, b = qloop.QIOChannelSocket.pair()
        b.set_blocking(False)
        box = {"b": b}
        del b
        got = []

        def reader():
            ch = box["b"]
            ch.yield_(qloop.IO_IN)
            got.append(ch.read(10))
            fd = ch.fileno()
            if how == "close":
                ch.close()
            else:
                del box["b"], ch
                gc.collect()
            got.append(fd)

        co = qloop.Coroutine(reader)
        ctx.schedule_oneshot(co.enter)
        ctx.poll(blocking=False)
        a.write_all(b"hi")
        for _ in range(10):
            if co.done:
                break
            ctx.poll(blocking=True)
        co.result()
        assert got[0] == b"hi"
        members = epoll_members(ctx)
        if members is not None:
            assert got[1] not in members
        assert ctx.poll(blocking=False) is False
        a.close()
        box.clear()
