/*
 * qloop/channel.h - the hot part of QIOChannel: fd I/O with the retry loop.
 *
 * A QLChannel wraps one fd (a socket, pipe, file or tty) or a pair of fds (a
 * read end and a write end, e.g. the pipes of a child process).  It does the
 * work that must not cost a Python round trip per system call:
 *
 *  - one read/write with EINTR retried, EAGAIN reported as
 *    QL_CHANNEL_ERR_BLOCK (a value that is not a negative errno), sockets
 *    written with MSG_NOSIGNAL (a vanished peer gives -EPIPE, not SIGPIPE);
 *  - SCM_RIGHTS file-descriptor passing on UNIX sockets (at most
 *    QL_CHANNEL_MAX_FDS per message; received fds are CLOEXEC and blocking;
 *    truncated control data is an error and whatever fds did arrive are
 *    closed, never leaked);
 *  - read_all / write_all: loop until the whole buffer is transferred; when
 *    the fd would block, a coroutine yields (an fd handler on its context
 *    wakes it: QEMU's qio_channel_yield) and code outside a coroutine waits
 *    in poll(2) on this fd only, running no other callbacks, with the
 *    blocking hooks around the wait (QEMU's qio_channel_wait).
 *
 * Blocking mode (the default, like QEMU) means read/write wait until they
 * can make progress.  Sockets are always accessed with MSG_DONTWAIT and wait
 * in poll(2) between attempts, so the thread never sleeps inside recv/send
 * holding a language lock; other fds in blocking mode are read and written
 * with the blocking hooks around the system call.
 *
 * Threads: a channel belongs to one thread at a time (the one doing I/O on
 * it); at most one coroutine may wait in each direction.
 *
 * A coroutine wait owns the fd's handler registration in its context for
 * its duration (as in QEMU, where qio_channel_yield sets the fd's aio
 * handlers): do not register other handlers for the same fd in the same
 * context while a coroutine waits on it.
 */
#ifndef QLOOP_CHANNEL_H
#define QLOOP_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "qloop/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
typedef struct QLChannel QLChannel;

enum {
    /* Returned (as a negative ssize_t) when a non-blocking channel would
     * block.  Below -4095 so that it is never a negative errno. */
    QL_CHANNEL_ERR_BLOCK = -10002,
    /* Most fds one message may carry (QEMU's SOCKET_MAX_FDS). */
    QL_CHANNEL_MAX_FDS = 16
};

/* Conditions for ql_channel_wait()/ql_channel_yield() (same bits as poll). */
enum {
    QL_CHANNEL_IN = 0x001,   /* POLLIN */
    QL_CHANNEL_OUT = 0x004,  /* POLLOUT */
    QL_CHANNEL_ERR = 0x008,  /* POLLERR */
    QL_CHANNEL_HUP = 0x010   /* POLLHUP */
};

/* Flags for ql_channel_new(). */
enum {
    QL_CHANNEL_SOCKET = 0x1, /* use recvmsg/sendmsg (fd passing, MSG_NOSIGNAL) */
    QL_CHANNEL_AUTO = 0x2    /* detect sockets with fstat (S_ISSOCK) */
};

/* Wrap fd (and wfd for writing; wfd < 0 means the same fd).  The channel
 * owns the fds from now on: ql_channel_close() closes them.  The channel
 * starts in blocking mode whatever O_NONBLOCK says; ql_channel_set_blocking()
 * changes both.  NULL + errno (ENOMEM, EBADF for fd < 0) on failure.  Any
 * thread. */
QLChannel *ql_channel_new(int fd, int wfd, int flags);

/* Close the fds (once; both if they differ) and free the channel.  Returns 0
 * or the first close error (the fds are gone either way).  No coroutine may
 * be waiting on the channel (close it first: that wakes them). */
int ql_channel_free(QLChannel *ch);

/* Close the fds but keep the channel object: later I/O returns -EBADF.
 * Coroutines waiting on the channel are woken (their read_all/write_all
 * then fail with -EBADF).  Idempotent: 0 the second time. */
int ql_channel_close(QLChannel *ch);

/* Give the fds up without closing them; the channel behaves as closed. */
void ql_channel_detach(QLChannel *ch);

