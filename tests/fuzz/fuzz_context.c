/*
 * libFuzzer harness: the input is a script of operations on one QLContext
 * (BHs, oneshots, VIRTUAL-clock timers, fd handlers on pipes, non-blocking
 * polls, nested polls from BH callbacks).  Every operation is applied to the
 * real context and to a small reference model; after each poll the callbacks
 * that ran (and their order) and the poll's result must match the model, and
 * after every operation ql_context_pending() and each timer's state must.
 *
 * Model (the promises of csrc/bh.c, csrc/timer.c, csrc/context.c):
 *   - a BH is linked by the schedule/delete that finds it unlinked and stays
 *     linked until dequeued; a poll takes what is linked as a batch, appends
 *     it to the ready queue and dequeues from the front (a nested poll
 *     finishes the outer batch first); a dequeued BH runs if scheduled and
 *     not deleted; scheduling a linked BH only sets flags (keeps its place);
 *   - then the fd handlers whose fds were ready when that poll waited;
 *   - then VIRTUAL timers with deadline <= now, in (deadline, arming order),
 *     stopping at the first one armed after the pass began;
 *   - progress: a non-idle BH, a oneshot, an fd handler or a timer ran.
 * fd handlers run in an unspecified order: runs of fd entries in the logs
 * are compared as sets.
 *
 * Coroutines: up to 6 contend for a CoMutex in critical sections (mutual
 * exclusion, FIFO hand-off), and up to 6 more run byte-coded programs of
 * CoQueue, CoMutex and CoRwlock steps checked against a model of the
 * scheduler and of the primitives (see "coroutine programs" below).
 *
 * Build: ci/fuzz (clang -fsanitize=fuzzer,address,undefined).
 */
#include "qloop/qloop.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBH 8
#define NTIMER 20      /* over 8: a wheel bucket spans several chunks */
#define NTIMER_NEAR 6  /* ops 6-11 use the first 6, ops 29-31 the others */
#define NPIPE 3
#define MAXLOG 8192
#define MAXDEPTH 3
#define MAXOPS 400
/* Operation codes: input byte % NOPS.  New operations get new codes at the
 * end, so that older inputs (corpus, regressions: written with op bytes
 * below the old count) keep their meaning. */
#define NOPS 32

#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "fuzz_context: " __VA_ARGS__);                         \
        fprintf(stderr, "\n");                                                 \
        abort();                                                               \
    } while (0)

/* ---- log ---------------------------------------------------------------- */

enum { TAG_BH = 0, TAG_ONESHOT = 10000, TAG_FD = 20000, TAG_TIMER = 30000 };

typedef struct Log {
    int e[MAXLOG];
    int n;
} Log;

/* Fail, printing both, unless the real log equals the model's; then empty
 * both.  ran names the real log, subject the complaint. */
static void logs_must_match(Log *real, Log *model, const char *what, const char *ran,
                            const char *subject)
{
    int n = real->n < MAXLOG ? real->n : MAXLOG;
    if (real->n != model->n || memcmp(real->e, model->e, n * sizeof(int)) != 0) {
        fprintf(stderr, "fuzz_context: %s: %s", what, ran);
        for (int i = 0; i < n; i++) {
            fprintf(stderr, " %d", real->e[i]);
        }
        fprintf(stderr, "\nfuzz_context: %s: model", what);
        for (int i = 0; i < (model->n < MAXLOG ? model->n : MAXLOG); i++) {
            fprintf(stderr, " %d", model->e[i]);
        }
        fprintf(stderr, "\n");
        FAIL("%s: %s from the model", what, subject);
    }
    real->n = model->n = 0;
}

