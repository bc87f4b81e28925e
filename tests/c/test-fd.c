/* fd handlers.  Every test runs under both fd monitors (epoll and poll). */
#include "qltest.h"
#include "context-int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *mons[] = {"epoll", "poll"};
#define FOR_EACH_MONITOR(ctx)                                                   \
    for (int m_ = 0; m_ < 2; m_++)                                              \
        for (QLContext *ctx = ql__context_new_fdmon(mons[m_]); ctx;             \
             ql_context_free(ctx), ctx = NULL)

typedef struct H {
    QLContext *ctx;
    int fd;
    int reads, writes;
    int log[16];
    int nlog;
    bool drain;           /* read what is there */
    bool remove_self;
    struct H *remove_other;
    bool stop;
} H;

static void h_log(H *h, int v)
{
    if (h->nlog < 16) {
        h->log[h->nlog++] = v;
    }
}

static void h_read(void *opaque)
{
    H *h = opaque;
    h->reads++;
    h_log(h, 'r');
    if (h->drain) {
        char buf[256];
        while (read(h->fd, buf, sizeof buf) > 0) {
        }
    }
    if (h->remove_self) {
        ql_context_set_fd_handler(h->ctx, h->fd, NULL, NULL, NULL, NULL);
    }
    if (h->remove_other) {
        ql_context_set_fd_handler(h->ctx, h->remove_other->fd, NULL, NULL, NULL, NULL);
    }
    if (h->stop) {
        ql_context_stop_dispatch(h->ctx);
    }
}

static void h_write(void *opaque)
{
    H *h = opaque;
    h->writes++;
    h_log(h, 'w');
    if (h->remove_self) {
        ql_context_set_fd_handler(h->ctx, h->fd, NULL, NULL, NULL, NULL);
    }
}

/* Setup and teardown shared by the tests: a non-blocking pipe (0 or
 * -errno); closing a pipe or socket pair, after removing the handler of
 * its end `end` when there is one. */
static int open_pipe(int p[2])
{
    return pipe2(p, O_NONBLOCK) < 0 ? -errno : 0;
}

static void close_pair(int fds[2])
{
    close(fds[0]);
    close(fds[1]);
}

static void unwatch_and_close(QLContext *ctx, int fds[2], int end)
{
    ql_context_set_fd_handler(ctx, fds[end], NULL, NULL, NULL, NULL);
    close_pair(fds);
}

static void test_fd_monitor_chosen_by_environment(void)
{
    setenv("QLOOP_FDMON", "poll", 1);
    QLContext *ctx = ql_context_new();
    QL_CHECK(strcmp(ql_context_fdmon_name(ctx), "poll") == 0);
    ql_context_free(ctx);
    unsetenv("QLOOP_FDMON");
    ctx = ql_context_new();
    QL_CHECK(strcmp(ql_context_fdmon_name(ctx), "epoll") == 0);
    ql_context_free(ctx);
}

static void test_fd_read_handler_is_level_triggered(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        H h = {.ctx = ctx, .fd = p[0]};
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &h), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(write(p[1], "ab", 2), 2);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1); /* not drained: again */
        QL_CHECK_EQ(h.reads, 2);
        h.drain = true;
        QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(h.reads, 3);
        unwatch_and_close(ctx, p, 0);
    }
}

static void test_fd_write_handler_runs_while_writable(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        H h = {.ctx = ctx, .fd = p[1]};
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[1], NULL, h_write, NULL, &h), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(h.writes, 1);
        QL_CHECK_EQ(h.reads, 0);
        unwatch_and_close(ctx, p, 1);
    }
}

static void test_fd_read_runs_before_write(void)
{
    FOR_EACH_MONITOR(ctx) {
        int sv[2];
        QL_CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        QL_CHECK_EQ(write(sv[1], "x", 1), 1);
        H h = {.ctx = ctx, .fd = sv[0], .drain = false};
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, sv[0], h_read, h_write, NULL, &h), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(h.nlog, 2);
        QL_CHECK_EQ(h.log[0], 'r');
        QL_CHECK_EQ(h.log[1], 'w');
        unwatch_and_close(ctx, sv, 0);
    }
}

static void test_fd_reregistering_replaces_handler(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        QL_CHECK_EQ(write(p[1], "x", 1), 1);
        H a = {.ctx = ctx, .fd = p[0]}, b = {.ctx = ctx, .fd = p[0]};
        ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &a);
        ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &b);
        QL_CHECK_EQ(ctx->nhandlers, 1);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(a.reads, 0);
        QL_CHECK_EQ(b.reads, 1);
        /* now ask for write only on the same fd (read end: never writable) */
        ql_context_set_fd_handler(ctx, p[0], NULL, h_write, NULL, &b);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(b.reads, 1);
        unwatch_and_close(ctx, p, 0);
    }
}

