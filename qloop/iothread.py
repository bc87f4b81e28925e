"""qloop.IOThread: a thread that owns an AioContext and polls it."""
import threading

from .context import AioContext


class IOThread:
    """A thread running its own :class:`AioContext` until stopped.

    Other threads hand it work with ``iothread.context.schedule_oneshot()``,
    ``BH.schedule()`` or ``co_schedule()``, all safe from any thread.  An
    exception raised by a callback in the I/O thread does not kill it: it is
    kept and raised again by :meth:`stop` (the first one; the others are in
    ``exceptions``).
    """

    def __init__(self, name=None):
        self.name = name or "qloop-iothread"
        self._ctx = None
        self._thread = None
        self._running = False
        self._ready = threading.Event()
        self.exceptions = []

    @property
    def context(self):
        """The thread's AioContext (available once started)."""
        if self._ctx is None:
            raise RuntimeError("IOThread is not running")
        return self._ctx

    @property
    def is_running(self):
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        """Start the thread; returns once its context exists."""
        if self._thread is not None:
            raise RuntimeError("IOThread already started")
        # A restart after stop(): wait for the new context, and raise from
        # the next stop() only what this run raised (stop() already raised
        # the previous run's first exception).
        self._ready.clear()
        self.exceptions = []
        self._running = True
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._ctx is None:
            raise self.exceptions[0]
        return self

    def _run(self):
        try:
            ctx = AioContext()
        except BaseException as e:  # pragma: no cover - out of fds
            self.exceptions.append(e)
            self._ready.set()
            return
        self._ctx = ctx
        self._ready.set()
        try:
            while self._running:
                try:
                    ctx.run_forever()
                except Exception as e:
                    self.exceptions.append(e)
            # run what was handed over before stop()
            while True:
                try:
                    if not ctx.poll(blocking=False):
                        break
                except Exception as e:
                    self.exceptions.append(e)
        finally:
            self._ctx = None
            ctx.close()

    def stop(self, timeout=None):
        """Stop polling, close the context and join the thread.

        Raises the first exception a callback raised in the thread, if any.
        """
        if self._thread is None:
            return
        ctx = self._ctx
        self._running = False
        if ctx is not None:
            try:
                ctx.stop()
            except RuntimeError:
                pass  # closed meanwhile
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("IOThread %r did not stop within %s s" % (self.name, timeout))
        self._thread = None
        if self.exceptions:
            raise self.exceptions[0]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
