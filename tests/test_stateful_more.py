"""Hypothesis state machines for CoQueue, CoRwlock and QIOChannelBuffer,
each against a small pure-Python model.

CoQueue (csrc/co-lock.c, ql_co_wake in csrc/include/qloop/coroutine.h):
  - wait() queues at the tail, wait_insert_head() at the head;
  - next() pops the first waiter and returns whether there was one;
    restart_all() pops every waiter, in queue order;
  - a waiter woken from outside any coroutine is entered at once; one woken
    from inside a coroutine runs when the waking coroutine yields, before
    the enter() that ran the waker returns (wakes run in wake order);
  - empty() is True iff nobody waits.

CoRwlock (FIFO tickets):
  - rdlock is granted at once if the lock is free, or read-held and nobody
    queues; wrlock only if free; otherwise the caller queues (FIFO);
  - unlock/downgrade admit from the head: consecutive readers, or one
    writer once free;
  - upgrade: sole reader with nobody queued -> writer at once; otherwise it
    drops its read hold and queues as a writer at the tail;
  - never a writer together with another holder; grants happen in exactly
    the order the model computes (readers never overtake a queued writer);
  - at the end, releasing every hold lets every coroutine finish.

QIOChannelBuffer (qloop/channel/memory.py): one offset shared by reads and
writes; a write first zero-fills up to the offset if it is past the end,
then appends at the end of the data and moves the offset there; reads copy
from the offset and return b"" at (or past) the end; seek sets the offset.

Run long:  QLOOP_HYPOTHESIS_PROFILE=long pytest tests/test_stateful_more.py
"""
import collections

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import qloop  # noqa: E402

if not hasattr(qloop, "CoQueue"):  # coroutines not in this build
    pytest.skip("qloop has no coroutines", allow_module_level=True)

MAX_COROUTINES = 5


# ---- CoQueue ---------------------------------------------------------------

class CoQueueMachine(RuleBasedStateMachine):
    """Each coroutine is a tiny interpreter: the machine sets its command and
    enters it; the coroutine performs the command, then yields back
    ("idle").  Commands: wait, head, next, restart, exit."""

    def __init__(self):
        super().__init__()
        self.q = qloop.CoQueue()
        self.model = collections.deque()   # waiting coroutine ids, head first
        self.cos = {}
        self.cmd = {}
        self.state = {}                    # id -> "idle" | "waiting" | "done"
        self.woken = []                    # ids in the order they resumed
        self.expect_woken = []
        self.next_results = []             # next() results seen inside coroutines

    def _body(self, cid):
        while True:
            op = self.cmd[cid]
            if op == "exit":
                break
            if op in ("wait", "head"):
                self.state[cid] = "waiting"
                if op == "wait":
                    self.q.wait()
                else:
                    self.q.wait_insert_head()
                self.woken.append(cid)
            elif op == "next":
                self.next_results.append(self.q.next())
            elif op == "restart":
                self.q.restart_all()
            self.state[cid] = "idle"
            qloop.coroutine_yield()
        self.state[cid] = "done"

    def _idle(self):
        return sorted(c for c, s in self.state.items() if s == "idle")

    def _run(self, cid, op):
        self.cmd[cid] = op
        self.cos[cid].enter()

    @precondition(lambda self: len(self.cos) < MAX_COROUTINES)
    @rule()
    def spawn(self):
        cid = len(self.cos)
        self.cos[cid] = qloop.Coroutine(self._body, cid)
        self.state[cid] = "idle"

    @precondition(lambda self: any(s == "idle" for s in self.state.values()))
    @rule(data=st.data(), head=st.booleans())
    def co_wait(self, data, head):
        cid = data.draw(st.sampled_from(self._idle()))
        self._run(cid, "head" if head else "wait")
        assert self.state[cid] == "waiting"
        if head:
            self.model.appendleft(cid)
        else:
            self.model.append(cid)

    def _woke(self, ids):
        self.expect_woken.extend(ids)
        assert self.woken == self.expect_woken
        for c in ids:
            assert self.state[c] == "idle", (c, self.state)

    @rule()
    def next_outside(self):
        r = self.q.next()
        assert r == bool(self.model)
        self._woke([self.model.popleft()] if r else [])

    @rule()
    def restart_all_outside(self):
        ids = list(self.model)
        self.model.clear()
        self.q.restart_all()
        self._woke(ids)

    @precondition(lambda self: any(s == "idle" for s in self.state.values()))
    @rule(data=st.data())
    def next_inside(self, data):
        cid = data.draw(st.sampled_from(self._idle()))
        had = bool(self.model)
        ids = [self.model.popleft()] if had else []
        self._run(cid, "next")
        assert self.next_results.pop() == had
        assert self.state[cid] == "idle"
        self._woke(ids)

    @precondition(lambda self: any(s == "idle" for s in self.state.values()))
    @rule(data=st.data())
    def restart_all_inside(self, data):
        cid = data.draw(st.sampled_from(self._idle()))
        ids = list(self.model)
        self.model.clear()
        self._run(cid, "restart")
        assert self.state[cid] == "idle"
        self._woke(ids)

    @invariant()
    def agrees(self):
        assert self.q.empty() == (not self.model)
        assert [c for c, s in self.state.items() if s == "waiting"] == sorted(self.model)
        for cid, co in self.cos.items():
            assert co.done == (self.state[cid] == "done")

    def teardown(self):
        ids = list(self.model)
        self.model.clear()
        self.q.restart_all()
        self._woke(ids)
        for cid in self._idle():
            self._run(cid, "exit")
        assert all(s == "done" for s in self.state.values()), self.state
        assert self.q.empty()