static void log_add(Log *l, int v)
{
    if (l->n < MAXLOG) {
        l->e[l->n] = v;
    }
    l->n++;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

/* Sort every run of consecutive fd entries (their order is unspecified). */
static void log_canon(Log *l)
{
    int n = l->n < MAXLOG ? l->n : MAXLOG;
    for (int i = 0; i < n;) {
        if (l->e[i] >= TAG_FD && l->e[i] < TAG_TIMER) {
            int j = i;
            while (j < n && l->e[j] >= TAG_FD && l->e[j] < TAG_TIMER) {
                j++;
            }
            qsort(l->e + i, j - i, sizeof(int), cmp_int);
            i = j;
        } else {
            i++;
        }
    }
}

/* ---- the real side ------------------------------------------------------- */

typedef struct Slot {
    QLBH *bh;     /* NULL: free (a deleted BH belongs to the core) */
    int target;   /* BH slot its callback schedules, or -1 */
    bool nested;  /* its callback runs a nested non-blocking poll */
    int gen;      /* generation, for the log id */
} Slot;

static QLContext *ctx;
static Slot slots[NBH];
static QLTimer *timers[NTIMER];
static int pipes[NPIPE][2];
static bool fd_handler[NPIPE];
static Log real_log;
static int real_depth;
static int oneshot_seq;

static void real_bh_cb(void *opaque)
{
    int s = (int)(intptr_t)opaque;
    log_add(&real_log, TAG_BH + s);
    int t = slots[s].target;
    if (t >= 0 && slots[t].bh) {
        ql_bh_schedule(slots[t].bh);
    }
    if (slots[s].nested && real_depth < MAXDEPTH) {
        real_depth++;
        if (ql_context_poll(ctx, false) < 0) {
            FAIL("nested poll failed");
        }
        real_depth--;
    }
}

static void real_oneshot_cb(void *opaque)
{
    log_add(&real_log, TAG_ONESHOT + (int)(intptr_t)opaque);
}

static void real_timer_cb(void *opaque)
{
    log_add(&real_log, TAG_TIMER + (int)(intptr_t)opaque);
}

static void real_fd_cb(void *opaque)
{
    int p = (int)(intptr_t)opaque;
    char buf[256];
    while (read(pipes[p][0], buf, sizeof buf) > 0) {
    }
    log_add(&real_log, TAG_FD + p);
}

/* ---- the model ------------------------------------------------------------ */

typedef struct MBH {
    bool exists, scheduled, idle, deleted, linked;
} MBH;

typedef struct MItem {
    int kind; /* 0: BH slot (with generation), 1: oneshot id */
    int id;
    int gen;
} MItem;

typedef struct MTimer {
    bool exists;
    int64_t expire; /* -1: idle */
    uint64_t seq;
} MTimer;

#define MAXQ 4096
static MBH mbh[NBH];
static int mgen[NBH];             /* generation of the model's slot */
static MItem mlinked[MAXQ];       /* linked, not taken */
static int nlinked;
static MItem mready[MAXQ];        /* ready queue (dequeued from the front) */
static int ready_head, ready_tail;
static MTimer mtimer[NTIMER];
static uint64_t mseq;
static int64_t mnow;
static int mbytes[NPIPE];         /* unread bytes */
static Log model_log;

static void m_link(MItem it)
{
    if (nlinked >= MAXQ) {
        FAIL("model queue overflow");
    }
    mlinked[nlinked++] = it;
}

static void m_schedule(int s, bool idle)
{
    mbh[s].scheduled = true;
    mbh[s].idle = idle;
    if (!mbh[s].linked) {
        mbh[s].linked = true;
        m_link((MItem){0, s, mgen[s]});
    }
}

static int m_poll(int depth);

/* Returns progress. */
static int m_bh_poll(int depth)
{
    int progress = 0;
    for (int i = 0; i < nlinked; i++) {
        if (ready_tail >= MAXQ) {
            /* compact */
            memmove(mready, mready + ready_head, (ready_tail - ready_head) * sizeof *mready);
            ready_tail -= ready_head;
            ready_head = 0;
            if (ready_tail >= MAXQ) {
                FAIL("model ready queue overflow");
            }
        }
        mready[ready_tail++] = mlinked[i];
    }
    nlinked = 0;
    while (ready_head < ready_tail) {
        MItem it = mready[ready_head++];
        if (it.kind == 1) {
            log_add(&model_log, TAG_ONESHOT + it.id);
            progress = 1;
            continue;
        }
        int s = it.id;
        if (it.gen != mgen[s]) {
            continue; /* a deleted BH being freed */
        }
        MBH *b = &mbh[s];
        b->linked = false;
        bool run = b->scheduled && !b->deleted;
        bool idle = b->idle;
        b->scheduled = b->idle = false;
        if (b->deleted) {
            /* freed at dequeue: the slot is free again */
            b->exists = false;
            b->deleted = false;
            continue;
        }
        if (run) {
            log_add(&model_log, TAG_BH + s);
            if (!idle) {
                progress = 1;
            }
            int t = slots[s].target;
            if (t >= 0 && mbh[t].exists && !mbh[t].deleted) {
                m_schedule(t, false);
            }
            if (slots[s].nested && depth < MAXDEPTH) {
                m_poll(depth + 1);
            }
        }
    }
    ready_head = ready_tail = 0;
    return progress;
}

static int m_poll(int depth)
{
    bool ready[NPIPE];
    for (int p = 0; p < NPIPE; p++) {
        ready[p] = fd_handler[p] && mbytes[p] > 0;
    }
    int progress = m_bh_poll(depth);
    for (int p = 0; p < NPIPE; p++) {
        if (ready[p] && fd_handler[p]) {
            mbytes[p] = 0;
            log_add(&model_log, TAG_FD + p);
            progress = 1;
        }
    }
    uint64_t limit = mseq;
    for (;;) {
        int best = -1;
        for (int i = 0; i < NTIMER; i++) {
            if (mtimer[i].exists && mtimer[i].expire >= 0 &&
                (best < 0 || mtimer[i].expire < mtimer[best].expire ||
                 (mtimer[i].expire == mtimer[best].expire && mtimer[i].seq < mtimer[best].seq))) {
                best = i;
            }
        }
        if (best < 0 || mtimer[best].expire > mnow || mtimer[best].seq >= limit) {
            break;
        }
        mtimer[best].expire = -1;
        log_add(&model_log, TAG_TIMER + best);
        progress = 1;
    }
    return progress;
}

/* Work ready in the model: a oneshot, a scheduled BH, a due timer or a
 * readable pipe with a handler.  count_idle: whether a BH scheduled with
 * schedule_idle counts (ql_context_pending() says yes; it does not keep a
 * blocking poll from sleeping). */
static bool m_ready(bool count_idle)
{
    for (int i = 0; i < nlinked; i++) {
        if (mlinked[i].kind == 1) {
            return true;
        }
        int s = mlinked[i].id;
        if (mlinked[i].gen == mgen[s] && mbh[s].scheduled && !mbh[s].deleted &&
            (count_idle || !mbh[s].idle)) {
            return true;
        }
    }
    for (int i = 0; i < NTIMER; i++) {
        if (mtimer[i].exists && mtimer[i].expire >= 0 && mtimer[i].expire <= mnow) {
            return true;
        }
    }
    for (int p = 0; p < NPIPE; p++) {
        if (fd_handler[p] && mbytes[p] > 0) {
            return true;
        }
    }
    return false;
}

static bool m_pending(void)
{
    return m_ready(true);
}

static void m_arm(int i, int64_t expire)
{
    mtimer[i].expire = expire < 0 ? 0 : expire;
    mtimer[i].seq = mseq++;
}

/* ---- coroutines contending for one CoMutex -------------------------------------
 * Each coroutine runs up to 3 critical sections (lock, yield `held` times,
 * unlock, yield `after` times).  The script enters suspended coroutines in
 * any order; a waiter is never entered by hand (the unlock that hands it
 * the mutex wakes it).  Checked: mutual exclusion, FIFO hand-off in lock()
 * call order, ql_co_mutex_locked(), and at the end every coroutine finishes. */

#define NCO 6
enum { CO_FREE, CO_SUSPENDED, CO_WAITING, CO_RUNNING, CO_DONE };

typedef struct FCo {
    QLCoroutine *co;
    int state;
    int nsec;
    uint8_t held[3], after[3];
} FCo;

static FCo fco[NCO];
static int nco;
static QLCoMutex *fmutex;
static int fholder = -1;
static int want_order[NCO * 3], got_order[NCO * 3];
static int nwant, ngot;

static void co_entry(void *opaque)
{
    FCo *c = opaque;
    int id = (int)(c - fco);
    for (int s = 0; s < c->nsec; s++) {
        want_order[nwant++] = id;
        c->state = CO_WAITING;
        if (ql_co_mutex_lock(fmutex) < 0) {
            FAIL("co_mutex_lock");
        }
        c->state = CO_RUNNING;
        if (fholder != -1) {
            FAIL("coroutine %d acquired the CoMutex held by %d", id, fholder);
        }
        fholder = id;
        got_order[ngot++] = id;
        for (int k = 0; k < c->held[s]; k++) {
            c->state = CO_SUSPENDED;
            ql_coroutine_yield();
            c->state = CO_RUNNING;
        }
        fholder = -1;
        if (ql_co_mutex_unlock(fmutex) < 0) {
            FAIL("co_mutex_unlock");
        }
        for (int k = 0; k < c->after[s]; k++) {
            c->state = CO_SUSPENDED;
            ql_coroutine_yield();
            c->state = CO_RUNNING;
        }
    }
    c->state = CO_DONE;
}

static void co_check(void)
{
    for (int i = 0; i < ngot; i++) {
        if (got_order[i] != want_order[i]) {
            FAIL("CoMutex acquired out of lock() order at %d: %d, expected %d", i,
                 got_order[i], want_order[i]);
        }
    }
    if (ql_co_mutex_locked(fmutex) != (fholder != -1)) {
        FAIL("ql_co_mutex_locked() = %d, model holder %d", ql_co_mutex_locked(fmutex), fholder);
    }
}

static void co_enter(int i)
{
    if (fco[i].state != CO_SUSPENDED) {
        return;
    }
    int r = ql_coroutine_enter(fco[i].co);
    if (r < 0) {
        FAIL("ql_coroutine_enter(%d) = %d", i, r);
    }
    co_check();
}

static void co_finish_all(void)
{
    for (int round = 0; round < 1000; round++) {
        int any = 0;
        for (int i = 0; i < nco; i++) {
            if (fco[i].state == CO_SUSPENDED) {
                co_enter(i);
                any = 1;
            }
        }
        if (!any) {
            break;
        }
    }
    for (int i = 0; i < nco; i++) {
        if (fco[i].state != CO_DONE) {
            FAIL("coroutine %d never finished (state %d): lost CoMutex hand-off", i,
                 fco[i].state);
        }
    }
    if (ngot != nwant || ql_co_mutex_locked(fmutex)) {
        FAIL("CoMutex: %d lock() calls, %d acquisitions, locked %d", nwant, ngot,
             ql_co_mutex_locked(fmutex));
    }
}

/* ---- coroutine programs: CoQueue, CoMutex and CoRwlock ------------------------
 * Up to NPROG coroutines each run a program of up to PROG_MAX steps (one
 * input byte each) on their own objects: a CoMutex `pmutex`, two CoQueues
 * and a CoRwlock.  The same programs run on a reference model of the
 * scheduler and of the three primitives; every step a coroutine completes
 * is logged with its result (real and model), and after every operation
 * the logs, the CoMutex holder, the CoRwlock holders and the queues'
 * emptiness must match.
 *
 * Model (csrc/coroutine.c, csrc/co-schedule.c, csrc/co-lock.c):
 *   - entering a coroutine from outside runs it until it yields or blocks,
 *     then the coroutines it woke (deferred wakes: a wake from inside a
 *     coroutine runs when the waker switches away), depth-first in FIFO
 *     order; a wake from outside any coroutine enters the woken one at once;
 *   - CoQueue: wait appends, wait_insert_head prepends; next wakes the head
 *     (returns whether there was one); restart_all wakes all, head first; a
 *     wait with the CoMutex releases it (hand-off) after queueing and
 *     retakes it (queueing for it again) once woken;
 *   - CoMutex: hand-off to the first waiter at unlock, no barging;
 *   - CoRwlock: rdlock is granted when free, or read-held with no ticket
 *     queued (a queued writer blocks new readers); wrlock only when free;
 *     otherwise a FIFO ticket; an unlock (and a downgrade) admits from the
 *     head: consecutive readers, or one writer once free; upgrade is
 *     immediate for the only reader with no ticket queued, otherwise it
 *     drops the read hold and queues a writer ticket at the tail;
 *     downgrade turns the writer into the only reader.
 * A step that would be misuse for the coroutine's holds (lock twice,
 * unlock what it does not hold) is skipped, logged as such on both sides.
 * To keep every schedule deadlock-free, a coroutine takes a lock only
 * while it holds none; it may wait on a queue holding the CoMutex (passed
 * to the wait, or kept) or a CoRwlock hold.  At the end of its program it
 * releases what it still holds.  Teardown enters what can be entered and
 * restarts the queues from outside until every program finished. */

#define NPROG 6
#define PROG_MAX 8
#define NQUEUE 2

enum {
    ST_YIELD, ST_MLOCK, ST_MUNLOCK, ST_QWAIT, ST_QWAIT_HEAD, ST_QNEXT, ST_QRESTART,
    ST_QEMPTY, ST_RDLOCK, ST_WRLOCK, ST_RWUNLOCK, ST_UPGRADE, ST_DOWNGRADE, ST_NKINDS
};
/* Log entries: TAG_PROG + id * 1000 + pc * 10 + result; pc PROG_MAX and
 * PROG_MAX + 1 are the final CoMutex / CoRwlock releases, PROG_MAX + 2 the
 * end.  Results: 0 done, 1 true (next/empty), 2 skipped. */
enum { TAG_PROG = 40000, RES_OK = 0, RES_TRUE = 1, RES_SKIP = 2 };
enum { PC_END_MUTEX = PROG_MAX, PC_END_RW = PROG_MAX + 1, PC_END = PROG_MAX + 2 };
/* Where a program coroutine stands, as far as the harness is concerned. */
enum { P_FREE, P_NEW, P_SUSPENDED, P_BLOCKED, P_RUNNING, P_DONE };
enum { RW_NONE, RW_READ, RW_WRITE };

typedef struct Prog {
    int n;
    uint8_t step[PROG_MAX];
} Prog;

/* Real side. */
typedef struct PCo {
    QLCoroutine *co;
    Prog prog;
    int state;          /* set by the coroutine itself */
} PCo;

static PCo pco[NPROG];
static int nprog;
static QLCoMutex *pmutex;
static QLCoQueue *pqueue[NQUEUE];
static QLCoRwlock *prw;
static int p_mutex_holder = -1;  /* shadow of who holds what, checked on */
static int p_rw_readers;         /* every acquisition by the coroutines */
static int p_rw_writer = -1;
static Log real_plog, model_plog;

static int step_kind(uint8_t b)
{
    return b % ST_NKINDS;
}

static int step_queue(uint8_t b)
{
    return (b / ST_NKINDS) % NQUEUE;
}

static bool step_with_mutex(uint8_t b)
{
    return ((b / ST_NKINDS) / NQUEUE) % 2 == 0;
}

static void plog(Log *l, int id, int pc, int r)
{
    log_add(l, TAG_PROG + id * 1000 + pc * 10 + r);
}

static void p_got_read(int id)
{
    if (p_rw_writer != -1) {
        FAIL("program %d got a read hold while %d writes", id, p_rw_writer);
    }
    p_rw_readers++;
}

static void p_got_write(int id)
{
    if (p_rw_writer != -1 || p_rw_readers != 0) {
        FAIL("program %d got the write hold while %d writes, %d read", id, p_rw_writer,
             p_rw_readers);
    }
    p_rw_writer = id;
}

static void p_got_mutex(int id)
{
    if (p_mutex_holder != -1) {
        FAIL("program %d got the CoMutex held by %d", id, p_mutex_holder);
    }
    if (ql_co_mutex_holder(pmutex) != ql_coroutine_self()) {
        FAIL("program %d: ql_co_mutex_holder() is not the coroutine that locked", id);
    }
    p_mutex_holder = id;
}

#define P_CALL(expr)                                                           \
    do {                                                                       \
        int r_ = (expr);                                                       \
        if (r_ != 0) {                                                         \
            FAIL("program %d step %d: %s = %d", id, pc, #expr, r_);            \
        }                                                                      \
    } while (0)

static void prog_entry(void *opaque)
{
    PCo *c = opaque;
    int id = (int)(c - pco);
    bool mutex = false;
    int rw = RW_NONE;

    c->state = P_RUNNING;
    for (int pc = 0; pc < c->prog.n; pc++) {
        uint8_t b = c->prog.step[pc];
        int q = step_queue(b), r = RES_OK;
        switch (step_kind(b)) {
        case ST_YIELD:
            c->state = P_SUSPENDED;
            P_CALL(ql_coroutine_yield());
            c->state = P_RUNNING;
            break;
        case ST_MLOCK:
            if (mutex || rw != RW_NONE) {
                r = RES_SKIP;
                break;
            }
            c->state = P_BLOCKED;
            P_CALL(ql_co_mutex_lock(pmutex));
            c->state = P_RUNNING;
            p_got_mutex(id);
            mutex = true;
            break;
        case ST_MUNLOCK:
            if (!mutex) {
                r = RES_SKIP;
                break;
            }
            p_mutex_holder = -1;
            mutex = false;
            P_CALL(ql_co_mutex_unlock(pmutex));
            break;
        case ST_QWAIT:
        case ST_QWAIT_HEAD: {
            bool with = mutex && step_with_mutex(b);
            if (with) {
                p_mutex_holder = -1;
            }
            c->state = P_BLOCKED;
            if (step_kind(b) == ST_QWAIT) {
                P_CALL(ql_co_queue_wait(pqueue[q], with ? pmutex : NULL));
            } else {
                P_CALL(ql_co_queue_wait_insert_head(pqueue[q], with ? pmutex : NULL));
            }
            c->state = P_RUNNING;
            if (with) {
                p_got_mutex(id);
            }
            break;
        }
        case ST_QNEXT:
            r = ql_co_queue_next(pqueue[q]) ? RES_TRUE : RES_OK;
            break;
        case ST_QRESTART:
            ql_co_queue_restart_all(pqueue[q]);
            break;
        case ST_QEMPTY:
            r = ql_co_queue_empty(pqueue[q]) ? RES_TRUE : RES_OK;
            break;
        case ST_RDLOCK:
        case ST_WRLOCK:
            if (mutex || rw != RW_NONE) {
                r = RES_SKIP;
                break;
            }
            c->state = P_BLOCKED;
            if (step_kind(b) == ST_RDLOCK) {
                P_CALL(ql_co_rwlock_rdlock(prw));
                p_got_read(id);
                rw = RW_READ;
            } else {
                P_CALL(ql_co_rwlock_wrlock(prw));
                p_got_write(id);
                rw = RW_WRITE;
            }
            c->state = P_RUNNING;
            break;
        case ST_RWUNLOCK:
            if (rw == RW_NONE) {
                r = RES_SKIP;
                break;
            }
            if (rw == RW_READ) {
                p_rw_readers--;
            } else {
                p_rw_writer = -1;
            }
            rw = RW_NONE;
            P_CALL(ql_co_rwlock_unlock(prw));
            break;
        case ST_UPGRADE:
            if (rw != RW_READ) {
                r = RES_SKIP;
                break;
            }
            p_rw_readers--;
            c->state = P_BLOCKED;
            P_CALL(ql_co_rwlock_upgrade(prw));
            c->state = P_RUNNING;
            p_got_write(id);
            rw = RW_WRITE;
            break;
        case ST_DOWNGRADE:
            if (rw != RW_WRITE) {
                r = RES_SKIP;
                break;
            }
            p_rw_writer = -1;
            P_CALL(ql_co_rwlock_downgrade(prw));
            p_got_read(id);
            rw = RW_READ;
            break;
        }
        plog(&real_plog, id, pc, r);
    }
    int pc = PC_END_MUTEX;
    if (mutex) {
        p_mutex_holder = -1;
        P_CALL(ql_co_mutex_unlock(pmutex));
        plog(&real_plog, id, PC_END_MUTEX, RES_OK);
    }
    pc = PC_END_RW;
    if (rw != RW_NONE) {
        if (rw == RW_READ) {
            p_rw_readers--;
        } else {
            p_rw_writer = -1;
        }
        P_CALL(ql_co_rwlock_unlock(prw));
        plog(&real_plog, id, PC_END_RW, RES_OK);
    }
    plog(&real_plog, id, PC_END, RES_OK);
    c->state = P_DONE;
}

/* Model side. */
enum {
    W_NONE,     /* not waiting */
    W_MUTEX,    /* for the CoMutex (MLOCK) */
    W_QUEUE,    /* on a CoQueue */
    W_REMUTEX,  /* woken from a CoQueue, waiting to retake the CoMutex */
    W_RW,       /* for the CoRwlock (RDLOCK, WRLOCK, UPGRADE) */
};

typedef struct MPCo {
    int status;         /* P_NEW, P_SUSPENDED, P_BLOCKED, P_DONE */
    int pc;
    int wait;           /* W_* while P_BLOCKED, or on its way out of one */
    bool qwait_mutex;   /* the CoQueue wait passed the CoMutex */
    bool mutex;
    int rw;
    int wakeups[NPROG]; /* deferred wakes made while running */
    int nwakeups;
} MPCo;

typedef struct MFifo {
    int e[NPROG];
    int n;
} MFifo;

static MPCo mp[NPROG];
static int mp_current = -1;     /* model coroutine running, or -1 */
static int mp_mutex_holder = -1;
static MFifo mp_mutex_wq;
static MFifo mp_queue[NQUEUE];
static int mp_rw_owners;        /* >0 readers, -1 a writer */
static int mp_rw_writer = -1;
static MFifo mp_rw_tickets;
static int mp_ticket_write[NPROG]; /* kind of each coroutine's ticket */

static void fifo_push(MFifo *f, int id, bool front)
{
    if (f->n >= NPROG) {
        FAIL("model fifo overflow");
    }
    if (front) {
        memmove(f->e + 1, f->e, f->n * sizeof *f->e);
        f->e[0] = id;
        f->n++;
    } else {
        f->e[f->n++] = id;
    }
}

static int fifo_pop(MFifo *f)
{
    if (f->n == 0) {
        return -1;
    }
    int id = f->e[0];
    f->n--;
    memmove(f->e, f->e + 1, f->n * sizeof *f->e);
    return id;
}

static void mp_enter(int id);

/* ql_co_wake() of a model coroutine. */
static void mp_wake(int id)
{
    if (mp_current >= 0) {
        MPCo *w = &mp[mp_current];
        w->wakeups[w->nwakeups++] = id;
    } else {
        mp_enter(id);
    }
}

static void mp_mutex_unlock(int id)
{
    (void)id;
    int next = fifo_pop(&mp_mutex_wq);
    mp_mutex_holder = next;
    if (next >= 0) {
        mp_wake(next);
    }
}

/* rw_admit + wake_chain; returns the first admitted (or -1). */
static int mp_rw_admit(int *admitted, int *n)
{
    *n = 0;
    while (mp_rw_tickets.n > 0) {
        int co = mp_rw_tickets.e[0];
        if (!mp_ticket_write[co] && mp_rw_owners >= 0) {
            mp_rw_owners++;
        } else if (mp_ticket_write[co] && mp_rw_owners == 0) {
            mp_rw_owners = -1;
            mp_rw_writer = co;
        } else {
            break;
        }
        fifo_pop(&mp_rw_tickets);
        admitted[(*n)++] = co;
        if (mp_rw_owners < 0) {
            break;
        }
    }
    return *n ? admitted[0] : -1;
}

static void mp_wake_all(const int *ids, int n)
{
    for (int i = 0; i < n; i++) {
        mp_wake(ids[i]);
    }
}

/* Run model coroutine id (current) from where it stands until it yields,
 * blocks or ends.  A coroutine coming back from a wait completes that
 * step first. */
static void mp_run(int id)
{
    MPCo *c = &mp[id];

    /* Resuming: finish the step it stopped in. */
    if (c->status == P_SUSPENDED) {
        plog(&model_plog, id, c->pc, RES_OK);
        c->pc++;
    } else if (c->status == P_BLOCKED) {
        uint8_t b = pco[id].prog.step[c->pc];
        switch (c->wait) {
        case W_MUTEX:
            c->mutex = true; /* handed off */
            break;
        case W_QUEUE:
            if (c->qwait_mutex) {
                if (mp_mutex_holder >= 0) {
                    fifo_push(&mp_mutex_wq, id, false);
                    c->wait = W_REMUTEX;
                    return;
                }
                mp_mutex_holder = id;
            }
            break;
        case W_REMUTEX:
            break; /* handed off */
        case W_RW:
            c->rw = step_kind(b) == ST_RDLOCK ? RW_READ : RW_WRITE;
            break;
        }
        c->wait = W_NONE;
        plog(&model_plog, id, c->pc, RES_OK);
        c->pc++;
    }
    c->status = P_RUNNING;
    for (; c->pc < pco[id].prog.n; c->pc++) {
        uint8_t b = pco[id].prog.step[c->pc];
        int q = step_queue(b), r = RES_OK;
        switch (step_kind(b)) {
        case ST_YIELD:
            c->status = P_SUSPENDED;
            return;
        case ST_MLOCK:
            if (c->mutex || c->rw != RW_NONE) {
                r = RES_SKIP;
                break;
            }
            if (mp_mutex_holder >= 0) {
                fifo_push(&mp_mutex_wq, id, false);
                c->status = P_BLOCKED;
                c->wait = W_MUTEX;
                return;
            }
            mp_mutex_holder = id;
            c->mutex = true;
            break;
        case ST_MUNLOCK:
            if (!c->mutex) {
                r = RES_SKIP;
                break;
            }
            c->mutex = false;
            mp_mutex_unlock(id);
            break;
        case ST_QWAIT:
        case ST_QWAIT_HEAD: {
            bool with = c->mutex && step_with_mutex(b);
            fifo_push(&mp_queue[q], id, step_kind(b) == ST_QWAIT_HEAD);
            c->qwait_mutex = with;
            if (with) {
                mp_mutex_unlock(id);
            }
            c->status = P_BLOCKED;
            c->wait = W_QUEUE;
            return;
        }
        case ST_QNEXT: {
            int w = fifo_pop(&mp_queue[q]);
            if (w >= 0) {
                mp_wake(w);
                r = RES_TRUE;
            }
            break;
        }
        case ST_QRESTART: {
            MFifo all = mp_queue[q];
            mp_queue[q].n = 0;
            mp_wake_all(all.e, all.n);
            break;
        }
        case ST_QEMPTY:
            r = mp_queue[q].n == 0 ? RES_TRUE : RES_OK;
            break;
        case ST_RDLOCK:
        case ST_WRLOCK: {
            bool write = step_kind(b) == ST_WRLOCK;
            if (c->mutex || c->rw != RW_NONE) {
                r = RES_SKIP;
                break;
            }
            if (!write && (mp_rw_owners == 0 || (mp_rw_owners > 0 && mp_rw_tickets.n == 0))) {
                mp_rw_owners++;
                c->rw = RW_READ;
            } else if (write && mp_rw_owners == 0) {
                mp_rw_owners = -1;
                mp_rw_writer = id;
                c->rw = RW_WRITE;
            } else {
                mp_ticket_write[id] = write;
                fifo_push(&mp_rw_tickets, id, false);
                c->status = P_BLOCKED;
                c->wait = W_RW;
                return;
            }
            break;
        }
        case ST_RWUNLOCK: {
            int adm[NPROG], n;
            if (c->rw == RW_NONE) {
                r = RES_SKIP;
                break;
            }
            if (c->rw == RW_WRITE) {
                mp_rw_owners = 0;
                mp_rw_writer = -1;
            } else {
                mp_rw_owners--;
            }
            c->rw = RW_NONE;
            mp_rw_admit(adm, &n);
            mp_wake_all(adm, n);
            break;
        }
        case ST_UPGRADE: {
            int adm[NPROG], n;
            if (c->rw != RW_READ) {
                r = RES_SKIP;
                break;
            }
            if (mp_rw_owners == 1 && mp_rw_tickets.n == 0) {
                mp_rw_owners = -1;
                mp_rw_writer = id;
                c->rw = RW_WRITE;
                break;
            }
            mp_rw_owners--;
            mp_ticket_write[id] = 1;
            fifo_push(&mp_rw_tickets, id, false);
            if (mp_rw_admit(adm, &n) == id) {
                c->rw = RW_WRITE; /* admitted at once */
                break;
            }
            mp_wake_all(adm, n);
            c->rw = RW_NONE; /* the read hold is gone; W_RW gives the write */
            c->status = P_BLOCKED;
            c->wait = W_RW;
            return;
        }
        case ST_DOWNGRADE: {
            int adm[NPROG], n;
            if (c->rw != RW_WRITE) {
                r = RES_SKIP;
                break;
            }
            mp_rw_owners = 1;
            mp_rw_writer = -1;
            c->rw = RW_READ;
            mp_rw_admit(adm, &n);
            mp_wake_all(adm, n);
            break;
        }
        }
        plog(&model_plog, id, c->pc, r);
    }
    if (c->mutex) {
        c->mutex = false;
        mp_mutex_unlock(id);
        plog(&model_plog, id, PC_END_MUTEX, RES_OK);
    }
    if (c->rw != RW_NONE) {
        int adm[NPROG], n;
        if (c->rw == RW_WRITE) {
            mp_rw_owners = 0;
            mp_rw_writer = -1;
        } else {
            mp_rw_owners--;
        }
        c->rw = RW_NONE;
        mp_rw_admit(adm, &n);
        mp_wake_all(adm, n);
        plog(&model_plog, id, PC_END_RW, RES_OK);
    }
    plog(&model_plog, id, PC_END, RES_OK);
    c->status = P_DONE;
}

/* ql__coroutine_enter_ctx() from outside any coroutine. */
static void mp_enter(int id)
{
    int pending[4 * NPROG * PROG_MAX], np = 0;

    if (mp_current >= 0) {
        FAIL("model: enter from inside a coroutine");
    }
    pending[np++] = id;
    while (np > 0) {
        int to = pending[0];
        np--;
        memmove(pending, pending + 1, np * sizeof *pending);
        mp_current = to;
        mp[to].nwakeups = 0;
        mp_run(to);
        mp_current = -1;
        /* Depth-first: what `to` woke goes before the older pending ones. */
        int k = mp[to].nwakeups;
        if (np + k > (int)(sizeof pending / sizeof *pending)) {
            FAIL("model pending overflow");
        }
        memmove(pending + k, pending, np * sizeof *pending);
        memcpy(pending, mp[to].wakeups, k * sizeof *pending);
        np += k;
        mp[to].nwakeups = 0;
    }
}

static void p_check(const char *what)
{
    logs_must_match(&real_plog, &model_plog, what, "programs ran", "program steps differ");
    if (ql_co_mutex_holder(pmutex) != (mp_mutex_holder >= 0 ? pco[mp_mutex_holder].co : NULL) ||
        p_mutex_holder != mp_mutex_holder) {
        FAIL("%s: CoMutex held by %d (shadow), model %d", what, p_mutex_holder, mp_mutex_holder);
    }
    if (p_rw_writer != mp_rw_writer || p_rw_readers != (mp_rw_owners > 0 ? mp_rw_owners : 0)) {
        FAIL("%s: CoRwlock writer %d readers %d, model owners %d writer %d", what, p_rw_writer,
             p_rw_readers, mp_rw_owners, mp_rw_writer);
    }
    for (int q = 0; q < NQUEUE; q++) {
        if (ql_co_queue_empty(pqueue[q]) != (mp_queue[q].n == 0)) {
            FAIL("%s: ql_co_queue_empty(%d) = %d, model has %d waiters", what, q,
                 ql_co_queue_empty(pqueue[q]), mp_queue[q].n);
        }
    }
    for (int i = 0; i < nprog; i++) {
        if (pco[i].state != mp[i].status) {
            FAIL("%s: program %d in state %d, model %d", what, i, pco[i].state, mp[i].status);
        }
    }
}

static void prog_new(uint8_t arg, const uint8_t *data, size_t size, size_t *pos)
{
    if (nprog >= NPROG) {
        return;
    }
    PCo *c = &pco[nprog];
    c->prog.n = 1 + arg % PROG_MAX;
    for (int k = 0; k < c->prog.n; k++) {
        c->prog.step[k] = *pos < size ? data[(*pos)++] : 0;
    }
    c->co = ql_coroutine_create(prog_entry, c);
    if (!c->co) {
        FAIL("ql_coroutine_create");
    }
    c->state = P_NEW;
    mp[nprog] = (MPCo){.status = P_NEW, .rw = RW_NONE};
    nprog++;
}

static bool prog_enterable(int i)
{
    return mp[i].status == P_NEW || mp[i].status == P_SUSPENDED;
}

static void prog_enter(int i)
{
    if (!prog_enterable(i)) {
        return;
    }
    int r = ql_coroutine_enter(pco[i].co);
    if (r < 0) {
        FAIL("ql_coroutine_enter(program %d) = %d", i, r);
    }
    mp_enter(i);
    p_check("enter");
}

static void prog_queue_next(int q)
{
    bool r = ql_co_queue_next(pqueue[q]);
    int w = fifo_pop(&mp_queue[q]);
    if (w >= 0) {
        mp_wake(w);
    }
    p_check("ql_co_queue_next");
    if (r != (w >= 0)) {
        FAIL("ql_co_queue_next(%d) = %d, model woke %d", q, r, w);
    }
}

static void prog_queue_restart_all(int q)
{
    ql_co_queue_restart_all(pqueue[q]);
    MFifo all = mp_queue[q];
    mp_queue[q].n = 0;
    mp_wake_all(all.e, all.n);
    p_check("ql_co_queue_restart_all");
}

static void prog_setup(void)
{
    memset(pco, 0, sizeof pco);
    memset(mp, 0, sizeof mp);
    nprog = 0;
    mp_current = -1;
    p_mutex_holder = mp_mutex_holder = -1;
    p_rw_readers = 0;
    p_rw_writer = mp_rw_writer = -1;
    mp_rw_owners = 0;
    mp_mutex_wq.n = mp_rw_tickets.n = 0;
    real_plog.n = model_plog.n = 0;
    pmutex = ql_co_mutex_new();
    prw = ql_co_rwlock_new();
    if (!pmutex || !prw) {
        FAIL("CoMutex/CoRwlock new");
    }
    for (int q = 0; q < NQUEUE; q++) {
        mp_queue[q].n = 0;
        pqueue[q] = ql_co_queue_new();
        if (!pqueue[q]) {
            FAIL("ql_co_queue_new");
        }
    }
}

/* Run every program to its end: enter what can be entered, else restart
 * the queues from outside. */
static void prog_finish_all(void)
{
    for (int round = 0; round < 100; round++) {
        bool any = false;
        for (int i = 0; i < nprog; i++) {
            if (prog_enterable(i)) {
                prog_enter(i);
                any = true;
            }
        }
        for (int q = 0; !any && q < NQUEUE; q++) {
            if (mp_queue[q].n > 0) {
                prog_queue_restart_all(q);
                any = true;
            }
        }
        if (!any) {
            break;
        }
    }
    for (int i = 0; i < nprog; i++) {
        if (mp[i].status != P_DONE) {
            FAIL("program %d never finished (model state %d, waits %d)", i, mp[i].status,
                 mp[i].wait);
        }
    }
    ql_co_mutex_free(pmutex);
    ql_co_rwlock_free(prw);
    for (int q = 0; q < NQUEUE; q++) {
        ql_co_queue_free(pqueue[q]);
    }
}

/* ---- driver ----------------------------------------------------------------- */

static void compare_logs(const char *what)
{
    log_canon(&real_log);
    log_canon(&model_log);
    logs_must_match(&real_log, &model_log, what, "ran", "run order differs");
}

static void check_state(void)
{
    bool rp = ql_context_pending(ctx), mp = m_pending();
    if (rp != mp) {
        FAIL("ql_context_pending() = %d, model says %d", rp, mp);
    }
    for (int i = 0; i < NTIMER; i++) {
        if (timers[i]) {
            int64_t e = ql_timer_expire_time(timers[i]);
            if (e != mtimer[i].expire || ql_timer_pending(timers[i]) != (mtimer[i].expire >= 0)) {
                FAIL("timer %d: expire %lld, model %lld", i, (long long)e,
                     (long long)mtimer[i].expire);
            }
        }
    }
    if (ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL) != mnow) {
        FAIL("virtual clock differs");
    }
}

static void setup(void)
{
    ql_set_abort_on_misuse(1);
    ctx = ql_context_new();
    if (!ctx) {
        FAIL("ql_context_new: %s", strerror(errno));
    }
    memset(slots, 0, sizeof slots);
    memset(timers, 0, sizeof timers);
    memset(mbh, 0, sizeof mbh);
    memset(mtimer, 0, sizeof mtimer);
    memset(mbytes, 0, sizeof mbytes);
    memset(fd_handler, 0, sizeof fd_handler);
    for (int i = 0; i < NBH; i++) {
        slots[i].target = -1;
    }
    for (int p = 0; p < NPIPE; p++) {
        if (pipe2(pipes[p], O_NONBLOCK | O_CLOEXEC) < 0) {
            FAIL("pipe2: %s", strerror(errno));
        }
    }
    nlinked = 0;
    ready_head = ready_tail = 0;
    memset(fco, 0, sizeof fco);
    nco = nwant = ngot = 0;
    fholder = -1;
    fmutex = ql_co_mutex_new();
    if (!fmutex) {
        FAIL("ql_co_mutex_new");
    }
    mseq = 0;
    mnow = ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL);
    real_log.n = model_log.n = 0;
    real_depth = 0;
    oneshot_seq = 0;
    prog_setup();
}

