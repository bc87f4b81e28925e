/* Channel core: single reads/writes, fd passing, the *_all loops. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qloop/coroutine.h"
#include "qloop/qloop.h"
#include "qltest.h"

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        return -1;
    }
    while (readdir(d)) {
        n++;
    }
    closedir(d);
    return n;
}

static void pair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        abort();
    }
}

static void test_channel_socket_roundtrip(void)
{
    int sv[2];
    pair(sv);
    QLChannel *a = ql_channel_new(sv[0], -1, QL_CHANNEL_AUTO);
    QLChannel *b = ql_channel_new(sv[1], -1, QL_CHANNEL_AUTO);
    QL_CHECK(a && b);
    QL_CHECK(ql_channel_is_socket(a));
    QL_CHECK_EQ(ql_channel_write(a, "hello", 5), 5);
    char buf[16];
    QL_CHECK_EQ(ql_channel_read(b, buf, sizeof buf), 5);
    QL_CHECK(memcmp(buf, "hello", 5) == 0);
    QL_CHECK_EQ(ql_channel_free(a), 0);
    QL_CHECK_EQ(ql_channel_read(b, buf, sizeof buf), 0); /* EOF */
    QL_CHECK_EQ(ql_channel_free(b), 0);
}

static void test_channel_nonblocking_reports_block(void)
{
    int sv[2];
    pair(sv);
    QLChannel *a = ql_channel_new(sv[0], -1, QL_CHANNEL_AUTO);
    QL_CHECK_EQ(ql_channel_set_blocking(a, false), 0);
    QL_CHECK((fcntl(sv[0], F_GETFL) & O_NONBLOCK) != 0);
    char buf[4];
    QL_CHECK_EQ(ql_channel_read(a, buf, sizeof buf), QL_CHANNEL_ERR_BLOCK);
    QL_CHECK(QL_CHANNEL_ERR_BLOCK < -4095);
    close(sv[1]);
    ql_channel_free(a);
}

static void test_channel_pipe_nonblocking_reports_block(void)
{
    int p[2];
    QL_CHECK(pipe(p) == 0);
    QLChannel *r = ql_channel_new(p[0], -1, QL_CHANNEL_AUTO);
    QL_CHECK(!ql_channel_is_socket(r));
    QL_CHECK_EQ(ql_channel_set_blocking(r, false), 0);
    char buf[4];
    QL_CHECK_EQ(ql_channel_read(r, buf, sizeof buf), QL_CHANNEL_ERR_BLOCK);
    QL_CHECK_EQ(write(p[1], "x", 1), 1);
    QL_CHECK_EQ(ql_channel_read(r, buf, sizeof buf), 1);
    close(p[1]);
    QL_CHECK_EQ(ql_channel_read(r, buf, sizeof buf), 0);
    ql_channel_free(r);
}

static void test_channel_write_to_closed_peer_is_epipe_not_sigpipe(void)
{
    struct sigaction sa = {.sa_handler = SIG_DFL}, old;
    sigaction(SIGPIPE, &sa, &old); /* SIGPIPE would kill the test */
    int sv[2];
    pair(sv);
    close(sv[1]);
    QLChannel *a = ql_channel_new(sv[0], -1, QL_CHANNEL_AUTO);
    ssize_t n = ql_channel_write(a, "x", 1);
    QL_CHECK(n == -EPIPE || n == -ECONNRESET);
    ql_channel_free(a);
    sigaction(SIGPIPE, &old, NULL);
}

static void test_channel_fd_passing(void)
{
    int sv[2], p[2];
    pair(sv);
    QL_CHECK(pipe(p) == 0);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    QLChannel *a = ql_channel_new(sv[0], -1, QL_CHANNEL_SOCKET);
    QLChannel *b = ql_channel_new(sv[1], -1, QL_CHANNEL_SOCKET);
    struct iovec iov = {.iov_base = "m", .iov_len = 1};
    int send[2] = {p[0], p[1]};
    QL_CHECK_EQ(ql_channel_writev(a, &iov, 1, send, 2), 1);
    char c;
    struct iovec riov = {.iov_base = &c, .iov_len = 1};
    int got[QL_CHANNEL_MAX_FDS];
    size_t ngot = QL_CHANNEL_MAX_FDS;
    QL_CHECK_EQ(ql_channel_readv(b, &riov, 1, got, &ngot), 1);
    QL_CHECK_EQ(ngot, 2);
    QL_CHECK((fcntl(got[0], F_GETFD) & FD_CLOEXEC) != 0);
    QL_CHECK((fcntl(got[0], F_GETFL) & O_NONBLOCK) == 0); /* reset to blocking */
    QL_CHECK_EQ(write(got[1], "z", 1), 1);
    char z;
    QL_CHECK_EQ(read(p[0], &z, 1), 1);
    close(got[0]);
    close(got[1]);
    close(p[0]);
    close(p[1]);
    ql_channel_free(a);
    ql_channel_free(b);
}

