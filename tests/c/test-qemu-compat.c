/* QEMU-style code compiled only through qloop/qemu-compat.h: BHs, timers
 * with scales, fd handlers, event notifiers, the main loop, the BQL. */
#include "qltest.h"

#include <stdint.h>
#include "qloop/qemu-compat.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

typedef struct {
    QEMUBH *bh;
    int n;
    int max;
} BHTestData;

typedef struct {
    QEMUTimer *timer;
    QEMUClockType clock_type;
    int n;
    int max;
    int64_t ns;
    AioContext *ctx;
} TimerTestData;

typedef struct {
    int fd;
    int n;
} FdTestData;

static void bh_test_cb(void *opaque)
{
    BHTestData *data = opaque;
    if (++data->n < data->max) {
        qemu_bh_schedule(data->bh);
    }
}

static void timer_test_cb(void *opaque)
{
    TimerTestData *data = opaque;
    if (++data->n < data->max) {
        timer_mod(data->timer, qemu_clock_get_ns(data->clock_type) + data->ns);
    }
}

static void fd_read_cb(void *opaque)
{
    FdTestData *data = opaque;
    char buf[8];
    while (read(data->fd, buf, sizeof buf) > 0) {
    }
    data->n++;
}

static void test_qemu_compat_bh_schedule10(void)
{
    AioContext *ctx = aio_context_new(NULL);
    BHTestData data = {.n = 0, .max = 10};
    data.bh = aio_bh_new(ctx, bh_test_cb, &data);
    QL_CHECK(strcmp(ql_bh_name(data.bh), "bh_test_cb") == 0);
    qemu_bh_schedule(data.bh);
    QL_CHECK_EQ(data.n, 0);
    QL_CHECK(aio_poll(ctx, false));
    QL_CHECK_EQ(data.n, 1);
    QL_CHECK(aio_poll(ctx, true));
    QL_CHECK_EQ(data.n, 2);
    while (data.n < 10) {
        aio_poll(ctx, true);
    }
    QL_CHECK(!aio_poll(ctx, false));
    qemu_bh_delete(data.bh);
    aio_context_unref(ctx);
}

static void test_qemu_compat_bh_cancel_and_oneshot(void)
{
    AioContext *ctx = aio_context_new(NULL);
    BHTestData data = {.max = 1};
    data.bh = aio_bh_new(ctx, bh_test_cb, &data);
    qemu_bh_schedule(data.bh);
    qemu_bh_cancel(data.bh);
    QL_CHECK(!aio_poll(ctx, false));
    QL_CHECK_EQ(data.n, 0);
    qemu_bh_delete(data.bh);
    BHTestData one = {.max = 1};
    aio_bh_schedule_oneshot(ctx, bh_test_cb, &one);
    QL_CHECK(aio_poll(ctx, false));
    QL_CHECK_EQ(one.n, 1);
    aio_context_unref(ctx);
}

static void test_qemu_compat_timer_schedule_with_scale(void)
{
    AioContext *ctx = aio_context_new(NULL);
    TimerTestData data = {.clock_type = QEMU_CLOCK_REALTIME, .max = 2, .ns = SCALE_MS, .ctx = ctx};
    data.timer = aio_timer_new(ctx, data.clock_type, SCALE_NS, timer_test_cb, &data);
    timer_mod(data.timer, qemu_clock_get_ns(data.clock_type) + data.ns);
    QL_CHECK(timer_pending(data.timer));
    while (data.n < 2) {
        aio_poll(ctx, true);
    }
    QL_CHECK(!timer_pending(data.timer));
    QL_CHECK_EQ((int64_t)timer_expire_time_ns(data.timer), -1);
    timer_free(data.timer);

    /* a millisecond-scale timer on the virtual clock */
    TimerTestData ms = {.clock_type = QEMU_CLOCK_VIRTUAL, .max = 1};
    ms.timer = aio_timer_new(ctx, QEMU_CLOCK_VIRTUAL, SCALE_MS, timer_test_cb, &ms);
    timer_mod(ms.timer, 5);
    QL_CHECK_EQ((int64_t)timer_expire_time_ns(ms.timer), 5 * SCALE_MS);
    QL_CHECK(!timer_expired(ms.timer, 4));
    QL_CHECK(timer_expired(ms.timer, 5));
    timer_mod_anticipate(ms.timer, 9);
    QL_CHECK_EQ((int64_t)timer_expire_time_ns(ms.timer), 5 * SCALE_MS);
    ql_virtual_clock_advance(ctx, 5 * SCALE_MS);
    QL_CHECK(aio_poll(ctx, false));
    QL_CHECK_EQ(ms.n, 1);
    timer_del(ms.timer);
    timer_free(ms.timer);
    aio_context_unref(ctx);
}

