/*
 * Promela model of qloop's notify / poll protocol as implemented in
 * csrc/context.c (ql_context_notify, notify_accept, context_poll,
 * ql_context_prepare / ql_context_check) and csrc/bh.c (bh_enqueue,
 * bh_take_list, ql__bh_poll, ql__bh_timeout).
 *
 * Also modelled: bh_enqueue skips its notify when `notified` is already set
 * (read after the push), notify_accept() does nothing when the notifier was
 * not drained and neither `notified` nor `kicked` is set, and the take of
 * an empty bh_list is a plain load (all as on main since the thread pool
 * merge).
 *
 * Processes
 *   poller      the home thread: blocking polls, non-blocking polls and
 *               GSource-style prepare / host wait / check / dispatch rounds
 *   sched(i)    another thread: schedules its own oneshot BH and the shared
 *               BH, each followed by ql_context_notify() as bh_enqueue does
 *   kicker      a thread (or signal handler) that only calls notify()
 *
 * Memory model: each Promela statement is one atomic step and steps are
 * sequentially consistent, which is what the seq_cst fences in the C code
 * buy.  The broken variants (-D macros below) model what the hardware may
 * do without a fence by reordering the two accesses around it explicitly
 * (a store that sits in the store buffer while the following load runs).
 *
 * Properties (both checked by ci/model)
 *   P1 "no sleep while a BH is pending": at the moment the poller commits
 *      to blocking, every pending BH whose scheduler already finished its
 *      wake-up decision is covered by a wake-up: the event notifier is set
 *      or a write to it is in flight.  (A BH whose scheduler has not reached
 *      that point yet is covered by the protocol itself: its notify will see
 *      notify_me.)  assert() at the sleep, in both poll and prepare paths.
 *   P2 "no lost wakeup": the poller never sleeps forever while a BH is
 *      pending -- the `timeout` branch (no process can move) asserts that
 *      nothing is pending -- and every scheduled BH has run when the system
 *      stops (assert at the end), plus the LTL formula `eventually_all_run`
 *      checked with weak fairness.
 *
 * Broken variants (each MUST make the check fail):
 *   -DBROKEN_NOTIFIER_FENCE  notify() loads notify_me before its store to
 *                            `notified` is visible (no fence in notify)
 *   -DBROKEN_POLLER_ORDER    the poller reads `notified` before it publishes
 *                            notify_me += 2 (no fence in the poller)
 *   -DBROKEN_SKIP_CHECK_FIRST bh_enqueue reads `notified` (to skip its notify)
 *                            before its push is visible, instead of after
 *   -DBROKEN_ACCEPT_EARLY    the blocking poll accepts (resets `notified` and
 *                            `kicked`) before it drains the notifier, so a
 *                            write made in between is drained while
 *                            `kicked` stays set: later notifies skip the write
 * -DKICKER adds a third thread that only calls notify() (ql_context_notify
 * from another thread or a signal handler): ~19 M states, ~90 s; ci/model
 * runs it only with QLOOP_MODEL_LONG=1.
 */

#define NSCHED  2          /* scheduler threads */
#define NBH     4          /* 0,1: oneshots of sched 0,1; 2: shared BH;
                            * 3: scheduled by BH 0's callback (home thread) */
#define SHARED  2
#define CHAINED 3

/* ---- the context ----------------------------------------------------- */
byte notify_me = 0;        /* +2 per blocking poll, bit 0: prepare */
bool notified = false;
bool kicked = false;
byte notifier = 0;         /* event notifier: 0 clear, 1 set (eventfd > 0) */

/* ---- bottom halves --------------------------------------------------- */
bool pending[NBH];         /* QL_BH_PENDING: linked on bh_list / ready queue */
bool scheduled[NBH];       /* QL_BH_SCHEDULED */
bool listed[NBH];          /* on ctx->bh_list (not yet taken by the poller) */
byte runs[NBH];            /* how often the callback ran */
byte want[NBH];            /* how often it must have run (>=1 if scheduled) */

/* ---- ghost state for the properties ---------------------------------- */
bool decided[NBH];         /* the scheduler that linked it finished its
                            * notify (or needs none: home thread) */
byte inflight = 0;         /* notifiers that won `kicked` and have not
                            * written the notifier yet */
byte notifying = 0;        /* notifiers that stored `notified` and have not
                            * made their final decision yet: each either
                            * sees notify_me (and wakes the poller) or its
                            * store was seen by the poller's check */
byte sched_done = 0;
bool poller_sleeping = false;

#define ANY_PENDING_DECIDED \
    ((scheduled[0] && decided[0]) || (scheduled[1] && decided[1]) || \
     (scheduled[2] && decided[2]) || (scheduled[3] && decided[3]))
#define ANY_SCHEDULED \
    (scheduled[0] || scheduled[1] || scheduled[2] || scheduled[3])
#define ALL_RAN \
    (runs[0] >= want[0] && runs[1] >= want[1] && runs[2] >= want[2] && \
     runs[3] >= want[3])

