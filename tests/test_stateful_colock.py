"""Hypothesis state machine: coroutines contending for one CoMutex.

Each coroutine runs a script of critical sections (lock, yield k times,
unlock, yield j times).  The machine creates coroutines and enters the
suspended ones in an arbitrary order (a coroutine waiting for the mutex is
never entered by hand: the unlock that hands it the mutex wakes it).
Checked after every step:
  - mutual exclusion: never two holders;
  - FIFO handoff: the mutex is acquired in the order lock() was called;
  - m.locked agrees with the model; a coroutine ends only after its script;
and at the end, driving every suspended coroutine finishes them all (no
lost handoff, no deadlock).

Run long:  QLOOP_HYPOTHESIS_PROFILE=long pytest tests/test_stateful_colock.py
"""
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule  # noqa: E402

import qloop  # noqa: E402

if not hasattr(qloop, "CoMutex"):  # coroutines not in this build
    pytest.skip("qloop has no coroutines", allow_module_level=True)

MAX_COROUTINES = 6
section = st.tuples(st.integers(0, 2), st.integers(0, 1))   # (yields held, yields after)
script = st.lists(section, min_size=1, max_size=3)


class CoMutexMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m = qloop.CoMutex()
        self.holder = None
        self.violations = []
        self.want = []      # coroutine ids in the order they called lock()
        self.got = []       # ... in the order they acquired it
        self.cos = {}       # id -> Coroutine
        self.state = {}     # id -> "yielded" | "waiting" | "done"
        self.finished = set()

    def _body(self, cid, sections):
        for held, after in sections:
            self.want.append(cid)
            self.state[cid] = "waiting"
            self.m.lock()
            self.state[cid] = "running"
            if self.holder is not None:
                self.violations.append("%d acquired while %d holds it" % (cid, self.holder))
            self.holder = cid
            self.got.append(cid)
            for _ in range(held):
                self.state[cid] = "yielded"
                qloop.coroutine_yield()
                self.state[cid] = "running"
            self.holder = None
            self.m.unlock()
            for _ in range(after):
                self.state[cid] = "yielded"
                qloop.coroutine_yield()
                self.state[cid] = "running"
        self.state[cid] = "done"
        self.finished.add(cid)

    @rule(sections=script)
    def spawn(self, sections):
        if len(self.cos) >= MAX_COROUTINES:
            return
        cid = len(self.cos)
        self.cos[cid] = qloop.Coroutine(self._body, cid, sections)
        self.state[cid] = "yielded"   # not started: enterable

    @rule(data=st.data())
    def enter_one(self, data):
        ready = [c for c, s in self.state.items() if s == "yielded"]
        if not ready:
            return
        cid = data.draw(st.sampled_from(ready))
        self.cos[cid].enter()

    @invariant()
    def mutual_exclusion_and_fifo(self):
        assert not self.violations
        assert self.got == self.want[:len(self.got)], (self.want, self.got)
        assert self.m.locked == (self.holder is not None)
        for cid, co in self.cos.items():
            assert co.done == (cid in self.finished)

    def teardown(self):
        # drive everything to completion: every waiter must get its turn
        for _ in range(1000):
            ready = [c for c, s in self.state.items() if s == "yielded"]
            if not ready:
                break
            self.cos[ready[0]].enter()
        assert all(s == "done" for s in self.state.values()), self.state
        assert self.got == self.want
        assert not self.m.locked


TestCoMutexMachine = CoMutexMachine.TestCase
