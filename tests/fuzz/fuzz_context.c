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
#define NTIMER 6
#define NPIPE 3
#define MAXLOG 8192
#define MAXDEPTH 3
#define MAXOPS 400

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

static bool m_pending(void)
{
    for (int i = 0; i < nlinked; i++) {
        if (mlinked[i].kind == 1) {
            return true;
        }
        int s = mlinked[i].id;
        if (mlinked[i].gen == mgen[s] && mbh[s].scheduled && !mbh[s].deleted) {
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

/* ---- driver ----------------------------------------------------------------- */

static void compare_logs(const char *what)
{
    log_canon(&real_log);
    log_canon(&model_log);
    int n = real_log.n < MAXLOG ? real_log.n : MAXLOG;
    if (real_log.n != model_log.n || memcmp(real_log.e, model_log.e, n * sizeof(int)) != 0) {
        fprintf(stderr, "fuzz_context: %s: ran", what);
        for (int i = 0; i < n; i++) {
            fprintf(stderr, " %d", real_log.e[i]);
        }
        fprintf(stderr, "\nfuzz_context: %s: model", what);
        for (int i = 0; i < (model_log.n < MAXLOG ? model_log.n : MAXLOG); i++) {
            fprintf(stderr, " %d", model_log.e[i]);
        }
        FAIL("\n%s: run order differs from the model", what);
    }
    real_log.n = model_log.n = 0;
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
}

static void teardown(void)
{
    co_finish_all();
    ql_co_mutex_free(fmutex);
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
    for (int i = 0; i < nlinked; i++) {
        if (mlinked[i].kind == 1) {
            return true;
        }
        int s = mlinked[i].id;
        if (mlinked[i].gen == mgen[s] && mbh[s].scheduled && !mbh[s].idle && !mbh[s].deleted) {
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    size_t pos = 0;
    int ops = 0;
#define NEXT() (pos < size ? data[pos++] : 0)
    while (pos < size && ops++ < MAXOPS) {
        uint8_t op = NEXT() % 23;
        uint8_t arg = NEXT();
        int s = arg % NBH, t = arg % NTIMER, p = arg % NPIPE;
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
            if (!timers[t]) {
                timers[t] = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, real_timer_cb, (void *)(intptr_t)t,
                                         "fuzz");
                if (!timers[t]) {
                    FAIL("ql_timer_new");
                }
                mtimer[t] = (MTimer){.exists = true, .expire = -1};
            }
            break;
        case 7:
        case 8:
        case 9:
            if (timers[t]) {
                int64_t delta = (int64_t)(int8_t)NEXT() * 1000;
                int64_t when = mnow + delta;
                if (op == 7) {
                    ql_timer_mod(timers[t], when);
                    m_arm(t, when);
                } else if (op == 8) {
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
            break;
        case 10:
            if (timers[t]) {
                ql_timer_del(timers[t]);
                mtimer[t].expire = -1;
            }
            break;
        case 11:
            if (timers[t]) {
                ql_timer_free(timers[t]);
                timers[t] = NULL;
                mtimer[t].exists = false;
            }
            break;
        case 12: {
            int64_t ns = (int64_t)arg * 500;
            if (ql_virtual_clock_advance(ctx, ns) < 0) {
                FAIL("advance");
            }
            mnow += ns;
            break;
        }
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
