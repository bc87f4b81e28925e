"""echo: TCP echo over 127.0.0.1; the server impl varies, the client is fixed.

The server runs in its own process (``--serve IMPL``: prints "PORT <n>",
echoes every connection, reads at most 64 KiB at a time, TCP_NODELAY, exits
on SIGTERM or by itself after --max-seconds).  The client is echo_client.c,
compiled on first use into $XDG_CACHE_HOME/qloop-bench (default
~/.cache/qloop-bench): C = 50 connections, each doing N ping-pong round
trips of SIZE bytes.

1k:  SIZE = 1024,  N = 4000 (200,000 round trips)
64k: SIZE = 65536, N = 1000 (50,000 round trips, 3.3 GB each way)

``ops_per_s`` = round trips / client-measured seconds; ``mb_per_s`` =
payload one way; ``peak_rss_kb`` = the server's VmHWM; ``server_cpu_s`` its
user+sys CPU over its life; ``client_cpu_s`` the client's.

qloop: QIONetListener + QIOChannelSocket, one qloop.Coroutine per
connection (read, on "would block" ch.yield_(IO_IN), write_all), driven by
qloop.main_loop_wait().  qloop_fd: Python sockets on bare AioContext fd
handlers, callback style (the shape of an asyncio Protocol).  asyncio_streams / uvloop_streams:
asyncio.start_server with read(65536), write, await drain();
asyncio_protocol / uvloop_protocol: Protocol.data_received ->
transport.write; gevent: gevent.server.StreamServer, recv / sendall.
"""
import json
import os
import resource
import signal
import socket
import subprocess
import sys

from ._common import c_helper, cli, qloop_api

NAME = "echo"
VARIANTS = ("1k", "64k")
SIZES = {"1k": 1024, "64k": 65536}
DEFAULT_N = {"1k": 4000, "64k": 1000}
QUICK_N = {"1k": 200, "64k": 40}
CALLGRIND_N = None   # two processes: not measured under callgrind
FLOORS = ()
REQUIRES = {"uvloop_streams": "uvloop", "uvloop_protocol": "uvloop", "gevent": "gevent"}
METRIC = "ops_per_s"
HOST = "127.0.0.1"
CHUNK = 65536


def add_arguments(p):
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--timeout", type=float, default=120.0,
                   help="the client gives up after this many seconds")


# ---- the client ------------------------------------------------------------

def client_path():
    """The compiled echo_client.c (built on first use)."""
    return c_helper("echo_client.c")


def _proc_usage(pid):
    """(VmHWM in KiB, user+sys CPU seconds) of a live process."""
    hwm = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])   # utime + stime
    return hwm, ticks / os.sysconf("SC_CLK_TCK")


