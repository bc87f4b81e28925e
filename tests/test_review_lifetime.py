"""Object lifetimes across the C boundary: nothing libqloop still points at
may be freed under it.

A use-after-free rarely crashes on its own, so each scenario runs in a child
interpreter whose allocator poisons freed memory (glibc: no per-thread cache,
MALLOC_PERTURB_); under ci/sanitize the child inherits the AddressSanitizer
preload instead and reports the bad access itself.
"""
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))


def run_isolated(code, timeout=120):
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = "glibc.malloc.tcache_count=0"
    env["MALLOC_PERTURB_"] = "165"
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=HERE, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, "child failed (rc=%d)\n%s\n%s" % (p.returncode, p.stdout,
                                                               p.stderr[-4000:])
    return p.stdout


def test_pool_dropped_by_its_last_completion():
    # Neither the pool nor the request is kept: the completion drops the
    # request's reference, the request was the last holder of the pool.
    out = run_isolated("""
        import gc, weakref, qloop
        ctx = qloop.AioContext()
        done = []
        refs = []
        for i in range(50):
            p = qloop.ThreadPool(context=ctx)
            refs.append(weakref.ref(p))
            p.submit(lambda: i, callback=lambda r: done.append(r.result()))
            del p
            while len(done) <= i:
                ctx.poll()
        assert done == list(range(50)), done
        assert all(r() is None for r in refs)
        ctx.close()
        print("ok")
    """)
    assert out.strip() == "ok"


def test_pool_dropped_by_completion_run_from_context_close():
    # ctx.close() shuts down the pools delivering into it and runs their
    # outstanding completions; the last one drops the pool.
    out = run_isolated("""
        import threading, qloop
        for i in range(20):
            ctx = qloop.AioContext()
            release = threading.Event()
            started = threading.Event()
            seen = []
            def work():
                started.set()
                release.wait()
                return 7
            p = qloop.ThreadPool(context=ctx)
            p.submit(work, callback=lambda r: seen.append(r.result()))
            del p
            started.wait()
            threading.Timer(0.01, release.set).start()
            ctx.close()
            assert seen == [7], seen
        print("ok")
    """)
    assert out.strip() == "ok"


# ---- exceptions are raised, never printed -------------------------------

import pytest

import qloop


@pytest.fixture
def unraisable(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    return seen


def test_flush_stops_asking_once_a_flush_callback_raised(unraisable):
    ctx = qloop.AioContext()
    ra, wa = os.pipe()
    rb, wb = os.pipe()
    try:
        calls = {"a": 0, "b": 0}

        def flush_a():
            calls["a"] += 1
            raise KeyError("flush a")

        def flush_b():
            # busy the first time: without the fix flush() polls, asks a
            # again, and the second KeyError went to sys.unraisablehook
            calls["b"] += 1
            return calls["b"] == 1

        os.write(wb, b"x")
        ctx.set_fd_handler(ra, read=lambda: None, flush=flush_a)
        ctx.set_fd_handler(rb, read=lambda: os.read(rb, 1), flush=flush_b)
        with pytest.raises(KeyError, match="flush a"):
            ctx.flush()
        assert unraisable == []
        assert calls["a"] == 1
    finally:
        ctx.close()
        for fd in (ra, wa, rb, wb):
            os.close(fd)


def test_channel_reopened_while_a_coroutine_still_waits_on_the_old_one(tmp_path):
    # close() wakes the coroutine parked in read_all(); before it runs again
    # the channel object is connected anew, which replaced (and freed) the
    # QLChannel that the woken read_all() still works on.
    out = run_isolated("""
        import os, socket, qloop
        from qloop.channel.socket import QIOChannelSocket
        path = %r
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(4)
        ctx = qloop.AioContext()
        for i in range(5):
            a, b = QIOChannelSocket.pair()
            res = []
            def reader():
                try:
                    res.append(a.read_all(10))
                except OSError as e:
                    res.append(type(e).__name__)
            ctx.co_schedule(qloop.Coroutine(reader))
            ctx.poll(blocking=False)   # the reader waits for data
            a.close()                  # wakes it
            a.connect_sync(path)       # a new fd for the same object
            while not res:
                ctx.poll()
            assert res == ["OSError"], res
            a.close()
            b.close()
            srv.accept()[0].close()
        ctx.close()
        print("ok")
    """ % str(tmp_path / "s"))
    assert out.strip() == "ok"


def _drain_main_loop():
    while qloop.main_loop_wait(nonblocking=True):
        pass


def test_main_loop_wait_raises_the_first_exception(unraisable):
    # A polling callback raises, then (the core cannot stop it) a callback of
    # the main context: main_loop_wait() raises the first one.
    _drain_main_loop()
    ran = []

    def polling():
        raise KeyError("polling callback")

    main = qloop.get_aio_context()
    bh = main.bh(lambda: (ran.append("bh"), 1 / 0))
    qloop.add_polling_cb(polling)
    try:
        bh.schedule()
        with pytest.raises(KeyError, match="polling callback"):
            qloop.main_loop_wait(nonblocking=True)
    finally:
        qloop.del_polling_cb(polling)
        bh.delete()
        _drain_main_loop()


def test_child_watch_exception_stops_the_main_dispatch(unraisable):
    _drain_main_loop()
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    ran = []

    def watch(p, status):
        raise KeyError("child watch")

    main = qloop.get_aio_context()
    bh = main.bh(lambda: ran.append("bh"))
    try:
        assert qloop.add_child_watch(pid, watch) is True  # schedules the reaper BH
        bh.schedule()  # queued behind it
        with pytest.raises(KeyError, match="child watch"):
            qloop.main_loop_wait(nonblocking=True)
        assert ran == []  # the rest runs in the next iteration
        qloop.main_loop_wait(nonblocking=True)
        assert ran == ["bh"]
        assert unraisable == []
    finally:
        bh.delete()
        _drain_main_loop()
