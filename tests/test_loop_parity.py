"""Behaviours of a QEMU-style event loop that other tests did not pin down yet.

Each test names one behaviour; docs/reliability.md maps them (and the
existing tests) to the unit tests a QEMU user would expect to pass.
"""
import os
import select
import socket
import sys

import pytest

import qloop


def drain(ctx):
    while ctx.poll(blocking=False):
        pass


def test_bhs_rescheduling_themselves_then_deleting_from_their_callbacks(ctx):
    # Four BHs, each runs `limit` times (rescheduling itself from its
    # callback) and deletes itself from its last run.
    runs = {}
    bhs = {}

    def cb(name, limit):
        runs[name] += 1
        if runs[name] < limit:
            bhs[name].schedule()
        else:
            bhs[name].delete()

    for name, limit in (("a", 1), ("b", 3), ("c", 2), ("d", 4)):
        runs[name] = 0
        bhs[name] = ctx.bh(cb, name, limit)
        bhs[name].schedule()
    assert runs == {"a": 0, "b": 0, "c": 0, "d": 0}
    assert ctx.poll(blocking=False) is True
    # one poll runs each scheduled BH once, rescheduled ones wait
    assert runs == {"a": 1, "b": 1, "c": 1, "d": 1}
    polls = 0
    while ctx.poll(blocking=False):
        polls += 1
    assert runs == {"a": 1, "b": 3, "c": 2, "d": 4}
    assert polls == 3
    # deleted BHs cannot be scheduled into running again
    drain(ctx)
    assert runs == {"a": 1, "b": 3, "c": 2, "d": 4}


def test_notifier_handler_setting_it_again_runs_once_per_poll(ctx):
    n = qloop.EventNotifier()
    left = [10]
    runs = []

    def read(notifier):
        runs.append(1)
        left[0] -= 1
        if left[0] > 0:
            notifier.set()

    ctx.set_event_notifier(n, read=read)
    drain(ctx)
    assert runs == []
    n.set()
    for i in range(1, 11):
        assert ctx.poll(blocking=False) is True
        assert len(runs) == i
    assert ctx.poll(blocking=False) is False
    assert len(runs) == 10 and left == [0]
    ctx.set_event_notifier(n, None)
    assert ctx.poll(blocking=False) is False
    n.close()


def test_only_the_set_notifier_runs_its_handler_and_blocking_poll_returns(ctx):
    data, other = qloop.EventNotifier(), qloop.EventNotifier()
    ran = {"data": 0, "other": 0}

    ctx.set_event_notifier(data, read=lambda e: ran.__setitem__("data", ran["data"] + 1))
    drain(ctx)
    assert ctx.poll(blocking=False) is False
    data.set()
    # a set notifier is work: a blocking poll must not sleep
    assert ctx.poll(blocking=True) is True
    assert ran["data"] == 1

    ctx.set_event_notifier(other, read=lambda e: ran.__setitem__("other", ran["other"] + 1))
    drain(ctx)
    for expected in (2, 3):
        data.set()
        assert ctx.poll(blocking=False) is True
        assert ran == {"data": expected, "other": 0}
        assert ctx.poll(blocking=False) is False
    other.set()
    assert ctx.poll(blocking=True) is True
    assert ran == {"data": 3, "other": 1}
    ctx.set_event_notifier(other, None)
    ctx.set_event_notifier(data, None)
    data.set()
    assert ctx.poll(blocking=False) is False
    assert ran == {"data": 3, "other": 1}
    data.close()
    other.close()


def iterate(ctx):
    """One non-blocking iteration of a foreign loop embedding ctx."""
    ctx.prepare()
    select.select([ctx.fileno()], [], [], 0)
    if ctx.check():
        ctx.dispatch()
        return True
    return False


def test_embedded_context_runs_bhs_notifiers_and_timers_like_poll(ctx):
    got = []
    # nothing pending: the foreign loop finds nothing to dispatch
    assert iterate(ctx) is False

    bh = ctx.bh(got.append, "bh")
    bh.schedule()
    assert ctx.prepare() == 0
    assert iterate(ctx) is True
    assert got == ["bh"]
    assert iterate(ctx) is False

    bh.schedule()
    bh.cancel()
    assert iterate(ctx) is False
    bh.schedule()
    bh.delete()
    assert iterate(ctx) is False
    assert got == ["bh"]

    count = [0]

    def again():
        count[0] += 1
        if count[0] < 10:
            rebh.schedule()

    rebh = ctx.bh(again)
    rebh.schedule()
    rounds = 0
    while iterate(ctx):
        rounds += 1
        assert count[0] == rounds
    assert count[0] == 10 and rounds == 10

    n = qloop.EventNotifier()
    ctx.set_event_notifier(n, read=lambda e: got.append("notifier"))
    while iterate(ctx):
        pass
    n.set()
    assert iterate(ctx) is True
    assert got == ["bh", "notifier"]
    assert iterate(ctx) is False
    ctx.set_event_notifier(n, None)
    n.close()

    t = ctx.timer(got.append, "timer", clock=qloop.CLOCK_VIRTUAL)
    t.mod(ctx.now(qloop.CLOCK_VIRTUAL) + 1000)
    while iterate(ctx):  # arming notified the context; nothing else is due
        pass
    assert got == ["bh", "notifier"]
    assert ctx.prepare() != 0  # not due (virtual time moves only when told)
    ctx.virtual_clock.advance(999)
    assert iterate(ctx) is False
    ctx.virtual_clock.advance(1)
    assert ctx.prepare() == 0
    assert iterate(ctx) is True
    assert got == ["bh", "notifier", "timer"]
    assert t.pending is False
    assert iterate(ctx) is False


