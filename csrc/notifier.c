/* Event notifier: eventfd on Linux, a non-blocking pipe otherwise. */
#include "qloop/notifier.h"
#include "qloop/blocking.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#define QL_HAVE_EVENTFD 1
#endif

static bool pipe_forced(void)
{
    const char *v = getenv("QLOOP_NOTIFIER");
    return v && strcmp(v, "pipe") == 0;
}

const char *ql_notifier_default_kind(void)
{
#ifdef QL_HAVE_EVENTFD
    return pipe_forced() ? "pipe" : "eventfd";
#else
    return "pipe";
#endif
}

int ql_notifier_init_kind(QLNotifier *n, QLNotifierKind kind)
{
    n->rfd = n->wfd = -1;
    n->kind = kind;
    if (kind == QL_NOTIFIER_EVENTFD) {
#ifdef QL_HAVE_EVENTFD
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) {
            return -errno;
        }
        n->rfd = n->wfd = fd;
        return 0;
#else
        return -ENOSYS;
#endif
    }
    if (kind != QL_NOTIFIER_PIPE) {
        return -EINVAL;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        return -errno;
    }
    n->rfd = fds[0];
    n->wfd = fds[1];
    return 0;
}

int ql_notifier_init(QLNotifier *n)
{
#ifdef QL_HAVE_EVENTFD
    if (!pipe_forced()) {
        return ql_notifier_init_kind(n, QL_NOTIFIER_EVENTFD);
    }
#endif
    return ql_notifier_init_kind(n, QL_NOTIFIER_PIPE);
}

int ql_notifier_set(QLNotifier *n)
{
    int fd = __atomic_load_n(&n->wfd, __ATOMIC_RELAXED);
    if (fd < 0) {
        return -EBADF;
    }
    int saved = errno;
    ssize_t r;
    if (n->kind == QL_NOTIFIER_EVENTFD) {
        uint64_t one = 1;
        do {
            r = write(fd, &one, sizeof one);
        } while (r < 0 && errno == EINTR);
    } else {
        char c = 1;
        do {
            r = write(fd, &c, 1);
        } while (r < 0 && errno == EINTR);
    }
    /* EAGAIN: the counter or the pipe is full, so the notifier is set. */
    int ret = (r < 0 && errno != EAGAIN) ? -errno : 0;
    errno = saved;
    return ret;
}

int ql_notifier_test_and_clear(QLNotifier *n)
{
    if (n->rfd < 0) {
        return -EBADF;
    }
    char buf[512];
    int was_set = 0;
    for (;;) {
        ssize_t r = read(n->rfd, buf, n->kind == QL_NOTIFIER_EVENTFD ? 8 : sizeof buf);
        if (r > 0) {
            was_set = 1;
            if (n->kind == QL_NOTIFIER_EVENTFD || (size_t)r < sizeof buf) {
                break;
            }
            continue;
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        break; /* EAGAIN: drained */
    }
    return was_set;
}

int ql_notifier_wait(QLNotifier *n, long long timeout_ns)
{
    if (n->rfd < 0) {
        return -EBADF;
    }
    struct pollfd p = {.fd = n->rfd, .events = POLLIN};
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    /* No retry on EINTR here: the caller decides.  The Python binding must
     * get control back to run its signal handlers (and KeyboardInterrupt),
     * then retries with the time left. */
    void *token = ql_blocking_begin();
    int r = ppoll(&p, 1, tsp, NULL);
    int err = errno;
    ql_blocking_end(token);
    if (r < 0) {
        return -err;
    }
    return r > 0;
}

int ql_notifier_fd(const QLNotifier *n)
{
    return n->rfd < 0 ? -EBADF : n->rfd;
}

void ql_notifier_close(QLNotifier *n)
{
    if (n->rfd >= 0) {
        close(n->rfd);
    }
    if (n->wfd >= 0 && n->wfd != n->rfd) {
        close(n->wfd);
    }
    n->rfd = n->wfd = -1;
}
