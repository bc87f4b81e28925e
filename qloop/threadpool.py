"""Thread pools: blocking work on worker threads, completions in a context.

``ThreadPool(min_threads=0, max_threads=64, idle_timeout=10.0, context=None)``
is a pool of worker threads (started on demand up to ``max_threads``;
``min_threads`` kept alive; a worker idle for ``idle_timeout`` seconds exits
while more than ``min_threads`` exist).  ``submit(fn, *args, callback=None)``
runs ``fn(*args)`` on a worker (which takes the GIL like any Python thread)
and returns a :class:`ThreadPoolRequest`; ``callback(request)`` then runs in
the pool's context's thread, from that context's ``poll()``, never on the
worker.  An exception raised by the callback is raised by that ``poll()``.

Completions a single poll finds ready are delivered in submission order
(QEMU delivers such a batch newest first; qloop chooses FIFO).

``request.cancel()``: a request still queued is removed and its callback runs
later with ``request.cancelled`` true (``result()`` raises
:class:`CancelledError`); a running or finished request is not affected (its
callback gets the real result), as in QEMU.  Returns whether it cancelled.

Every :class:`AioContext` has a default pool, ``get_thread_pool(ctx)``,
created on first use and shut down when the context is closed.  Closing a
context or a pool with requests in flight cancels the queued ones, waits for
the running ones (the GIL is released meanwhile), joins every worker and then
runs every outstanding callback in the closing thread, so each callback runs
exactly once; an exception raised by a callback at that point goes to
``sys.unraisablehook`` (no poll is there to raise it).

``run_in_thread(fn, *args)``, from a qloop coroutine, runs ``fn`` in the
default pool of the context being polled, yields until it is done and
returns its result (or raises its exception).
"""
import atexit
import weakref

from . import _core

CancelledError = _core.CancelledError
ThreadPoolRequest = _core.ThreadPoolRequest

_live_pools = weakref.WeakSet()


class ThreadPool(_core.ThreadPool):
    """A pool of worker threads delivering completions into an AioContext.

    ``context=None`` means the context this thread is polling, else the main
    context.  Use as a context manager or call ``close()`` (standalone pools);
    a context's default pool (:func:`get_thread_pool`) closes with its
    context.  Attributes: ``num_threads``, ``num_idle``, ``in_flight``,
    ``context``, ``closed``; ``set_sizes(min, max)``,
    ``set_idle_timeout(seconds)``.
    """

    __slots__ = ()

    def __new__(cls, min_threads=0, max_threads=64, idle_timeout=10.0, context=None):
        self = super().__new__(cls, min_threads, max_threads, idle_timeout, context)
        _live_pools.add(self)
        return self


def get_thread_pool(ctx=None):
    """The default :class:`ThreadPool` of ``ctx``.

    ``ctx=None``: the context this thread is polling, else the main context.
    The pool is created on first use and shut down by ``ctx.close()``; every
    call returns a view of the same pool.
    """
    return _core._context_thread_pool(ThreadPool, ctx)


def run_in_thread(fn, *args):
    """From a qloop coroutine: run ``fn(*args)`` in a worker thread.

    The coroutine yields until ``fn`` has returned; the result is returned
    (or ``fn``'s exception raised, traceback included).  The work goes to the
    default pool of the context being polled (else the main context).
    """
    import qloop

    self_fn = getattr(qloop, "coroutine_self", None)
    co = self_fn() if self_fn is not None else None
    if co is None:
        raise RuntimeError("run_in_thread() must be called from a qloop coroutine (it yields "
                           "until fn has run); outside one use "
                           "get_thread_pool(ctx).submit(fn, *args, callback=...)")
    wake = qloop.co_wake
    req = get_thread_pool(None).submit(fn, *args, callback=lambda _r: wake(co))
    yield_ = qloop.coroutine_yield
    while not req.done:
        yield_()
    return req.result()


@atexit.register
def _close_pools_at_exit():
    # Worker threads must not be left running Python code while the
    # interpreter finalizes: shut standalone pools down first.
    for pool in list(_live_pools):
        try:
            pool.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass
