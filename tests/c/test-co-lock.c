/* CoQueue, CoMutex, CoRwlock: FIFO order, hand-off, fairness, misuse.
 * Same thread, no context: wakes from a coroutine run when it yields. */
#include "qltest.h"
#include "qloop/coroutine.h"

#include <errno.h>

static char order[256];
static size_t norder;

static void mark(char c)
{
    if (norder < sizeof order - 1) {
        order[norder++] = c;
        order[norder] = 0;
    }
}

static void reset_order(void)
{
    norder = 0;
    order[0] = 0;
}

/* Each actor marks its letter at milestones. */
typedef struct Actor {
    char name;
    QLCoroutine *co;
    int ret;
} Actor;

static QLCoQueue *q;
static QLCoMutex *m;
static QLCoRwlock *rw;

/* ---- CoQueue ---------------------------------------------------------- */

static void co_queue_waiter(void *opaque)
{
    Actor *a = opaque;
    a->ret = ql_co_queue_wait(q, NULL);
    mark(a->name);
}

static void co_queue_waiter_head(void *opaque)
{
    Actor *a = opaque;
    a->ret = ql_co_queue_wait_insert_head(q, NULL);
    mark(a->name);
}

static void test_coqueue_next_wakes_fifo(void)
{
    Actor a[3] = {{.name = 'a'}, {.name = 'b'}, {.name = 'c'}};

    reset_order();
    q = ql_co_queue_new();
    QL_CHECK(ql_co_queue_empty(q));
    QL_CHECK(!ql_co_queue_next(q));
    for (int i = 0; i < 3; i++) {
        a[i].co = ql_coroutine_create(co_queue_waiter, &a[i]);
        ql_coroutine_enter(a[i].co);
    }
    QL_CHECK(!ql_co_queue_empty(q));
    QL_CHECK(strcmp(order, "") == 0);
    QL_CHECK(ql_co_queue_next(q)); /* outside a coroutine: runs now */
    QL_CHECK(strcmp(order, "a") == 0);
    QL_CHECK(ql_co_queue_next(q));
    QL_CHECK(ql_co_queue_next(q));
    QL_CHECK(strcmp(order, "abc") == 0);
    QL_CHECK(ql_co_queue_empty(q));
    QL_CHECK_EQ(a[0].ret, 0);
    ql_co_queue_free(q);
}

static void test_coqueue_wait_insert_head_goes_first(void)
{
    Actor a[3] = {{.name = 'a'}, {.name = 'b'}, {.name = 'c'}};

    reset_order();
    q = ql_co_queue_new();
    a[0].co = ql_coroutine_create(co_queue_waiter, &a[0]);
    a[1].co = ql_coroutine_create(co_queue_waiter, &a[1]);
    a[2].co = ql_coroutine_create(co_queue_waiter_head, &a[2]);
    for (int i = 0; i < 3; i++) {
        ql_coroutine_enter(a[i].co);
    }
    ql_co_queue_restart_all(q);
    QL_CHECK(strcmp(order, "cab") == 0);
    QL_CHECK(ql_co_queue_empty(q));
    ql_co_queue_free(q);
}

static void co_queue_kicker(void *opaque)
{
    (void)opaque;
    mark('k');
    ql_co_queue_next(q);
    mark('K'); /* the woken waiter has not run yet */
    ql_co_queue_restart_all(q);
    mark('L');
}

static void test_coqueue_next_from_coroutine_runs_after_waker_yields(void)
{
    Actor a[3] = {{.name = 'a'}, {.name = 'b'}, {.name = 'c'}};

    reset_order();
    q = ql_co_queue_new();
    for (int i = 0; i < 3; i++) {
        a[i].co = ql_coroutine_create(co_queue_waiter, &a[i]);
        ql_coroutine_enter(a[i].co);
    }
    ql_coroutine_enter(ql_coroutine_create(co_queue_kicker, NULL));
    QL_CHECK(strcmp(order, "kKLabc") == 0);
    ql_co_queue_free(q);
}

static void test_coqueue_wait_outside_coroutine_is_eperm(void)
{
    q = ql_co_queue_new();
    QL_CHECK_EQ(ql_co_queue_wait(q, NULL), -EPERM);
    ql_co_queue_free(q);
}

/* Consumer waits on the queue holding m; producer must be able to take m. */
static int items;

static void co_consumer(void *opaque)
{
    Actor *a = opaque;
    ql_co_mutex_lock(m);
    while (items == 0) {
        mark('w');
        ql_co_queue_wait(q, m);
        /* retaken before returning */
        if (ql_co_mutex_holder(m) != ql_coroutine_self()) {
            a->ret = -1;
        }
    }
    items--;
    mark('c');
    ql_co_mutex_unlock(m);
}