static void test_channel_too_many_fds_rejected_and_closed(void)
{
    int sv[2];
    pair(sv);
    QLChannel *a = ql_channel_new(sv[0], -1, QL_CHANNEL_SOCKET);
    QLChannel *b = ql_channel_new(sv[1], -1, QL_CHANNEL_SOCKET);
    int fds[20];
    for (int i = 0; i < 20; i++) {
        fds[i] = dup(0);
    }
    struct iovec iov = {.iov_base = "m", .iov_len = 1};
    QL_CHECK_EQ(ql_channel_writev(a, &iov, 1, fds, 17), -EINVAL);
    /* A peer that sends more than 16 anyway. */
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 20)];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * 20);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * 20);
    QL_CHECK_EQ(sendmsg(sv[0], &msg, 0), 1);
    for (int i = 0; i < 20; i++) {
        close(fds[i]);
    }
    int before = count_fds();
    char c;
    struct iovec riov = {.iov_base = &c, .iov_len = 1};
    int got[QL_CHANNEL_MAX_FDS];
    size_t ngot = QL_CHANNEL_MAX_FDS;
    QL_CHECK_EQ(ql_channel_readv(b, &riov, 1, got, &ngot), -EMSGSIZE);
    QL_CHECK_EQ(ngot, 0);
    QL_CHECK_EQ(count_fds(), before);
    ql_channel_free(a);
    ql_channel_free(b);
}

static void test_channel_fds_on_pipe_rejected(void)
{
    int p[2];
    QL_CHECK(pipe(p) == 0);
    QLChannel *c = ql_channel_new(p[0], p[1], QL_CHANNEL_AUTO);
    struct iovec iov = {.iov_base = "m", .iov_len = 1};
    int fd = 0;
    QL_CHECK_EQ(ql_channel_writev(c, &iov, 1, &fd, 1), -EINVAL);
    ql_channel_free(c);
}

typedef struct {
    int fd;
    size_t len;
} Writer;

