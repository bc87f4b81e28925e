"""QIOChannelCommand: a child process's stdin/stdout as one channel
(io/channel-command.c)."""
import errno
import os
import signal
import time

from .fdbase import FdChannelBase


class QIOChannelCommand(FdChannelBase):
    """Spawn ``argv`` (argv[0] is looked up on PATH unless it contains a
    slash) with pipes to its stdin and from its stdout; stderr is inherited.

    ``mode`` is "rw" (default), "r" (child stdin is /dev/null) or "w" (child
    stdout is /dev/null).  ``close()`` closes the pipes and waits for the
    child (no zombie is left).  Garbage-collecting an unclosed channel
    closes the pipes and reaps the child, sending SIGTERM and then SIGKILL
    if it does not exit.
    """

    def __init__(self, argv, mode="rw"):
        super().__init__()
        if isinstance(argv, (str, bytes)) or not hasattr(argv, "__iter__"):
            raise TypeError("argv must be a sequence of strings, not %s" % type(argv).__name__)
        argv = [os.fsencode(a) for a in argv]
        if not argv:
            raise ValueError("argv must not be empty")
        if mode not in ("r", "w", "rw"):
            raise ValueError("mode must be 'r', 'w' or 'rw', not %r" % (mode,))
        import subprocess

        rfd = wfd = None
        child_in = child_out = subprocess.DEVNULL
        try:
            if "w" in mode:
                child_in, wfd = os.pipe()
            if "r" in mode:
                rfd, child_out = os.pipe()
            proc = subprocess.Popen(argv, stdin=child_in, stdout=child_out, close_fds=True)
        except BaseException:
            for fd in (rfd, wfd, child_in, child_out):
                if isinstance(fd, int) and fd >= 0:
                    os.close(fd)
            raise
        for fd in (child_in, child_out):
            if isinstance(fd, int) and fd >= 0:
                os.close(fd)
        self.pid = proc.pid
        self.returncode = None
        self._proc = proc
        if rfd is None:
            rfd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if wfd is None:
            wfd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self._open(rfd, wfd, False)

    @classmethod
    def new_pid(cls, writefd, readfd, pid):
        """Wrap existing fds and a child pid (writefd may equal readfd)."""
        self = cls.__new__(cls)
        FdChannelBase.__init__(self)
        self.pid = pid
        self.returncode = None
        self._proc = None
        self._open(readfd, writefd if writefd != readfd else -1, None)
        return self

    def close(self, kill_after=None):
        """Close the pipes, then wait for the child to exit (its exit status
        is in ``returncode``; it is not checked).  With ``kill_after``
        (seconds) a child still running by then gets SIGTERM, then SIGKILL.
        No zombie is left either way."""
        self._drop_watches()
        try:
            self._close_fds()
        finally:
            if kill_after is None:
                self._reap(block=True)
            else:
                deadline = time.monotonic() + kill_after
                while not self._reap(block=False) and time.monotonic() < deadline:
                    time.sleep(0.005)
                if self.returncode is None:
                    self._abort()

    def _reap(self, block):
        if self.returncode is not None or self.pid is None:
            return True
        while True:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except InterruptedError:
                continue
            except ChildProcessError:
                self.returncode = -1
                self._forget()
                return True
            break
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        self._forget()
        return True

    def _forget(self):
        if self._proc is not None:
            self._proc.returncode = self.returncode  # subprocess must not wait again
            self._proc = None

    def _abort(self):
        """Reap the child without blocking forever: SIGTERM, then SIGKILL."""
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass
            for _ in range(10):
                if self._reap(block=False):
                    return
                time.sleep(0.001)
        self._reap(block=True)

    def __del__(self):
        try:
            if self.pid is not None and self.returncode is None:
                if not self.closed:
                    self._close_fds()
                self._abort()
        except Exception:
            pass

    def set_blocking(self, blocking):
        self._set_blocking(bool(blocking))

    def shutdown(self, how):
        raise OSError(errno.ENOTSUP, "Data path shutdown not supported")
