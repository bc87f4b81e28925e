"""The process-wide main loop (QEMU's main-loop.h).

The main loop owns two contexts: the main AioContext (``get_aio_context()``)
and the iohandler context (``get_iohandler_context()``), whose handlers --
``set_fd_handler()`` -- run only from ``main_loop_wait()``, never from a
nested ``get_aio_context().poll()``.  The first call of any function here
initialises the main loop (``init_main_loop()`` does it explicitly).
"""
from . import _core

init_main_loop = _core.init_main_loop
get_aio_context = _core.get_aio_context
get_iohandler_context = _core.get_iohandler_context
notify_event = _core.notify_event
add_polling_cb = _core.add_polling_cb
del_polling_cb = _core.del_polling_cb
add_child_watch = _core.add_child_watch


def main_loop_wait(nonblocking=False):
    """One main-loop iteration; returns True if a callback ran.

    Runs the polling callbacks, waits (unless ``nonblocking``) until the main
    or the iohandler context has work, then dispatches both.  The iothread
    lock is held while dispatching and dropped while blocked, as in QEMU.
    """
    return _core.main_loop_wait(nonblocking)


def set_fd_handler(fd, read=None, write=None):
    """Level-triggered fd handlers on the iohandler context (None, None removes)."""
    get_iohandler_context().set_fd_handler(fd, read, write)


def run(fn, *args):
    """Run ``fn(*args)`` as a coroutine in the main context until it finishes."""
    return get_aio_context().run(fn, *args)


def aio_wait():
    """QEMU's qemu_aio_wait: one blocking poll of the main context."""
    return get_aio_context().poll(blocking=True)


def aio_flush():
    """QEMU's qemu_aio_flush: poll the main context until no request is in flight."""
    get_aio_context().flush()


class IOThreadLock:
    """The iothread lock (QEMU's BQL).

    ``main_loop_wait()`` holds it while dispatching and drops it while
    blocked, so a worker thread that takes it runs only while the main loop
    sleeps.  Use ``with qloop.iothread_lock():`` or ``lock()``/``unlock()``;
    it is not re-entrant: taking it twice in one thread, or unlocking it
    without holding it, raises RuntimeError.  Waiting for it releases the GIL.
    """

    __slots__ = ()

    def lock(self):
        _core._iothread_lock()

    def unlock(self):
        _core._iothread_unlock()

    def locked(self):
        """True if the calling thread holds it."""
        return _core._iothread_locked()

    def __enter__(self):
        self.lock()
        return self

    def __exit__(self, *exc):
        self.unlock()


_IOTHREAD_LOCK = IOThreadLock()


def iothread_lock():
    """The iothread lock (a context manager; also ``.lock()`` / ``.unlock()``)."""
    return _IOTHREAD_LOCK