def drive(impl, n, variant, opts):
    """Start the server, run the client against it, return the result dict."""
    size = SIZES[variant]
    conns = opts.get("conns", 50)
    timeout = opts.get("timeout", 120.0)
    exe = client_path()
    server = subprocess.Popen(
        [sys.executable, "-m", __spec__.name if __spec__ else "qloop.bench.echo",
         "--serve", impl, "--max-seconds", str(int(timeout) + 60)],
        stdout=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        if not first.startswith("PORT "):
            server.wait(timeout=30)
            if server.returncode == 3:
                raise _NotAvailableFromServer(first.strip())
            raise RuntimeError("echo server %s did not start (exit %s): %r"
                               % (impl, server.returncode, first))
        port = int(first.split()[1])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([exe, str(port), str(conns), str(n), str(size), str(timeout)],
                           stdout=subprocess.PIPE, text=True, timeout=timeout + 30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise RuntimeError("echo client failed (exit %d): %s" % (r.returncode, r.stdout))
        res = json.loads(r.stdout)
        hwm, server_cpu = _proc_usage(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rts = res["round_trips"]
    return {"seconds": res["seconds"], "ops": rts, "ops_per_s": res["rt_per_s"],
            "peak_rss_kb": hwm, "mb_per_s": res["mb_per_s"], "conns": conns, "size": size,
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_us_per_rt": round(server_cpu / rts * 1e6, 2),
            "client_cpu_s": round(client_cpu, 2)}


class _NotAvailableFromServer(Exception):
    pass


def _impl(name):
    def run(n, variant, opts):
        try:
            return drive(name, n, variant, opts)
        except _NotAvailableFromServer as e:
            from ._common import NotAvailable
            raise NotAvailable(str(e).replace("N/A ", "", 1)) from None
    return run


# ---- the servers (run in the server process) ------------------------------

def _announce(port):
    sys.stdout.write("PORT %d\n" % port)
    sys.stdout.flush()


def serve_qloop():
    (QIONetListener, Coroutine, coroutine_self, IO_IN, main_loop_wait, init_main_loop) = qloop_api(
        "QIONetListener", "Coroutine", "coroutine_self", "IO_IN", "main_loop_wait",
        "init_main_loop")
    init_main_loop()

    live = set()   # the connection coroutines (held like asyncio tasks)

    def connection(ch):
        read, write_all, wait_in = ch.read, ch.write_all, ch.yield_
        try:
            while True:
                data = read(CHUNK)
                if data is None:          # would block: sleep until readable
                    wait_in(IO_IN)
                    continue
                if not data:
                    break
                write_all(data)
        finally:
            ch.close()
            live.discard(coroutine_self())

    def on_client(listener, ch):
        ch.set_delay(False)           # TCP_NODELAY
        ch.set_blocking(False)
        co = Coroutine(connection, ch)
        live.add(co)
        co.enter()

    listener = QIONetListener()
    listener.open_sync((HOST, 0))
    listener.set_client_func(on_client)
    addr = listener.local_addresses[0]
    _announce(addr[1] if isinstance(addr, tuple) else int(str(addr).rsplit(":", 1)[1]))
    while True:
        main_loop_wait()


def serve_qloop_fd():
    """Callback server on bare AioContext fd handlers (the shape of an
    asyncio Protocol): read handler -> recv -> send; what the socket does not
    take is kept and written by a write handler, reading paused meanwhile."""
    AioContext = qloop_api("AioContext")
    ctx = AioContext()
    set_fd_handler = ctx.set_fd_handler
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(1024)
    lsock.setblocking(False)

    class Conn:
        __slots__ = ("sock", "fd", "left", "recv", "send")

        def __init__(self, sock):
            self.sock, self.fd, self.left = sock, sock.fileno(), None
            self.recv, self.send = sock.recv, sock.send
            set_fd_handler(self.fd, read=self.on_read)

        def on_read(self):
            try:
                data = self.recv(CHUNK)
            except BlockingIOError:
                return
            except ConnectionError:
                data = b""
            if not data:
                set_fd_handler(self.fd, None)
                self.sock.close()
                return
            try:
                k = self.send(data)
            except BlockingIOError:
                k = 0
            if k < len(data):
                self.left = memoryview(data)[k:]
                set_fd_handler(self.fd, write=self.on_write)

        def on_write(self):
            try:
                k = self.send(self.left)
            except BlockingIOError:
                return
            self.left = self.left[k:]
            if not len(self.left):
                self.left = None
                set_fd_handler(self.fd, read=self.on_read)

    def on_accept():
        while True:
            try:
                sock, _ = lsock.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            Conn(sock)

    set_fd_handler(lsock.fileno(), read=on_accept)
    _announce(lsock.getsockname()[1])
    ctx.run_forever()


def serve_aio(impl):
    import asyncio
    if impl.startswith("uvloop"):
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if impl.endswith("_streams"):
        async def handle(reader, writer):
            read, write, drain = reader.read, writer.write, writer.drain
            try:
                while True:
                    data = await read(CHUNK)
                    if not data:
                        break
                    write(data)
                    await drain()
            except ConnectionError:
                pass
            writer.close()

        start = asyncio.start_server(handle, HOST, 0)
    else:
        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.send = transport.write

            def data_received(self, data):
                self.send(data)

        start = loop.create_server(Echo, HOST, 0)
    server = loop.run_until_complete(start)
    _announce(server.sockets[0].getsockname()[1])
    loop.run_forever()


def serve_gevent():
    from gevent.server import StreamServer

    def handle(sock, addr):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, sendall = sock.recv, sock.sendall
        try:
            while True:
                data = recv(CHUNK)
                if not data:
                    break
                sendall(data)
        except ConnectionError:
            pass
        sock.close()

    server = StreamServer((HOST, 0), handle, backlog=1024)
    server.start()
    _announce(server.server_port)
    server.serve_forever()


def serve(impl, max_seconds):
    from ._common import NotAvailable
    signal.alarm(max_seconds)   # SIGALRM's default action ends the process
    try:
        if impl == "qloop":
            serve_qloop()
        elif impl == "qloop_fd":
            serve_qloop_fd()
        elif impl == "gevent":
            serve_gevent()
        else:
            serve_aio(impl)
    except (NotAvailable, NotImplementedError) as e:
        sys.stdout.write("N/A %s\n" % e)
        sys.stdout.flush()
        return 3
    return 0


IMPLS = {name: _impl(name) for name in (
    "qloop", "qloop_fd", "asyncio_streams", "asyncio_protocol", "uvloop_streams", "uvloop_protocol",
    "gevent")}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        import argparse
        p = argparse.ArgumentParser(prog="python -m qloop.bench.echo --serve")
        p.add_argument("--serve", required=True, choices=sorted(IMPLS))
        p.add_argument("--max-seconds", type=int, default=300)
        a = p.parse_args(argv)
        return serve(a.serve, a.max_seconds)
    return cli(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
