/*
 * Cross-thread use of one context while its home thread polls (blocking):
 * the lock-free BH list, the notify protocol, timers armed from other
 * threads, BHs created and deleted from other threads.  Written to be run
 * under ThreadSanitizer (ci/tsan) as well as normally: data handed over by
 * a schedule is plain (non-atomic) memory that the callback reads, so TSan
 * checks the release/acquire pairing of the push and the take.  A lost
 * wakeup makes a test hang (meson's timeout fails it).
 */
#include "qltest.h"
#include "qloop/qloop.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- reusable BH ping-pong ------------------------------------------------ */

typedef struct Ping {
    QLContext *ctx;
    QLBH *bh;
    int rounds;
    int payload;          /* plain: written by the scheduler, read by cb */
    int seen;             /* plain: home thread only */
    int bad;
    unsigned ran;         /* atomic */
} Ping;

static void ping_cb(void *opaque)
{
    Ping *p = opaque;
    if (p->payload != p->seen + 1) {
        p->bad++;
    }
    p->seen = p->payload;
    __atomic_fetch_add(&p->ran, 1, __ATOMIC_RELEASE);
}

static void *ping_thread(void *opaque)
{
    Ping *p = opaque;
    for (int i = 1; i <= p->rounds; i++) {
        p->payload = i;
        ql_bh_schedule(p->bh);
        /* wait until it ran: the next schedule needs a new wakeup */
        while (__atomic_load_n(&p->ran, __ATOMIC_ACQUIRE) < (unsigned)i) {
            sched_yield();
        }
    }
    return NULL;
}

static void test_xthread_reusable_bh_ping_pong(void)
{
    Ping p = {.rounds = 5000};
    p.ctx = ql_context_new();
    p.bh = ql_bh_new(p.ctx, ping_cb, &p, "ping");
    pthread_t th;
    pthread_create(&th, NULL, ping_thread, &p);
    while (__atomic_load_n(&p.ran, __ATOMIC_ACQUIRE) < (unsigned)p.rounds) {
        QL_CHECK(ql_context_poll(p.ctx, true) >= 0);
    }
    pthread_join(th, NULL);
    QL_CHECK_EQ(p.bad, 0);
    QL_CHECK_EQ(p.seen, p.rounds);
    ql_bh_delete(p.bh);
    ql_context_free(p.ctx);
}

/* ---- oneshots with payload, notifies, timers, shared BH, all at once ------- */

typedef struct Msg {
    int value[4];         /* plain memory handed over by the schedule */
} Msg;

typedef struct Mixed {
    QLContext *ctx;
    QLBH *shared;
    QLTimer *timer;
    int n;
    unsigned received;    /* atomic */
    unsigned shared_runs; /* atomic */
    int bad;              /* home thread only */
    int stop;             /* atomic */
} Mixed;

static Mixed *mixed_now; /* the running test's state (home thread) */

static void msg_cb(void *opaque)
{
    Msg *m = opaque;
    /* reads what the producer wrote before scheduling */
    if (m->value[0] + 1 != m->value[1] || m->value[2] != m->value[0] * 2 || m->value[3] != 7) {
        mixed_now->bad++;
    }
    free(m);
    __atomic_fetch_add(&mixed_now->received, 1, __ATOMIC_RELAXED);
}

static void shared_cb(void *opaque)
{
    Mixed *mx = opaque;
    __atomic_fetch_add(&mx->shared_runs, 1, __ATOMIC_RELAXED);
}

static void timer_cb(void *opaque)
{
    (void)opaque;
}

static void *producer(void *opaque)
{
    Mixed *mx = opaque;
    for (int i = 0; i < mx->n; i++) {
        Msg *m = malloc(sizeof *m);
        m->value[0] = i;
        m->value[1] = i + 1;
        m->value[2] = i * 2;
        m->value[3] = 7;
        while (ql_bh_schedule_oneshot(mx->ctx, msg_cb, m, "msg") < 0) {
        }
    }
    return NULL;
}