def test_two_command_channels_joined_by_a_fifo(ctx, tmp_path):
    # One child writes what we send into a fifo, another reads the fifo and
    # hands it back; both channels non-blocking, driven by watches.
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    reader = qloop.QIOChannelCommand(["cat", fifo], mode="r")
    writer = qloop.QIOChannelCommand(
        [sys.executable, "-c",
         "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, open(sys.argv[1], 'wb'))",
         fifo],
        mode="w")
    reader.set_blocking(False)
    writer.set_blocking(False)
    data = bytes(range(256)) * 4096  # 1 MiB: more than every pipe buffer
    sent = [0]
    got = []
    eof = []

    def writable(ch, cond):
        n = ch.write(data[sent[0]:sent[0] + 65536])
        if n:
            sent[0] += n
        if sent[0] == len(data):
            return False
        return True

    def readable(ch, cond):
        while True:
            chunk = ch.read(65536)
            if chunk is None:
                return True
            if chunk == b"":
                eof.append(1)
                return False
            got.append(chunk)

    writer.add_watch(qloop.IO_OUT, writable, ctx)
    reader.add_watch(qloop.IO_IN | qloop.IO_HUP, readable, ctx)
    while sum(map(len, got)) < len(data):
        ctx.poll(blocking=True)
    assert not eof
    # the writing child sees EOF on its stdin, exits and closes the fifo:
    # the reading child sees EOF and exits, and so do we
    writer.close()
    assert writer.returncode == 0
    while not eof:
        ctx.poll(blocking=True)
    assert b"".join(got) == data
    reader.close()
    assert reader.returncode == 0


def test_two_command_channels_joined_by_a_fifo_blocking(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    reader = qloop.QIOChannelCommand(["cat", fifo], mode="r")
    writer = qloop.QIOChannelCommand(["sh", "-c", 'exec cat > "$1"', "sh", fifo], mode="w")
    data = b"through the fifo\n" * 100  # fits the pipe buffers: no deadlock
    writer.write_all(data)
    writer.close()
    assert writer.returncode == 0
    assert reader.read_all(len(data)) == data
    assert reader.read(1) == b""
    reader.close()
    assert reader.returncode == 0


@pytest.mark.parametrize("family", ["ipv6", "unix"])
def test_listen_and_connect_async_then_transfer(family, tmp_path):
    if family == "ipv6":
        if not socket.has_ipv6:
            pytest.skip("no IPv6")
        addr = ("::1", 0)
    else:
        addr = str(tmp_path / "sock")
    ctx = qloop.AioContext()
    srv = qloop.QIOChannelSocket()
    done = []
    srv.listen_async(addr, lambda task: done.append(("listen", task.error)), context=ctx)
    while not done:
        ctx.poll(True)
    if family == "ipv6" and isinstance(done[0][1], OSError):
        pytest.skip(f"::1 not usable here: {done[0][1]}")
    assert done == [("listen", None)]
    cli = qloop.QIOChannelSocket()
    cli.connect_async(srv.local_address if family == "ipv6" else addr,
                      lambda task: done.append(("connect", task.error)), context=ctx)
    while len(done) < 2:
        ctx.poll(True)
    assert done[1] == ("connect", None)
    acc = srv.accept()
    # both directions, non-blocking, driven by watches in the context
    for c in (cli, acc):
        c.set_blocking(False)
    got = []

    def readable(ch, cond):
        chunk = ch.read(100)
        if chunk:
            got.append(chunk)
        return chunk is None or len(b"".join(got)) < 10

    acc.add_watch(qloop.IO_IN, readable, ctx)
    cli.add_watch(qloop.IO_OUT, lambda ch, cond: ch.write(b"async ping") is None, ctx)
    while b"".join(got) != b"async ping":
        ctx.poll(True)
    for c in (srv, cli, acc):
        c.close()
    if family == "unix":
        assert not os.path.exists(addr)
    ctx.close()


def test_file_written_by_one_channel_is_read_back_by_another(tmp_path):
    path = str(tmp_path / "f")
    data = b"written by one channel\n" * 1000
    w = qloop.QIOChannelFile(path, "w")
    w.write_all(data)
    w.close()
    r = qloop.QIOChannelFile(path, "r")
    assert r.read_all(len(data)) == data
    assert r.read(1) == b""
    r.close()
    fd = os.open(path, os.O_RDONLY)
    f = qloop.QIOChannelFile(fd, "r")  # an fd the caller opened
    assert f.read_all(len(data)) == data
    f.close()
