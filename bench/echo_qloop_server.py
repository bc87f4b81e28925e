"""qloop echo server for the bench suite's load generator.

    python bench/echo_qloop_server.py [--port P] [--host H]

Listens (QIONetListener), prints "READY <port>" on stdout once accepting,
then echoes every connection: read up to 65536 bytes, write them back, from
fd handlers on one AioContext (the channel read/write are single calls into
C).  Runs until killed (SIGTERM/SIGINT) or --seconds elapse.
"""
import argparse
import signal
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    a = p.parse_args(argv)

    import qloop
    from qloop._echo import EchoServer

    ctx = qloop.AioContext()
    server = EchoServer(ctx, (a.host, a.port))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("READY %d" % server.port, flush=True)
    deadline = None if a.seconds is None else time.monotonic() + a.seconds
    timer = None
    if deadline is not None:
        timer = ctx.timer(lambda: stop.append(1))
        timer.mod_in(int(a.seconds * 1e9))
    try:
        while not stop:
            ctx.poll(True)
    except KeyboardInterrupt:
        pass
    finally:
        if timer is not None:
            timer.cancel()
        server.close()
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
