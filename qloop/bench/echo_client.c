/*
 * echo_client - the one load generator every echo server in the bench faces.
 *
 *   echo_client PORT CONNS ROUNDS SIZE TIMEOUT_S
 *
 * Connects CONNS TCP sockets to 127.0.0.1:PORT (loopback only, nothing else
 * is ever contacted).  Every connection plays ping-pong: it sends one
 * SIZE-byte message, waits until SIZE bytes came back, and repeats ROUNDS
 * times, so one message per connection is in flight.  One thread drives all
 * connections with level-triggered epoll; TCP_NODELAY is set.
 *
 * Message k on connection c is filled with the byte (c * 7 + k) & 0xff; of
 * every chunk received, the first and the last byte and one byte per 4 KiB
 * are compared with that value (a mismatch is counted and makes the exit
 * status 3).  After TIMEOUT_S seconds the client gives up (exit status 2).
 *
 * Output, one JSON line on stdout:
 *   {"round_trips", "seconds", "rt_per_s", "mb_per_s", "bad_chunks"}
 * seconds runs from the first send to the last complete reply; mb_per_s is
 * payload in one direction.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum phase { SENDING, AWAITING, FINISHED };

typedef struct {
    int fd;
    int id;
    enum phase phase;
    long round;      /* messages completed */
    size_t out;      /* bytes of the current message sent */
    size_t in;       /* bytes of the current message received */
    uint32_t armed;  /* epoll events currently requested */
} Peer;

static struct {
    size_t size;
    long rounds;
    int ep;
    unsigned char *pattern[256]; /* pattern[v] = SIZE bytes of value v */
    unsigned char *rx;
    size_t rx_cap;
    long bad;
    int unfinished;
} g;

static void fail(const char *what)
{
    fprintf(stderr, "echo_client: %s: %s\n", what, strerror(errno));
    exit(2);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned char expected_byte(const Peer *p)
{
    return (unsigned char)((p->id * 7 + p->round) & 0xff);
}

static void arm(Peer *p, uint32_t events)
{
    if (p->armed == events) {
        return;
    }
    struct epoll_event ev = {.events = events, .data.ptr = p};
    if (epoll_ctl(g.ep, EPOLL_CTL_MOD, p->fd, &ev) < 0) {
        fail("epoll_ctl(MOD)");
    }
    p->armed = events;
}

/* Push out what the socket accepts of the current message. */
static void send_some(Peer *p)
{
    const unsigned char *msg = g.pattern[expected_byte(p)];
    while (p->out < g.size) {
        ssize_t k = send(p->fd, msg + p->out, g.size - p->out, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            fail("send");
        }
        p->out += (size_t)k;
    }
    /* Wait for writability only while part of the message is still queued
     * here; the reply is read in either phase. */
    arm(p, p->out < g.size ? EPOLLIN | EPOLLOUT : EPOLLIN);
    if (p->out == g.size) {
        p->phase = AWAITING;
    }
}

static void check_chunk(const Peer *p, const unsigned char *b, size_t len)
{
    unsigned char v = expected_byte(p);
    int ok = b[0] == v && b[len - 1] == v;
    for (size_t i = 4096; ok && i < len; i += 4096) {
        ok = b[i] == v;
    }
    if (!ok) {
        g.bad++;
    }
}

static void start_message(Peer *p)
{
    p->phase = SENDING;
    p->out = 0;
    p->in = 0;
    send_some(p);
}

/* Read what arrived; complete rounds; start the next message. */
static void receive_some(Peer *p)
{
    for (;;) {
        size_t want = g.size - p->in;
        if (want > g.rx_cap) {
            want = g.rx_cap;
        }
        ssize_t k = recv(p->fd, g.rx, want, 0);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            fail("recv");
        }
        if (k == 0) {
            fprintf(stderr, "echo_client: connection %d closed by the server\n", p->id);
            exit(2);
        }
        if (p->in + (size_t)k > p->out) {
            fprintf(stderr, "echo_client: connection %d got bytes it never sent\n", p->id);
            exit(2);
        }
        check_chunk(p, g.rx, (size_t)k);
        p->in += (size_t)k;
        if (p->in < g.size) {
            continue;
        }
        p->round++;
        if (p->round == g.rounds) {
            p->phase = FINISHED;
            g.unfinished--;
            if (epoll_ctl(g.ep, EPOLL_CTL_DEL, p->fd, NULL) < 0) {
                fail("epoll_ctl(DEL)");
            }
            return;
        }
        start_message(p);
    }
}

static int open_peer(Peer *p, int id, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        return -1;
    }
    int on = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) < 0) {
        return -1;
    }
    /* Non-blocking only after connect, so connect needs no polling. */
    if (ioctl(fd, FIONBIO, &on) < 0) {
        return -1;
    }
    *p = (Peer){.fd = fd, .id = id, .armed = EPOLLIN};
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
    return epoll_ctl(g.ep, EPOLL_CTL_ADD, fd, &ev);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT CONNS ROUNDS SIZE TIMEOUT_S\n", argv[0]);
        return 64;
    }
    int port = atoi(argv[1]);
    int conns = atoi(argv[2]);
    g.rounds = atol(argv[3]);
    long size = atol(argv[4]);
    double limit = atof(argv[5]);
    if (port <= 0 || port > 65535 || conns <= 0 || g.rounds <= 0 || size <= 0 || limit <= 0) {
        fprintf(stderr, "echo_client: every argument must be positive\n");
        return 64;
    }
    g.size = (size_t)size;
    for (int v = 0; v < 256; v++) {
        g.pattern[v] = malloc(g.size);
        if (!g.pattern[v]) {
            fail("malloc");
        }
        memset(g.pattern[v], v, g.size);
    }
    g.rx_cap = g.size < 262144 ? g.size : 262144;
    g.rx = malloc(g.rx_cap);
    Peer *peers = calloc((size_t)conns, sizeof *peers);
    struct epoll_event *ready = calloc((size_t)conns, sizeof *ready);
    if (!g.rx || !peers || !ready) {
        fail("malloc");
    }
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.ep < 0) {
        fail("epoll_create1");
    }
    for (int i = 0; i < conns; i++) {
        if (open_peer(&peers[i], i, port) < 0) {
            fail("connect");
        }
    }

    g.unfinished = conns;
    double t0 = seconds_now();
    double give_up = t0 + limit;
    for (int i = 0; i < conns; i++) {
        start_message(&peers[i]);
    }
    while (g.unfinished > 0) {
        int n = epoll_wait(g.ep, ready, conns, 500);
        if (n < 0 && errno != EINTR) {
            fail("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            Peer *p = ready[k].data.ptr;
            if (p->phase == FINISHED) {
                continue;
            }
            if ((ready[k].events & EPOLLOUT) && p->phase == SENDING) {
                send_some(p);
            }
            if (ready[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                receive_some(p);
            }
        }
        if (seconds_now() > give_up) {
            fprintf(stderr, "echo_client: gave up after %.0f s with %d connections unfinished\n",
                    limit, g.unfinished);
            return 2;
        }
    }
    double secs = seconds_now() - t0;
    for (int i = 0; i < conns; i++) {
        close(peers[i].fd);
    }
    long total = (long)conns * g.rounds;
    printf("{\"round_trips\": %ld, \"seconds\": %.6f, \"rt_per_s\": %.1f, \"mb_per_s\": %.2f, "
           "\"bad_chunks\": %ld}\n",
           total, secs, (double)total / secs, (double)total * (double)g.size / secs / 1e6, g.bad);
    return g.bad ? 3 : 0;
}
