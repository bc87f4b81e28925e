#!/usr/bin/env python3
"""Atheris harness over qloop's public Python API.

The input drives AioContext, BH, Timer, VirtualClock, EventNotifier and fd
handlers with arbitrary arguments (huge, negative, wrong types) in arbitrary
order, with callbacks that re-enter the API (nested poll, close the context,
delete BHs, raise).  Allowed outcomes: a result, or TypeError / ValueError /
RuntimeError / OSError (and OverflowError for integers beyond 64 bits, which
CPython's int conversion raises), or the callback's own exception re-raised
by the poll that ran it.  Anything else, a crash, a sanitizer report or a
hang (-timeout) is a failure.

Blocking calls are only made when they cannot sleep forever: poll(True) when
pending() says work is ready, EventNotifier.wait with timeout 0.

Run:  python3 tests/fuzz/fuzz_python_api.py -max_total_time=30 [corpus dir]
(ci/fuzz does this when atheris is importable).
"""
import os
import sys

import atheris

with atheris.instrument_imports():
    import qloop
    from qloop import CLOCK_HOST, CLOCK_REALTIME, CLOCK_VIRTUAL


class CallbackError(Exception):
    """Raised on purpose by a callback: poll() must re-raise it."""


MAX_NESTING = 4
_nesting = [0]

ALLOWED = (TypeError, ValueError, RuntimeError, OSError, OverflowError, CallbackError)


class World:
    def __init__(self):
        self.ctxs = []
        self.bhs = []
        self.timers = []
        self.timer_ctx = []     # (context, timer): keeps them alive
        self.notifiers = []
        self.pipes = []

    def close(self):
        for c in self.ctxs:
            c.close()
        for n in self.notifiers:
            n.close()
        for r, w in self.pipes:
            os.close(r)
            os.close(w)


def value(fdp, w):
    """An arbitrary argument."""
    k = fdp.ConsumeIntInRange(0, 15)
    if k == 0:
        return fdp.ConsumeIntInRange(-(2**63), 2**63 - 1)
    if k == 1:
        return fdp.ConsumeInt(9)  # up to 72 bits: beyond int64
    if k == 2:
        return fdp.ConsumeIntInRange(-3, 20_000_000)
    if k == 3:
        return fdp.ConsumeFloat()
    if k == 4:
        return None
    if k == 5:
        return fdp.ConsumeUnicodeNoSurrogates(4)
    if k == 6:
        return fdp.ConsumeBytes(3)
    if k == 7:
        return object()
    if k == 8:
        return callback(fdp, w)
    if k == 9:
        return True
    if k == 10:
        return [1]
    if k == 11 and w.pipes:
        return w.pipes[fdp.ConsumeIntInRange(0, len(w.pipes) - 1)][0]
    if k == 12:
        return fdp.PickValueInList([CLOCK_REALTIME, CLOCK_VIRTUAL, CLOCK_HOST, 3, -1])
    return fdp.ConsumeIntInRange(0, 10)


def pick(fdp, seq):
    if not seq:
        return None
    return seq[fdp.ConsumeIntInRange(0, len(seq) - 1)]


def callback(fdp, w):
    """A callable that does something to the world when the loop calls it."""
    k = fdp.ConsumeIntInRange(0, 9)
    ctx = pick(fdp, w.ctxs)
    bh = pick(fdp, w.bhs)
    if k == 0:
        return lambda *a: None
    if k == 1:
        def boom(*a):
            raise CallbackError("on purpose")
        return boom
    if k == 2 and ctx is not None:
        def nested(*a):
            # A nested poll dispatches whatever is ready again, this handler
            # included while its fd stays readable (as in QEMU); with two such
            # handlers every level doubles the work, so bound the depth.
            if _nesting[0] >= MAX_NESTING:
                return
            _nesting[0] += 1
            try:
                ctx.poll(blocking=False)
            except ALLOWED:
                pass
            finally:
                _nesting[0] -= 1
        return nested
    if k == 3 and ctx is not None:
        return lambda *a: ctx.close()
    if k == 4 and bh is not None:
        return lambda *a: bh.delete()
    if k == 5 and bh is not None:
        def resched(*a):
            if not bh.deleted:
                bh.schedule()
        return resched
    if k == 6 and ctx is not None:
        return lambda *a: ctx.notify()
    if k == 7 and ctx is not None:
        def rm_fds(*a):
            for r, _ in w.pipes:
                try:
                    ctx.set_fd_handler(r, None, None)
                except ALLOWED:
                    pass
        return rm_fds
    if k == 8 and ctx is not None:
        return lambda *a: ctx.schedule_oneshot(lambda: None)
    return lambda *a: True


