"""QIONetListener and channel watches on real sockets."""
import socket

import pytest

import qloop
from chanutil import needs_ipv6, poll_until


def test_listener_accepts_clients_through_callback(ctx):
    lst = qloop.QIONetListener(name="srv")
    lst.open_sync(("127.0.0.1", 0))
    clients = []
    lst.set_client_func(lambda l, ch: clients.append((l, ch)), ctx)
    addr = lst.local_addresses[0]
    conns = []
    for _ in range(3):
        c = qloop.QIOChannelSocket()
        c.connect_sync(addr)
        conns.append(c)
    poll_until(ctx, lambda: len(clients) == 3)
    assert all(l is lst for l, _ in clients)
    assert clients[0][1].name == "srv-client"
    clients[0][1].write_all(b"hi")
    assert conns[0].read_all(2) == b"hi"
    lst.disconnect()
    assert not lst.is_connected()
    for c in conns + [ch for _, ch in clients]:
        c.close()


@needs_ipv6
def test_listener_v4_and_v6_on_one_port(ctx):
    lst = qloop.QIONetListener()
    fams = {socket.AF_INET, socket.AF_INET6}
    try:
        lst.open_sync(("", 0))  # wildcard: 0.0.0.0 and ::
    except OSError:
        pytest.skip("cannot listen on the wildcard address")
    if {ch.family for ch in lst.channels} != fams:
        lst.disconnect()
        pytest.skip("resolver did not give both families")
    ports = {a[1] for a in lst.local_addresses}
    assert len(ports) == 1
    port = ports.pop()
    got = []
    lst.set_client_func(lambda l, ch: got.append(ch.family), ctx)
    a, b = qloop.QIOChannelSocket(), qloop.QIOChannelSocket()
    a.connect_sync(("127.0.0.1", port))
    b.connect_sync(("::1", port))
    poll_until(ctx, lambda: len(got) == 2)
    assert set(got) == fams
    lst.disconnect()
    a.close()
    b.close()


def test_listener_open_failure_raises():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    lst = qloop.QIONetListener()
    with pytest.raises(OSError):
        lst.open_sync(("127.0.0.1", s.getsockname()[1]))
    s.close()


def test_set_client_func_none_stops_accepting(ctx):
    lst = qloop.QIONetListener()
    lst.open_sync(("127.0.0.1", 0))
    got = []
    lst.set_client_func(lambda l, ch: got.append(ch), ctx)
    lst.set_client_func(None)
    c = qloop.QIOChannelSocket()
    c.connect_sync(lst.local_addresses[0])
    for _ in range(3):
        ctx.poll(False)
    assert got == []
    w = lst.wait_client()
    assert isinstance(w, qloop.QIOChannelSocket)
    for x in (w, c):
        x.close()
    lst.disconnect()


def test_watch_removed_by_false_and_by_remove(ctx):
    a, b = qloop.QIOChannelSocket.pair()
    calls = []
    w = b.add_watch(qloop.IO_IN, lambda ch, cond: calls.append(cond) or False, ctx)
    a.write_all(b"x")
    poll_until(ctx, lambda: calls)
    ctx.poll(False)
    assert calls == [qloop.IO_IN]
    assert not w.active
    w2 = b.add_watch(qloop.IO_IN, lambda ch, cond: calls.append(cond) or True, ctx)
    w2.remove()
    w2.remove()
    ctx.poll(False)
    assert len(calls) == 1
    a.close()
    b.close()


def test_two_watches_share_one_fd(ctx):
    a, b = qloop.QIOChannelSocket.pair()
    ins, outs = [], []
    wi = b.add_watch(qloop.IO_IN, lambda ch, c: ins.append(c) or True, ctx)
    wo = b.add_watch(qloop.IO_OUT, lambda ch, c: outs.append(c) or True, ctx)
    ctx.poll(False)
    assert outs and not ins
    a.write_all(b"x")
    poll_until(ctx, lambda: ins)
    wo.remove()
    n = len(outs)
    b.read(1)
    ctx.poll(False)
    assert len(outs) == n
    wi.remove()
    a.close()
    b.close()


def test_watch_hup_reported(ctx):
    a, b = qloop.QIOChannelSocket.pair()
    seen = []
    b.add_watch(qloop.IO_IN | qloop.IO_HUP, lambda ch, c: seen.append(c) and False, ctx)
    a.close()
    poll_until(ctx, lambda: seen)
    assert seen[0] & qloop.IO_HUP
    b.close()


def test_watch_exception_raised_by_poll(ctx):
    a, b = qloop.QIOChannelSocket.pair()

    def boom(ch, c):
        raise KeyError("from watch")

    w = b.add_watch(qloop.IO_OUT, boom, ctx)
    with pytest.raises(KeyError):
        ctx.poll(True)
    w.remove()
    a.close()
    b.close()


def test_wait_blocks_until_ready():
    import threading

    a, b = qloop.QIOChannelSocket.pair()
    t = threading.Timer(0.05, lambda: a.write(b"z"))
    t.start()
    ev = b.wait(qloop.IO_IN)
    assert ev & qloop.IO_IN
    t.join()
    with pytest.raises(ValueError, match="condition"):
        b.wait(0)
    a.close()
    b.close()


def test_watch_defaults_to_main_context():
    a, b = qloop.QIOChannelSocket.pair()
    seen = []
    b.add_watch(qloop.IO_IN, lambda ch, c: seen.append(c) and False)
    a.write_all(b"m")
    for _ in range(100):
        if seen:
            break
        qloop.main_loop_wait(nonblocking=False)
    assert seen == [qloop.IO_IN]
    a.close()
    b.close()


def test_listener_gc_unlinks_unix_path(tmp_path):
    import gc
    import os

    path = str(tmp_path / "s")
    ch = qloop.QIOChannelSocket()
    ch.listen_sync(path)
    del ch
    gc.collect()
    assert not os.path.exists(path)


def test_close_removes_watches(ctx):
    a, b = qloop.QIOChannelSocket.pair()
    calls = []
    w = b.add_watch(qloop.IO_IN | qloop.IO_OUT, lambda ch, c: calls.append(c) or True, ctx)
    a.write(b"x")
    b.close()
    assert not w.active
    ctx.poll(False)  # no EBADF: the fd handler went away with the fd
    ctx.poll(False)
    assert calls == []
    a.close()


def test_tls_style_wrapper_close_removes_its_watches(ctx):
    buf = qloop.QIOChannelBuffer()
    w = buf.add_watch(qloop.IO_IN, lambda ch, c: True, ctx)
    buf.close()
    assert not w.active
    ctx.poll(False)
