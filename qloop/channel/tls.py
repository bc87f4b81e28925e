"""QIOChannelTLS: TLS over any channel, with Python's ssl module doing the
cryptography through memory BIOs (io/channel-tls.c model).

The TLS channel reads ciphertext from and writes ciphertext to its
``master`` channel.  Blocking behaviour follows the master: on a
non-blocking master, read/write return None when the master would block.

``handshake(cb=None, context=None)``: inside a coroutine it yields until the
handshake is done (or raises the SSL error); outside one with ``cb`` it
runs as a QIOTask driven by watches on the master (``cb(task)`` runs in
``context``, ``task.propagate_error()`` raises a failure such as
ssl.SSLCertVerificationError); without ``cb`` it blocks.  Client channels
check the server's name (``hostname``) whenever the SSLContext asks for it
(``ssl.create_default_context()`` does; that is the default).
``shutdown(SHUTDOWN_WRITE)`` (or ``bye()``) sends close_notify; a peer's
close_notify reads as end of file.
"""
import errno
import ssl

from .base import (FEATURE_SHUTDOWN, IO_IN, IO_OUT, SHUTDOWN_BOTH, SHUTDOWN_READ,
                   SHUTDOWN_WRITE, QIOChannel)
from .handshake import HandshakeMixin

_READ_CHUNK = 65536


class QIOChannelTLS(HandshakeMixin, QIOChannel):
    def __init__(self, master, ssl_context, server_side, hostname=None):
        super().__init__()
        if not isinstance(master, QIOChannel):
            raise TypeError("master must be a QIOChannel, not %s" % type(master).__name__)
        if not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError("ssl_context must be an ssl.SSLContext, not %s"
                            % type(ssl_context).__name__)
        self.master = master
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = ssl_context.wrap_bio(self._in, self._out, server_side=server_side,
                                         server_hostname=hostname)
        self._pending = b""  # ciphertext not yet accepted by the master
        self._shut = 0
        self.handshake_done = False
        if master.has_feature(FEATURE_SHUTDOWN):
            self.set_feature(FEATURE_SHUTDOWN)

    @classmethod
    def new_server(cls, master, ssl_context):
        """Server end over ``master``."""
        return cls(master, ssl_context, True)

    @classmethod
    def new_client(cls, master, ssl_context, hostname=None):
        """Client end over ``master``; ``hostname`` is checked against the
        server's certificate (when the context has check_hostname) and sent
        as SNI."""
        if hostname is not None and not isinstance(hostname, str):
            raise TypeError("hostname must be a str or None, not %s" % type(hostname).__name__)
        return cls(master, ssl_context, False, hostname)

    # ---- ciphertext plumbing --------------------------------------------
    def _flush_out(self):
        """Push ciphertext to the master; True when nothing is left."""
        if self._out.pending:
            self._pending += self._out.read()
        while self._pending:
            n = self.master.write(self._pending)
            if n is None:
                return False
            self._pending = self._pending[n:]
        return True

    def _fill_in(self):
        """One read from the master into the TLS engine: True if data came,
        None if the master would block; end of file is passed on."""
        data = self.master.read(_READ_CHUNK)
        if data is None:
            return None
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    # ---- handshake ------------------------------------------------------
    def _hs_advance(self):
        """Advance the handshake without waiting: None when done, else the
        condition to wait for on the master (IO_IN / IO_OUT)."""
        if not self._flush_out():
            return IO_OUT
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return IO_OUT if not self._flush_out() else IO_IN
        except ssl.SSLError:
            try:
                self._flush_out()  # best effort: let the peer see the alert
            except OSError:
                pass
            raise
        if not self._flush_out():
            return IO_OUT
        self.handshake_done = True
        return None

    def _hs_input(self):
        got = self._fill_in()
        if got is False:
            raise ssl.SSLEOFError("TLS handshake: the peer closed the connection")

    # ---- I/O --------------------------------------------------------------
    def _io_readv(self, buffers, want_fds):
        total = sum(memoryview(b).nbytes for b in buffers)
        if self._shut & SHUTDOWN_READ:
            return (0, [])
        while True:
            try:
                data = self._ssl.read(total) if total else b""
                break
            except ssl.SSLWantReadError:
                if not self._flush_out():
                    return None
                got = self._fill_in()
                if got is None:
                    return None
            except ssl.SSLZeroReturnError:
                return (0, [])  # close_notify from the peer
            except ssl.SSLEOFError:
                if self._shut & SHUTDOWN_READ:
                    return (0, [])
                raise
        self._flush_out()  # post-handshake messages (tickets, key updates)
        n = 0
        for b in buffers:
            v = memoryview(b).cast("B")
            take = min(len(v), len(data) - n)
            v[:take] = data[n:n + take]
            n += take
        return (len(data), [])

    def _io_writev(self, buffers, fds):
        if self._shut & SHUTDOWN_WRITE:
            raise BrokenPipeError(errno.EPIPE, "TLS channel was shut down for writing")
        if not self._flush_out():
            return None
        data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
        if not data:
            return 0
        try:
            n = self._ssl.write(data)
        except ssl.SSLWantReadError:
            return None
        self._flush_out()  # what the master does not take now stays queued
        return n

    def writev_all(self, buffers, *, fds=()):
        super().writev_all(buffers, fds=fds)
        while not self._flush_out():
            self._wait_master(IO_OUT)

    # ---- readiness ------------------------------------------------------
    def _buffered_input(self):
        return bool(self._ssl.pending() or self._shut & SHUTDOWN_READ)

    # ---- control ----------------------------------------------------------
    def bye(self):
        """Send close_notify (the master stays open)."""
        try:
            self._ssl.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        except ssl.SSLError as e:
            if "shutdown while in init" not in str(e):
                raise
        while not self._flush_out():
            self._wait_master(IO_OUT)

    def shutdown(self, how):
        if how not in (SHUTDOWN_READ, SHUTDOWN_WRITE, SHUTDOWN_BOTH):
            raise ValueError("how must be SHUTDOWN_READ, SHUTDOWN_WRITE or SHUTDOWN_BOTH, not %r"
                             % (how,))
        if how & SHUTDOWN_WRITE and not self._shut & SHUTDOWN_WRITE and self.handshake_done:
            self.bye()
        self._shut |= how
        self.master.shutdown(how)

    def getpeercert(self, binary_form=False):
        return self._ssl.getpeercert(binary_form)

    @property
    def version(self):
        return self._ssl.version()
