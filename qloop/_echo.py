"""``python -m qloop echo``: a QIONetListener echo server and N clients on
loopback, reporting round trips per second and MB/s.

The server echoes every byte it reads (read up to 64 KiB, write it back) from
fd handlers on one AioContext; each client is a coroutine that writes a
message of --size bytes with write_all and reads the echo with read_all (the
channel yields inside them), for --seconds.  Without coroutine support the
clients are callback state machines on the same context.
"""
import argparse
import sys
import time

CHUNK = 65536


class EchoServer:
    """Echo every accepted connection on ``ctx`` (fd handlers, no coroutine)."""

    def __init__(self, ctx, addr=("127.0.0.1", 0)):
        import qloop

        self.ctx = ctx
        self.listener = qloop.QIONetListener(name="echo")
        self.listener.open_sync(addr)
        self.listener.set_client_func(self._client, ctx)
        self.conns = set()

    @property
    def port(self):
        return self.listener.local_addresses[0][1]

    def _client(self, listener, ch):
        ch.set_blocking(False)
        ch.set_delay(False)
        self.conns.add(ch)
        fd = ch.fileno()
        ctx = self.ctx
        pending = []

        def on_read():
            try:
                data = ch.read(CHUNK)
            except OSError:
                data = b""
            if data is None:
                return
            if not data:
                ctx.set_fd_handler(fd, None, None)
                self.conns.discard(ch)
                ch.close()
                return
            n = ch.write(data)
            if n is None:
                n = 0
            if n < len(data):
                pending.append(memoryview(data)[n:])
                ctx.set_fd_handler(fd, None, on_write)

        def on_write():
            buf = pending[0]
            try:
                n = ch.write(buf)
            except OSError:
                ctx.set_fd_handler(fd, None, None)
                self.conns.discard(ch)
                ch.close()
                return
            if n is None:
                return
            if n < len(buf):
                pending[0] = buf[n:]
            else:
                pending.pop()
                ctx.set_fd_handler(fd, on_read, None)

        ctx.set_fd_handler(fd, on_read, None)

    def close(self):
        for ch in list(self.conns):
            if not ch.closed:
                self.ctx.set_fd_handler(ch.fileno(), None, None)
                ch.close()
        self.conns.clear()
        self.listener.disconnect()


class Stats:
    def __init__(self):
        self.trips = 0
        self.bytes = 0


def _coroutine_client(port, size, deadline, stats):
    import qloop

    ch = qloop.QIOChannelSocket()
    ch.connect_sync(("127.0.0.1", port))
    ch.set_delay(False)
    ch.set_blocking(False)
    msg = b"q" * size
    try:
        while time.monotonic() < deadline:
            ch.write_all(msg)
            if ch.read_all(size) != msg:
                raise RuntimeError("echo mismatch")
            stats.trips += 1
            stats.bytes += size
    finally:
        ch.close()


class _CallbackClient:
    """write msg, read the echo back, repeat - driven by fd handlers."""

    def __init__(self, ctx, port, size, deadline, stats):
        import qloop

        self.ctx = ctx
        self.ch = qloop.QIOChannelSocket()
        self.ch.connect_sync(("127.0.0.1", port))
        self.ch.set_delay(False)
        self.ch.set_blocking(False)
        self.fd = self.ch.fileno()
        self.msg = memoryview(b"q" * size)
        self.size = size
        self.deadline = deadline
        self.stats = stats
        self.done = False
        self._start()

    def _start(self):
        self.out = self.msg
        self.got = 0
        self.ctx.set_fd_handler(self.fd, None, self._on_write)

    def _on_write(self):
        n = self.ch.write(self.out)
        if n is None:
            return
        self.out = self.out[n:]
        if not len(self.out):
            self.ctx.set_fd_handler(self.fd, self._on_read, None)

    def _on_read(self):
        data = self.ch.read(self.size - self.got)
        if data is None:
            return
        if not data:
            raise RuntimeError("server closed the connection")
        self.got += len(data)
        if self.got == self.size:
            self.stats.trips += 1
            self.stats.bytes += self.size
            if time.monotonic() < self.deadline:
                self._start()
            else:
                self.ctx.set_fd_handler(self.fd, None, None)
                self.ch.close()
                self.done = True


def run(port=0, clients=4, size=64, seconds=3.0, progress=True, out=None):
    """Run the demo; returns (round trips/s, MB/s)."""
    import qloop

    out = sys.stdout if out is None else out

    ctx = qloop.AioContext()
    server = EchoServer(ctx, ("127.0.0.1", port))
    stats = Stats()
    start = time.monotonic()
    deadline = start + seconds
    use_co = hasattr(qloop, "Coroutine") and getattr(qloop, "_channel_coroutines", True)
    finished = []
    if use_co:
        cos = []
        for _ in range(clients):
            co = qloop.Coroutine(_coroutine_client, server.port, size, deadline, stats)
            cos.append(co)
        # enter them from inside the context so that their waits use it
        for co in cos:
            ctx.schedule_oneshot(co.enter)

        def all_done():
            return all(co.done for co in cos)
    else:
        cls = [_CallbackClient(ctx, server.port, size, deadline, stats) for _ in range(clients)]

        def all_done():
            return all(c.done for c in cls)
    mode = "coroutine" if use_co else "callback"
    last = start
    last_trips = 0
    print("echo: server on 127.0.0.1:%d, %d %s clients, %d-byte messages, %.1f s"
          % (server.port, clients, mode, size, seconds), file=out)
    while not all_done():
        ctx.poll(True)
        now = time.monotonic()
        if progress and now - last >= 0.5:
            rate = (stats.trips - last_trips) / (now - last)
            print("\r  %8.0f round trips/s  %8.2f MB/s  (%.1f s)   "
                  % (rate, rate * size * 2 / 1e6, now - start), end="", file=out, flush=True)
            last, last_trips = now, stats.trips
        if now > deadline + 10:
            raise RuntimeError("echo clients did not finish")
    elapsed = time.monotonic() - start
    finished.append(elapsed)
    server.close()
    ctx.close()
    rt = stats.trips / elapsed
    mbs = stats.bytes * 2 / elapsed / 1e6  # both directions
    if progress:
        print(file=out)
    print("%d round trips in %.2f s: %.0f round trips/s, %.2f MB/s (sent + received)"
          % (stats.trips, elapsed, rt, mbs), file=out)
    return rt, mbs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m qloop echo", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="server port (0: any free port)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--seconds", type=float, default=3.0, help="duration (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    a = p.parse_args(argv)
    if a.clients < 1 or a.size < 1 or a.seconds <= 0 or not 0 <= a.port <= 65535:
        p.error("--clients and --size must be >= 1, --seconds > 0, --port in 0..65535")
    run(a.port, a.clients, a.size, min(a.seconds, 3600.0), not a.no_progress)
    return 0
