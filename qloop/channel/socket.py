"""QIOChannelSocket: TCP (IPv4/IPv6) and UNIX stream sockets (io/channel-socket.c).

Addresses: ``(host, port)`` for TCP (host may be a name, an IPv4 or an IPv6
literal; ``(host, port, flowinfo, scope_id)`` is accepted too), a path
(``str``/``bytes``/``os.PathLike``) for a UNIX socket, and a name starting
with a NUL (``"\\0name"`` or ``b"\\0name"``) for a Linux abstract UNIX
socket.  Connections and accepted sockets are CLOEXEC; UNIX channels can
pass file descriptors (FEATURE_FD_PASS).
"""
import errno
import os
import socket as _socket

from .base import (FEATURE_FD_PASS, FEATURE_LISTEN, FEATURE_READ_MSG_PEEK, FEATURE_SHUTDOWN,
                   IO_IN, IO_OUT, SHUTDOWN_BOTH, SHUTDOWN_READ, SHUTDOWN_WRITE, in_coroutine)
from .fdbase import FdChannelBase

_HOW = {SHUTDOWN_READ: _socket.SHUT_RD, SHUTDOWN_WRITE: _socket.SHUT_WR,
        SHUTDOWN_BOTH: _socket.SHUT_RDWR}


def resolve(addr, passive=False):
    """[(family, sockaddr)] for a qloop socket address."""
    if isinstance(addr, tuple):
        if len(addr) not in (2, 4):
            raise ValueError("addr must be (host, port) or a UNIX path, not %r" % (addr,))
        host, port = addr[0], addr[1]
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError("addr: port must be an int, not %s" % type(port).__name__)
        if not 0 <= port <= 65535:
            raise ValueError("addr: port must be in 0..65535, not %d" % port)
        if host is not None and not isinstance(host, str):
            raise TypeError("addr: host must be a str, not %s" % type(host).__name__)
        if host in ("", None):
            host = None
        infos = _socket.getaddrinfo(host, port, _socket.AF_UNSPEC, _socket.SOCK_STREAM, 0,
                                    _socket.AI_PASSIVE if passive else 0)
        out = []
        for fam, _, _, _, sa in infos:
            if len(addr) == 4 and fam == _socket.AF_INET6:
                sa = (sa[0], sa[1], addr[2], addr[3])
            if (fam, sa) not in out:
                out.append((fam, sa))
        return out
    if isinstance(addr, os.PathLike):
        addr = os.fspath(addr)
    if isinstance(addr, (str, bytes)):
        if not addr:
            raise ValueError("addr: empty UNIX socket path")
        return [(_socket.AF_UNIX, addr)]
    raise TypeError("addr must be (host, port) or a UNIX socket path, not %s"
                    % type(addr).__name__)


def _is_abstract(path):
    return path[:1] in ("\0", b"\0")


