"""fd handlers, flush/pending, event notifiers, embedding and signals."""
import errno
import os
import select
import signal
import socket
import threading
import time

import pytest

import qloop
from conftest import SANITIZED, pipe_nonblocking


def test_read_handler_is_level_triggered(ctx):
    r, w = pipe_nonblocking()
    calls = []
    ctx.set_fd_handler(r, read=lambda: calls.append(1))
    os.write(w, b"ab")
    ctx.poll(blocking=False)
    ctx.poll(blocking=False)  # still readable: runs again
    assert len(calls) == 2
    os.read(r, 10)
    assert ctx.poll(blocking=False) is False
    ctx.set_fd_handler(r)
    os.close(r)
    os.close(w)


def test_write_handler_runs_while_writable(ctx):
    r, w = pipe_nonblocking()
    calls = []
    ctx.set_fd_handler(w, write=lambda: calls.append(1))
    assert ctx.poll(blocking=True) is True
    assert calls == [1]
    ctx.set_fd_handler(w, None, None)
    assert ctx.poll(blocking=False) is False
    os.close(r)
    os.close(w)


def test_registering_again_replaces_the_handler(ctx):
    r, w = pipe_nonblocking()
    calls = []
    ctx.set_fd_handler(r, read=lambda: calls.append("old"))
    ctx.set_fd_handler(r, read=lambda: calls.append("new"))
    os.write(w, b"x")
    ctx.poll(blocking=False)
    assert calls == ["new"]
    ctx.set_fd_handler(r)
    os.close(r)
    os.close(w)


def test_handler_removing_itself_during_dispatch(ctx):
    r, w = pipe_nonblocking()
    calls = []

    def cb():
        calls.append(1)
        ctx.set_fd_handler(r)

    ctx.set_fd_handler(r, read=cb)
    os.write(w, b"x")
    ctx.poll(blocking=False)
    ctx.poll(blocking=False)
    assert calls == [1]
    os.close(r)
    os.close(w)


def test_handler_removing_another_ready_handler(ctx):
    r1, w1 = pipe_nonblocking()
    r2, w2 = pipe_nonblocking()
    calls = []

    def first(me, other):
        calls.append(me)
        ctx.set_fd_handler(other)

    ctx.set_fd_handler(r1, read=lambda: first(r1, r2))
    ctx.set_fd_handler(r2, read=lambda: first(r2, r1))
    os.write(w1, b"x")
    os.write(w2, b"x")
    ctx.poll(blocking=False)
    assert len(calls) == 1  # whichever ran first removed the other
    ctx.set_fd_handler(r1)
    ctx.set_fd_handler(r2)
    for fd in (r1, w1, r2, w2):
        os.close(fd)


def test_handler_works_with_sockets_eventfd_and_pty(ctx):
    a, b = socket.socketpair()
    a.setblocking(False)
    got = []
    ctx.set_fd_handler(a, read=lambda: got.append(("sock", a.recv(10))))
    b.send(b"hi")
    ctx.poll()
    ctx.set_fd_handler(a)

    efd = os.eventfd(0, os.EFD_NONBLOCK)
    ctx.set_fd_handler(efd, read=lambda: got.append(("efd", os.eventfd_read(efd))))
    os.eventfd_write(efd, 3)
    ctx.poll()
    ctx.set_fd_handler(efd)

    master, slave = os.openpty()
    os.set_blocking(master, False)
    ctx.set_fd_handler(master, read=lambda: got.append(("pty", os.read(master, 100))))
    os.write(slave, b"tty\n")
    while not any(k == "pty" for k, _ in got):
        ctx.poll()
    ctx.set_fd_handler(master)
    assert got[0] == ("sock", b"hi")
    assert got[1] == ("efd", 3)
    assert got[2][0] == "pty" and b"tty" in got[2][1]
    for s in (a, b):
        s.close()
    for fd in (efd, master, slave):
        os.close(fd)


def test_regular_file_is_always_ready(ctx, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"data")
    fd = os.open(p, os.O_RDONLY)
    calls = []
    ctx.set_fd_handler(fd, read=lambda: calls.append(1))
    ctx.poll(blocking=True)
    assert calls == [1]
    ctx.set_fd_handler(fd)
    os.close(fd)


def test_closed_fd_still_registered_is_a_clear_error(ctx):
    r, w = pipe_nonblocking()
    ctx.set_fd_handler(r, read=lambda: None)
    os.close(r)
    os.close(w)
    # a blocking poll must not sleep (or spin) forever on the dead fd
    with pytest.raises(OSError) as ei:
        for _ in range(10):
            ctx.poll(blocking=True)
    assert ei.value.errno == 9
    assert "closed" in str(ei.value)
    # the handler was removed: the loop keeps working
    assert ctx.poll(blocking=False) is False


