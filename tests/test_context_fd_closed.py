"""Handlers of fds closed while registered, when the file itself lives on
through another fd (a dup, a forked child).  epoll keys a registration by
file: closing one number does not end it, and removing the handler by that
number cannot reach it any more.  The context must not keep waking up for
it, nor deliver its events to a new file that got the number."""
import os

import pytest

from conftest import epoll_members


def _polls_until_timer(ctx, ms=30):
    fired = []
    t = ctx.timer(lambda: fired.append(1))
    t.mod_in(ms * 1_000_000)
    n = 0
    while not fired:
        ctx.poll(blocking=True)
        n += 1
    return n


def test_handler_removed_after_its_fd_was_closed_leaves_no_busy_wakeups(ctx):
    r, w = os.pipe()
    keep = os.dup(r)  # the file outlives the close of r
    calls = []
    try:
        ctx.set_fd_handler(r, read=lambda: calls.append(1))
        os.close(r)
        try:
            ctx.set_fd_handler(r, None)
        except OSError:
            pass  # a monitor may report the closed fd; either way it is gone
        os.write(w, b"x")  # the old file is readable from now on
        # a blocking poll sleeps until the timer instead of spinning on the
        # stale registration (it spun tens of thousands of times)
        assert _polls_until_timer(ctx) <= 5
        assert calls == []
        members = epoll_members(ctx)
        if ctx.fdmon == "epoll" and members is not None:
            assert r not in members
    finally:
        os.close(keep)
        os.close(w)


def test_new_file_on_a_closed_registered_number_gets_only_its_own_events(ctx):
    """The number is reused before the handler changes: registering it again
    with other events means the new file (as with poll(2)), and the old
    file's registration must not keep reporting under that number.  (Same
    events on the same number are not re-registered: closing an fd before
    removing its handler stays the caller's error, which the sweep reports.)"""
    r, w = os.pipe()
    keep = os.dup(r)
    old_calls, new_calls = [], []
    try:
        ctx.set_fd_handler(r, read=lambda: old_calls.append(1))
        os.close(r)
        r2, w2 = os.pipe()  # the lowest free numbers: r2 takes r's
        os.set_blocking(r2, False)
        try:
            if r2 != r:
                pytest.skip("the fd number was not reused")

            def on_new():
                try:
                    new_calls.append(os.read(r2, 10))
                except BlockingIOError:
                    new_calls.append(None)  # woken for the old file's data

            # other events than before: the monitor registers the number again
            ctx.set_fd_handler(r2, read=on_new, write=lambda: None)
            ctx.set_fd_handler(r2, read=on_new)
            os.write(w, b"old")  # only the old file becomes readable
            for _ in range(3):
                ctx.poll(blocking=False)
            assert new_calls == [] and old_calls == []
            os.write(w2, b"new")
            ctx.poll(blocking=False)
            assert new_calls == [b"new"]
            ctx.set_fd_handler(r2, None)
            assert _polls_until_timer(ctx) <= 5
        finally:
            os.close(r2)
            os.close(w2)
    finally:
        os.close(keep)
        os.close(w)


def test_outer_loop_watching_the_embedding_fd_still_wakes_after_a_rebuild(ctx):
    """An outer loop that watches ctx.fileno() with its own epoll (asyncio's
    selector does) holds a registration of that file: rebuilding the set
    after a stale registration must keep the file the outer loop watches."""
    import select

    outer = select.epoll()
    outer.register(ctx.fileno(), select.EPOLLIN)
    r, w = os.pipe()
    keep = os.dup(r)
    try:
        ctx.set_fd_handler(r, read=lambda: None)
        os.close(r)
        try:
            ctx.set_fd_handler(r, None)  # the epoll monitor rebuilds its set
        except OSError:
            pass
        while ctx.poll(blocking=False):
            pass
        # the embedding protocol: prepare, wait on the fd, check, dispatch
        assert ctx.prepare() != 0  # nothing pending
        assert outer.poll(0) == []  # so not readable
        ran = []
        ctx.schedule_oneshot(lambda: ran.append(1))
        assert [fd for fd, _ in outer.poll(5)] == [ctx.fileno()]
        assert ctx.check()
        ctx.dispatch()
        assert ran == [1]
    finally:
        outer.close()
        os.close(keep)
        os.close(w)