TestCoQueueMachine = CoQueueMachine.TestCase


# ---- CoRwlock --------------------------------------------------------------

class CoRwlockMachine(RuleBasedStateMachine):
    """Coroutines as interpreters again; commands rdlock, wrlock, upgrade,
    downgrade, unlock, exit.  A coroutine that has to wait is left alone:
    the unlock/downgrade/upgrade that admits it wakes it, and it records the
    grant in self.grants before yielding back."""

    def __init__(self):
        super().__init__()
        self.lock = qloop.CoRwlock()
        self.cos = {}
        self.cmd = {}
        self.state = {}      # id -> "idle" | "waiting" | "done"
        self.hold = {}       # actual: id -> None | "r" | "w" (set by the coroutine)
        self.grants = []     # actual (id, kind) in grant order
        # model
        self.m_owners = 0    # >0 readers, -1 writer, 0 free
        self.m_writer = None
        self.m_queue = collections.deque()   # (id, "r"|"w")
        self.m_hold = {}
        self.m_grants = []
        self.violations = []

    def _check_exclusive(self, cid, kind):
        others = [c for c, h in self.hold.items() if h and c != cid]
        if kind == "w" and others:
            self.violations.append("%d got write hold while %r hold" % (cid, others))
        if kind == "r" and any(self.hold[c] == "w" for c in others):
            self.violations.append("%d got read hold beside a writer" % cid)

    def _body(self, cid):
        while True:
            op = self.cmd[cid]
            if op == "exit":
                break
            self.state[cid] = "waiting"
            if op == "unlock":
                self.hold[cid] = None
                self.lock.unlock()
            elif op == "downgrade":
                self.hold[cid] = "r"
                self.lock.downgrade()
            else:
                kind = "r" if op == "rdlock" else "w"
                if op == "upgrade":
                    self.hold[cid] = None   # may drop the read hold to queue
                getattr(self.lock, op)()
                self._check_exclusive(cid, kind)
                self.hold[cid] = kind
                self.grants.append((cid, kind))
            self.state[cid] = "idle"
            qloop.coroutine_yield()
        self.state[cid] = "done"

    # -- model --
    def _m_admit(self):
        while self.m_queue:
            cid, kind = self.m_queue[0]
            if kind == "r" and self.m_owners >= 0:
                self.m_owners += 1
            elif kind == "w" and self.m_owners == 0:
                self.m_owners = -1
                self.m_writer = cid
            else:
                break
            self.m_queue.popleft()
            self.m_hold[cid] = kind
            self.m_grants.append((cid, kind))
            if self.m_owners < 0:
                break

    def _m_op(self, cid, op):
        if op == "rdlock":
            if self.m_owners == 0 or (self.m_owners > 0 and not self.m_queue):
                self.m_owners += 1
                self.m_hold[cid] = "r"
                self.m_grants.append((cid, "r"))
            else:
                self.m_queue.append((cid, "r"))
        elif op == "wrlock":
            if self.m_owners == 0:
                self.m_owners, self.m_writer = -1, cid
                self.m_hold[cid] = "w"
                self.m_grants.append((cid, "w"))
            else:
                self.m_queue.append((cid, "w"))
        elif op == "upgrade":
            if self.m_owners == 1 and not self.m_queue:
                self.m_owners, self.m_writer = -1, cid
                self.m_hold[cid] = "w"
                self.m_grants.append((cid, "w"))
            else:
                self.m_owners -= 1
                self.m_hold[cid] = None
                self.m_queue.append((cid, "w"))
                self._m_admit()
        elif op == "downgrade":
            self.m_owners, self.m_writer = 1, None
            self.m_hold[cid] = "r"
            self._m_admit()
        elif op == "unlock":
            if self.m_hold[cid] == "w":
                self.m_owners, self.m_writer = 0, None
            else:
                self.m_owners -= 1
            self.m_hold[cid] = None
            self._m_admit()

    def _run(self, cid, op):
        self._m_op(cid, op)
        self.cmd[cid] = op
        self.cos[cid].enter()

    def _idle(self, holds):
        return sorted(c for c, s in self.state.items()
                      if s == "idle" and self.m_hold[c] in holds)

    @precondition(lambda self: len(self.cos) < MAX_COROUTINES)
    @rule()
    def spawn(self):
        cid = len(self.cos)
        self.cos[cid] = qloop.Coroutine(self._body, cid)
        self.state[cid] = "idle"
        self.hold[cid] = self.m_hold[cid] = None

    @rule(data=st.data(), op=st.sampled_from(["rdlock", "wrlock"]))
    def lock_op(self, data, op):
        ids = self._idle((None,))
        if ids:
            self._run(data.draw(st.sampled_from(ids)), op)

    @rule(data=st.data(), op=st.sampled_from(["unlock", "upgrade"]))
    def reader_op(self, data, op):
        ids = self._idle(("r",))
        if ids:
            self._run(data.draw(st.sampled_from(ids)), op)

    @rule(data=st.data(), op=st.sampled_from(["unlock", "downgrade"]))
    def writer_op(self, data, op):
        ids = self._idle(("w",))
        if ids:
            self._run(data.draw(st.sampled_from(ids)), op)

    @invariant()
    def agrees(self):
        assert not self.violations
        assert self.grants == self.m_grants
        assert self.hold == self.m_hold
        waiting = sorted(c for c, _ in self.m_queue)
        assert sorted(c for c, s in self.state.items() if s == "waiting") == waiting
        writers = [c for c, h in self.hold.items() if h == "w"]
        assert len(writers) <= 1
        if writers:
            assert sum(1 for h in self.hold.values() if h) == 1

    def teardown(self):
        # release every hold (admitted waiters come back idle and holding),
        # then let every coroutine end
        for _ in range(100):
            holders = self._idle(("r", "w"))
            if not holders:
                break
            self._run(holders[0], "unlock")
            self.agrees()
        assert not self.m_queue
        assert all(s == "idle" for s in self.state.values()), self.state
        for cid in self._idle((None,)):
            self._run(cid, "exit")
        assert all(s == "done" for s in self.state.values()), self.state
        # free again: a writer gets it (from a fresh coroutine)
        got = []
        co = qloop.Coroutine(lambda: (self.lock.wrlock(), got.append(1), self.lock.unlock()))
        co.enter()
        assert got == [1] and co.done