static void co_producer(void *opaque)
{
    (void)opaque;
    ql_co_mutex_lock(m); /* free: the consumer released it while waiting */
    mark('p');
    items++;
    ql_co_queue_next(q);
    ql_co_mutex_unlock(m);
}

static void test_coqueue_wait_releases_mutex(void)
{
    Actor c = {.name = 'c'};

    reset_order();
    items = 0;
    q = ql_co_queue_new();
    m = ql_co_mutex_new();
    c.co = ql_coroutine_create(co_consumer, &c);
    ql_coroutine_enter(c.co);
    QL_CHECK(!ql_co_mutex_locked(m));
    ql_coroutine_enter(ql_coroutine_create(co_producer, NULL));
    QL_CHECK(strcmp(order, "wpc") == 0);
    QL_CHECK_EQ(c.ret, 0);
    QL_CHECK(!ql_co_mutex_locked(m));
    ql_co_mutex_free(m);
    ql_co_queue_free(q);
}

/* ---- CoMutex ---------------------------------------------------------- */

/* Take the lock, mark, yield while holding it, mark again, unlock. */
static void co_locker(void *opaque)
{
    Actor *a = opaque;
    a->ret = ql_co_mutex_lock(m);
    mark(a->name);
    ql_coroutine_yield();
    mark((char)(a->name - 32)); /* upper case */
    ql_co_mutex_unlock(m);
}

static int barge_try;

/* Holder that unlocks then immediately tries to take the lock again. */
static void co_barger(void *opaque)
{
    Actor *a = opaque;
    ql_co_mutex_lock(m);
    mark(a->name);
    ql_coroutine_yield();
    ql_co_mutex_unlock(m);
    barge_try = ql_co_mutex_trylock(m); /* must not steal it from b */
    mark('u');
}

static void test_comutex_unlock_hands_off_fifo(void)
{
    Actor a[4] = {{.name = 'h'}, {.name = 'b'}, {.name = 'c'}, {.name = 'd'}};

    reset_order();
    m = ql_co_mutex_new();
    a[0].co = ql_coroutine_create(co_barger, &a[0]);
    ql_coroutine_enter(a[0].co);
    QL_CHECK(ql_co_mutex_holder(m) == a[0].co);
    for (int i = 1; i < 4; i++) {
        a[i].co = ql_coroutine_create(co_locker, &a[i]);
        ql_coroutine_ref(a[i].co);
        ql_coroutine_enter(a[i].co); /* queue up */
    }
    QL_CHECK(strcmp(order, "h") == 0);
    ql_coroutine_enter(a[0].co); /* unlock: b owns it before running */
    QL_CHECK_EQ(barge_try, 0);
    QL_CHECK(strcmp(order, "hub") == 0);
    QL_CHECK(ql_co_mutex_holder(m) == a[1].co);
    ql_coroutine_enter(a[1].co); /* B, then c gets it */
    QL_CHECK(ql_co_mutex_holder(m) == a[2].co);
    ql_coroutine_enter(a[2].co);
    ql_coroutine_enter(a[3].co);
    QL_CHECK(strcmp(order, "hubBcCdD") == 0);
    QL_CHECK(!ql_co_mutex_locked(m));
    for (int i = 1; i < 4; i++) {
        QL_CHECK_EQ(a[i].ret, 0);
        ql_coroutine_unref(a[i].co);
    }
    ql_co_mutex_free(m);
}

static int misuse_ret[4];

static void co_unlock_not_mine(void *opaque)
{
    (void)opaque;
    misuse_ret[0] = ql_co_mutex_unlock(m);
}

static void co_hold_and_yield(void *opaque)
{
    (void)opaque;
    ql_co_mutex_lock(m);
    ql_coroutine_yield();
    ql_co_mutex_unlock(m);
}

static void test_comutex_unlock_by_non_holder_is_eperm(void)
{
    QLCoroutine *h;

    m = ql_co_mutex_new();
    ql_coroutine_enter(ql_coroutine_create(co_unlock_not_mine, NULL));
    QL_CHECK_EQ(misuse_ret[0], -EPERM); /* nobody holds it */
    h = ql_coroutine_create(co_hold_and_yield, NULL);
    ql_coroutine_enter(h);
    ql_coroutine_enter(ql_coroutine_create(co_unlock_not_mine, NULL));
    QL_CHECK_EQ(misuse_ret[0], -EPERM); /* someone else holds it */
    QL_CHECK_EQ(ql_co_mutex_unlock(m), -EPERM); /* outside a coroutine */
    ql_coroutine_enter(h);
    QL_CHECK(!ql_co_mutex_locked(m));
    ql_co_mutex_free(m);
}

