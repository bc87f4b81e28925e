/*
 * Channel I/O: one read or write with EINTR retried and EAGAIN reported,
 * SCM_RIGHTS fd passing, and the read_all/write_all loops that wait (poll
 * or coroutine yield) between attempts.  See qloop/channel.h.
 */
#include "channel-int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qloop/blocking.h"

QLChannel *ql_channel_new(int fd, int wfd, int flags)
{
    if (fd < 0) {
        errno = EBADF;
        return NULL;
    }
    QLChannel *ch = calloc(1, sizeof(*ch));
    if (!ch) {
        return NULL;
    }
    ch->rfd = fd;
    ch->wfd = wfd < 0 ? fd : wfd;
    ch->blocking = true;
    ch->socket = (flags & QL_CHANNEL_SOCKET) != 0;
    if ((flags & QL_CHANNEL_AUTO) && ch->rfd == ch->wfd) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) {
            ch->socket = true;
        }
    }
    return ch;
}

int ql_channel_close(QLChannel *ch)
{
    if (ch->rfd < 0) {
        return 0;
    }
    QLCoroutine *waiters[2];
    ql__channel_yield_cleanup(ch, waiters);
    int ret = 0;
    if (close(ch->rfd) < 0 && errno != EINTR) {
        ret = -errno;
    }
    if (ch->wfd != ch->rfd && close(ch->wfd) < 0 && errno != EINTR && ret == 0) {
        ret = -errno;
    }
    ch->rfd = ch->wfd = -1;
    ql__channel_wake_waiters(waiters);
    return ret;
}

void ql_channel_detach(QLChannel *ch)
{
    QLCoroutine *waiters[2] = {NULL, NULL};
    if (ch->rfd >= 0) {
        ql__channel_yield_cleanup(ch, waiters);
    }
    ch->rfd = ch->wfd = -1;
    ql__channel_wake_waiters(waiters);
}

int ql_channel_free(QLChannel *ch)
{
    if (!ch) {
        return 0;
    }
    int r = ql_channel_close(ch);
    if (ch->freed) {
        *ch->freed = true; /* a handler of this channel is on the stack */
    }
    free(ch);
    return r;
}

int ql_channel_read_fd(QLChannel *ch) { return ch->rfd; }
int ql_channel_write_fd(QLChannel *ch) { return ch->wfd; }
bool ql_channel_is_socket(QLChannel *ch) { return ch->socket; }
bool ql_channel_get_blocking(QLChannel *ch) { return ch->blocking; }

static int set_nonblock_flag(int fd, bool nonblock)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) {
        return -errno;
    }
    int nfl = nonblock ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    if (nfl != fl && fcntl(fd, F_SETFL, nfl) < 0) {
        return -errno;
    }
    return 0;
}

int ql_channel_set_blocking(QLChannel *ch, bool blocking)
{
    if (ch->rfd < 0) {
        return -EBADF;
    }
    int r = set_nonblock_flag(ch->rfd, !blocking);
    if (r == 0 && ch->wfd != ch->rfd) {
        r = set_nonblock_flag(ch->wfd, !blocking);
    }
    if (r == 0) {
        ch->blocking = blocking;
    }
    return r;
}

/* ---- waiting ------------------------------------------------------------ */

static int poll_one(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    void *token = ql_blocking_begin();
    int r = poll(&p, 1, -1);
    int e = errno;
    ql_blocking_end(token);
    if (r < 0) {
        return -e;
    }
    if (p.revents & POLLNVAL) {
        return -EBADF;
    }
    return p.revents;
}

int ql_channel_wait(QLChannel *ch, int cond)
{
    int fd = (cond & QL_CHANNEL_OUT) ? ch->wfd : ch->rfd;
    if (fd < 0) {
        return -EBADF;
    }
    if ((cond & QL_CHANNEL_IN) && (cond & QL_CHANNEL_OUT) && ch->rfd != ch->wfd) {
        return -EINVAL; /* two fds: wait for one direction at a time */
    }
    return poll_one(fd, (short)(cond & (QL_CHANNEL_IN | QL_CHANNEL_OUT)));
}