static void test_fd_all_null_removes_handler(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        QL_CHECK_EQ(write(p[1], "x", 1), 1);
        H h = {.ctx = ctx, .fd = p[0]};
        ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &h);
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL), 0);
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL), 0);
        QL_CHECK_EQ(ctx->nhandlers, 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(h.reads, 0);
        close_pair(p);
    }
}

static void test_fd_remove_self_during_dispatch(void)
{
    FOR_EACH_MONITOR(ctx) {
        int sv[2];
        QL_CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        QL_CHECK_EQ(write(sv[1], "x", 1), 1);
        H h = {.ctx = ctx, .fd = sv[0], .remove_self = true};
        ql_context_set_fd_handler(ctx, sv[0], h_read, h_write, NULL, &h);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(h.reads, 1);
        QL_CHECK_EQ(h.writes, 0); /* removed before its write was reached */
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        close_pair(sv);
    }
}

static void test_fd_remove_other_during_dispatch(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2], q[2];
        QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
        QL_CHECK_EQ(pipe2(q, O_NONBLOCK), 0);
        QL_CHECK_EQ(write(p[1], "x", 1), 1);
        QL_CHECK_EQ(write(q[1], "x", 1), 1);
        H a = {.ctx = ctx, .fd = p[0]}, b = {.ctx = ctx, .fd = q[0]};
        a.remove_other = &b;
        b.remove_other = &a;
        ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &a);
        ql_context_set_fd_handler(ctx, q[0], h_read, NULL, NULL, &b);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(a.reads + b.reads, 1); /* whichever ran removed the other */
        QL_CHECK_EQ(ctx->nhandlers, 1);
        QL_CHECK(ctx->fd_deferred == NULL); /* freed when the poll ended */
        ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL);
        ql_context_set_fd_handler(ctx, q[0], NULL, NULL, NULL, NULL);
        close_pair(p);
        close_pair(q);
    }
}

static void test_fd_hangup_runs_read_handler(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        H h = {.ctx = ctx, .fd = p[0], .remove_self = true};
        ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &h);
        close(p[1]);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(h.reads, 1);
        close(p[0]);
    }
}

static void test_fd_works_with_eventfd(void)
{
    FOR_EACH_MONITOR(ctx) {
        int fd = eventfd(0, EFD_NONBLOCK);
        QL_CHECK(fd >= 0);
        H h = {.ctx = ctx, .fd = fd, .drain = true};
        ql_context_set_fd_handler(ctx, fd, h_read, NULL, NULL, &h);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        uint64_t one = 1;
        QL_CHECK_EQ(write(fd, &one, 8), 8);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(h.reads, 1);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        ql_context_set_fd_handler(ctx, fd, NULL, NULL, NULL, NULL);
        close(fd);
    }
}

static void test_fd_works_with_pty(void)
{
    FOR_EACH_MONITOR(ctx) {
        int master, slave;
        QL_CHECK_EQ(openpty(&master, &slave, NULL, NULL, NULL), 0);
        fcntl(master, F_SETFL, O_NONBLOCK);
        H h = {.ctx = ctx, .fd = master, .drain = true};
        ql_context_set_fd_handler(ctx, master, h_read, NULL, NULL, &h);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(write(slave, "hi\n", 3), 3);
        while (h.reads == 0) {
            QL_CHECK(ql_context_poll(ctx, true) >= 0);
        }
        ql_context_set_fd_handler(ctx, master, NULL, NULL, NULL, NULL);
        close(slave);
        close(master);
    }
}

static bool flush_never(void *opaque)
{
    (void)opaque;
    return false;
}

static void test_fd_regular_file_is_always_ready(void)
{
    FOR_EACH_MONITOR(ctx) {
        char path[] = "/tmp/qloop-test-XXXXXX";
        int fd = mkstemp(path);
        QL_CHECK(fd >= 0);
        unlink(path);
        H h = {.ctx = ctx, .fd = fd};
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, fd, h_read, h_write, NULL, &h), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(h.reads, 1);
        QL_CHECK_EQ(h.writes, 1);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(h.reads, 2);
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, fd, NULL, NULL, NULL, NULL), 0);
        QL_CHECK_EQ(ctx->n_always_ready, 0);
        /* flush-only on a regular file, then a handler, then nothing */
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, fd, NULL, NULL, flush_never, &h), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, fd, h_read, NULL, flush_never, &h), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 1);
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, fd, NULL, NULL, flush_never, &h), 0);
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, fd, NULL, NULL, NULL, NULL), 0);
        QL_CHECK_EQ(ctx->nhandlers, 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        close(fd);
    }
}

