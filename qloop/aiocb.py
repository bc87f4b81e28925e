"""AIOCB pools: recycled control blocks for asynchronous requests.

QEMU's AIOPool / qemu_aio_get / qemu_aio_release, for code that models a
device or a driver issuing requests: ``pool.get(callback, opaque)`` hands out a
control block, the request's owner completes it with ``acb.complete(ret)``
(the callback runs exactly once, with ``(opaque, ret)``), or the submitter
cancels it with ``acb.cancel()``, which calls the pool's ``cancel(acb)``
function; the block goes back to the pool on completion (or by ``release()``)
and is handed out again by a later ``get()``.
"""


class AIOCB:
    """One asynchronous request's control block (from :meth:`AIOCBPool.get`)."""

    __slots__ = ("pool", "callback", "opaque", "_state", "result")

    def __init__(self, pool):
        self.pool = pool
        self.callback = None
        self.opaque = None
        self._state = "free"
        self.result = None

    @property
    def active(self):
        """True from get() until completed or released."""
        return self._state == "active"

    def _check(self, what):
        if self._state != "active":
            raise RuntimeError("%s() on an AIOCB that is not in use (state: %s)"
                               % (what, self._state))

    def complete(self, ret):
        """Finish the request: call ``callback(opaque, ret)`` once, then recycle."""
        self._check("complete")
        self._state = "completing"
        self.result = ret
        cb, opaque = self.callback, self.opaque
        try:
            if cb is not None:
                cb(opaque, ret)
        finally:
            self.release()

    def cancel(self):
        """Ask the pool's cancel function to cancel the request.

        The cancel function decides what happens (QEMU: it completes the
        request with -ECANCELED, or lets it finish).  Without one, cancel is
        refused with RuntimeError.
        """
        self._check("cancel")
        if self.pool.cancel_fn is None:
            raise RuntimeError("this AIOCBPool has no cancel function")
        self.pool.cancel_fn(self)

    def release(self):
        """Return the block to its pool without calling the callback."""
        if self._state == "free":
            return
        self._state = "free"
        self.callback = self.opaque = None
        self.pool._put(self)

    def __repr__(self):
        return "<AIOCB %s opaque=%r>" % (self._state, self.opaque)


class AIOCBPool:
    """A pool of :class:`AIOCB` control blocks; ``cancel(acb)`` cancels one."""

    def __init__(self, cancel=None, max_free=1024):
        if cancel is not None and not callable(cancel):
            raise TypeError("cancel must be callable or None, not %s" % type(cancel).__name__)
        if not isinstance(max_free, int) or max_free < 0:
            raise ValueError("max_free must be an int >= 0, not %r" % (max_free,))
        self.cancel_fn = cancel
        self.max_free = max_free
        self._free = []
        self.allocated = 0  # blocks ever created (recycling keeps this low)

    def get(self, callback, opaque=None):
        """A control block whose completion calls ``callback(opaque, ret)``."""
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable, not %s" % type(callback).__name__)
        if self._free:
            acb = self._free.pop()
        else:
            acb = AIOCB(self)
            self.allocated += 1
        acb.callback = callback
        acb.opaque = opaque
        acb.result = None
        acb._state = "active"
        return acb

    def _put(self, acb):
        if len(self._free) < self.max_free:
            self._free.append(acb)

    @property
    def free_count(self):
        return len(self._free)