/* The wait of the *_all loops: yield in a coroutine, poll outside one. */
static int wait_ready(QLChannel *ch, int cond)
{
    if (ql__channel_in_coroutine()) {
        return ql_channel_yield(ch, cond);
    }
    int r = ql_channel_wait(ch, cond);
    return r < 0 ? r : 0;
}

/* ---- one attempt -------------------------------------------------------- */

/* Close what arrived in a message we reject. */
static void close_fds(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        close(fds[i]);
    }
}

/* Collect SCM_RIGHTS fds from msg into fds (capacity *nfds).  -EMSGSIZE if
 * the control data was truncated or there were more than fit (everything
 * received is closed then). */
static int take_fds(struct msghdr *msg, int *fds, size_t *nfds)
{
    size_t cap = *nfds, n = 0;
    bool overflow = (msg->msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (n < cap) {
                fds[n++] = fd;
            } else {
                close(fd);
                overflow = true;
            }
        }
    }
    if (overflow) {
        close_fds(fds, n);
        *nfds = 0;
        return -EMSGSIZE;
    }
    /* O_NONBLOCK travels with the open file description: give the caller
     * blocking fds, as QEMU does.  CLOEXEC came from MSG_CMSG_CLOEXEC. */
    for (size_t i = 0; i < n; i++) {
        set_nonblock_flag(fds[i], false);
    }
    *nfds = n;
    return 0;
}

/* One recv(2), or recvmsg(2) for fds or several buffers, on a socket.
 * Returns bytes or -1 with errno set (EMSGSIZE: more fds than *nfds). */
static ssize_t recv_socket(int fd, const struct iovec *iov, int niov, int *fds, size_t *nfds)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * QL_CHANNEL_MAX_FDS)];
    } control;
    if (!fds && niov == 1) {
        /* recv(2) skips recvmsg's msghdr copy-in: ~15% cheaper here */
        return recv(fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT);
    }
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)niov};
    int flags = MSG_DONTWAIT;
    if (fds) {
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof(control.buf);
        flags |= MSG_CMSG_CLOEXEC;
    }
    ssize_t n = recvmsg(fd, &msg, flags);
    if (n >= 0 && fds) {
        int r = take_fds(&msg, fds, nfds);
        if (r < 0) {
            errno = -r;
            return -1;
        }
    }
    return n;
}

/* One send(2), or sendmsg(2) for fds or several buffers, on a socket,
 * passing nfds fds.  Bytes or -1 with errno. */
static ssize_t send_socket(int fd, const struct iovec *iov, int niov, const int *fds,
                           size_t nfds)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * QL_CHANNEL_MAX_FDS)];
    } control;
    if (!nfds && niov == 1) {
        return send(fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)niov};
    if (nfds) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    return sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* readv(2) or writev(2) on a non-socket fd; a blocking fd may sleep inside
 * the system call, with the blocking hooks around it. */
static ssize_t plain_rwv(QLChannel *ch, ssize_t (*fn)(int, const struct iovec *, int), int fd,
                         const struct iovec *iov, int niov)
{
    if (!ch->blocking) {
        return fn(fd, iov, niov);
    }
    void *token = ql_blocking_begin();
    ssize_t n = fn(fd, iov, niov);
    int e = errno;
    ql_blocking_end(token);
    errno = e;
    return n;
}

/* One transfer attempt in either direction (out: write) that never waits
 * for readiness; retried at once on EINTR.  Reading takes passed fds into
 * fds (capacity and count in *nfds) when fds is given; writing passes the
 * *nfds fds of fds (only read).  Returns bytes, QL_CHANNEL_ERR_BLOCK or
 * -errno. */
