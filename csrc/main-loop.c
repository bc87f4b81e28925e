/*
 * The process-wide main loop: main and iohandler contexts, main_loop_wait,
 * notify_event, polling callbacks, child watches, the iothread lock.
 *
 * ql_main_loop_wait() drives both contexts through their embedding
 * interface, like QEMU attaching two GSources to GLib's default context:
 * prepare both, one poll(2) on both context fds with the smaller timeout
 * (iothread lock dropped, blocking hooks around it), then check + dispatch
 * each.  Nothing of the iohandler context is reachable from a
 * ql_context_poll() of the main context.
 */
#include "qloop/main-loop.h"
#include "qloop/blocking.h"
#include "context-int.h"
#include "misuse.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

/* Main loop objects.  Created/freed by the main loop's thread; the BH
 * pointers are read from signal handlers and other threads ([atomic]). */
static QLContext *main_ctx;
static QLContext *io_ctx;
static QLBH *notify_bh;
static QLBH *child_bh;

/* ---- iothread lock ------------------------------------------------------ */

static pthread_mutex_t iothread_mutex = PTHREAD_MUTEX_INITIALIZER;
static QL_TLS bool tl_iothread_locked;

void ql_iothread_lock(void)
{
    if (tl_iothread_locked) {
        ql__misuse(-EDEADLK, "ql_iothread_lock: the iothread lock is already held by this thread");
        return;
    }
    if (pthread_mutex_trylock(&iothread_mutex) != 0) {
        void *token = ql_blocking_begin();
        pthread_mutex_lock(&iothread_mutex);
        ql_blocking_end(token);
    }
    tl_iothread_locked = true;
}

void ql_iothread_unlock(void)
{
    if (!tl_iothread_locked) {
        ql__misuse(-EPERM, "ql_iothread_unlock: the iothread lock is not held by this thread");
        return;
    }
    tl_iothread_locked = false;
    pthread_mutex_unlock(&iothread_mutex);
}

bool ql_iothread_locked(void)
{
    return tl_iothread_locked;
}

/* ---- polling callbacks (main loop thread) --------------------------------- */

typedef struct PollingCb {
    QLPollingFunc *fn;         /* NULL: removed during iteration */
    void *opaque;
} PollingCb;

static PollingCb *polls;
static int npolls, cpolls;
static int polls_walking;

int ql_add_polling_cb(QLPollingFunc *fn, void *opaque)
{
    if (!fn) {
        return ql__misuse(-EINVAL, "ql_add_polling_cb: NULL function");
    }
    if (npolls == cpolls) {
        int cap = cpolls ? cpolls * 2 : 8;
        PollingCb *p = realloc(polls, cap * sizeof *p);
        if (!p) {
            return -ENOMEM;
        }
        polls = p;
        cpolls = cap;
    }
    polls[npolls++] = (PollingCb){fn, opaque};
    return 0;
}

static void polls_compact(void)
{
    int j = 0;
    for (int i = 0; i < npolls; i++) {
        if (polls[i].fn) {
            polls[j++] = polls[i];
        }
    }
    npolls = j;
}

int ql_del_polling_cb(QLPollingFunc *fn, void *opaque)
{
    for (int i = 0; i < npolls; i++) {
        if (polls[i].fn == fn && polls[i].opaque == opaque) {
            polls[i].fn = NULL;
            if (!polls_walking) {
                polls_compact();
            }
            return 0;
        }
    }
    return -ENOENT;
}

/* Run every polling callback; true if one asked for a non-blocking pass. */
static bool run_polling_cbs(void)
{
    bool nonblocking = false;
    polls_walking++;
    for (int i = 0; i < npolls; i++) { /* callbacks may append */
        if (polls[i].fn && polls[i].fn(polls[i].opaque)) {
            nonblocking = true;
        }
    }
    if (--polls_walking == 0) {
        polls_compact();
    }
    return nonblocking;
}

/* ---- child watches ---------------------------------------------------------- */

typedef struct ChildWatch {
    int pid;
    int status;                /* filled when reaped */
    QLChildWatchFunc *cb;
    void *opaque;
    struct ChildWatch *next;
} ChildWatch;

static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static ChildWatch *watches;      /* [watch_lock] */
static ChildWatch *reaped;       /* collected, callback still to run (a callback
                                  * stopped the dispatch): main loop thread */
static bool sigchld_installed;   /* [watch_lock] */
static struct sigaction old_sigchld;

