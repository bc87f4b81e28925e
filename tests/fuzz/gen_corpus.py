#!/usr/bin/env python3
"""Write the seed corpus for fuzz_context (tests/fuzz/corpus/).

Each seed is a small script in the harness's byte language (see
fuzz_context.c: pairs of (op % NOPS, argument), some ops read more bytes).
Op codes are only ever appended, so older seeds and regression inputs keep
their meaning.
Run: python3 tests/fuzz/gen_corpus.py  (rewrites the seeds deterministically)
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")

NEW_BH, SCHED, SCHED_IDLE, CANCEL, DELETE, ONESHOT = 0, 1, 2, 3, 4, 5
NEW_TIMER, MOD, ANTICIPATE, MOD_IN, TDEL, TFREE, ADVANCE = 6, 7, 8, 9, 10, 11, 12
POLL, POLL_BLOCKING, SET_FD, WRITE_FD, DEL_FD, NOTIFY = 13, 15, 16, 17, 18, 19
CO_NEW, CO_ENTER = 20, 21   # CO_NEW, nsections-1, one byte per section (held % 3, after)
# Program coroutines (CoQueue / CoMutex / CoRwlock): PROG_NEW, nsteps-1, one
# byte per step; PROG_ENTER, index; outside-coroutine queue operations.
PROG_NEW, PROG_ENTER, QNEXT, QRESTART, QEMPTY = 23, 24, 26, 27, 28
# Wheel timers (slots 6-19): WHEEL_ARM, slot, delta in quarter ticks (signed
# byte), mode (0 mod, 1 anticipate, 2 mod_in); WHEEL_DEL, slot, free (odd) or
# del (even); ADVANCE_FAR, n: the virtual clock moves n << 14 ns.
WHEEL_ARM, WHEEL_DEL, ADVANCE_FAR = 29, 30, 31
(S_YIELD, S_MLOCK, S_MUNLOCK, S_QWAIT, S_QWAIT_HEAD, S_QNEXT, S_QRESTART, S_QEMPTY,
 S_RDLOCK, S_WRLOCK, S_RWUNLOCK, S_UPGRADE, S_DOWNGRADE) = range(13)


def step(kind, queue=0, keep_mutex=False):
    """One program step; a queue wait passes the CoMutex unless keep_mutex."""
    return kind + 13 * (queue + 2 * int(keep_mutex))


def prog(*steps):
    return [PROG_NEW, len(steps) - 1] + [step(*s) if isinstance(s, tuple) else step(s)
                                         for s in steps]


def enter(*ids):
    out = []
    for i in ids:
        out += [PROG_ENTER, i]
    return out


def new_bh(slot, target=None, nested=False):
    b = 0
    if target is not None:
        b |= 8 | 0  # target = b % 8: encode below
        b = (b & ~7) | target
    if nested:
        b |= 16
    return [NEW_BH, slot, b]


SEEDS = {
    "bh-fifo": new_bh(0) + new_bh(1) + new_bh(2) + [SCHED, 2, SCHED, 0, SCHED, 1, POLL, 0],
    "bh-cancel-keeps-place": new_bh(0) + new_bh(1) + [SCHED, 0, SCHED, 1, CANCEL, 0,
                                                      SCHED, 0, POLL, 0],
    "bh-idle": new_bh(0) + new_bh(1) + [SCHED_IDLE, 0, POLL, 0, SCHED_IDLE, 1,
                                        SCHED, 1, POLL, 0],
    "bh-delete": new_bh(0) + [SCHED, 0, DELETE, 0, POLL, 0] + new_bh(0) + [SCHED, 0, POLL, 0],
    "bh-chain": new_bh(0) + new_bh(1, target=0) + [SCHED, 1, POLL, 0, POLL, 0, POLL, 0],
    "bh-in-batch": new_bh(0) + new_bh(1) + new_bh(2, target=1) + [
        SCHED, 2, SCHED, 1, CANCEL, 1, POLL, 0],
    "bh-nested": new_bh(0, nested=True) + new_bh(1) + new_bh(2, target=1) + [
        SCHED, 0, SCHED, 2, ONESHOT, 0, POLL, 0, POLL, 0],
    "oneshots": [ONESHOT, 0, ONESHOT, 0] + new_bh(3) + [SCHED, 3, ONESHOT, 0, POLL_BLOCKING, 0],
    "timers-order": [NEW_TIMER, 0, NEW_TIMER, 1, NEW_TIMER, 2, MOD, 0, 5, MOD, 1, 5,
                     MOD, 2, 3, ADVANCE, 20, POLL, 0],
    "timers-anticipate": [NEW_TIMER, 0, MOD, 0, 50, ANTICIPATE, 0, 10, ANTICIPATE, 0, 90,
                          ADVANCE, 30, POLL, 0, TDEL, 0, MOD_IN, 0, 0, POLL, 0, TFREE, 0],
    "timers-past": [NEW_TIMER, 1, MOD, 1, 0xF0, POLL, 0, MOD_IN, 1, 3, ADVANCE, 255,
                    POLL_BLOCKING, 0],
    "fds": [SET_FD, 0, SET_FD, 1, WRITE_FD, 0, WRITE_FD, 1, WRITE_FD, 2, POLL, 0,
            SET_FD, 2, POLL, 0, DEL_FD, 1, WRITE_FD, 1, POLL, 0],
    "fds-nested": [SET_FD, 0, WRITE_FD, 0] + new_bh(0, nested=True) + [SCHED, 0, POLL, 0],
    "notify": [NOTIFY, 0, POLL, 0, NOTIFY, 0] + new_bh(5) + [SCHED, 5, NOTIFY, 0,
                                                            POLL_BLOCKING, 0],
    "comutex-contended": [CO_NEW, 0, 2, CO_NEW, 1, 1, 3, CO_NEW, 0, 0,
                          CO_ENTER, 0, CO_ENTER, 1, CO_ENTER, 2, CO_ENTER, 0, CO_ENTER, 0,
                          CO_ENTER, 1],
    "comutex-with-bhs": new_bh(0) + [CO_NEW, 2, 1, 4, 2, SCHED, 0, CO_ENTER, 0, POLL, 0,
                                     CO_NEW, 0, 0, CO_ENTER, 1, CO_ENTER, 0, POLL, 0],
    "coqueue-fifo": prog(S_QWAIT) + prog(S_QWAIT) + prog(S_QWAIT_HEAD) + prog(S_QWAIT) +
        enter(0, 1, 2, 3) + [QEMPTY, 0, QNEXT, 0, QNEXT, 0, QNEXT, 1, QNEXT, 0, QNEXT, 0,
                             QEMPTY, 0],
    "coqueue-restart-all": prog(S_QWAIT, S_YIELD, (S_QWAIT_HEAD, 1)) + prog(S_QWAIT_HEAD) +
        prog(S_QWAIT, (S_QWAIT, 1)) + prog(S_YIELD, S_QRESTART, S_QEMPTY, S_YIELD,
                                           (S_QNEXT, 1), (S_QRESTART, 1)) +
        enter(0, 1, 2, 3, 3, 0) + [QRESTART, 1, QEMPTY, 1] + enter(3),
    "coqueue-with-comutex": prog(S_MLOCK, S_QWAIT, S_YIELD, S_MUNLOCK) +
        prog(S_MLOCK, (S_QWAIT, 0, True), S_MUNLOCK) +
        prog(S_MLOCK, S_QNEXT, S_YIELD, S_QRESTART, S_MUNLOCK) +
        enter(0, 1, 2, 0, 2, 0, 1) + [QRESTART, 0],
    "corwlock-writer-blocks-readers": prog(S_RDLOCK, S_YIELD, S_RWUNLOCK) +
        prog(S_RDLOCK, S_YIELD, S_RWUNLOCK) + prog(S_WRLOCK, S_YIELD, S_RWUNLOCK) +
        prog(S_RDLOCK, S_YIELD, S_RWUNLOCK) + prog(S_WRLOCK, S_RWUNLOCK) +
        enter(0, 1, 2, 3, 4, 0, 1, 2, 3),
    "corwlock-upgrade-downgrade": prog(S_RDLOCK, S_YIELD, S_UPGRADE, S_YIELD, S_DOWNGRADE,
                                       S_YIELD, S_RWUNLOCK) +
        prog(S_RDLOCK, S_YIELD, S_UPGRADE, S_RWUNLOCK) + prog(S_WRLOCK, S_RWUNLOCK) +
        prog(S_RDLOCK, S_DOWNGRADE, S_RWUNLOCK) +
        enter(0, 1, 2, 0, 1, 0, 3, 0, 2),
    "corwlock-downgrade-admits-readers": prog(S_WRLOCK, S_YIELD, S_DOWNGRADE, S_YIELD,
                                              S_RWUNLOCK) +
        prog(S_RDLOCK, S_RWUNLOCK) + prog(S_RDLOCK, S_YIELD, S_RWUNLOCK) +
        prog(S_WRLOCK, S_RWUNLOCK) + enter(0, 1, 2, 3, 0, 2, 0),
    "corwlock-queue-wait": prog(S_RDLOCK, S_QWAIT, S_RWUNLOCK) + prog(S_WRLOCK, S_QNEXT) +
        prog(S_RDLOCK, S_QNEXT, S_RWUNLOCK) + enter(0, 1, 2) + [QNEXT, 0],
    # 14 timers in a few wheel buckets (more than a chunk of 8 in one), some
    # removed from the middle of a bucket, then the clock walks over them.
    "timer-wheel": sum(([WHEEL_ARM, w, 4 + w % 3, w % 3] for w in range(14)), []) + [
        WHEEL_DEL, 3, 0, WHEEL_DEL, 8, 1, WHEEL_ARM, 3, 200, 0, POLL, 0] +
        [ADVANCE_FAR, 17, POLL, 0] * 6 + [WHEEL_ARM, 5, 1, 2, ADVANCE_FAR, 255, POLL, 0],
    "mixed": new_bh(0, target=1) + new_bh(1, nested=True) + [
        NEW_TIMER, 0, MOD, 0, 0, SET_FD, 0, WRITE_FD, 0, SCHED, 0, ONESHOT, 0,
        POLL, 0, ADVANCE, 1, POLL, 0, DELETE, 1, POLL, 0],
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, ops in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(bytes(b & 0xFF for b in ops))
    print("wrote %d seeds to %s" % (len(SEEDS), OUT))


if __name__ == "__main__":
    main()