static ssize_t rw_once(QLChannel *ch, bool out, const struct iovec *iov, int niov, int *fds,
                       size_t *nfds)
{
    int fd = out ? ch->wfd : ch->rfd;
    if (fd < 0) {
        return -EBADF;
    }
    for (;;) {
        ssize_t n;
        if (ch->socket) {
            n = out ? send_socket(fd, iov, niov, fds, nfds ? *nfds : 0)
                    : recv_socket(fd, iov, niov, fds, nfds);
        } else {
            n = plain_rwv(ch, out ? writev : readv, fd, iov, niov);
        }
        if (n >= 0) {
            return n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return QL_CHANNEL_ERR_BLOCK;
        }
        return -errno;
    }
}

static ssize_t readv_once(QLChannel *ch, const struct iovec *iov, int niov, int *fds,
                          size_t *nfds)
{
    return rw_once(ch, false, iov, niov, fds, nfds);
}

static ssize_t writev_once(QLChannel *ch, const struct iovec *iov, int niov, const int *fds,
                           size_t nfds)
{
    /* rw_once only reads fds when writing */
    return rw_once(ch, true, iov, niov, (int *)fds, &nfds);
}

/* ---- public single operations ------------------------------------------- */

/* rw_once; a blocking channel waits for readiness and tries again. */
static ssize_t rw_blocking(QLChannel *ch, bool out, const struct iovec *iov, int niov, int *fds,
                           size_t *nfds)
{
    for (;;) {
        ssize_t n = rw_once(ch, out, iov, niov, fds, nfds);
        if (n != QL_CHANNEL_ERR_BLOCK || !ch->blocking) {
            return n;
        }
        int r = ql_channel_wait(ch, out ? QL_CHANNEL_OUT : QL_CHANNEL_IN);
        if (r < 0) {
            return r;
        }
    }
}

ssize_t ql_channel_readv(QLChannel *ch, const struct iovec *iov, int niov, int *fds,
                         size_t *nfds)
{
    if (fds && !ch->socket) {
        return -EINVAL;
    }
    return rw_blocking(ch, false, iov, niov, fds, nfds);
}

ssize_t ql_channel_writev(QLChannel *ch, const struct iovec *iov, int niov, const int *fds,
                          size_t nfds)
{
    if (nfds > QL_CHANNEL_MAX_FDS || (nfds && !ch->socket)) {
        return -EINVAL;
    }
    return rw_blocking(ch, true, iov, niov, (int *)fds, &nfds);
}

ssize_t ql_channel_read(QLChannel *ch, void *buf, size_t len)
{
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    return ql_channel_readv(ch, &iov, 1, NULL, NULL);
}

ssize_t ql_channel_write(QLChannel *ch, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return ql_channel_writev(ch, &iov, 1, NULL, 0);
}

/* ---- the *_all loops ---------------------------------------------------- */

int ql_channel_read_all(QLChannel *ch, void *buf, size_t len, size_t *done)
{
    while (*done < len) {
        struct iovec iov = {.iov_base = (char *)buf + *done, .iov_len = len - *done};
        ssize_t n = readv_once(ch, &iov, 1, NULL, NULL);
        if (n > 0) {
            *done += (size_t)n;
        } else if (n == 0) {
            return 0;
        } else if (n == QL_CHANNEL_ERR_BLOCK) {
            int r = wait_ready(ch, QL_CHANNEL_IN);
            if (r < 0) {
                return r;
            }
        } else {
            return (int)n;
        }
    }
    return 1;
}

int ql_channel_write_all(QLChannel *ch, const void *buf, size_t len, size_t *done)
{
    while (*done < len) {
        struct iovec iov = {.iov_base = (char *)buf + *done, .iov_len = len - *done};
        ssize_t n = writev_once(ch, &iov, 1, NULL, 0);
        if (n >= 0) {
            *done += (size_t)n;
        } else if (n == QL_CHANNEL_ERR_BLOCK) {
            int r = wait_ready(ch, QL_CHANNEL_OUT);
            if (r < 0) {
                return r;
            }
        } else {
            return (int)n;
        }
    }
    return 1;
}