def test_set_fd_handler_validates_arguments(ctx):
    with pytest.raises(TypeError, match="read must be callable"):
        ctx.set_fd_handler(0, read=5)
    with pytest.raises(TypeError):
        ctx.set_fd_handler("zero", read=print)
    with pytest.raises(ValueError):
        ctx.set_fd_handler(-1, read=print)


def test_flush_polls_until_no_request_in_flight(ctx):
    r, w = pipe_nonblocking()
    in_flight = [3]

    def read():
        os.read(r, 1)
        in_flight[0] -= 1

    def writer():
        for _ in range(3):
            time.sleep(0.01)
            os.write(w, b"x")

    ctx.set_fd_handler(r, read=read, flush=lambda: in_flight[0] > 0)
    t = threading.Thread(target=writer)
    t.start()
    ctx.flush()
    t.join()
    assert in_flight == [0]
    ctx.set_fd_handler(r)
    os.close(r)
    os.close(w)


def test_pending_tells_whether_work_is_ready(ctx):
    assert ctx.pending() is False
    bh = ctx.bh(lambda: None)
    bh.schedule()
    assert ctx.pending() is True
    ctx.poll(blocking=False)
    assert ctx.pending() is False
    r, w = pipe_nonblocking()
    ctx.set_fd_handler(r, read=lambda: os.read(r, 10))
    ctx.poll(blocking=False)
    os.write(w, b"x")
    assert ctx.pending() is True
    ctx.poll(blocking=False)
    ctx.set_fd_handler(r)
    os.close(r)
    os.close(w)


def test_event_notifier_handler(ctx):
    n = qloop.EventNotifier()
    got = []

    def read(notifier):
        # the context clears the notifier before calling the handler
        got.append((notifier, notifier.test_and_clear()))

    ctx.set_event_notifier(n, read=read)
    threading.Timer(0.02, n.set).start()
    while not got:
        ctx.poll()
    assert got == [(n, False)]
    ctx.set_event_notifier(n, None)
    with pytest.raises(TypeError, match="EventNotifier"):
        ctx.set_event_notifier(object(), read=read)
    n.close()


def test_embedding_with_prepare_check_dispatch(ctx):
    """Drive the context from a foreign loop: select() on fileno()."""
    r, w = pipe_nonblocking()
    got = []
    timer = ctx.timer(got.append, "timer")

    def on_fd():
        got.append(os.read(r, 10))
        timer.mod_in(20_000_000)  # the timer is armed once the fd was seen

    ctx.schedule_oneshot(got.append, "bh")
    ctx.set_fd_handler(r, read=on_fd)
    threading.Timer(0.01, os.write, (w, b"fd")).start()
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        timeout = ctx.prepare()
        select.select([ctx.fileno()], [], [], None if timeout < 0 else timeout / 1e9)
        if ctx.check():
            ctx.dispatch()
    assert got == ["bh", b"fd", "timer"]
    ctx.set_fd_handler(r)
    os.close(r)
    os.close(w)


def test_sigint_during_blocking_poll_raises_keyboard_interrupt(ctx):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals go to the main thread")
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ctx.timer(lambda: None).mod_in(30 * 10**9)
            while True:
                ctx.poll(blocking=True)
        assert time.monotonic() - t0 < 10
    finally:
        signal.signal(signal.SIGINT, old)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("monitor", ["epoll", "poll"])
def test_set_fd_handler_huge_unopened_fd_raises_ebadf_without_allocating(monkeypatch, monitor):
    # The context's fd table is indexed by fd: an unopened fd number far above
    # anything open must be refused before that table grows for it.
    monkeypatch.setenv("QLOOP_FDMON", monitor)
    c = qloop.AioContext()
    try:
        rss = _rss_bytes()
        for fd in (10**6, 4 * 10**6):  # an 8 and a 32 MB table if it grew
            for kwargs in ({"read": lambda: None}, {"write": lambda: None},
                           {"flush": lambda: False}):
                with pytest.raises(OSError) as ei:
                    c.set_fd_handler(fd, **kwargs)
                assert ei.value.errno == errno.EBADF
        if not SANITIZED:  # ASan's quarantine keeps freed memory resident
            assert _rss_bytes() - rss < 16 * 2**20
        with pytest.raises(OSError) as ei:
            c.set_fd_handler(2**30 - 1, read=lambda: None)
        assert ei.value.errno == errno.EBADF
        c.set_fd_handler(2**30 - 1)  # removing what is not there: no-op
        assert c.poll(blocking=False) is False
    finally:
        c.close()