static void co_lock_twice(void *opaque)
{
    (void)opaque;
    ql_co_mutex_lock(m);
    misuse_ret[0] = ql_co_mutex_lock(m);
    misuse_ret[1] = ql_co_mutex_trylock(m);
    ql_co_mutex_unlock(m);
}

static void test_comutex_lock_while_holding_is_edeadlk(void)
{
    m = ql_co_mutex_new();
    ql_coroutine_enter(ql_coroutine_create(co_lock_twice, NULL));
    QL_CHECK_EQ(misuse_ret[0], -EDEADLK);
    QL_CHECK_EQ(misuse_ret[1], -EDEADLK);
    QL_CHECK(!ql_co_mutex_locked(m));
    ql_co_mutex_free(m);
}

static void co_trylock(void *opaque)
{
    int *r = opaque;
    *r = ql_co_mutex_trylock(m);
    if (*r == 1) {
        ql_coroutine_yield();
        ql_co_mutex_unlock(m);
    }
}

static void test_comutex_trylock_takes_only_a_free_lock(void)
{
    int r1 = -1, r2 = -1;
    QLCoroutine *c1;

    m = ql_co_mutex_new();
    c1 = ql_coroutine_create(co_trylock, &r1);
    ql_coroutine_enter(c1);
    QL_CHECK_EQ(r1, 1);
    QL_CHECK(ql_co_mutex_holder(m) == c1);
    ql_coroutine_enter(ql_coroutine_create(co_trylock, &r2));
    QL_CHECK_EQ(r2, 0);
    ql_coroutine_enter(c1);
    QL_CHECK(!ql_co_mutex_locked(m));
    ql_co_mutex_free(m);
}

static void test_comutex_outside_coroutine_is_eperm(void)
{
    m = ql_co_mutex_new();
    QL_CHECK_EQ(ql_co_mutex_lock(m), -EPERM);
    QL_CHECK_EQ(ql_co_mutex_trylock(m), -EPERM);
    QL_CHECK(!ql_co_mutex_locked(m));
    QL_CHECK(ql_co_mutex_holder(m) == NULL);
    ql_co_mutex_free(m);
}

/* ---- CoRwlock --------------------------------------------------------- */

/* Actor: lock (read 'r' / write 'w' by name case), mark, yield, mark, unlock. */
static void co_rw(void *opaque)
{
    Actor *a = opaque;
    bool write = a->name >= 'A' && a->name <= 'Z';

    a->ret = write ? ql_co_rwlock_wrlock(rw) : ql_co_rwlock_rdlock(rw);
    mark(a->name);
    ql_coroutine_yield();
    mark('-');
    ql_co_rwlock_unlock(rw);
}

static void test_corwlock_readers_share_writer_excludes(void)
{
    Actor a[3] = {{.name = 'a'}, {.name = 'b'}, {.name = 'W'}};

    reset_order();
    rw = ql_co_rwlock_new();
    for (int i = 0; i < 3; i++) {
        a[i].co = ql_coroutine_create(co_rw, &a[i]);
        ql_coroutine_enter(a[i].co);
    }
    QL_CHECK(strcmp(order, "ab") == 0); /* both readers in, writer waits */
    ql_coroutine_enter(a[0].co);
    QL_CHECK(strcmp(order, "ab-") == 0);
    ql_coroutine_enter(a[1].co); /* last reader out: writer admitted */
    QL_CHECK(strcmp(order, "ab--W") == 0);
    ql_coroutine_enter(a[2].co);
    QL_CHECK(strcmp(order, "ab--W-") == 0);
    ql_co_rwlock_free(rw);
}

static void test_corwlock_writer_not_starved_by_readers(void)
{
    /* r1 reads; W queues; r2 arrives later and must wait behind W. */
    Actor a[4] = {{.name = 'a'}, {.name = 'W'}, {.name = 'b'}, {.name = 'c'}};

    reset_order();
    rw = ql_co_rwlock_new();
    for (int i = 0; i < 4; i++) {
        a[i].co = ql_coroutine_create(co_rw, &a[i]);
        ql_coroutine_enter(a[i].co);
    }
    QL_CHECK(strcmp(order, "a") == 0);
    ql_coroutine_enter(a[0].co); /* a out: W in */
    QL_CHECK(strcmp(order, "a-W") == 0);
    ql_coroutine_enter(a[1].co); /* W out: b and c in together */
    QL_CHECK(strcmp(order, "a-W-bc") == 0);
    ql_coroutine_enter(a[2].co);
    ql_coroutine_enter(a[3].co);
    QL_CHECK(strcmp(order, "a-W-bc--") == 0);
    ql_co_rwlock_free(rw);
}