static void test_fd_closed_fd_gives_ebadf_not_busy_loop(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        H h = {.ctx = ctx, .fd = p[0]};
        ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &h);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        int bad = p[0];
        close_pair(p);
        /* nothing else to wait for: must report, not sleep forever */
        QL_CHECK_EQ(ql_context_poll(ctx, true), -EBADF);
        QL_CHECK_EQ(ql_context_bad_fd(ctx), bad);
        QL_CHECK_EQ(ctx->nhandlers, 0);
        QL_CHECK_EQ(h.reads, 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(ql_context_bad_fd(ctx), -1);
    }
}

static void test_fd_set_handler_on_closed_fd_fails(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        close_pair(p);
        H h = {.ctx = ctx, .fd = p[0]};
        /* refused at once with either monitor */
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &h), -EBADF);
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[0], NULL, NULL, flush_never, &h), -EBADF);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(ctx->nhandlers, 0);
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, -1, h_read, NULL, NULL, &h), -EBADF);
    }
}

/* An fd number far above anything open (not open) is refused before the
 * fd-indexed table grows for it: no allocation of gigabytes, no handler. */
static void test_fd_huge_unopened_fd_refused_without_growing_table(void)
{
    static const int huge[] = {1000000, (1 << 30) - 1, 0x7fffffff};
    FOR_EACH_MONITOR(ctx) {
        H h = {.ctx = ctx};
        int size = ctx->fd_table_size;
        for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
            QL_CHECK_EQ(ql_context_set_fd_handler(ctx, huge[i], h_read, NULL, NULL, &h), -EBADF);
            QL_CHECK_EQ(ql_context_set_fd_handler(ctx, huge[i], NULL, h_write, NULL, &h), -EBADF);
            QL_CHECK_EQ(ql_context_set_fd_handler(ctx, huge[i], NULL, NULL, NULL, NULL), 0);
            QL_CHECK_EQ(ctx->fd_table_size, size);
        }
        QL_CHECK_EQ(ctx->nhandlers, 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(h.reads + h.writes, 0);
    }
}

static int en_reads;
static QLNotifier *en_seen;
static void en_read(void *opaque)
{
    QLNotifier *n = opaque;
    /* already cleared when we run */
    en_seen = n;
    if (ql_notifier_test_and_clear(n) == 0) {
        en_reads++;
    }
}

static void test_fd_event_notifier_handler_runs_cleared(void)
{
    FOR_EACH_MONITOR(ctx) {
        QLNotifier n;
        QL_CHECK_EQ(ql_notifier_init(&n), 0);
        en_reads = 0;
        QL_CHECK_EQ(ql_context_set_event_notifier(ctx, &n, en_read, NULL, &n), 0);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        ql_notifier_set(&n);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(en_reads, 1);
        QL_CHECK(en_seen == &n);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(ql_context_set_event_notifier(ctx, &n, NULL, NULL, NULL), 0);
        ql_notifier_set(&n);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        QL_CHECK_EQ(en_reads, 1);
        ql_notifier_close(&n);
    }
}

static void test_fd_stop_dispatch_keeps_other_fds_ready(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2], q[2];
        QL_CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
        QL_CHECK_EQ(pipe2(q, O_NONBLOCK), 0);
        QL_CHECK_EQ(write(p[1], "x", 1), 1);
        QL_CHECK_EQ(write(q[1], "x", 1), 1);
        H a = {.ctx = ctx, .fd = p[0], .stop = true, .drain = true};
        H b = {.ctx = ctx, .fd = q[0], .stop = true, .drain = true};
        ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &a);
        ql_context_set_fd_handler(ctx, q[0], h_read, NULL, NULL, &b);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(a.reads + b.reads, 1);
        QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
        QL_CHECK_EQ(a.reads, 1);
        QL_CHECK_EQ(b.reads, 1);
        QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
        ql_context_set_fd_handler(ctx, p[0], NULL, NULL, NULL, NULL);
        ql_context_set_fd_handler(ctx, q[0], NULL, NULL, NULL, NULL);
        close_pair(p);
        close_pair(q);
    }
}