static void sigchld_handler(int sig, siginfo_t *info, void *uc)
{
    int saved = errno;
    QLBH *bh = __atomic_load_n(&child_bh, __ATOMIC_ACQUIRE);
    if (bh) {
        ql_bh_schedule(bh); /* wait-free, async-signal-safe */
    }
    if (old_sigchld.sa_flags & SA_SIGINFO) {
        if (old_sigchld.sa_sigaction) {
            old_sigchld.sa_sigaction(sig, info, uc);
        }
    } else if (old_sigchld.sa_handler != SIG_DFL && old_sigchld.sa_handler != SIG_IGN) {
        old_sigchld.sa_handler(sig);
    }
    errno = saved;
}

/* BH: reap the watched children that exited; never waitpid(-1), so other
 * children's statuses stay with their owners. */
static void child_bh_cb(void *opaque)
{
    (void)opaque;
    ChildWatch *done = NULL, **pp;
    pthread_mutex_lock(&watch_lock);
    pp = &watches;
    while (*pp) {
        ChildWatch *w = *pp;
        int status = 0;
        pid_t r;
        do {
            r = waitpid(w->pid, &status, WNOHANG);
        } while (r < 0 && errno == EINTR);
        if (r == w->pid || (r < 0 && errno == ECHILD)) {
            w->status = r < 0 ? -1 : status;
            *pp = w->next;
            w->next = done;
            done = w;
        } else {
            pp = &w->next;
        }
    }
    pthread_mutex_unlock(&watch_lock);
    /* Callbacks run unlocked (they may add watches), oldest reap first,
     * after those a stopped dispatch left (see reaped). */
    ChildWatch *rev = NULL;
    while (done) {
        ChildWatch *n = done->next;
        done->next = rev;
        rev = done;
        done = n;
    }
    ChildWatch **tail = &reaped;
    while (*tail) {
        tail = &(*tail)->next;
    }
    *tail = rev;
    while (reaped) {
        ChildWatch *w = reaped;
        reaped = w->next;
        if (w->cb) {
            w->cb(w->pid, w->status, w->opaque);
        }
        free(w);
        if (reaped && main_ctx->stop_dispatch) {
            /* A callback stopped the dispatch (a Python one raised): the
             * rest are reported by the next run. */
            ql_bh_schedule(child_bh);
            return;
        }
    }
}

int ql_add_child_watch(int pid, QLChildWatchFunc *cb, void *opaque)
{
    QLBH *bh = __atomic_load_n(&child_bh, __ATOMIC_ACQUIRE);
    if (!bh) {
        return ql__misuse(-EINVAL, "ql_add_child_watch: main loop not initialised");
    }
    if (pid <= 0) {
        return ql__misuse(-EINVAL, "ql_add_child_watch: bad pid %d", pid);
    }
    pthread_mutex_lock(&watch_lock);
    for (ChildWatch *w = watches; w; w = w->next) {
        if (w->pid == pid) {
            pthread_mutex_unlock(&watch_lock);
            return 1;
        }
    }
    ChildWatch *w = calloc(1, sizeof *w);
    if (!w) {
        pthread_mutex_unlock(&watch_lock);
        return -ENOMEM;
    }
    *w = (ChildWatch){.pid = pid, .cb = cb, .opaque = opaque, .next = watches};
    watches = w;
    if (!sigchld_installed) {
        struct sigaction sa = {.sa_sigaction = sigchld_handler,
                               .sa_flags = SA_SIGINFO | SA_NOCLDSTOP | SA_RESTART};
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGCHLD, &sa, &old_sigchld) == 0) {
            sigchld_installed = true;
        }
    }
    pthread_mutex_unlock(&watch_lock);
    /* The child may have exited already (no SIGCHLD will come): look once. */
    ql_bh_schedule(bh);
    return 0;
}

static void child_watch_cleanup(void)
{
    pthread_mutex_lock(&watch_lock);
    if (sigchld_installed) {
        sigaction(SIGCHLD, &old_sigchld, NULL);
        sigchld_installed = false;
    }
    while (watches) {
        ChildWatch *w = watches;
        watches = w->next;
        free(w);
    }
    pthread_mutex_unlock(&watch_lock);
    while (reaped) {
        ChildWatch *w = reaped;
        reaped = w->next;
        free(w);
    }
}

/* ---- the main loop ------------------------------------------------------------ */

static void notify_bh_cb(void *opaque)
{
    (void)opaque; /* scheduling it was the point */
}

