import os
import sys
import threading

import pytest


@pytest.fixture(params=["epoll", "poll"])
def fdmon(request, monkeypatch):
    """Run the test under both fd monitors (read when a context is created)."""
    if request.param == "poll":
        monkeypatch.setenv("QLOOP_FDMON", "poll")
    else:
        monkeypatch.delenv("QLOOP_FDMON", raising=False)
    return request.param


@pytest.fixture
def ctx(fdmon):
    import qloop

    c = qloop.AioContext()
    assert c.fdmon == fdmon
    # registering handlers notifies; start from a quiet context
    while c.poll(blocking=False):
        pass
    yield c
    c.close()


@pytest.fixture
def vctx():
    """A context whose tests run on the virtual clock with autojump."""
    import qloop

    c = qloop.AioContext()
    c.virtual_clock.autojump = True
    yield c
    c.close()


def pipe_nonblocking():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


# Hypothesis profiles: "ci" (default) keeps every state machine to a few
# seconds; QLOOP_HYPOTHESIS_PROFILE=long explores much more.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=60, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile(
        "long", max_examples=3000, stateful_step_count=100, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("QLOOP_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is in the test extra only
    pass


# Under ci/sanitize the interpreter runs with libasan preloaded: its
# quarantine keeps freed memory resident, so RSS-based checks say nothing.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "rss: measures resident memory; skipped under AddressSanitizer")


def pytest_collection_modifyitems(config, items):
    if not SANITIZED:
        return
    skip = pytest.mark.skip(reason="RSS is not meaningful under AddressSanitizer")
    for item in items:
        if item.get_closest_marker("rss"):
            item.add_marker(skip)


def epoll_members(ctx):
    """fds registered in the context's epoll set, read from the kernel's
    /proc/self/fdinfo (None where that cannot be read).  The embedding fd
    (ctx.fileno()) is, with the epoll monitor, an epoll set whose one member
    is the context's own set; with the poll monitor, a set mirroring the
    registrations."""
    def members(fd):
        with open("/proc/self/fdinfo/%d" % fd) as f:
            return {int(line.split()[1]) for line in f if line.startswith("tfd:")}
    try:
        outer = members(ctx.fileno())
        if ctx.fdmon == "epoll" and len(outer) == 1:
            return members(outer.pop())
        return outer
    except OSError:
        return None


def set_when_gil_released(event):
    """Start a thread that sets ``event`` as soon as this thread blocks with
    the GIL released (inside ``close()``, say).  Returns ``go`` to call right
    before the blocking call; with a long switch interval the helper cannot
    run earlier, so what happens before the wait is deterministic."""
    lock = threading.Lock()
    lock.acquire()

    def run():
        lock.acquire()
        event.set()

    t = threading.Thread(target=run)
    t.start()
    old = sys.getswitchinterval()

    def go():
        sys.setswitchinterval(1000.0)
        lock.release()

    def done():
        sys.setswitchinterval(old)
        t.join()

    return go, done


@pytest.fixture
def unraisable():
    """Exceptions reported through sys.unraisablehook while the test runs."""
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    yield seen
    sys.unraisablehook = old