/* P1, evaluated when the poller commits to blocking. */
#ifdef NO_P1
#define ASSERT_NO_SLEEP_WITH_PENDING skip    /* check P2 on its own */
#else
#define ASSERT_NO_SLEEP_WITH_PENDING \
    assert(!ANY_PENDING_DECIDED || notifier > 0 || inflight > 0 || notifying > 0)
#endif

/* Ghost: the notify for BH b (scheduled when runs[b] was ep) has reached
 * its final decision.  A BH that ran meanwhile is not marked. */
inline mark(b, ep) {
    if
    :: b < NBH && runs[b] == ep -> decided[b] = true
    :: else -> skip
    fi
}

/* mark() at the end of a notify that had stored `notified` */
inline finish(b, ep) {
    mark(b, ep);
    notifying--
}

/* ql_context_notify(): notified = true; fence; if notify_me != 0 and the
 * exchange on kicked returned false: write the notifier.  b/ep: the BH this
 * notify is for (NBH: none). */
inline notify(b, ep, snap) {
#ifdef BROKEN_NOTIFIER_FENCE
    snap = notify_me;      /* the load overtakes the buffered store */
    atomic {
        notified = true;
        notifying++;
        if
        :: snap == 0 -> finish(b, ep)
        :: else -> skip
        fi
    }
#else
    d_step { notified = true; notifying++ }
    /* __atomic_thread_fence(__ATOMIC_SEQ_CST) */
    atomic {
        snap = notify_me;
        if
        :: snap == 0 -> finish(b, ep)
        :: else -> skip
        fi
    }
#endif
    if
    :: snap != 0 ->
        atomic {
            if
            :: !kicked -> kicked = true; inflight++; notifying--
            :: else -> snap = 0; finish(b, ep)  /* someone else's write is coming */
            fi
        }
        if
        :: snap != 0 ->
            d_step { notifier = 1; inflight--; mark(b, ep) }  /* ql_notifier_set */
        :: else -> skip
        fi
    :: else -> skip
    fi
}

/* bh_enqueue(bh, SCHEDULED) from another thread: fetch_or; push if PENDING
 * was clear; notify if SCHEDULED was clear. */
inline schedule_remote(b, snap, old_pending, old_sched, ep) {
    atomic {
        old_pending = pending[b];
        old_sched = scheduled[b];
        pending[b] = true;
        scheduled[b] = true;
        ep = runs[b];
        if
        :: !old_sched -> want[b]++
        :: else -> skip
        fi
    }
#ifndef BROKEN_SKIP_CHECK_FIRST
    if
    :: !old_pending -> listed[b] = true   /* bh_push: CAS on bh_list */
    :: else -> skip
    fi;
#endif
#ifdef BROKEN_SKIP_CHECK_FIRST
    /* broken: `notified` is read before the push is visible */
    atomic { snap = notified; }
    if
    :: !old_pending -> listed[b] = true
    :: else -> skip
    fi;
#endif
    if
    :: !old_sched ->
        /* a context already notified needs no second wakeup: the push
         * (seq_cst RMW) precedes this seq_cst load of `notified` */
        atomic {
#ifndef BROKEN_SKIP_CHECK_FIRST
            snap = notified;
#endif
            if
            :: snap -> mark(b, ep)
            :: else -> skip
            fi
        }
        if
        :: !snap -> notify(b, ep, snap)
        :: else -> skip
        fi
    :: else -> skip        /* the first scheduler notifies */
    fi
}

proctype sched(byte id)
{
    byte snap, ep; bool op, os;
    schedule_remote(id, snap, op, os, ep);
    schedule_remote(SHARED, snap, op, os, ep);
    sched_done++
}

proctype kicker()
{
    byte snap, ep;
    notify(NBH, ep, snap)
}

/* The home thread's side ------------------------------------------------ */

/* ql__bh_timeout() != 0: no scheduled BH linked anywhere (it scans the
 * list: a BH whose SCHEDULED bit is set but whose push has not happened yet
 * is not seen). */
#define BH_TIMEOUT_NONZERO \
    (!((listed[0] && scheduled[0]) || (listed[1] && scheduled[1]) || \
       (listed[2] && scheduled[2]) || (listed[3] && scheduled[3])))

/* ql__bh_poll(): take bh_list (one exchange), then dequeue each BH (fetch_and
 * clearing PENDING|SCHEDULED) and run it if it was scheduled.  BH 0's
 * callback schedules BH 3 from the home thread while dispatching: no notify
 * (ql__in_dispatch), only the push.  One step: a schedule racing with the
 * dequeue of a BH that is still PENDING merges into that run (no push, no
 * notify), which is what happens before the take as well. */
inline bh_poll(i) {
    d_step {
        i = 0;
        do
        :: i < NBH ->
            if
            :: listed[i] ->
                listed[i] = false;
                pending[i] = false;
                if
                :: scheduled[i] ->
                    scheduled[i] = false;
                    decided[i] = false;
                    runs[i]++;
                    if
                    :: i == 0 && want[CHAINED] == 0 ->
                        /* the callback schedules BH 3 (home thread) */
                        pending[CHAINED] = true;
                        scheduled[CHAINED] = true;
                        want[CHAINED] = 1;
                        listed[CHAINED] = true;
                        decided[CHAINED] = true
                    :: else -> skip
                    fi
                :: else -> skip
                fi
            :: else -> skip
            fi;
            i++
        :: else -> break
        od;
        i = 0
    }
}

