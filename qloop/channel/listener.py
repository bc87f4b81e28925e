"""QIONetListener: accept clients on several listening sockets at once
(io/net-listener.c)."""
import errno
import socket as _socket

from .base import IO_IN
from .socket import QIOChannelSocket, resolve


class QIONetListener:
    """Listening sockets plus a client callback.

    ``open_sync(addr)`` listens on every address ``addr`` resolves to (for
    ``("localhost", 0)`` that is 127.0.0.1 and ::1, on one port).
    ``set_client_func(cb, context=None)`` calls ``cb(listener, channel)`` in
    ``context`` for each accepted client; ``cb=None`` stops accepting.
    """

    def __init__(self, name=None):
        self.name = name
        self.channels = []
        self._watches = []
        self._func = None
        self._ctx = None
        self.connected = False

    def open_sync(self, addr, num=128):
        """Listen on every address of ``addr``; the partial failures are
        ignored, the first error is raised when none succeeded."""
        first_err = None
        port = None
        for fam, sa in resolve(addr, passive=True):
            if fam in (_socket.AF_INET, _socket.AF_INET6) and port is not None and sa[1] == 0:
                sa = (sa[0], port) + tuple(sa[2:])
            ch = QIOChannelSocket()
            try:
                ch._listen_on(fam, sa, num)
            except OSError as e:
                first_err = first_err or e
                continue
            if fam in (_socket.AF_INET, _socket.AF_INET6) and port is None:
                port = ch.local_address[1]
            self.add(ch)
        if not self.channels:
            raise first_err or OSError(errno.EADDRNOTAVAIL, "no address to listen on")

    def add(self, channel):
        """Add a listening QIOChannelSocket."""
        if self.name:
            channel.name = self.name + "-listen"
        self.channels.append(channel)
        channel.set_blocking(False)
        if self._func is not None:
            self._watch(channel)
        self.connected = True

    def _watch(self, ch):
        self._watches.append(ch.add_watch(IO_IN, self._ready, self._ctx))

    def _ready(self, ch, cond):
        try:
            client = ch.accept()
        except OSError:
            return True  # QEMU ignores accept failures; the watch stays
        if client is None:
            return True
        if self.name:
            client.name = self.name + "-client"
        if self._func is not None:
            self._func(self, client)
        return True

    def set_client_func(self, cb, context=None):
        """Replace the client callback (None removes it)."""
        if cb is not None and not callable(cb):
            raise TypeError("cb must be callable or None, not %s" % type(cb).__name__)
        for w in self._watches:
            w.remove()
        self._watches = []
        self._func = cb
        self._ctx = context
        if cb is not None:
            for ch in self.channels:
                self._watch(ch)

    def wait_client(self):
        """Block until a client connects and return its channel (no other
        callback runs meanwhile)."""
        import select

        if not self.channels:
            raise ValueError("listener has no listening socket")
        p = select.poll()
        by_fd = {ch.fileno(): ch for ch in self.channels}
        for fd in by_fd:
            p.register(fd, select.POLLIN)
        while True:
            for fd, _ in p.poll():
                try:
                    client = by_fd[fd].accept()
                except OSError:
                    continue
                if client is not None:
                    return client

    @property
    def local_addresses(self):
        return [ch.local_address for ch in self.channels]

    def is_connected(self):
        return self.connected

    def disconnect(self):
        """Stop watching and close every listening socket (the callback stays set)."""
        for w in self._watches:
            w.remove()
        self._watches = []
        for ch in self.channels:
            ch.close()
        self.connected = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disconnect()
