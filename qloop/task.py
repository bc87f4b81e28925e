"""QIOTask: one asynchronous operation, completed exactly once.

QEMU's io/task.c model.  ``QIOTask(source, callback, *, context=None)`` keeps
``source`` (typically a channel) alive until the task completes; then
``callback(task)`` runs exactly once and the task lets go of ``source``.

Completion:
  * ``complete()`` - success (unless an error was set with ``set_error``);
  * ``abort(exc)`` - failure with ``exc`` (the first error set wins);
  * ``run_in_thread(worker, *args)`` - ``worker(*args)`` runs in the
    context's default thread pool; returning stores its value in
    ``task.result`` and completes the task, raising aborts it with that
    exception.  The callback runs in the context's thread during its poll(),
    never in the worker.  ``wait_thread()``, from the context's thread,
    blocks until the worker is done and runs the callback at once; the
    pending completion then does nothing.

``complete()`` / ``abort()`` run the callback synchronously when called from
the thread that created the task or from a thread polling the task's
context (QEMU's qio_task_complete); from any other thread they hand the
completion to the context (it runs in its next poll).

In the callback, ``task.propagate_error()`` raises the stored error (and
clears it) or returns False when there is none, like
qio_task_propagate_error; ``task.error`` peeks at it.  An exception raised
by the callback is raised by ``complete()``/``abort()`` when they ran it, or
by the ``poll()`` that ran a deferred completion.
"""
import _thread

from . import _core
from .threadpool import CancelledError, get_thread_pool

_NEW, _RUNNING, _DONE = "new", "running", "done"


def _default_context():
    import qloop

    getter = getattr(qloop, "get_aio_context", None)
    if getter is not None:
        return getter()
    ctx = _core._current_context()
    if ctx is None:
        raise ValueError("context is required: qloop has no main loop yet and this thread "
                         "is not polling an AioContext")
    return ctx


class QIOTask:
    """One asynchronous operation on ``source``; ``callback(task)`` runs once."""

    __slots__ = ("_source", "_callback", "_ctx", "_error", "result", "_state",
                 "_owner", "_thread_lock", "_thread_result", "_thread_exc", "_waited",
                 "_worker_ident",
                 "__weakref__")

    def __init__(self, source, callback, *, context=None):
        if not callable(callback):
            raise TypeError("callback must be callable, not %s" % type(callback).__name__)
        if context is None:
            context = _default_context()
        elif not isinstance(context, _core.AioContext):
            raise TypeError("context must be an AioContext or None, not %s"
                            % type(context).__name__)
        self._source = source
        self._callback = callback
        self._ctx = context
        self._error = None
        self.result = None
        self._state = _NEW
        self._owner = _thread.get_ident()
        self._thread_lock = None
        self._thread_result = None
        self._thread_exc = None
        self._waited = False
        self._worker_ident = None

    # ---- accessors -------------------------------------------------------
    @property
    def source(self):
        """The source object; None once the callback has run."""
        return self._source

    @property
    def context(self):
        return self._ctx

    @property
    def error(self):
        """The stored error (first one set), or None."""
        return self._error

    @property
    def done(self):
        """True once the callback has run (or is running)."""
        return self._state == _DONE

    def set_error(self, exc):
        """Record ``exc`` as the task's error; only the first one is kept.

        ``None`` is a no-op.  ``exc`` must be an exception instance.
        """
        if exc is None:
            return
        if not isinstance(exc, BaseException):
            raise TypeError("exc must be an exception instance, not %s" % type(exc).__name__)
        if self._error is None:
            self._error = exc

    def propagate_error(self):
        """Raise the stored error (and forget it); return False if there is none."""
        err = self._error
        if err is None:
            return False
        self._error = None
        raise err

    # ---- completion ------------------------------------------------------
    def _check_not_done(self, what):
        if self._state == _DONE:
            raise RuntimeError("QIOTask.%s(): the task has already completed" % what)

    def complete(self):
        """Complete the task: ``callback(task)`` runs once (see the module doc)."""
        self._check_not_done("complete")
        if self._state == _RUNNING:
            raise RuntimeError("QIOTask.complete(): the task's worker thread completes it")
        self._finish_from_caller()

    def abort(self, exc):
        """Fail the task with ``exc`` (unless an error was set first), then complete it."""
        self._check_not_done("abort")
        if self._state == _RUNNING:
            raise RuntimeError("QIOTask.abort(): the task's worker thread completes it")
        if exc is None:
            raise TypeError("abort() needs an exception instance")
        self.set_error(exc)
        self._finish_from_caller()

    def _finish_from_caller(self):
        me = _thread.get_ident()
        if me == self._owner or _core._current_context() is self._ctx:
            self._finish()
        else:
            self._state = _RUNNING  # no second complete()/abort() meanwhile
            try:
                self._ctx.schedule_oneshot(self._finish)
            except BaseException:
                self._state = _NEW  # not handed over (closed context): still pending
                raise

    def _finish(self):
        if self._state == _DONE:
            return
        self._state = _DONE
        cb = self._callback
        self._callback = None
        try:
            cb(self)
        finally:
            self._source = None

    # ---- worker thread ---------------------------------------------------
    def run_in_thread(self, worker, *args):
        """Run ``worker(*args)`` in the context's thread pool (see the module doc)."""
        if not callable(worker):
            raise TypeError("worker must be callable, not %s" % type(worker).__name__)
        self._check_not_done("run_in_thread")
        if self._state == _RUNNING:
            raise RuntimeError("QIOTask.run_in_thread(): a worker is already running")
        lock = _thread.allocate_lock()
        lock.acquire()
        self._thread_lock = lock
        self._state = _RUNNING
        try:
            get_thread_pool(self._ctx).submit(self._run_worker, worker, args,
                                              callback=self._worker_done)
        except BaseException:
            self._state = _NEW
            self._thread_lock = None
            raise

    def _run_worker(self, worker, args):
        # worker thread
        self._worker_ident = _thread.get_ident()
        try:
            self._thread_result = worker(*args)
        except BaseException as e:
            self._thread_exc = e
        finally:
            self._thread_lock.release()

    def _take_worker_outcome(self):
        if self._thread_exc is not None:
            self.set_error(self._thread_exc)
        else:
            self.result = self._thread_result
        self._thread_exc = self._thread_result = None

    def _worker_done(self, req):
        # context thread, during poll (or while the context closes)
        if self._waited:
            return
        if req.cancelled:
            self.set_error(CancelledError("the task's worker was cancelled before it ran "
                                          "(its context was closed)"))
        else:
            self._take_worker_outcome()
        self._finish()

    def wait_thread(self):
        """Block until the worker has finished, then run the callback now.

        Call from the context's thread, after run_in_thread() and before the
        task completed.  The completion queued by the worker does nothing
        afterwards.  Raises what the callback raises.
        """
        if self._state != _RUNNING or self._thread_lock is None:
            raise RuntimeError("QIOTask.wait_thread(): no worker thread is running for this "
                               "task")
        if self._worker_ident == _thread.get_ident():
            raise RuntimeError("QIOTask.wait_thread() called from the task's own worker thread")
        self._thread_lock.acquire()  # releases the GIL while waiting
        self._thread_lock.release()
        self._waited = True
        self._take_worker_outcome()
        self._finish()

    def __repr__(self):
        return "<QIOTask %s source=%r error=%r>" % (self._state, self._source, self._error)