static void teardown(void)
{
    co_finish_all();
    ql_co_mutex_free(fmutex);
    prog_finish_all();
    for (int i = 0; i < NTIMER; i++) {
        if (timers[i]) {
            ql_timer_free(timers[i]);
        }
    }
    ql_context_free(ctx); /* frees remaining BHs without running them */
    for (int p = 0; p < NPIPE; p++) {
        close(pipes[p][0]);
        close(pipes[p][1]);
    }
    ctx = NULL;
}

static void do_poll(bool blocking)
{
    int r = ql_context_poll(ctx, blocking);
    if (r < 0) {
        FAIL("poll: %d", r);
    }
    int m = m_poll(0);
    compare_logs(blocking ? "blocking poll" : "poll");
    if (r != m) {
        FAIL("poll returned %d, model %d", r, m);
    }
}

/* A blocking poll is allowed only when the model says it cannot sleep. */
static bool must_not_sleep(void)
{
    return m_ready(false);
}

/* ---- timer operations (real and model together) ------------------------- */

static void timer_new_op(int t)
{
    if (!timers[t]) {
        timers[t] = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, real_timer_cb, (void *)(intptr_t)t, "fuzz");
        if (!timers[t]) {
            FAIL("ql_timer_new");
        }
        mtimer[t] = (MTimer){.exists = true, .expire = -1};
    }
}

