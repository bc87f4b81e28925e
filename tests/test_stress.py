"""Stress tests, bounded to seconds so that they stay in CI.

- 8 threads x 125,000 oneshot BHs scheduled into one context that a blocking
  poll loop drains: nothing lost, FIFO per scheduling thread, no hang (a lost
  wakeup would leave the poller asleep: faulthandler aborts the run with a
  traceback instead of hanging CI).
- RLIMIT_NOFILE set low in a subprocess: AioContext() and EventNotifier()
  raise OSError(EMFILE) and everything works again once fds are freed.
"""
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
    assert 1 <= len(ctxs) <= 24, len(ctxs)
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
