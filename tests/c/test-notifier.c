/* Event notifier: set/clear semantics, cross-thread wakeup, both backends. */
#include "qltest.h"
#include "qloop/notifier.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

static QLNotifierKind kinds[] = {QL_NOTIFIER_EVENTFD, QL_NOTIFIER_PIPE};

/* Poll fd for readability.  A signal interrupting the poll (the signal-handler
 * test sets the notifier from one) just means "poll again". */
static int readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r;
    do { /* a signal handler run meanwhile interrupts poll */
        r = poll(&p, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    return r == 1 && (p.revents & POLLIN);
}

static void test_notifier_set_twice_clears_once(void)
{
    for (int k = 0; k < 2; k++) {
        QLNotifier n;
        QL_CHECK_EQ(ql_notifier_init_kind(&n, kinds[k]), 0);
        QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 0);
        QL_CHECK_EQ(ql_notifier_set(&n), 0);
        QL_CHECK_EQ(ql_notifier_set(&n), 0);
        QL_CHECK(readable(ql_notifier_fd(&n), 0));
        QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 1);
        QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 0);
        QL_CHECK(!readable(ql_notifier_fd(&n), 0));
        ql_notifier_close(&n);
    }
}

static void test_notifier_closed_returns_ebadf(void)
{
    QLNotifier n;
    QL_CHECK_EQ(ql_notifier_init(&n), 0);
    ql_notifier_close(&n);
    ql_notifier_close(&n); /* idempotent */
    QL_CHECK_EQ(ql_notifier_set(&n), -EBADF);
    QL_CHECK_EQ(ql_notifier_test_and_clear(&n), -EBADF);
    QL_CHECK_EQ(ql_notifier_fd(&n), -EBADF);
}

static void *setter(void *arg)
{
    QLNotifier *n = arg;
    for (int i = 0; i < 10000; i++) {
        ql_notifier_set(n);
    }
    return NULL;
}

static void test_notifier_many_sets_from_threads_set_once(void)
{
    for (int k = 0; k < 2; k++) {
        QLNotifier n;
        pthread_t t[4];
        QL_CHECK_EQ(ql_notifier_init_kind(&n, kinds[k]), 0);
        for (int i = 0; i < 4; i++) {
            pthread_create(&t[i], NULL, setter, &n);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(t[i], NULL);
        }
        QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 1);
        QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 0);
        ql_notifier_close(&n);
    }
}

static void *delayed_set(void *arg)
{
    usleep(20000);
    ql_notifier_set(arg);
    return NULL;
}

static void test_notifier_set_from_thread_wakes_poll(void)
{
    for (int k = 0; k < 2; k++) {
        QLNotifier n;
        pthread_t t;
        QL_CHECK_EQ(ql_notifier_init_kind(&n, kinds[k]), 0);
        pthread_create(&t, NULL, delayed_set, &n);
        QL_CHECK(readable(ql_notifier_fd(&n), 5000));
        pthread_join(t, NULL);
        QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 1);
        ql_notifier_close(&n);
    }
}

static QLNotifier *sig_notifier;

static void on_alarm(int sig)
{
    (void)sig;
    ql_notifier_set(sig_notifier);
}

static void test_notifier_set_from_signal_handler(void)
{
    for (int k = 0; k < 2; k++) {
        QLNotifier n;
        QL_CHECK_EQ(ql_notifier_init_kind(&n, kinds[k]), 0);
        sig_notifier = &n;
        struct sigaction sa = {.sa_handler = on_alarm};
        sigaction(SIGALRM, &sa, NULL);
        alarm(1);
        QL_CHECK(readable(ql_notifier_fd(&n), 5000));
        QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 1);
        signal(SIGALRM, SIG_DFL);
        ql_notifier_close(&n);
    }
}

static void on_alarm_noop(int sig)
{
    (void)sig;
}

/* A signal that interrupts the wait is reported, not swallowed: neither as a
 * timeout (timed wait) nor by waiting on (untimed wait), so that a binding can
 * run its own signal handlers. */
static void test_notifier_wait_interrupted_returns_eintr(void)
{
    long long timeouts[] = {-1, 60LL * 1000000000LL};
    for (int k = 0; k < 2; k++) {
        for (int t = 0; t < 2; t++) {
            QLNotifier n;
            QL_CHECK_EQ(ql_notifier_init_kind(&n, kinds[k]), 0);
            struct sigaction sa = {.sa_handler = on_alarm_noop};
            sigaction(SIGALRM, &sa, NULL);
            struct itimerval it = {.it_value = {.tv_usec = 20000}};
            setitimer(ITIMER_REAL, &it, NULL);
            int r = ql_notifier_wait(&n, timeouts[t]);
            signal(SIGALRM, SIG_DFL);
            QL_CHECK_EQ(r, -EINTR);
            QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 0);
            ql_notifier_close(&n);
        }
    }
}

static void test_notifier_wait_times_out_and_sees_set(void)
{
    for (int k = 0; k < 2; k++) {
        QLNotifier n;
        QL_CHECK_EQ(ql_notifier_init_kind(&n, kinds[k]), 0);
        QL_CHECK_EQ(ql_notifier_wait(&n, 0), 0);
        QL_CHECK_EQ(ql_notifier_wait(&n, 1000000), 0);
        QL_CHECK_EQ(ql_notifier_set(&n), 0);
        QL_CHECK_EQ(ql_notifier_wait(&n, -1), 1);
        QL_CHECK_EQ(ql_notifier_wait(&n, 0), 1); /* wait does not clear */
        QL_CHECK_EQ(ql_notifier_test_and_clear(&n), 1);
        ql_notifier_close(&n);
        QL_CHECK_EQ(ql_notifier_wait(&n, 0), -EBADF);
    }
}

QLTEST_MAIN(QLT(test_notifier_set_twice_clears_once),
            QLT(test_notifier_closed_returns_ebadf),
            QLT(test_notifier_many_sets_from_threads_set_once),
            QLT(test_notifier_set_from_thread_wakes_poll),
            QLT(test_notifier_set_from_signal_handler),
            QLT(test_notifier_wait_interrupted_returns_eintr),
            QLT(test_notifier_wait_times_out_and_sees_set))