/* notify_accept(ctx, drained): unless the notifier was just drained, a
 * context with neither `notified` nor `kicked` set is left alone (two
 * relaxed loads, no store, no fence); otherwise notified = false;
 * kicked = false; fence. */
#define ACCEPT_ALWAYS  d_step { notified = false; kicked = false }
inline accept(drained, n) {
    if
    :: drained -> ACCEPT_ALWAYS
    :: else ->
        n = notified;
        if
        :: n -> ACCEPT_ALWAYS
        :: else ->
            n = kicked;
            if
            :: n -> ACCEPT_ALWAYS
            :: else -> skip
            fi
        fi
    fi;
    n = false
}

/* Drain the notifier if the monitor reported it (process_events). */
inline drain(reported, drained) {
    if
    :: reported -> notifier = 0; reported = false; drained = true
    :: else -> skip
    fi
}

/* Block until the notifier is set.  If no process can ever move again
 * (`timeout`), the poller sleeps forever: P2 demands nothing is pending. */
inline sleep_on_notifier(reported) {
    ASSERT_NO_SLEEP_WITH_PENDING;
    poller_sleeping = true;
    if
    :: notifier > 0 -> reported = true; poller_sleeping = false
    :: timeout ->
        assert(!ANY_SCHEDULED);
        assert(ALL_RAN);
        goto end_forever
    fi
}

proctype poller()
{
    byte i;
    bool tmo, reported = false, drained = false, n = false;

    do
    :: sched_done == NSCHED && !ANY_SCHEDULED && ALL_RAN -> break
    :: else ->
        /* any kind of iteration, in any order */
        if
        :: true ->
            /* ql_context_poll(ctx, true) */
            /* 1. timeout = compute_timeout(): 0 if a scheduled BH is linked */
            tmo = BH_TIMEOUT_NONZERO;
            if
            :: tmo ->
#ifdef BROKEN_POLLER_ORDER
                if
                :: notified -> tmo = false
                :: else -> skip
                fi;
                notify_me = notify_me + 2;
#else
                notify_me = notify_me + 2;
                /* fence */
                if
                :: notified -> tmo = false
                :: else -> skip
                fi;
#endif
            :: else -> skip
            fi;
            /* 2. wait */
            if
            :: tmo -> sleep_on_notifier(reported)
            :: else ->
                /* non-blocking wait if the monitor has user fds */
                if
                :: notifier > 0 -> reported = true
                :: skip
                fi
            fi;
#ifdef BROKEN_ACCEPT_EARLY
            ACCEPT_ALWAYS;  /* clears kicked while a write may be undrained */
            drain(reported, drained);
            if
            :: tmo -> notify_me = notify_me - 2
            :: else -> skip
            fi;
#else
            drain(reported, drained);
            if
            :: tmo -> notify_me = notify_me - 2
            :: else -> skip
            fi;
            /* 3. accept */
            accept(drained, n);
#endif
            /* 4. dispatch */
            bh_poll(i)

        :: true ->
            /* ql_context_poll(ctx, false): timeout 0, no notify_me */
            if
            :: notifier > 0 -> reported = true
            :: skip         /* no user fds: the monitor is not asked */
            fi;
            drain(reported, drained);
            accept(drained, n);
            bh_poll(i)

        :: true ->
            /* ql_context_prepare(): notify_me |= 1; fence; notified? */
            notify_me = notify_me | 1;
            if
            :: notified -> tmo = false
            :: else -> tmo = BH_TIMEOUT_NONZERO
            fi;
            /* the host loop polls ql_context_fd() */
            if
            :: tmo -> sleep_on_notifier(reported)
            :: else -> skip
            fi;
            /* ql_context_check(): notify_me &= ~1; drain (fds_ready); accept */
            notify_me = notify_me & 254;
            if
            :: notifier > 0 -> notifier = 0; drained = true
            :: else -> skip
            fi;
            reported = false;
            accept(drained, n);
            drained = false;
            /* ql_context_dispatch() == context_poll(ctx, false) */
            if
            :: notifier > 0 -> reported = true
            :: skip
            fi;
            drain(reported, drained);
            accept(drained, n);
            bh_poll(i)
        fi;
        atomic { i = 0; tmo = false; reported = false; drained = false }
    od;
    assert(ALL_RAN);
end_forever:
    skip
}

init {
    atomic {
        run poller();
        run sched(0);
        run sched(1);
#ifdef KICKER
        run kicker()
#endif
    }
}

/* P2 as LTL (checked with weak fairness: spin -a, pan -a -f). */
ltl eventually_all_run { <> [] (sched_done == NSCHED && ALL_RAN && !ANY_SCHEDULED) }