static int en_calls;
static void en_handler(EventNotifier *e)
{
    if (event_notifier_test_and_clear(e)) {
        en_calls++;
    }
}

static void test_qemu_compat_fd_handler_and_event_notifier(void)
{
    AioContext *ctx = aio_context_new(NULL);
    int p[2];
    QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
    FdTestData data = {.fd = p[0]};
    aio_set_fd_handler(ctx, p[0], fd_read_cb, NULL, NULL, NULL, &data);
    QL_CHECK(!aio_poll(ctx, false));
    QL_CHECK_EQ(write(p[1], "x", 1), 1);
    QL_CHECK(aio_poll(ctx, true));
    QL_CHECK_EQ(data.n, 1);
    aio_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL, NULL);
    close(p[0]);
    close(p[1]);

    EventNotifier e;
    QL_CHECK_EQ(event_notifier_init(&e, false), 0);
    aio_set_event_notifier(ctx, &e, en_handler, NULL, NULL);
    event_notifier_set(&e);
    QL_CHECK(aio_poll(ctx, true));
    QL_CHECK_EQ(en_calls, 1);
    QL_CHECK(!aio_poll(ctx, false));
    aio_set_event_notifier(ctx, &e, NULL, NULL, NULL);
    event_notifier_cleanup(&e);
    aio_context_unref(ctx);
}

static void test_qemu_compat_main_loop(void)
{
    QL_CHECK_EQ(qemu_init_main_loop(NULL), 0);
    BHTestData data = {.max = 1};
    data.bh = qemu_bh_new(bh_test_cb, &data);
    qemu_bh_schedule(data.bh);
    main_loop_wait(false);
    QL_CHECK_EQ(data.n, 1);
    qemu_bh_delete(data.bh);

    TimerTestData t = {.clock_type = QEMU_CLOCK_REALTIME, .max = 1};
    t.timer = timer_new_ms(QEMU_CLOCK_REALTIME, timer_test_cb, &t);
    timer_mod(t.timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + 1);
    while (t.n == 0) {
        main_loop_wait(false);
    }
    timer_free(t.timer);

    int p[2];
    QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
    FdTestData fd = {.fd = p[0]};
    qemu_set_fd_handler(p[0], fd_read_cb, NULL, &fd);
    QL_CHECK_EQ(write(p[1], "x", 1), 1);
    while (fd.n == 0) {
        main_loop_wait(false);
    }
    qemu_set_fd_handler(p[0], NULL, NULL, NULL);
    close(p[0]);
    close(p[1]);

    qemu_notify_event();
    QL_CHECK_EQ(main_loop_wait(false), 1);

    bql_lock();
    QL_CHECK(bql_locked());
    QL_CHECK(qemu_mutex_iothread_locked());
    main_loop_wait(true);
    bql_unlock();
    QL_CHECK(!bql_locked());
    QL_CHECK(qemu_get_aio_context() == qemu_get_current_aio_context());
    ql_main_loop_cleanup();
}

/* A QEMU-style coroutine pair: a CoMutex handed over in FIFO order, a CoQueue
 * with the mutex, and aio_co_wake. */
static CoMutex compat_mutex;
static CoQueue compat_queue;
static int compat_log[8];
static int compat_n;

static void coroutine_fn compat_worker(void *opaque)
{
    int id = (int)(intptr_t)opaque;
    qemu_co_mutex_lock(&compat_mutex);
    compat_log[compat_n++] = id;
    qemu_coroutine_yield(); /* holding the lock */
    qemu_co_mutex_unlock(&compat_mutex);
}

static void coroutine_fn compat_waiter(void *opaque)
{
    (void)opaque;
    qemu_co_mutex_lock(&compat_mutex);
    qemu_co_queue_wait(&compat_queue, &compat_mutex); /* releases, then retakes */
    compat_log[compat_n++] = 99;
    qemu_co_mutex_unlock(&compat_mutex);
}