static void *disturber(void *opaque)
{
    Mixed *mx = opaque;
    unsigned i = 0;
    while (!__atomic_load_n(&mx->stop, __ATOMIC_ACQUIRE)) {
        switch (i++ % 6) {
        case 0:
            ql_bh_schedule(mx->shared);
            break;
        case 1:
            ql_context_notify(mx->ctx);
            break;
        case 2:
            /* far in the future: new heap head, notifies, never fires */
            ql_timer_mod_in(mx->timer, 3600LL * 1000000000LL);
            break;
        case 3:
            ql_bh_cancel(mx->shared);
            break;
        case 4:
            ql_timer_del(mx->timer);
            break;
        case 5: {
            /* a BH created, scheduled and deleted by another thread */
            QLBH *bh = ql_bh_new(mx->ctx, shared_cb, mx, "tmp");
            ql_bh_schedule(bh);
            ql_bh_delete(bh);
            break;
        }
        }
    }
    return NULL;
}

static void test_xthread_oneshots_notify_timers_shared_bh(void)
{
    Mixed mx = {.n = 20000};
    mixed_now = &mx;
    mx.ctx = ql_context_new();
    mx.shared = ql_bh_new(mx.ctx, shared_cb, &mx, "shared");
    mx.timer = ql_timer_new(mx.ctx, QL_CLOCK_REALTIME, timer_cb, NULL, "far");
    pthread_t prod[2], dist;
    pthread_create(&dist, NULL, disturber, &mx);
    for (int i = 0; i < 2; i++) {
        pthread_create(&prod[i], NULL, producer, &mx);
    }
    while (__atomic_load_n(&mx.received, __ATOMIC_RELAXED) < (unsigned)(2 * mx.n)) {
        QL_CHECK(ql_context_poll(mx.ctx, true) >= 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(prod[i], NULL);
    }
    __atomic_store_n(&mx.stop, 1, __ATOMIC_RELEASE);
    pthread_join(dist, NULL);
    while (ql_context_poll(mx.ctx, false) > 0) {
    }
    QL_CHECK_EQ(mx.bad, 0);
    QL_CHECK_EQ(mx.received, 2 * mx.n);
    ql_timer_free(mx.timer);
    ql_bh_delete(mx.shared);
    ql_context_free(mx.ctx);
    mixed_now = NULL;
}

/* ---- embedding: prepare/check from the home thread, notify from others ----- */

typedef struct Emb {
    QLContext *ctx;
    int n;
    unsigned ran; /* atomic */
} Emb;

static void emb_cb(void *opaque)
{
    Emb *e = opaque;
    __atomic_fetch_add(&e->ran, 1, __ATOMIC_RELAXED);
}

static void *emb_thread(void *opaque)
{
    Emb *e = opaque;
    for (int i = 0; i < e->n; i++) {
        ql_bh_schedule_oneshot(e->ctx, emb_cb, e, "emb");
        if (i % 64 == 0) {
            sched_yield();
        }
    }
    return NULL;
}

static void test_xthread_embedded_prepare_check_dispatch(void)
{
    Emb e = {.n = 20000};
    e.ctx = ql_context_new();
    int fd = ql_context_fd(e.ctx);
    QL_CHECK(fd >= 0);
    pthread_t th;
    pthread_create(&th, NULL, emb_thread, &e);
    while (__atomic_load_n(&e.ran, __ATOMIC_RELAXED) < (unsigned)e.n) {
        int64_t timeout = ql_context_prepare(e.ctx);
        if (timeout != 0) {
            /* the host loop sleeps on the context's fd */
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            poll(&pfd, 1, timeout < 0 ? -1 : (int)(timeout / 1000000 + 1));
        }
        if (ql_context_check(e.ctx)) {
            QL_CHECK(ql_context_dispatch(e.ctx) >= 0);
        }
    }
    pthread_join(th, NULL);
    QL_CHECK_EQ(e.ran, e.n);
    ql_context_free(e.ctx);
}

QLTEST_MAIN(QLT(test_xthread_reusable_bh_ping_pong),
            QLT(test_xthread_oneshots_notify_timers_shared_bh),
            QLT(test_xthread_embedded_prepare_check_dispatch))
