"""Stress tests, bounded to seconds so that they stay in CI.

- 8 threads x 125,000 oneshot BHs scheduled into one context that a blocking
  poll loop drains: nothing lost, FIFO per scheduling thread, no hang (a lost
  wakeup would leave the poller asleep: faulthandler aborts the run with a
  traceback instead of hanging CI).
- RLIMIT_NOFILE set low in a subprocess: AioContext() and EventNotifier()
  raise OSError(EMFILE) and everything works again once fds are freed; the
  same for the socket and file channels and a QIONetListener.
- A qloop echo server keeps every byte of its good connections while 1,000
  other peers reset (RST) their connections mid-transfer; no fd is leaked.
"""
import errno
import faulthandler
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import qloop

pytestmark = pytest.mark.stress

THREADS = 8
PER_THREAD = 125_000


def test_8_threads_schedule_1M_oneshots_nothing_lost():
    ctx = qloop.AioContext()
    received = [[] for _ in range(THREADS)]
    start = threading.Barrier(THREADS + 1)
    errors = []

    def producer(i):
        try:
            sched = ctx.schedule_oneshot
            cb = received[i].append
            start.wait()
            for n in range(PER_THREAD):
                sched(cb, n)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=producer, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    faulthandler.dump_traceback_later(300, exit=True)
    try:
        start.wait()
        total = THREADS * PER_THREAD
        done = 0
        polls = 0
        while done < total:
            ctx.poll(blocking=True)
            polls += 1
            done = sum(len(r) for r in received)
    finally:
        faulthandler.cancel_dump_traceback_later()
    for t in threads:
        t.join()
    assert not errors
    for r in received:
        assert len(r) == PER_THREAD
        assert r == list(range(PER_THREAD))  # FIFO per scheduling thread
    # nothing more: the context is quiet
    assert ctx.poll(blocking=False) is False
    assert not ctx.pending()
    ctx.close()


def test_bh_schedule_from_threads_while_polling_blocking():
    """Reusable BHs scheduled from other threads while the home thread
    sleeps in poll(): every schedule after the previous run causes a run."""
    ctx = qloop.AioContext()
    rounds = 20_000
    ran = threading.Semaphore(0)
    count = [0]

    def cb():
        count[0] += 1
        ran.release()

    bh = ctx.bh(cb)

    def scheduler():
        for _ in range(rounds):
            bh.schedule()
            ran.acquire()  # wait until it ran: the next schedule needs a wakeup

    t = threading.Thread(target=scheduler)
    faulthandler.dump_traceback_later(300, exit=True)
    try:
        t.start()
        while count[0] < rounds:
            ctx.poll(blocking=True)
    finally:
        faulthandler.cancel_dump_traceback_later()
    t.join()
    assert count[0] == rounds
    bh.delete()
    ctx.close()


