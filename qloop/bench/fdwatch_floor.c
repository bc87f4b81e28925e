/*
 * fdwatch_floor: the fdwatch workload with no event loop and no Python, as
 * the floor that any loop running it pays on this machine.
 *
 *   fdwatch_floor N VARIANT      (VARIANT: callback, coro or coro_oneshot)
 *
 * Two non-blocking pipes, P1 (A -> B) and P2 (B -> A), one epoll set, one
 * thread.  One round trip: write a byte to P1; epoll_wait reports P1
 * readable; read it and write a byte to P2; epoll_wait reports P2 readable;
 * read it.  That is the six system calls every implementation of the
 * workload makes per round trip.  coro_oneshot also registers each pipe
 * before its wait and removes it after (two epoll_ctl per wait), as the
 * workload's oneshot variant does; callback and coro keep both registered.
 *
 * Prints one JSON object: {"seconds": S, "cpu_seconds": C, "round_trips": N}
 * (wall and process CPU time of the loop).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static double now(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "fdwatch_floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void reg(int ep, int op, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(ep, op, fd, &ev) < 0) {
        die("epoll_ctl");
    }
}

/* Wait until fd is reported readable, then read its byte. */
static void wait_and_read(int ep, int fd, int oneshot)
{
    struct epoll_event ev;
    char c;
    if (oneshot) {
        reg(ep, EPOLL_CTL_ADD, fd);
    }
    for (;;) {
        int n = epoll_wait(ep, &ev, 1, -1);
        if (n < 0 && errno != EINTR) {
            die("epoll_wait");
        }
        if (n == 1 && ev.data.fd == fd) {
            break;
        }
    }
    if (oneshot) {
        reg(ep, EPOLL_CTL_DEL, fd);
    }
    if (read(fd, &c, 1) != 1) {
        die("read");
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s N callback|coro|coro_oneshot\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    int oneshot = strcmp(argv[2], "coro_oneshot") == 0;
    int p1[2], p2[2];
    if (pipe2(p1, O_NONBLOCK | O_CLOEXEC) < 0 || pipe2(p2, O_NONBLOCK | O_CLOEXEC) < 0) {
        die("pipe2");
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        die("epoll_create1");
    }
    if (!oneshot) {
        reg(ep, EPOLL_CTL_ADD, p1[0]);
        reg(ep, EPOLL_CTL_ADD, p2[0]);
    }
    double t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < n; i++) {
        if (write(p1[1], "x", 1) != 1) {
            die("write");
        }
        wait_and_read(ep, p1[0], oneshot); /* B's side */
        if (write(p2[1], "x", 1) != 1) {
            die("write");
        }
        wait_and_read(ep, p2[0], oneshot); /* A's side */
    }
    double t1 = now(CLOCK_MONOTONIC), c1 = now(CLOCK_PROCESS_CPUTIME_ID);
    printf("{\"seconds\": %.9f, \"cpu_seconds\": %.9f, \"round_trips\": %ld}\n", t1 - t0,
           c1 - c0, n);
    return 0;
}
