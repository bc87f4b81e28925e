"""Hypothesis state machine: bottom halves and virtual-clock timers of one
AioContext against a small pure-Python model of what must run, and in which
order.

The model (what qloop promises, docs/qemu-semantics.md sections 1 and 4):
- A BH is *linked* from the schedule (or delete) that finds it unlinked until
  a poll dequeues it.  poll() takes everything linked so far as one batch, in
  linking order (FIFO), and runs each BH that is still scheduled and not
  deleted when its turn comes.  Scheduling a linked BH only sets its flags:
  it keeps its place (also when it was cancelled meanwhile), and a BH of the
  running batch that a callback schedules before its turn runs in this batch.
  Anything linked during the dispatch runs in the next poll.
- schedule_idle runs like schedule but is not progress; schedule() makes an
  idle BH a normal one again; cancel clears both.
- Timers run after the BHs, in (deadline, arming order); a timer runs when
  its deadline <= the virtual clock; mod re-arms (new arming order);
  mod_anticipate only moves a deadline earlier; negative deadlines are 0.
- poll(blocking=False) returns True iff a non-idle BH, a oneshot or a timer
  ran.

Run long:  QLOOP_HYPOTHESIS_PROFILE=long pytest tests/test_stateful_context.py
"""
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import qloop  # noqa: E402
from qloop import CLOCK_VIRTUAL  # noqa: E402

MS = 1_000_000


class _BH:
    """Model of one BH object."""

    __slots__ = ("id", "obj", "scheduled", "idle", "deleted", "linked", "target")

    def __init__(self, id, obj, target):
        self.id = id
        self.obj = obj
        self.scheduled = self.idle = self.deleted = self.linked = False
        self.target = target  # a _BH its callback schedules, or None


class _Timer:
    __slots__ = ("id", "obj", "expire", "seq")

    def __init__(self, id, obj):
        self.id = id
        self.obj = obj
        self.expire = -1
        self.seq = -1


