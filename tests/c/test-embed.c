/* Embedding: drive a context only through poll(2) on ql_context_fd() and
 * prepare / check / dispatch, as GLib or another loop would.  Both fd
 * monitors. */
#include "qltest.h"
#include "context-int.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

static const char *mons[] = {"epoll", "poll"};
#define FOR_EACH_MONITOR(ctx)                                                   \
    for (int m_ = 0; m_ < 2; m_++)                                              \
        for (QLContext *ctx = ql__context_new_fdmon(mons[m_]); ctx;             \
             ql_context_free(ctx), ctx = NULL)

/* One iteration of a foreign loop that knows nothing but the fd. */
static int foreign_iteration(QLContext *ctx)
{
    int64_t t = ql_context_prepare(ctx);
    struct pollfd p = {.fd = ql_context_fd(ctx), .events = POLLIN};
    int ms = t < 0 ? -1 : (int)((t + 999999) / 1000000);
    poll(&p, 1, ms);
    if (ql_context_check(ctx)) {
        return ql_context_dispatch(ctx);
    }
    return 0;
}

static int bh_runs, timer_runs, fd_runs;
static int pipe_r;

static void bh_cb(void *o)
{
    (void)o;
    bh_runs++;
}
static void timer_cb(void *o)
{
    (void)o;
    timer_runs++;
}
static void fd_cb(void *o)
{
    (void)o;
    char buf[16];
    while (read(pipe_r, buf, sizeof buf) > 0) {
    }
    fd_runs++;
}

typedef struct Poke {
    QLBH *bh;
    int wfd;
} Poke;

static void *poke_bh(void *opaque)
{
    Poke *p = opaque;
    usleep(20000);
    ql_bh_schedule(p->bh);
    return NULL;
}

static void *poke_pipe(void *opaque)
{
    Poke *p = opaque;
    usleep(20000);
    if (write(p->wfd, "x", 1) != 1) {
        abort();
    }
    return NULL;
}

static void test_embed_drives_bh_timer_and_fd_through_poll(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
        pipe_r = p[0];
        bh_runs = timer_runs = fd_runs = 0;
        QL_CHECK(ql_context_fd(ctx) >= 0);
        QL_CHECK_EQ(ql_context_fd(ctx), ql_context_fd(ctx)); /* stable */
        QLBH *bh = ql_bh_new(ctx, bh_cb, NULL, "bh");
        QLTimer *t = ql_timer_new(ctx, QL_CLOCK_REALTIME, timer_cb, NULL, "t");
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[0], fd_cb, NULL, NULL, NULL), 0);

        /* nothing to do: prepare says "no deadline" */
        QL_CHECK_EQ(ql_context_prepare(ctx), -1);
        QL_CHECK(!ql_context_check(ctx));

        /* a BH scheduled from another thread wakes the foreign poll */
        Poke pk = {.bh = bh, .wfd = p[1]};
        pthread_t th;
        pthread_create(&th, NULL, poke_bh, &pk);
        while (bh_runs == 0) {
            foreign_iteration(ctx);
        }
        pthread_join(th, NULL);

        /* a timer bounds the foreign poll's timeout */
        ql_timer_mod_in(t, 200000000); /* new earliest deadline: notifies */
        QL_CHECK_EQ(ql_context_prepare(ctx), 0);
        ql_context_check(ctx); /* accepts the notify */
        int64_t to = ql_context_prepare(ctx);
        QL_CHECK(to > 0 && to <= 200000000);
        ql_context_check(ctx);
        while (timer_runs == 0) {
            foreign_iteration(ctx);
        }

        /* a registered fd makes the context fd readable */
        pthread_create(&th, NULL, poke_pipe, &pk);
        while (fd_runs == 0) {
            foreign_iteration(ctx);
        }
        pthread_join(th, NULL);
        QL_CHECK_EQ(bh_runs, 1);
        QL_CHECK_EQ(timer_runs, 1);

        /* everything consumed: the fd is quiet again */
        QL_CHECK_EQ(ql_context_prepare(ctx), -1);
        struct pollfd pf = {.fd = ql_context_fd(ctx), .events = POLLIN};
        QL_CHECK_EQ(poll(&pf, 1, 0), 0);
        QL_CHECK(!ql_context_check(ctx));

        ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL);
        ql_timer_free(t);
        ql_bh_delete(bh);
        close(p[0]);
        close(p[1]);
    }
}

static void test_embed_prepare_returns_0_when_bh_pending(void)
{
    FOR_EACH_MONITOR(ctx) {
        bh_runs = 0;
        ql_bh_schedule_oneshot(ctx, bh_cb, NULL, "bh");
        QL_CHECK_EQ(ql_context_prepare(ctx), 0);
        QL_CHECK(ql_context_check(ctx));
        QL_CHECK_EQ(ql_context_dispatch(ctx), 1);
        QL_CHECK_EQ(bh_runs, 1);
    }
}

static void test_embed_autojump_in_prepare(void)
{
    FOR_EACH_MONITOR(ctx) {
        timer_runs = 0;
        QLTimer *t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, timer_cb, NULL, "v");
        ql_virtual_clock_set_autojump(ctx, true);
        ql_timer_mod(t, 5000000000LL);
        while (timer_runs == 0) {
            foreign_iteration(ctx);
        }
        QL_CHECK_EQ(ql_clock_get_ns(ctx, QL_CLOCK_VIRTUAL), 5000000000LL);
        ql_timer_free(t);
    }
}

static QLContext *inner;
static void inner_ready(void *opaque)
{
    (void)opaque;
    if (ql_context_check(inner)) {
        ql_context_dispatch(inner);
    }
    ql_context_prepare(inner);
}

static void test_embed_context_inside_another_context(void)
{
    FOR_EACH_MONITOR(outer) {
        inner = ql_context_new();
        bh_runs = 0;
        ql_context_prepare(inner);
        QL_CHECK_EQ(ql_context_set_fd_handler(outer, ql_context_fd(inner), inner_ready, NULL,
                                              NULL, NULL), 0);
        QLBH *bh = ql_bh_new(inner, bh_cb, NULL, "inner-bh");
        Poke pk = {.bh = bh};
        pthread_t th;
        pthread_create(&th, NULL, poke_bh, &pk);
        while (bh_runs == 0) {
            QL_CHECK(ql_context_poll(outer, true) >= 0);
        }
        pthread_join(th, NULL);
        ql_context_set_fd_handler(outer, ql_context_fd(inner), NULL, NULL, NULL, NULL);
        ql_bh_delete(bh);
        ql_context_free(inner);
    }
}

QLTEST_MAIN(QLT(test_embed_drives_bh_timer_and_fd_through_poll),
            QLT(test_embed_prepare_returns_0_when_bh_pending),
            QLT(test_embed_autojump_in_prepare),
            QLT(test_embed_context_inside_another_context))