/* mode 0: mod(now + delta), 1: mod_anticipate(now + delta), 2: mod_in(|delta|). */
static void timer_arm_op(int t, int mode, int64_t delta)
{
    if (!timers[t]) {
        return;
    }
    int64_t when = mnow + delta;
    if (mode == 0) {
        ql_timer_mod(timers[t], when);
        m_arm(t, when);
    } else if (mode == 1) {
        ql_timer_mod_anticipate(timers[t], when);
        int64_t w = when < 0 ? 0 : when;
        if (mtimer[t].expire < 0 || w < mtimer[t].expire) {
            m_arm(t, w);
        }
    } else {
        int64_t d = delta < 0 ? -delta : delta;
        ql_timer_mod_in(timers[t], d);
        m_arm(t, mnow + d);
    }
}

static void timer_del_op(int t)
{
    if (timers[t]) {
        ql_timer_del(timers[t]);
        mtimer[t].expire = -1;
    }
}

static void timer_free_op(int t)
{
    if (timers[t]) {
        ql_timer_free(timers[t]);
        timers[t] = NULL;
        mtimer[t].exists = false;
    }
}

static void advance_op(int64_t ns)
{
    if (ql_virtual_clock_advance(ctx, ns) < 0) {
        FAIL("advance");
    }
    mnow += ns;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    size_t pos = 0;
    int ops = 0;
#define NEXT() (pos < size ? data[pos++] : 0)
    while (pos < size && ops++ < MAXOPS) {
        uint8_t op = NEXT() % NOPS;
        uint8_t arg = NEXT();
        int s = arg % NBH, t = arg % NTIMER_NEAR, p = arg % NPIPE;
        switch (op) {
        case 0: /* new BH in slot s (if free), with behaviour from the next byte */
            if (!slots[s].bh && !mbh[s].exists) {
                uint8_t b = NEXT();
                slots[s].target = (b & 8) ? (b % NBH) : -1;
                slots[s].nested = (b & 16) != 0;
                slots[s].bh = ql_bh_new(ctx, real_bh_cb, (void *)(intptr_t)s, "fuzz");
                if (!slots[s].bh) {
                    FAIL("ql_bh_new");
                }
                mbh[s] = (MBH){.exists = true};
                mgen[s]++;
            }
            break;
        case 1:
        case 2:
            if (slots[s].bh) {
                if (op == 1) {
                    ql_bh_schedule(slots[s].bh);
                } else {
                    ql_bh_schedule_idle(slots[s].bh);
                }
                m_schedule(s, op == 2);
            }
            break;
        case 3:
            if (slots[s].bh) {
                ql_bh_cancel(slots[s].bh);
                mbh[s].scheduled = mbh[s].idle = false;
            }
            break;
        case 4: /* delete: the core frees it at its dequeue */
            if (slots[s].bh) {
                ql_bh_delete(slots[s].bh);
                slots[s].bh = NULL;
                mbh[s].deleted = true;
                mbh[s].scheduled = mbh[s].idle = false;
                if (!mbh[s].linked) {
                    mbh[s].linked = true;
                    m_link((MItem){0, s, mgen[s]});
                }
            }
            break;
        case 5: {
            int id = oneshot_seq++;
            if (ql_bh_schedule_oneshot(ctx, real_oneshot_cb, (void *)(intptr_t)id, "os") < 0) {
                FAIL("oneshot");
            }
            m_link((MItem){1, id, 0});
            break;
        }
        case 6:
            timer_new_op(t);
            break;
        case 7:
        case 8:
        case 9:
            if (timers[t]) {
                timer_arm_op(t, op - 7, (int64_t)(int8_t)NEXT() * 1000);
            }
            break;
        case 10:
            timer_del_op(t);
            break;
        case 11:
            timer_free_op(t);
            break;
        case 12:
            advance_op((int64_t)arg * 500);
            break;
        case 13:
        case 14:
            do_poll(false);
            break;
        case 15:
            if (must_not_sleep()) {
                do_poll(true);
            }
            break;
        case 16:
            if (!fd_handler[p]) {
                if (ql_context_set_fd_handler(ctx, pipes[p][0], real_fd_cb, NULL, NULL,
                                              (void *)(intptr_t)p) < 0) {
                    FAIL("set_fd_handler");
                }
                fd_handler[p] = true;
            }
            break;
        case 17:
            if (write(pipes[p][1], "x", 1) == 1) {
                mbytes[p]++;
            }
            break;
        case 18:
            if (fd_handler[p]) {
                ql_context_set_fd_handler(ctx, pipes[p][0], NULL, NULL, NULL, NULL);
                fd_handler[p] = false;
            }
            break;
        case 19: /* ql_context_notify alone: no callback runs */
            ql_context_notify(ctx);
            break;
        case 20: /* a coroutine with up to 3 critical sections from arg */
            if (nco < NCO) {
                FCo *c = &fco[nco];
                c->nsec = 1 + arg % 3;
                for (int k = 0; k < c->nsec; k++) {
                    uint8_t b = NEXT();
                    c->held[k] = b % 3;
                    c->after[k] = (b / 3) % 2;
                }
                c->co = ql_coroutine_create(co_entry, c);
                if (!c->co) {
                    FAIL("ql_coroutine_create");
                }
                c->state = CO_SUSPENDED; /* not started: enterable */
                nco++;
            }
            break;
        case 21:
        case 22:
            if (nco > 0) {
                co_enter(arg % nco);
            }
            break;
        case 23: /* a program coroutine: 1 + arg % 8 steps, one byte each */
            prog_new(arg, data, size, &pos);
            break;
        case 24:
        case 25:
            if (nprog > 0) {
                prog_enter(arg % nprog);
            }
            break;
        case 26: /* CoQueue next / restart_all / empty from outside */
            prog_queue_next(arg % NQUEUE);
            break;
        case 27:
            prog_queue_restart_all(arg % NQUEUE);
            break;
        case 28:
            if (ql_co_queue_empty(pqueue[arg % NQUEUE]) != (mp_queue[arg % NQUEUE].n == 0)) {
                FAIL("ql_co_queue_empty(%d) differs from the model", arg % NQUEUE);
            }
            break;
        case 29: { /* wheel timer: create if needed, arm in steps of a quarter tick */
            int w = NTIMER_NEAR + arg % (NTIMER - NTIMER_NEAR);
            int64_t delta = (int64_t)(int8_t)NEXT() * (1LL << 16);
            timer_new_op(w);
            timer_arm_op(w, NEXT() % 3, delta);
            break;
        }
        case 30: { /* wheel timer: del or free */
            int w = NTIMER_NEAR + arg % (NTIMER - NTIMER_NEAR);
            if (NEXT() & 1) {
                timer_free_op(w);
            } else {
                timer_del_op(w);
            }
            break;
        }
        case 31: /* advance up to 4 ms: over many wheel buckets */
            advance_op((int64_t)arg << 14);
            break;
        }
        check_state();
    }
    /* Drain: everything scheduled must run within a bounded number of polls
     * (a BH chain may reschedule itself forever: stop after 8). */
    for (int i = 0; i < 8 && must_not_sleep(); i++) {
        do_poll(false);
        check_state();
    }
    teardown();
    return 0;
}