int ql_channel_read_fd(QLChannel *ch);  /* -1 once closed */
int ql_channel_write_fd(QLChannel *ch); /* -1 once closed */
bool ql_channel_is_socket(QLChannel *ch);

/* Blocking mode on or off (toggles O_NONBLOCK on the fds too).  0 or
 * -errno. */
int ql_channel_set_blocking(QLChannel *ch, bool blocking);
bool ql_channel_get_blocking(QLChannel *ch);

/* One read of up to len bytes.  Returns the count (> 0), 0 at end of file,
 * QL_CHANNEL_ERR_BLOCK when non-blocking and nothing is available, or
 * -errno.  In blocking mode it waits (ql_channel_wait) until something
 * arrives; a signal during that wait returns -EINTR (call again after
 * handling it).  Owner thread. */
ssize_t ql_channel_read(QLChannel *ch, void *buf, size_t len);

/* One write of up to len bytes: count written (may be short), or
 * QL_CHANNEL_ERR_BLOCK, or -errno (-EPIPE / -ECONNRESET when the peer is
 * gone).  Blocking mode waits until some bytes are written (-EINTR as
 * ql_channel_read). */
ssize_t ql_channel_write(QLChannel *ch, const void *buf, size_t len);

/* Read exactly len bytes, waiting as needed (yield in a coroutine, poll
 * outside one), whatever the blocking mode.  *done (in/out) counts the bytes
 * already in buf: pass 0, and after an interruption call again with the same
 * buf/len/done to resume.  Returns 1 when all len bytes are in, 0 at end of
 * file (then *done < len tells whether it was clean: *done == 0), -EINTR if a
 * signal interrupted a wait (the caller runs its signal handlers and calls
 * again), or another -errno.  Owner thread. */
int ql_channel_read_all(QLChannel *ch, void *buf, size_t len, size_t *done);

/* Write all len bytes, as ql_channel_read_all: returns 1 when done, -EINTR
 * (resume with *done), or -errno. */
int ql_channel_write_all(QLChannel *ch, const void *buf, size_t len, size_t *done);

/* Wait until the fd for `cond` (QL_CHANNEL_IN: read fd; QL_CHANNEL_OUT:
 * write fd) is ready, in poll(2) on that fd alone with the blocking hooks
 * around it; no other callback runs.  Returns the revents seen (> 0) or
 * -EINTR / -errno.  Any thread (not in a signal handler). */
int ql_channel_wait(QLChannel *ch, int cond);

/* In a coroutine: yield until the fd is ready for `cond` (exactly one of
 * QL_CHANNEL_IN, QL_CHANNEL_OUT), woken by an fd handler installed on the
 * coroutine's context for the duration of the wait.  -EPERM outside a
 * coroutine, -EBUSY if another coroutine already waits in that direction.
 * Returns 0 when woken.  Coroutine only. */
int ql_channel_yield(QLChannel *ch, int cond);

/* Wake the coroutine waiting in `cond` (QEMU's qio_channel_wake_read) as if
 * the fd had become ready; no-op if none.  Home thread of its context. */
void ql_channel_wake(QLChannel *ch, int cond);
/* cffi:end */

/* Scatter/gather forms with fd passing (not in the cffi interface: they use
 * struct iovec).
 *
 * ql_channel_readv: one read into iov.  If fds is not NULL the caller wants
 * file descriptors: *nfds is the capacity of fds (at most
 * QL_CHANNEL_MAX_FDS are ever received) and on return the number received
 * (they belong to the caller, CLOEXEC and blocking).  A message whose
 * control data was truncated (more fds than fit) returns -EMSGSIZE after
 * closing the fds that arrived.  fds on a channel that is not a socket:
 * -EINVAL.  Returns as ql_channel_read(); a read of 0 bytes with fds
 * received is not end of file (*nfds > 0). */
ssize_t ql_channel_readv(QLChannel *ch, const struct iovec *iov, int niov, int *fds,
                         size_t *nfds);

/* ql_channel_writev: one write of iov, with nfds (<= QL_CHANNEL_MAX_FDS,
 * else -EINVAL) fds attached as one SCM_RIGHTS message (sockets only,
 * -EINVAL otherwise).  Returns as ql_channel_write(). */
ssize_t ql_channel_writev(QLChannel *ch, const struct iovec *iov, int niov, const int *fds,
                          size_t nfds);

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_CHANNEL_H */