int ql_main_loop_init(void)
{
    if (main_ctx) {
        return 0;
    }
    int r;
    QLContext *m = ql_context_new();
    if (!m) {
        return -errno;
    }
    QLContext *io = ql_context_new();
    if (!io) {
        r = -errno;
        goto fail_io;
    }
    QLBH *nbh = ql_bh_new(m, notify_bh_cb, NULL, "qemu_notify_event");
    QLBH *cbh = ql_bh_new(m, child_bh_cb, NULL, "child_watch");
    if (!nbh || !cbh) {
        r = -ENOMEM;
        goto fail_bh;
    }
    r = ql_context_fd(m);
    if (r >= 0) {
        r = ql_context_fd(io);
    }
    if (r < 0) {
        goto fail_bh;
    }
    main_ctx = m;
    io_ctx = io;
    __atomic_store_n(&notify_bh, nbh, __ATOMIC_RELEASE);
    __atomic_store_n(&child_bh, cbh, __ATOMIC_RELEASE);
    ql_context_set_current(m);
    return 0;

fail_bh:
    ql_context_free(io); /* frees nothing of m's */
fail_io:
    ql_context_free(m);  /* deletes nbh/cbh */
    return r;
}

void ql_main_loop_cleanup(void)
{
    if (!main_ctx) {
        return;
    }
    child_watch_cleanup();
    __atomic_store_n(&notify_bh, NULL, __ATOMIC_RELEASE);
    __atomic_store_n(&child_bh, NULL, __ATOMIC_RELEASE);
    if (ql_context_current() == main_ctx) {
        ql_context_set_current(NULL);
    }
    ql_context_free(io_ctx);
    ql_context_free(main_ctx);
    io_ctx = main_ctx = NULL;
    free(polls);
    polls = NULL;
    npolls = cpolls = 0;
}

QLContext *ql_get_aio_context(void)
{
    return main_ctx;
}

QLContext *ql_get_iohandler_context(void)
{
    return io_ctx;
}

void ql_notify_event(void)
{
    QLBH *bh = __atomic_load_n(&notify_bh, __ATOMIC_ACQUIRE);
    if (bh) {
        ql_bh_schedule(bh);
    }
}

int ql_set_fd_handler(int fd, QLIOHandler *fd_read, QLIOHandler *fd_write, void *opaque)
{
    if (!io_ctx) {
        return ql__misuse(-EINVAL, "ql_set_fd_handler: main loop not initialised");
    }
    return ql_context_set_fd_handler(io_ctx, fd, fd_read, fd_write, NULL, opaque);
}

static int64_t min_timeout(int64_t a, int64_t b)
{
    if (a < 0) {
        return b;
    }
    if (b < 0) {
        return a;
    }
    return a < b ? a : b;
}

/* Sleep in poll(2) on both context fds; the iothread lock is dropped. */
static void main_loop_sleep(int64_t timeout_ns)
{
    struct pollfd pfd[2] = {
        {.fd = ql_context_fd(main_ctx), .events = POLLIN},
        {.fd = ql_context_fd(io_ctx), .events = POLLIN},
    };
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    bool held = tl_iothread_locked;
    void *token = ql_blocking_begin();
    if (held) {
        tl_iothread_locked = false;
        pthread_mutex_unlock(&iothread_mutex);
    }
    ppoll(pfd, 2, tsp, NULL); /* EINTR: just look again */
    /* Retake the iothread lock before the blocking hooks' lock (the GIL):
     * a thread holding the GIL may be waiting for the iothread lock. */
    if (held) {
        pthread_mutex_lock(&iothread_mutex);
        tl_iothread_locked = true;
    }
    ql_blocking_end(token);
}

int ql_main_loop_wait(bool nonblocking)
{
    if (!main_ctx) {
        return ql__misuse(-EINVAL, "ql_main_loop_wait: main loop not initialised");
    }
    bool took_lock = !tl_iothread_locked;
    if (took_lock) {
        ql_iothread_lock();
    }
    /* One iteration is one dispatch: a callback that stops it (a polling
     * callback, or one of the main context) also stops the dispatches that
     * come after it in this iteration; what they would have run stays
     * ready for the next one.  Clear requests left from elsewhere first. */
    main_ctx->stop_dispatch = false;
    io_ctx->stop_dispatch = false;
    if (run_polling_cbs() || main_ctx->stop_dispatch || io_ctx->stop_dispatch) {
        nonblocking = true;
    }
    int64_t timeout = min_timeout(ql_context_prepare(main_ctx), ql_context_prepare(io_ctx));
    if (!nonblocking && timeout != 0) {
        main_loop_sleep(timeout);
    }
    int ret = 0, r;
    if (ql_context_check(main_ctx) && !main_ctx->stop_dispatch) {
        r = ql_context_dispatch(main_ctx);
        ret = r < 0 ? r : ret | r;
    }
    if (ql_context_check(io_ctx) && !io_ctx->stop_dispatch) {
        r = ql_context_dispatch(io_ctx);
        ret = ret < 0 ? ret : r < 0 ? r : ret | r;
    }
    main_ctx->stop_dispatch = false;
    io_ctx->stop_dispatch = false;
    if (took_lock) {
        ql_iothread_unlock();
    }
    return ret;
}