def one_op(fdp, w):
    op = fdp.ConsumeIntInRange(0, 31)
    ctx = pick(fdp, w.ctxs)
    if op == 0 or ctx is None:
        if len(w.ctxs) < 3:
            c = qloop.AioContext()
            w.ctxs.append(c)
        return
    if op == 1:
        ctx.close()
    elif op == 2:
        args = [value(fdp, w) for _ in range(fdp.ConsumeIntInRange(0, 2))]
        if len(w.bhs) < 16:
            w.bhs.append(ctx.bh(callback(fdp, w) if fdp.ConsumeBool() else value(fdp, w), *args))
    elif op == 3:
        ctx.schedule_oneshot(callback(fdp, w) if fdp.ConsumeBool() else value(fdp, w),
                             *[value(fdp, w) for _ in range(fdp.ConsumeIntInRange(0, 2))])
    elif op == 4:
        kw = {"clock": value(fdp, w)} if fdp.ConsumeBool() else {}
        if len(w.timers) < 16:
            t = ctx.timer(callback(fdp, w), **kw)
            w.timers.append(t)
            w.timer_ctx.append((ctx, t))
    elif op == 5:
        ctx.poll(blocking=False)
    elif op == 6:
        if ctx.pending():
            ctx.poll(blocking=True)
    elif op == 7:
        ctx.poll(blocking=0)
    elif op == 8:
        ctx.notify()
    elif op == 9:
        ctx.now(clock=value(fdp, w))
    elif op == 10:
        ctx.virtual_clock.advance(value(fdp, w))
    elif op == 11:
        ctx.virtual_clock.set(value(fdp, w))
    elif op == 12:
        ctx.virtual_clock.autojump = fdp.ConsumeBool()
    elif op == 13:
        if len(w.pipes) < 4:
            r, wr = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(wr, False)
            w.pipes.append((r, wr))
    elif op == 14:
        fd = value(fdp, w)
        rd = callback(fdp, w) if fdp.ConsumeBool() else None
        wr = callback(fdp, w) if fdp.ConsumeBool() else None
        if isinstance(fd, int) and 0 <= fd <= 2 and wr is not None:
            wr = None  # never spin on stdout/stderr being writable
        ctx.set_fd_handler(fd, rd, wr)
    elif op == 15:
        p = pick(fdp, w.pipes)
        if p:
            try:
                os.write(p[1], b"x")
            except BlockingIOError:
                pass
    elif op == 16:
        timeout = ctx.prepare()
        if timeout == 0 or ctx.pending():
            if ctx.check():
                ctx.dispatch()
        else:
            ctx.check()
    elif op == 17:
        ctx.fileno()
    elif op == 18:
        n = pick(fdp, w.notifiers)
        if n is not None:
            ctx.set_event_notifier(n, callback(fdp, w) if fdp.ConsumeBool() else None)
        else:
            ctx.set_event_notifier(value(fdp, w))
    elif op == 19:
        ctx.__exit__(None, None, None)
    elif op == 20:
        b = pick(fdp, w.bhs)
        if b is not None:
            getattr(b, fdp.PickValueInList(["schedule", "schedule_idle", "cancel", "delete"]))()
    elif op == 21:
        t = pick(fdp, w.timers)
        if t is not None:
            m = fdp.PickValueInList(["mod", "mod_in", "mod_anticipate"])
            getattr(t, m)(value(fdp, w))
    elif op == 22:
        t = pick(fdp, w.timers)
        if t is not None:
            t.cancel()
            _ = (t.pending, t.expire_time, t.clock, repr(t))
    elif op == 23:
        if len(w.notifiers) < 4:
            w.notifiers.append(qloop.EventNotifier())
    elif op == 24:
        n = pick(fdp, w.notifiers)
        if n is not None:
            getattr(n, fdp.PickValueInList(["set", "test_and_clear", "close", "fileno"]))()
    elif op == 25:
        n = pick(fdp, w.notifiers)
        if n is not None:
            n.wait(timeout=0)
    elif op == 26:
        b = pick(fdp, w.bhs)
        if b is not None:
            _ = (b.deleted, b.callback, repr(b))
            w.bhs.remove(b)   # drop our reference (may be scheduled)
    elif op == 27:
        t = pick(fdp, w.timers)
        if t is not None:
            w.timers.remove(t)  # drop our reference (may be armed)
    elif op == 28:
        if ctx is not None:
            _ = (ctx.closed, ctx.fdmon, ctx.kind, repr(ctx))
    elif op == 29:
        # the timeout of a blocking poll on the virtual clock with autojump
        c = ctx
        if not c.closed:
            c.virtual_clock.autojump = True
            if c.pending() or any(tc is c and t.pending and t.clock == CLOCK_VIRTUAL
                                  for tc, t in w.timer_ctx):
                c.poll(blocking=True)
    elif op == 30:
        import gc
        gc.collect()
    else:
        ctx.pending()


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    w = World()
    try:
        for _ in range(fdp.ConsumeIntInRange(1, 60)):
            try:
                one_op(fdp, w)
            except ALLOWED:
                pass
    finally:
        w.close()


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