TestCoRwlockMachine = CoRwlockMachine.TestCase


# ---- QIOChannelBuffer ------------------------------------------------------

chunk = st.binary(max_size=12)


class BufferMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ch = qloop.QIOChannelBuffer()
        self.data = bytearray()
        self.offset = 0

    def _m_write(self, bufs):
        if self.offset > len(self.data):
            self.data.extend(bytes(self.offset - len(self.data)))
        n = 0
        for b in bufs:
            self.data += b
            n += len(b)
        self.offset = len(self.data)
        return n

    def _m_read(self, n):
        out = bytes(self.data[self.offset:self.offset + n])
        self.offset += len(out)
        return out

    @rule(b=chunk)
    def write(self, b):
        assert self.ch.write(b) == self._m_write([b]) == len(b)

    @rule(bufs=st.lists(chunk, max_size=4))
    def writev(self, bufs):
        assert self.ch.writev(bufs) == self._m_write(bufs)

    @rule(n=st.integers(0, 20))
    def read(self, n):
        assert self.ch.read(n) == self._m_read(n)

    @rule(sizes=st.lists(st.integers(0, 8), max_size=4))
    def readv(self, sizes):
        bufs = [bytearray(s) for s in sizes]
        n, fds = self.ch.readv(bufs)
        want = self._m_read(sum(sizes))
        assert (n, fds) == (len(want), [])
        assert b"".join(bufs)[:n] == want

    @rule(n=st.integers(0, 20))
    def readinto(self, n):
        buf = bytearray(n)
        got = self.ch.readinto(buf)
        want = self._m_read(n)
        assert bytes(buf[:got]) == want

    @rule(data=st.data())
    def seek(self, data):
        off = data.draw(st.integers(0, len(self.data) + 6))
        assert self.ch.seek(off) == off
        self.offset = off

    @invariant()
    def agrees(self):
        assert self.ch.getvalue() == bytes(self.data)
        assert self.ch.usage == len(self.data)

    def teardown(self):
        # whatever the offset, reading from 0 returns everything, then b""
        self.ch.seek(0)
        assert self.ch.read(len(self.data) + 1) == bytes(self.data)
        assert self.ch.read(1) == b""
        self.ch.close()
        with pytest.raises(ValueError):
            self.ch.read(1)


TestBufferMachine = BufferMachine.TestCase


def test_buffer_readv_zero_length_buffer():
    ch = qloop.QIOChannelBuffer(b"abc")
    bufs = [bytearray(0), bytearray(3)]
    assert ch.readv(bufs) == (3, [])
    assert bufs[1] == b"abc"
