"""Quick timing of qloop's Python coroutines against greenlet (not a test).

    python bench/micro_coroutine.py
"""
import gc
import sys
import time

from qloop import CoMutex, Coroutine, coroutine_yield

N = 200_000


def best(fn, n, repeat=5):
    t = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn(n)
        t.append(time.thread_time() - t0)
    return min(t) / n * 1e9


def qloop_switch(n):
    def body():
        y = coroutine_yield
        while True:
            y()
    co = Coroutine(body)
    enter = co.enter
    for _ in range(n):
        enter()


def qloop_spawn(n):
    def body():
        pass
    for _ in range(n):
        Coroutine(body).enter()


def qloop_mutex(n):
    """n hand-offs: the holder unlocks (the waiter gets the mutex), loops to
    lock again and waits; the waiter runs, yields holding it."""
    m = CoMutex()

    def user():
        for _ in range(n // 2):
            with m:
                coroutine_yield()

    a, b = Coroutine(user), Coroutine(user)
    a.enter()
    b.enter()
    while not (a.done and b.done):
        (a if a.state == "suspended" else b).enter()


def greenlet_switch(n):
    import greenlet
    main = greenlet.getcurrent()

    def body():
        s = main.switch
        while True:
            s()
    g = greenlet.greenlet(body)
    sw = g.switch
    for _ in range(n):
        sw()


def greenlet_spawn(n):
    import greenlet

    def body():
        pass
    for _ in range(n):
        greenlet.greenlet(body).switch()


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def rss_per_suspended(make, n=20_000):
    gc.collect()
    keep = []
    before = rss_kib()
    for _ in range(n):
        keep.append(make())
    after = rss_kib()
    return (after - before) * 1024 / n, keep


def qloop_suspended():
    co = Coroutine(coroutine_yield)
    co.enter()
    return co


def greenlet_suspended():
    import greenlet
    main = greenlet.getcurrent()
    g = greenlet.greenlet(main.switch)
    g.switch()
    return g


def main():
    print("python", sys.version.split()[0])
    print("qloop    switch round trip (enter+yield): %6.0f ns" % best(qloop_switch, N))
    print("qloop    spawn+run to completion:         %6.0f ns" % best(qloop_spawn, N // 4))
    print("qloop    CoMutex hand-off (+enter/yield): %6.0f ns" % best(qloop_mutex, N // 4))
    per, keep = rss_per_suspended(qloop_suspended)
    del keep
    print("qloop    RSS per suspended coroutine:     %6.0f B" % per)
    try:
        import greenlet  # noqa: F401
    except ImportError:
        return
    print("greenlet switch round trip:               %6.0f ns" % best(greenlet_switch, N))
    print("greenlet spawn+run to completion:         %6.0f ns" % best(greenlet_spawn, N // 4))
    per, keep = rss_per_suspended(greenlet_suspended)
    del keep
    print("greenlet RSS per suspended greenlet:      %6.0f B" % per)


if __name__ == "__main__":
    main()