static void test_qemu_compat_coroutines_mutex_and_queue(void)
{
    AioContext *ctx = aio_context_new(NULL);
    QL_CHECK(ctx != NULL);
    qemu_co_mutex_init(&compat_mutex);
    qemu_co_queue_init(&compat_queue);
    compat_n = 0;
    Coroutine *a = qemu_coroutine_create(compat_worker, (void *)(intptr_t)1);
    Coroutine *b = qemu_coroutine_create(compat_worker, (void *)(intptr_t)2);
    QL_CHECK(!qemu_in_coroutine());
    aio_co_schedule(ctx, a);
    aio_co_schedule(ctx, b);
    aio_poll(ctx, false);          /* a takes the lock and yields; b waits */
    QL_CHECK_EQ(compat_n, 1);
    QL_CHECK_EQ(compat_log[0], 1);
    qemu_coroutine_enter(a);       /* a unlocks: hands the lock to b */
    for (int i = 0; i < 10 && compat_n < 2; i++) {
        aio_poll(ctx, false);
    }
    QL_CHECK_EQ(compat_n, 2);
    QL_CHECK_EQ(compat_log[1], 2);
    aio_co_wake(b);                /* b was entered by the hand-off: finish it */
    for (int i = 0; i < 10; i++) {
        aio_poll(ctx, false);
    }
    QL_CHECK(!qemu_co_queue_next(&compat_queue)); /* nobody waits */
    Coroutine *w = qemu_coroutine_create(compat_waiter, NULL);
    qemu_coroutine_enter(w);       /* waits on the queue, lock released */
    QL_CHECK(!qemu_co_queue_empty(&compat_queue));
    QL_CHECK(qemu_co_queue_next(&compat_queue));
    for (int i = 0; i < 10 && compat_n < 3; i++) {
        aio_poll(ctx, false);
    }
    QL_CHECK_EQ(compat_n, 3);
    QL_CHECK_EQ(compat_log[2], 99);
    QL_CHECK(qemu_co_queue_empty(&compat_queue));
    qemu_co_queue_destroy(&compat_queue);
    qemu_co_mutex_destroy(&compat_mutex);
    aio_context_unref(ctx);
}

/* aio_co_reschedule_self into an IOThread-style context polled by another
 * thread: the coroutine continues there. */
static AioContext *compat_iothread_ctx;
static pthread_t compat_iothread_id;
static int compat_moved;

static void coroutine_fn compat_mover(void *opaque)
{
    (void)opaque;
    aio_co_reschedule_self(compat_iothread_ctx);
    compat_moved = pthread_equal(pthread_self(), compat_iothread_id) &&
                   qemu_get_current_aio_context() == compat_iothread_ctx ? 1 : -1;
    aio_notify(compat_iothread_ctx);
}

static void *compat_iothread(void *opaque)
{
    (void)opaque;
    ql_context_set_current(compat_iothread_ctx);
    while (!__atomic_load_n(&compat_moved, __ATOMIC_ACQUIRE)) {
        aio_poll(compat_iothread_ctx, true);
    }
    ql_context_set_current(NULL);
    return NULL;
}

static void test_qemu_compat_aio_co_reschedule_self(void)
{
    AioContext *ctx = aio_context_new(NULL);
    compat_iothread_ctx = aio_context_new(NULL);
    compat_moved = 0;
    pthread_create(&compat_iothread_id, NULL, compat_iothread, NULL);
    ql_context_set_current(ctx);
    qemu_coroutine_enter(qemu_coroutine_create(compat_mover, NULL));
    aio_poll(ctx, false);          /* the oneshot hands it over */
    pthread_join(compat_iothread_id, NULL);
    QL_CHECK_EQ(compat_moved, 1);
    ql_context_set_current(NULL);
    aio_context_unref(compat_iothread_ctx);
    aio_context_unref(ctx);
}

QLTEST_MAIN(QLT(test_qemu_compat_bh_schedule10),
            QLT(test_qemu_compat_bh_cancel_and_oneshot),
            QLT(test_qemu_compat_timer_schedule_with_scale),
            QLT(test_qemu_compat_fd_handler_and_event_notifier),
            QLT(test_qemu_compat_main_loop),
            QLT(test_qemu_compat_coroutines_mutex_and_queue),
            QLT(test_qemu_compat_aio_co_reschedule_self))