class ContextMachine(RuleBasedStateMachine):
    bhs = Bundle("bhs")
    timers = Bundle("timers")

    def __init__(self):
        super().__init__()
        self.ctx = qloop.AioContext()
        self.log = []          # what really ran, in order
        self.linked = []       # model: linked, not yet taken (ids or _BH)
        self.next_id = 0
        self.timer_list = []
        self.seq = 0
        self.vnow = self.ctx.now(CLOCK_VIRTUAL)
        self.bh_list = []

    def teardown(self):
        self.ctx.close()

    # ---- helpers ------------------------------------------------------
    def _new_id(self, prefix):
        self.next_id += 1
        return "%s%d" % (prefix, self.next_id)

    def _model_schedule(self, b, idle):
        b.scheduled = True
        b.idle = idle
        if not b.linked:
            b.linked = True
            self.linked.append(b)

    def _bh_callback(self, b):
        def cb():
            self.log.append(b.id)
            t = b.target
            if t is not None and not t.obj.deleted:
                t.obj.schedule()
        return cb

    # ---- BHs -----------------------------------------------------------
    @rule(target=bhs, chain=st.booleans(), data=st.data())
    def new_bh(self, chain, data):
        target = None
        if chain and self.bh_list:
            target = data.draw(st.sampled_from(self.bh_list))
        b = _BH(self._new_id("b"), None, target)
        b.obj = self.ctx.bh(self._bh_callback(b))
        self.bh_list.append(b)
        return b

    @rule(b=bhs)
    def schedule(self, b):
        if b.deleted:
            with pytest.raises(RuntimeError):
                b.obj.schedule()
            return
        b.obj.schedule()
        self._model_schedule(b, False)

    @rule(b=bhs)
    def schedule_idle(self, b):
        if b.deleted:
            with pytest.raises(RuntimeError):
                b.obj.schedule_idle()
            return
        b.obj.schedule_idle()
        self._model_schedule(b, True)

    @rule(b=bhs)
    def cancel(self, b):
        if b.deleted:
            with pytest.raises(RuntimeError):
                b.obj.cancel()
            return
        b.obj.cancel()
        b.scheduled = b.idle = False

    @rule(b=bhs)
    def delete(self, b):
        b.obj.delete()
        assert b.obj.deleted
        if not b.deleted:
            b.deleted = True
            b.scheduled = b.idle = False
            if not b.linked:
                b.linked = True
                self.linked.append(b)

    @rule(n=st.integers(1, 3))
    def oneshot(self, n):
        for _ in range(n):
            oid = self._new_id("o")
            self.ctx.schedule_oneshot(self.log.append, oid)
            self.linked.append(oid)

    # ---- timers ----------------------------------------------------------
    @rule(target=timers)
    def new_timer(self):
        t = _Timer(self._new_id("t"), None)
        t.obj = self.ctx.timer(self.log.append, t.id, clock=CLOCK_VIRTUAL)
        self.timer_list.append(t)
        return t

    def _arm(self, t, expire):
        t.expire = max(expire, 0)
        t.seq = self.seq
        self.seq += 1

    @rule(t=timers, delta=st.integers(-3 * MS, 10 * MS))
    def timer_mod(self, t, delta):
        expire = self.vnow + delta
        t.obj.mod(expire)
        self._arm(t, expire)

    @rule(t=timers, delay=st.integers(0, 10 * MS))
    def timer_mod_in(self, t, delay):
        t.obj.mod_in(delay)
        self._arm(t, self.vnow + delay)

    @rule(t=timers, delta=st.integers(-3 * MS, 10 * MS))
    def timer_mod_anticipate(self, t, delta):
        expire = max(self.vnow + delta, 0)
        t.obj.mod_anticipate(expire)
        if t.expire < 0 or expire < t.expire:
            self._arm(t, expire)

    @rule(t=timers)
    def timer_cancel(self, t):
        t.obj.cancel()
        t.expire = -1

    @rule(ns=st.integers(0, 6 * MS))
    def advance(self, ns):
        self.ctx.virtual_clock.advance(ns)
        self.vnow += ns

    @rule(ns=st.integers(-2 * MS, 6 * MS))
    def set_clock(self, ns):
        if ns < 0:
            with pytest.raises(ValueError):
                self.ctx.virtual_clock.set(self.vnow + ns)
            return
        self.ctx.virtual_clock.set(self.vnow + ns)
        self.vnow += ns

    # ---- polling -------------------------------------------------------
    def _model_poll(self):
        expected = []
        progress = False
        batch, self.linked = self.linked, []
        while batch:
            item = batch.pop(0)
            if isinstance(item, str):       # a oneshot
                expected.append(item)
                progress = True
                continue
            b = item
            b.linked = False
            run = b.scheduled and not b.deleted
            idle = b.idle
            b.scheduled = b.idle = False
            if run:
                expected.append(b.id)
                progress = progress or not idle
                t = b.target
                if t is not None and not t.deleted:
                    # still in this batch (linked): it only gets its flag
                    # back and runs in this poll; else linked for the next
                    self._model_schedule(t, False)
        # then timers due now, armed before the pass, by (deadline, seq)
        limit = self.seq
        due = sorted((t for t in self.timer_list
                      if 0 <= t.expire <= self.vnow and t.seq < limit),
                     key=lambda t: (t.expire, t.seq))
        for t in due:
            expected.append(t.id)
            t.expire = -1
            progress = True
        return expected, progress

    @rule()
    def poll_nonblocking(self):
        del self.log[:]
        got = self.ctx.poll(blocking=False)
        expected, progress = self._model_poll()
        assert self.log == expected
        assert got is progress

    @precondition(lambda self: any(
        (not isinstance(i, str) and i.scheduled and not i.idle and not i.deleted)
        or isinstance(i, str) for i in self.linked)
        or any(0 <= t.expire <= self.vnow for t in self.timer_list))
    @rule()
    def poll_blocking_when_ready(self):
        # something is ready: a blocking poll must not sleep
        del self.log[:]
        got = self.ctx.poll(blocking=True)
        expected, progress = self._model_poll()
        assert self.log == expected
        assert got is progress

    # ---- invariants ----------------------------------------------------------
    @invariant()
    def timers_agree(self):
        for t in self.timer_list:
            assert t.obj.pending == (t.expire >= 0)
            assert t.obj.expire_time == t.expire

    @invariant()
    def clock_agrees(self):
        assert self.ctx.now(CLOCK_VIRTUAL) == self.vnow

    @invariant()
    def pending_agrees(self):
        ready = any(isinstance(i, str) or (i.scheduled and not i.deleted)
                    for i in self.linked)
        ready = ready or any(0 <= t.expire <= self.vnow for t in self.timer_list)
        assert self.ctx.pending() == ready


TestContextMachine = ContextMachine.TestCase