static void *slow_writer(void *opaque)
{
    Writer *w = opaque;
    char chunk[1000];
    memset(chunk, 'w', sizeof chunk);
    for (size_t sent = 0; sent < w->len; sent += sizeof chunk) {
        usleep(1000);
        if (write(w->fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk) {
            abort();
        }
    }
    return NULL;
}

static void test_channel_read_all_waits_for_everything(void)
{
    int sv[2];
    pair(sv);
    QLChannel *b = ql_channel_new(sv[1], -1, QL_CHANNEL_AUTO);
    ql_channel_set_blocking(b, false); /* *_all wait whatever the mode */
    Writer w = {sv[0], 10000};
    pthread_t t;
    pthread_create(&t, NULL, slow_writer, &w);
    static char buf[10000];
    size_t done = 0;
    QL_CHECK_EQ(ql_channel_read_all(b, buf, sizeof buf, &done), 1);
    QL_CHECK_EQ(done, sizeof buf);
    QL_CHECK(buf[9999] == 'w');
    pthread_join(t, NULL);
    close(sv[0]);
    done = 0;
    QL_CHECK_EQ(ql_channel_read_all(b, buf, 1, &done), 0); /* clean EOF */
    QL_CHECK_EQ(done, 0);
    ql_channel_free(b);
}

static void test_channel_read_all_short_at_eof(void)
{
    int sv[2];
    pair(sv);
    QLChannel *b = ql_channel_new(sv[1], -1, QL_CHANNEL_AUTO);
    QL_CHECK_EQ(write(sv[0], "abc", 3), 3);
    close(sv[0]);
    char buf[8];
    size_t done = 0;
    QL_CHECK_EQ(ql_channel_read_all(b, buf, sizeof buf, &done), 0);
    QL_CHECK_EQ(done, 3);
    ql_channel_free(b);
}

static void *drainer(void *opaque)
{
    int fd = *(int *)opaque;
    char buf[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        total += (size_t)n;
    }
    return (void *)total;
}

static void test_channel_write_all_larger_than_socket_buffer(void)
{
    int sv[2];
    pair(sv);
    QLChannel *a = ql_channel_new(sv[0], -1, QL_CHANNEL_AUTO);
    ql_channel_set_blocking(a, false);
    size_t len = 4 << 20;
    char *big = calloc(1, len);
    pthread_t t;
    pthread_create(&t, NULL, drainer, &sv[1]);
    size_t done = 0;
    QL_CHECK_EQ(ql_channel_write_all(a, big, len, &done), 1);
    QL_CHECK_EQ(done, len);
    ql_channel_free(a);
    void *total;
    pthread_join(t, &total);
    QL_CHECK_EQ((size_t)total, len);
    close(sv[1]);
    free(big);
}

static void test_channel_closed_reports_ebadf(void)
{
    int sv[2];
    pair(sv);
    QLChannel *a = ql_channel_new(sv[0], -1, QL_CHANNEL_AUTO);
    QL_CHECK_EQ(ql_channel_close(a), 0);
    QL_CHECK_EQ(ql_channel_close(a), 0);
    char c;
    QL_CHECK_EQ(ql_channel_read(a, &c, 1), -EBADF);
    QL_CHECK_EQ(ql_channel_write(a, &c, 1), -EBADF);
    QL_CHECK_EQ(ql_channel_read_fd(a), -1);
    ql_channel_free(a);
    close(sv[1]);
}

static void test_channel_yield_outside_coroutine_is_eperm(void)
{
    int sv[2];
    pair(sv);
    QLChannel *a = ql_channel_new(sv[0], -1, QL_CHANNEL_AUTO);
    QL_CHECK_EQ(ql_channel_yield(a, QL_CHANNEL_IN), -EPERM);
    ql_channel_free(a);
    close(sv[1]);
}


/* ---- coroutine waits ---------------------------------------------------- */

typedef struct {
    QLChannel *ch;
    char buf[64];
    size_t len;
    int ret;
    int step;
} CoRead;

static void co_read_all(void *opaque)
{
    CoRead *r = opaque;
    size_t done = 0;
    r->step = 1;
    r->ret = ql_channel_read_all(r->ch, r->buf, r->len, &done);
    r->step = 2;
}

static void test_channel_read_all_yields_in_coroutine(void)
{
    QLContext *ctx = ql_context_new();
    ql_context_set_current(ctx);
    int sv[2];
    pair(sv);
    CoRead r = {.ch = ql_channel_new(sv[1], -1, QL_CHANNEL_AUTO), .len = 6};
    QLCoroutine *co = ql_coroutine_create(co_read_all, &r);
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
    QL_CHECK_EQ(r.step, 1); /* yielded: enter returned while it waits */
    QL_CHECK_EQ(write(sv[0], "abc", 3), 3);
    while (ql_context_poll(ctx, false) > 0) {
    }
    QL_CHECK_EQ(r.step, 1); /* half the data: still waiting */
    QL_CHECK_EQ(write(sv[0], "def", 3), 3);
    for (int i = 0; i < 100 && r.step != 2; i++) {
        ql_context_poll(ctx, true);
    }
    QL_CHECK_EQ(r.step, 2);
    QL_CHECK_EQ(r.ret, 1);
    QL_CHECK(memcmp(r.buf, "abcdef", 6) == 0);
    /* the handler went away with the waiter */
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0);
    ql_channel_free(r.ch);
    close(sv[0]);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

static void co_yield_twice(void *opaque)
{
    CoRead *r = opaque;
    r->ret = ql_channel_yield(r->ch, QL_CHANNEL_IN);
    r->step++;
}

static void test_channel_second_waiter_is_ebusy_and_wake_works(void)
{
    QLContext *ctx = ql_context_new();
    ql_context_set_current(ctx);
    int sv[2];
    pair(sv);
    QLChannel *ch = ql_channel_new(sv[1], -1, QL_CHANNEL_AUTO);
    CoRead a = {.ch = ch}, b = {.ch = ch};
    QLCoroutine *ca = ql_coroutine_create(co_yield_twice, &a);
    QLCoroutine *cb = ql_coroutine_create(co_yield_twice, &b);
    ql_coroutine_enter(ca);
    QL_CHECK_EQ(a.step, 0);
    ql_coroutine_enter(cb);
    QL_CHECK_EQ(b.step, 1);
    QL_CHECK_EQ(b.ret, -EBUSY);
    ql_channel_wake(ch, QL_CHANNEL_IN);
    QL_CHECK_EQ(a.step, 1);
    QL_CHECK_EQ(a.ret, 0);
    ql_channel_free(ch);
    close(sv[0]);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

static void co_write_all(void *opaque)
{
    CoRead *r = opaque;
    size_t len = 2 << 20, done = 0;
    char *big = calloc(1, len);
    r->step = 1;
    r->ret = ql_channel_write_all(r->ch, big, len, &done);
    r->step = 2;
    free(big);
}

static void test_channel_write_all_yields_when_full(void)
{
    QLContext *ctx = ql_context_new();
    ql_context_set_current(ctx);
    int sv[2];
    pair(sv);
    CoRead w = {.ch = ql_channel_new(sv[0], -1, QL_CHANNEL_AUTO)};
    QLCoroutine *co = ql_coroutine_create(co_write_all, &w);
    ql_coroutine_enter(co);
    QL_CHECK_EQ(w.step, 1); /* socket buffer full: yielded */
    static char sink[65536];
    size_t total = 0;
    while (w.step != 2) {
        ssize_t n = read(sv[1], sink, sizeof sink);
        QL_CHECK(n > 0);
        total += (size_t)n;
        ql_context_poll(ctx, false);
    }
    QL_CHECK_EQ(w.ret, 1);
    ssize_t n;
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    while ((n = read(sv[1], sink, sizeof sink)) > 0) {
        total += (size_t)n;
    }
    QL_CHECK_EQ(total, 2 << 20);
    ql_channel_free(w.ch);
    close(sv[1]);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

static void test_channel_close_wakes_waiter_with_ebadf(void)
{
    QLContext *ctx = ql_context_new();
    ql_context_set_current(ctx);
    int sv[2];
    pair(sv);
    CoRead r = {.ch = ql_channel_new(sv[1], -1, QL_CHANNEL_AUTO), .len = 4};
    QLCoroutine *co = ql_coroutine_create(co_read_all, &r);
    ql_coroutine_enter(co);
    QL_CHECK_EQ(r.step, 1);
    QL_CHECK_EQ(ql_channel_close(r.ch), 0);
    QL_CHECK_EQ(r.step, 2);
    QL_CHECK_EQ(r.ret, -EBADF);
    QL_CHECK_EQ(ql_context_poll(ctx, false), 0); /* no handler left behind */
    ql_channel_free(r.ch);
    close(sv[0]);
    ql_context_set_current(NULL);
    ql_context_free(ctx);
}

QLTEST_MAIN(QLT(test_channel_socket_roundtrip), QLT(test_channel_nonblocking_reports_block),
            QLT(test_channel_pipe_nonblocking_reports_block),
            QLT(test_channel_write_to_closed_peer_is_epipe_not_sigpipe),
            QLT(test_channel_fd_passing), QLT(test_channel_too_many_fds_rejected_and_closed),
            QLT(test_channel_fds_on_pipe_rejected),
            QLT(test_channel_read_all_waits_for_everything),
            QLT(test_channel_read_all_short_at_eof),
            QLT(test_channel_write_all_larger_than_socket_buffer),
            QLT(test_channel_closed_reports_ebadf),
            QLT(test_channel_yield_outside_coroutine_is_eperm),
            QLT(test_channel_read_all_yields_in_coroutine),
            QLT(test_channel_second_waiter_is_ebusy_and_wake_works),
            QLT(test_channel_write_all_yields_when_full),
            QLT(test_channel_close_wakes_waiter_with_ebadf))