class QIOChannelSocket(FdChannelBase):
    """A stream socket channel.  ``QIOChannelSocket()`` is unconnected;
    ``QIOChannelSocket(fd)`` takes ownership of a connected or listening
    socket fd."""

    def __init__(self, fd=None):
        super().__init__()
        self.set_feature(FEATURE_SHUTDOWN)
        self.local_address = None
        self.remote_address = None
        self.family = None
        self._unlink_path = None
        if fd is not None:
            if isinstance(fd, _socket.socket):
                fd = fd.detach()
            if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
                raise TypeError("fd must be a socket file descriptor (int >= 0) or None")
            self._set_fd(fd)

    @classmethod
    def pair(cls, family=_socket.AF_UNIX):
        """Two connected channels (socketpair)."""
        a, b = _socket.socketpair(family, _socket.SOCK_STREAM)
        return cls(a.detach()), cls(b.detach())

    # ---- plumbing -------------------------------------------------------
    def _sock(self):
        if self.closed:
            raise ValueError("I/O operation on a closed channel")
        return _socket.socket(fileno=self.fileno())

    def _set_fd(self, fd):
        if not self.closed:
            raise ValueError("Socket is already open")
        self._open(fd, -1, True)
        s = _socket.socket(fileno=fd)
        try:
            self.family = s.family
            self.local_address = s.getsockname()
            try:
                self.remote_address = s.getpeername()
            except OSError as e:
                if e.errno != errno.ENOTCONN:
                    raise
                self.remote_address = None
            if s.family == _socket.AF_UNIX:
                self.set_feature(FEATURE_FD_PASS)
            self.set_feature(FEATURE_READ_MSG_PEEK)
            try:
                if s.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN):
                    self.set_feature(FEATURE_LISTEN)
            except OSError:
                pass
        finally:
            s.detach()

    # ---- connect / listen ---------------------------------------------
    def connect_sync(self, addr):
        """Connect.  Outside a coroutine the thread waits (GIL released);
        inside one the connect itself yields until it completes (name
        resolution still blocks: use numeric addresses or connect_async)."""
        if not self.closed:
            raise ValueError("Socket is already open")
        err = None
        co = in_coroutine()
        for fam, sa in resolve(addr):
            s = _socket.socket(fam, _socket.SOCK_STREAM)
            try:
                if co:
                    self._connect_yielding(s, sa)
                    return
                s.connect(sa)
            except OSError as e:
                s.close()
                if not self.closed:
                    self._close_fds()
                err = err or e
                continue
            self._set_fd(s.detach())
            return
        raise err if err else OSError(errno.EADDRNOTAVAIL, "no address to connect to")

    def _connect_yielding(self, s, sa):
        s.setblocking(False)
        rc = s.connect_ex(sa)
        if rc not in (0, errno.EINPROGRESS, errno.EAGAIN):
            raise OSError(rc, os.strerror(rc))
        fd = s.detach()
        os.set_blocking(fd, True)  # the channel's default mode
        self._open(fd, -1, True)
        if rc != 0:
            self.yield_(IO_OUT)
            s2 = self._sock()
            try:
                rc = s2.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            finally:
                s2.detach()
            if rc:
                raise OSError(rc, os.strerror(rc))
        fd = self._detach()
        self._set_fd(fd)

    def listen_sync(self, addr, num=128):
        """Bind and listen (backlog ``num``).  A UNIX path is unlinked at close."""
        if not self.closed:
            raise ValueError("Socket is already open")
        fam, sa = resolve(addr, passive=True)[0]
        self._listen_on(fam, sa, num)

    def _listen_on(self, fam, sa, num):
        s = _socket.socket(fam, _socket.SOCK_STREAM)
        try:
            if fam in (_socket.AF_INET, _socket.AF_INET6):
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if fam == _socket.AF_INET6:
                s.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
            s.bind(sa)
            s.listen(num)
        except BaseException:
            s.close()
            raise
        self._set_fd(s.detach())
        self.set_feature(FEATURE_LISTEN)
        if fam == _socket.AF_UNIX and not _is_abstract(sa):
            self._unlink_path = sa

    def connect_async(self, addr, cb, context=None):
        """Connect in the thread pool; ``cb(task)`` runs in ``context`` (a
        QIOTask: ``task.propagate_error()`` raises a failure).  Returns the task."""
        resolve_check = addr  # validate arguments now, in the caller
        if not isinstance(resolve_check, (tuple, str, bytes, os.PathLike)):
            raise TypeError("addr must be (host, port) or a UNIX socket path, not %s"
                            % type(addr).__name__)
        from ..task import QIOTask

        task = QIOTask(self, cb, context=context)
        task.run_in_thread(self.connect_sync, addr)
        return task

    def listen_async(self, addr, cb, num=128, context=None):
        """listen_sync in the thread pool; ``cb(task)`` runs in ``context``."""
        if not isinstance(addr, (tuple, str, bytes, os.PathLike)):
            raise TypeError("addr must be (host, port) or a UNIX socket path, not %s"
                            % type(addr).__name__)
        from ..task import QIOTask

        task = QIOTask(self, cb, context=context)
        task.run_in_thread(self.listen_sync, addr, num)
        return task

    def accept(self):
        """Accept a connection: a new QIOChannelSocket, or None if the
        listener is non-blocking and no connection is pending.  In blocking
        mode the thread waits (GIL released)."""
        if self.closed:
            raise ValueError("I/O operation on a closed channel")
        while True:
            if self.blocking:
                self._wait_io(IO_IN)  # yield in a coroutine, else wait (GIL released)
            s = self._sock()
            try:
                s.setblocking(False)
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                if not self.blocking:
                    return None
                continue
            finally:
                if self.blocking:
                    s.setblocking(True)
                s.detach()
            fd = conn.detach()
            os.set_blocking(fd, True)
            ch = QIOChannelSocket()
            ch._set_fd(fd)
            return ch

    # ---- control ----------------------------------------------------------
    def set_blocking(self, blocking):
        super().set_blocking(blocking)

    def shutdown(self, how):
        if how not in _HOW:
            raise ValueError("how must be SHUTDOWN_READ, SHUTDOWN_WRITE or SHUTDOWN_BOTH, not %r"
                             % (how,))
        s = self._sock()
        try:
            s.shutdown(_HOW[how])
        finally:
            s.detach()

    def set_delay(self, enabled):
        if self.closed or self.family not in (_socket.AF_INET, _socket.AF_INET6):
            return
        s = self._sock()
        try:
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 0 if enabled else 1)
        except OSError:
            pass
        finally:
            s.detach()

    def set_cork(self, enabled):
        if self.closed or self.family not in (_socket.AF_INET, _socket.AF_INET6):
            return
        s = self._sock()
        try:
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_CORK, 1 if enabled else 0)
        except OSError:
            pass
        finally:
            s.detach()

    def get_peercred(self):
        """(pid, uid, gid) of a UNIX peer (SO_PEERCRED)."""
        import struct

        s = self._sock()
        try:
            data = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
        finally:
            s.detach()
        return struct.unpack("3i", data)

    def close(self):
        """Close the socket; a listening UNIX socket's path is unlinked.
        Closing twice does nothing."""
        self._drop_watches()
        path, self._unlink_path = self._unlink_path, None
        if path is not None and not self.closed:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._close_fds()

    def __del__(self):
        # finalize: a listening UNIX socket's path goes with it (the fd is
        # closed by the C base)
        path = getattr(self, "_unlink_path", None)
        if path is not None and not self.closed:
            try:
                os.unlink(path)
            except OSError:
                pass

    def __repr__(self):
        if self.closed:
            return "<QIOChannelSocket closed>"
        return "<QIOChannelSocket fd=%d local=%r remote=%r>" % (
            self.fileno(), self.local_address, self.remote_address)


def new_fd(fd):
    """A QIOChannelSocket if ``fd`` is a socket, else a QIOChannelFile (QEMU's
    qio_channel_new_fd).  Takes ownership of fd."""
    import stat

    from .file import QIOChannelFile

    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        return QIOChannelSocket(fd)
    return QIOChannelFile(fd)