static void co_upgrader(void *opaque)
{
    Actor *a = opaque;
    ql_co_rwlock_rdlock(rw);
    mark('u');
    ql_coroutine_yield();
    a->ret = ql_co_rwlock_upgrade(rw);
    mark('U');
    ql_coroutine_yield();
    ql_co_rwlock_downgrade(rw);
    mark('d');
    ql_coroutine_yield();
    ql_co_rwlock_unlock(rw);
    mark('x');
}

static void test_corwlock_upgrade_waits_behind_queued_writer(void)
{
    Actor u = {.name = 'u'}, r = {.name = 'r'}, w = {.name = 'W'}, r2 = {.name = 's'};

    reset_order();
    rw = ql_co_rwlock_new();
    u.co = ql_coroutine_create(co_upgrader, &u);
    r.co = ql_coroutine_create(co_rw, &r);
    w.co = ql_coroutine_create(co_rw, &w);
    ql_coroutine_enter(u.co);
    ql_coroutine_enter(r.co);
    ql_coroutine_enter(w.co); /* queued */
    QL_CHECK(strcmp(order, "ur") == 0);
    ql_coroutine_enter(u.co); /* upgrade: drops read hold, queues behind W */
    QL_CHECK(strcmp(order, "ur") == 0);
    ql_coroutine_enter(r.co); /* r out: W first */
    QL_CHECK(strcmp(order, "ur-W") == 0);
    ql_coroutine_enter(w.co); /* W out: upgrader is writer */
    QL_CHECK(strcmp(order, "ur-W-U") == 0);
    QL_CHECK_EQ(u.ret, 0);
    r2.co = ql_coroutine_create(co_rw, &r2);
    ql_coroutine_enter(r2.co); /* waits for the writer */
    QL_CHECK(strcmp(order, "ur-W-U") == 0);
    ql_coroutine_enter(u.co); /* downgrade admits the queued reader */
    QL_CHECK(strcmp(order, "ur-W-Uds") == 0);
    ql_coroutine_enter(u.co);
    ql_coroutine_enter(r2.co);
    QL_CHECK(strcmp(order, "ur-W-Udsx-") == 0);
    ql_co_rwlock_free(rw);
}

static void co_sole_upgrade(void *opaque)
{
    int *r = opaque;
    ql_co_rwlock_rdlock(rw);
    r[0] = ql_co_rwlock_upgrade(rw);
    r[1] = ql_co_rwlock_upgrade(rw); /* already writer */
    ql_co_rwlock_unlock(rw);
    r[2] = ql_co_rwlock_unlock(rw);
    r[3] = ql_co_rwlock_downgrade(rw);
}

static void test_corwlock_sole_reader_upgrades_at_once_and_misuse_is_eperm(void)
{
    int r[4] = {1, 1, 1, 1};

    rw = ql_co_rwlock_new();
    ql_coroutine_enter(ql_coroutine_create(co_sole_upgrade, r));
    QL_CHECK_EQ(r[0], 0);
    QL_CHECK_EQ(r[1], -EPERM);
    QL_CHECK_EQ(r[2], -EPERM);
    QL_CHECK_EQ(r[3], -EPERM);
    QL_CHECK_EQ(ql_co_rwlock_rdlock(rw), -EPERM); /* outside a coroutine */
    ql_co_rwlock_free(rw);
}

QLTEST_MAIN(QLT(test_coqueue_next_wakes_fifo),
            QLT(test_coqueue_wait_insert_head_goes_first),
            QLT(test_coqueue_next_from_coroutine_runs_after_waker_yields),
            QLT(test_coqueue_wait_outside_coroutine_is_eperm),
            QLT(test_coqueue_wait_releases_mutex),
            QLT(test_comutex_unlock_hands_off_fifo),
            QLT(test_comutex_unlock_by_non_holder_is_eperm),
            QLT(test_comutex_lock_while_holding_is_edeadlk),
            QLT(test_comutex_trylock_takes_only_a_free_lock),
            QLT(test_comutex_outside_coroutine_is_eperm),
            QLT(test_corwlock_readers_share_writer_excludes),
            QLT(test_corwlock_writer_not_starved_by_readers),
            QLT(test_corwlock_upgrade_waits_behind_queued_writer),
            QLT(test_corwlock_sole_reader_upgrades_at_once_and_misuse_is_eperm))