_EMFILE_SCRIPT = textwrap.dedent(r"""
    import errno, os, resource, sys
    import qloop

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nopen = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nopen + 24, hard))

    ctxs, ens = [], []
    try:
        while True:
            ctxs.append(qloop.AioContext())
    except OSError as e:
        assert e.errno == errno.EMFILE, e
    # 24 free fds (plus the one listdir held while counting); a context needs one
    # (poll monitor) or two (epoll monitor)
    assert 1 <= len(ctxs) <= 25, len(ctxs)
    # the fds left over may fit a notifier; use them up
    try:
        while True:
            ens.append(qloop.EventNotifier())
    except OSError as e:
        assert e.errno == errno.EMFILE, e
    try:
        qloop.EventNotifier()
    except OSError as e:
        assert e.errno == errno.EMFILE, e
    else:
        raise AssertionError("EventNotifier() with no fd left")

    # a context created before the limit still works without new fds
    ran = []
    ctxs[0].schedule_oneshot(ran.append, 1)
    bh = ctxs[0].bh(ran.append, 2)
    bh.schedule()
    assert ctxs[0].poll(blocking=True) is True
    assert ran == [1, 2]

    # free fds: everything works again
    for c in ctxs[1:]:
        c.close()
    for n in ens:
        n.close()
    c = qloop.AioContext()
    n = qloop.EventNotifier()
    c.set_event_notifier(n, lambda en: ran.append(3))
    n.set()
    while 3 not in ran:
        c.poll(blocking=True)
    c.set_event_notifier(n, None)
    n.close()
    c.close()
    ctxs[0].close()
    print("OK", len(ctxs))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/self/fd")
def test_emfile_raises_oserror_and_loop_recovers():
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", _EMFILE_SCRIPT], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("OK")


_SUSPENDED_SCRIPT = textwrap.dedent(r"""
    import gc, sys
    from qloop import Coroutine, coroutine_yield

    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    unwound = [0]

    def body():
        try:
            coroutine_yield()
        finally:
            unwound[0] += 1          # CoroutineExit unwinds it when collected

    def batch(n):
        cs = [Coroutine(body) for _ in range(n)]
        for c in cs:
            c.enter()                # suspended in coroutine_yield()
        del cs
        gc.collect()

    n, rounds = int(sys.argv[1]), int(sys.argv[2])
    batch(n)                         # warm-up: stack pool, free lists
    base = rss()
    growth = []
    for _ in range(rounds):
        batch(n)
        growth.append(rss() - base)
    print(unwound[0], max(growth))
""")


@pytest.mark.rss
@pytest.mark.skipif(not hasattr(qloop, "Coroutine"), reason="no coroutines in this build")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_suspended_coroutines_collected_with_flat_rss():
    """N suspended coroutines created and dropped, 10 times: all unwound, RSS
    flat.  N = 20,000 in CI; QLOOP_STRESS_FULL=1 runs the full 100,000 (about
    20-45 s on 2 cores)."""
    n = 100_000 if os.environ.get("QLOOP_STRESS_FULL") == "1" else 20_000
    rounds = 10
    r = subprocess.run([sys.executable, "-c", _SUSPENDED_SCRIPT, str(n), str(rounds)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    unwound, growth_kib = map(int, r.stdout.split())
    assert unwound == n * (rounds + 1)
    assert growth_kib < 16 * 1024, "RSS grew by %d KiB over %d rounds" % (growth_kib, rounds)


# ---- connection resets and fd exhaustion on channels ---------------------

def _fds():
    """{fd: what it points to} of this process, without transient ones:
    glibc's malloc briefly opens /proc/sys/vm/overcommit_memory when a
    thread's heap shrinks, in whatever thread happens to free memory."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:  # the directory's own fd, closed by now
            continue
        if not target.startswith("/proc/sys/"):
            out[int(name)] = target
    return out


def _pattern(seed, offset, n):
    """n bytes of connection ``seed``'s stream starting at ``offset``: every
    connection has its own stream, so a byte delivered to the wrong
    connection or at the wrong place does not compare equal."""
    base = bytes((seed * 31 + i * 7) & 0xFF for i in range(251))
    start = offset % 251
    reps = (start + n) // 251 + 1
    return (base * reps)[start:start + n]


@pytest.mark.skipif(not hasattr(qloop, "Coroutine"), reason="no coroutines in this build")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/self/fd")
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_peer_resetting_1000_connections_loses_no_other_connections_data():
    """A QIONetListener echo server (one coroutine per connection: read,
    write_all) on a context the test polls.  4 good clients stream their own
    byte pattern and check every echoed byte while 1,000 other connections
    connect, send part of a message (some far more than the socket buffers
    hold, so the server is inside write_all) and reset (SO_LINGER {1, 0}).
    Every good client gets exactly its bytes back, the server still serves
    afterwards, and no fd is left behind."""
    import socket
    import struct

    GOOD, RESETS, CHUNK = 4, 1000, 16384
    fds_before = _fds()
    ctx = qloop.AioContext()
    listener = qloop.QIONetListener(name="rst")
    listener.open_sync(("127.0.0.1", 0), num=1024)
    port = listener.local_addresses[0][1]
    live = {}  # channel -> its coroutine, referenced until it ends
    stats = {"accepted": 0, "eof": 0, "error": 0}
    server_errors = []

    def serve(ch):
        try:
            while True:
                data = ch.read(65536)
                if data is None:
                    ch.yield_(qloop.IO_IN)
                    continue
                if not data:
                    stats["eof"] += 1
                    return
                ch.write_all(data)
        except OSError as e:  # the peer reset: ECONNRESET / EPIPE
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                server_errors.append(e)
            stats["error"] += 1
        except Exception as e:  # pragma: no cover - reported below
            server_errors.append(e)
        finally:
            ch.close()
            live.pop(ch, None)

    def on_client(lst, ch):
        stats["accepted"] += 1
        ch.set_blocking(False)
        # `live` tells the poll loop when every connection has ended; serve()
        # drops its own entry while it runs, which must not free it.
        co = live[ch] = qloop.Coroutine(serve, ch)
        ctx.schedule_oneshot(co.enter)

    listener.set_client_func(on_client, ctx)

    storm_done = threading.Event()
    client_errors = []
    # Threads count themselves done before their last wake-up BH: a thread
    # that has scheduled it may still be "alive" when the poll it woke
    # returns, and the next blocking poll would then wait forever.
    finished = []
    good_bytes = [0] * GOOD

    def good_client(seed):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                off = 0
                while not storm_done.is_set() or off < 4 * CHUNK:
                    msg = _pattern(seed, off, CHUNK)
                    s.sendall(msg)
                    got = bytearray()
                    while len(got) < CHUNK:
                        b = s.recv(CHUNK - len(got))
                        assert b, "good connection %d: EOF after %d bytes" % (seed, off)
                        got += b
                    assert bytes(got) == msg, "good connection %d: wrong bytes at %d" % (
                        seed, off)
                    off += CHUNK
                s.shutdown(socket.SHUT_WR)
                assert s.recv(1) == b"", "good connection %d: bytes after the echo" % seed
                good_bytes[seed] = off
        except BaseException as e:
            client_errors.append(e)
        finally:
            finished.append(seed)
            ctx.schedule_oneshot(lambda: None)  # wake the poller

    linger = struct.pack("ii", 1, 0)
    big = os.urandom(1 << 20)

    def resetter():
        try:
            for i in range(RESETS):
                s = socket.create_connection(("127.0.0.1", port), timeout=60)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                kind = i % 4
                if kind == 1:
                    s.sendall(big[:1 + i % 3000])
                elif kind == 2:
                    # read part of the echo, reset with the rest in flight
                    s.sendall(big[:8192])
                    s.recv(100)
                elif kind == 3:
                    # more than the buffers hold and never read: the server
                    # is blocked in write_all when the reset arrives
                    s.setblocking(False)
                    try:
                        s.send(big)
                    except BlockingIOError:
                        pass
                s.close()  # RST
        except BaseException as e:
            client_errors.append(e)
        finally:
            storm_done.set()
            finished.append("resetter")
            ctx.schedule_oneshot(lambda: None)

    threads = [threading.Thread(target=good_client, args=(i,)) for i in range(GOOD)]
    threads.append(threading.Thread(target=resetter))
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        for t in threads:
            t.start()
        while len(finished) < len(threads) or live:
            ctx.poll(blocking=True)

        assert not client_errors, client_errors
        assert not server_errors, server_errors
        assert all(n >= 4 * CHUNK for n in good_bytes), good_bytes
        assert stats["eof"] >= GOOD
        # the resets may be accepted or dropped from the backlog by the
        # kernel; every accepted one ended
        assert stats["accepted"] == stats["eof"] + stats["error"]

        # still serving
        result = []

        def check():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                    payload = _pattern(99, 0, 300000)
                    s.sendall(payload)
                    got = bytearray()
                    while len(got) < len(payload):
                        b = s.recv(65536)
                        assert b
                        got += b
                    result.append(bytes(got) == payload)
            except BaseException as e:
                result.append(e)
            finally:
                finished.append("check")
                ctx.schedule_oneshot(lambda: None)

        t = threading.Thread(target=check)
        t.start()
        while len(finished) <= len(threads) or live:
            ctx.poll(blocking=True)
        t.join()
        assert result == [True]
    finally:
        faulthandler.cancel_dump_traceback_later()
        storm_done.set()
        for t in threads:
            t.join(60)
    listener.set_client_func(None)
    listener.disconnect()
    while ctx.poll(blocking=False):
        pass
    ctx.close()
    assert _fds() == fds_before


_CHANNEL_EMFILE_SCRIPT = textwrap.dedent(r"""
    import errno, os, resource, socket
    import qloop

    def fds():  # without the listing's own directory fd
        d = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(int(n) for n in os.listdir(d) if int(n) != d)
        finally:
            os.close(d)

    def emfile(what, fn, *args):
        try:
            r = fn(*args)
        except OSError as e:
            assert e.errno == errno.EMFILE, (what, e)
            return True
        return r

    ctx = qloop.AioContext()
    lst = qloop.QIOChannelSocket()
    lst.listen_sync(("127.0.0.1", 0))
    addr = ("127.0.0.1", lst.local_address[1])
    nl = qloop.QIONetListener(name="emfile")
    nl.open_sync(("127.0.0.1", 0))
    nl_addr = ("127.0.0.1", nl.local_addresses[0][1])
    got = []
    nl.set_client_func(lambda l, ch: got.append(ch), ctx)
    while ctx.poll(blocking=False):
        pass
    base = fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = max(base) + 1 + 40
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    # connect + accept pairs until the table is full
    held = []
    failed = None
    while failed is None:
        c = qloop.QIOChannelSocket()
        if emfile("connect_sync", c.connect_sync, addr) is True:
            assert c.closed
            failed = "connect_sync"
            break
        held.append(c)
        r = emfile("accept", lst.accept)
        if r is True:
            failed = "accept"  # c's connection stays queued on lst
            break
        held.append(r)
    assert 40 <= len(held) < limit, (len(held), limit, base)

    # with no fd left every channel constructor says EMFILE
    while emfile("file", qloop.QIOChannelFile, "/dev/null") is not True:
        pass
    for what, fn, args in [
            ("connect_sync", qloop.QIOChannelSocket().connect_sync, (addr,)),
            ("listen_sync", qloop.QIOChannelSocket().listen_sync, (("127.0.0.1", 0),)),
            ("file", qloop.QIOChannelFile, ("/dev/null", "r")),
            ("new_dupfd", qloop.QIOChannelFile.new_dupfd, (0,)),
            ("pair", qloop.QIOChannelSocket.pair, ()),
    ]:
        assert emfile(what, fn, *args) is True, what
    # a pending connection on a full table: accept says EMFILE ...
    held[-1].close()
    held.pop()
    pending = qloop.QIOChannelSocket()
    pending.connect_sync(addr)
    assert emfile("accept", lst.accept) is True
    # ... and the QIONetListener's watch ignores the failure: the loop goes on
    late = qloop.QIOChannelSocket()
    held[-1].close()
    held.pop()
    late.connect_sync(nl_addr)
    for _ in range(3):
        ctx.poll(blocking=False)
    assert got == []

    # channels opened before the limit still move data through the loop
    a, b = held[0], held[1]  # a connected client and its accepted end
    a.set_blocking(False)
    b.set_blocking(False)
    out = []

    def echo():
        b.write_all(b.read_all(100000)[::-1])

    def client():
        a.write_all(b"x" * 99999 + b"!")
        out.append(a.read_all(100000))

    cos = [qloop.Coroutine(echo), qloop.Coroutine(client)]
    for co in cos:
        ctx.schedule_oneshot(co.enter)
    while not all(co.done for co in cos):
        ctx.poll(blocking=True)
    for co in cos:
        co.result()
    assert out == [b"!" + b"x" * 99999]

    # free fds: accept, listen, files and the listener work again
    for c in held[2:]:
        c.close()
    del held[2:]
    if failed == "accept":
        stale = lst.accept()  # queued when accept failed; its client was closed above
        assert stale.read_all_eof(1) == b""
        stale.close()
    srv = lst.accept()
    pending.write_all(b"ping")
    assert srv.read_all(4) == b"ping"
    while not got:
        ctx.poll(blocking=True)
    late.write_all(b"late")
    assert got[0].read_all(4) == b"late"
    f = qloop.QIOChannelFile("/dev/null", "r")
    assert f.read(10) == b""
    l2 = qloop.QIOChannelSocket()
    l2.listen_sync(("127.0.0.1", 0))
    for ch in [f, l2, srv, pending, late, got[0], a, b]:
        ch.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert fds() == base, (fds(), base)
    nl.disconnect()
    lst.close()
    ctx.close()
    print("OK", failed, len(held))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/self/fd")
def test_low_rlimit_nofile_gives_emfile_from_channels_and_loop_recovers():
    """RLIMIT_NOFILE set low in a subprocess: connect_sync/accept pairs fill
    the table, then QIOChannelSocket connect_sync/listen_sync/pair/accept and
    QIOChannelFile (path and new_dupfd) raise OSError(EMFILE); a
    QIONetListener whose accept fails leaves the loop running; channels made
    before the limit still move data in coroutines; once fds are freed the
    pending connections are accepted and every fd is accounted for."""
    r = subprocess.run([sys.executable, "-c", _CHANNEL_EMFILE_SCRIPT], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("OK"), r.stdout