static void test_fd_many_ready_fds_all_served(void)
{
    FOR_EACH_MONITOR(ctx) {
        enum { N = 200 };
        int p[N][2];
        H h[N];
        for (int i = 0; i < N; i++) {
            QL_CHECK_EQ(pipe2(p[i], O_NONBLOCK), 0);
            QL_CHECK_EQ(write(p[i][1], "x", 1), 1);
            h[i] = (H){.ctx = ctx, .fd = p[i][0], .drain = true};
            ql_context_set_fd_handler(ctx, p[i][0], h_read, NULL, NULL, &h[i]);
        }
        for (int k = 0; k < 10; k++) {
            ql_context_poll(ctx, false);
        }
        for (int i = 0; i < N; i++) {
            QL_CHECK_EQ(h[i].reads, 1);
            ql_context_set_fd_handler(ctx, p[i][0], NULL, NULL, NULL, NULL);
            close(p[i][0]);
            close(p[i][1]);
        }
    }
}

/* ---- flush / pending ---- */

typedef struct Flush {
    int in_flight;
    QLContext *ctx;
} Flush;

static bool flush_cb(void *opaque)
{
    return ((Flush *)opaque)->in_flight > 0;
}

static void complete_one(void *opaque)
{
    Flush *f = opaque;
    if (--f->in_flight > 0) {
        ql_bh_schedule_oneshot(f->ctx, complete_one, f, "complete");
    }
}

static void test_fd_flush_polls_until_no_request_in_flight(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        Flush f = {.in_flight = 5, .ctx = ctx};
        QL_CHECK_EQ(ql_context_set_fd_handler(ctx, p[0], NULL, NULL, flush_cb, &f), 0);
        ql_bh_schedule_oneshot(ctx, complete_one, &f, "complete");
        QL_CHECK_EQ(ql_context_flush(ctx), 0);
        QL_CHECK_EQ(f.in_flight, 0);
        QL_CHECK_EQ(ql_context_flush(ctx), 0); /* idle: returns at once */
        unwatch_and_close(ctx, p, 0);
    }
}

static void test_fd_pending_reports_ready_work(void)
{
    FOR_EACH_MONITOR(ctx) {
        int p[2];
        QL_CHECK_EQ(open_pipe(p), 0);
        H h = {.ctx = ctx, .fd = p[0], .drain = true};
        ql_context_set_fd_handler(ctx, p[0], h_read, NULL, NULL, &h);
        QL_CHECK(!ql_context_pending(ctx));
        QL_CHECK_EQ(write(p[1], "x", 1), 1);
        QL_CHECK(ql_context_pending(ctx));
        QL_CHECK_EQ(h.reads, 0);
        ql_context_poll(ctx, false);
        QL_CHECK(!ql_context_pending(ctx));
        QLBH *bh = ql_bh_new(ctx, h_read, &h, "bh");
        ql_bh_schedule(bh);
        QL_CHECK(ql_context_pending(ctx));
        ql_bh_cancel(bh);
        QL_CHECK(!ql_context_pending(ctx));
        ql_bh_delete(bh);
        QLTimer *t = ql_timer_new(ctx, QL_CLOCK_VIRTUAL, h_read, &h, "t");
        ql_timer_mod(t, 10);
        QL_CHECK(!ql_context_pending(ctx));
        ql_virtual_clock_advance(ctx, 10);
        QL_CHECK(ql_context_pending(ctx));
        ql_timer_free(t);
        unwatch_and_close(ctx, p, 0);
    }
}

QLTEST_MAIN(QLT(test_fd_monitor_chosen_by_environment),
            QLT(test_fd_huge_unopened_fd_refused_without_growing_table),
            QLT(test_fd_read_handler_is_level_triggered),
            QLT(test_fd_write_handler_runs_while_writable),
            QLT(test_fd_read_runs_before_write),
            QLT(test_fd_reregistering_replaces_handler),
            QLT(test_fd_all_null_removes_handler),
            QLT(test_fd_remove_self_during_dispatch),
            QLT(test_fd_remove_other_during_dispatch),
            QLT(test_fd_hangup_runs_read_handler),
            QLT(test_fd_works_with_eventfd),
            QLT(test_fd_works_with_pty),
            QLT(test_fd_regular_file_is_always_ready),
            QLT(test_fd_closed_fd_gives_ebadf_not_busy_loop),
            QLT(test_fd_set_handler_on_closed_fd_fails),
            QLT(test_fd_event_notifier_handler_runs_cleared),
            QLT(test_fd_stop_dispatch_keeps_other_fds_ready),
            QLT(test_fd_many_ready_fds_all_served),
            QLT(test_fd_flush_polls_until_no_request_in_flight),
            QLT(test_fd_pending_reports_ready_work))
