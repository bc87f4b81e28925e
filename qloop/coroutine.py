"""Stackful coroutines for Python functions (QEMU's coroutine model).

``Coroutine(fn, *args)`` runs ``fn(*args)`` on its own C stack; it gives
control back with ``coroutine_yield()`` or by waiting on a ``CoMutex``,
``CoQueue``, ``CoRwlock`` or ``co_sleep_ns()``, at any call depth.  The types
and functions are implemented in C (``qloop._core``); see
docs/python-stack-switching.md for how the interpreter state is switched.

Rules worth knowing:

* A coroutine runs in a copy of the ``contextvars`` context that was current
  when it was created (like an asyncio task).
* It belongs to the thread that created it: entering it from another thread
  raises RuntimeError.
* ``sys._getframe()``/tracebacks inside it end at its entry function.
* A suspended coroutine nobody references is unwound by throwing
  ``CoroutineExit`` into it (finally blocks and with-exits run).  Suspended
  coroutines of the main thread are unwound at interpreter exit (atexit).
  A coroutine whose own frames reference it is not collected while suspended
  (CPython's GC does not see frames on a suspended stack).
* On 3.10/3.11 the recursion limit inside a coroutine is reduced to what its
  C stack can hold (about one level per KiB of stack); use ``stack_size`` for
  deep recursion.  On 3.12+ only C re-entries are limited by the stack.
"""
import atexit as _atexit

from . import _core

Coroutine = _core.Coroutine
CoroutineExit = _core.CoroutineExit
CoQueue = _core.CoQueue
CoMutex = _core.CoMutex
CoRwlock = _core.CoRwlock
coroutine_yield = _core.coroutine_yield
coroutine_self = _core.coroutine_self
in_coroutine = _core.in_coroutine
co_wake = _core.co_wake
co_sleep_ns = _core.co_sleep_ns

_atexit.register(_core._coroutine_kill_all)

__all__ = [
    "CoMutex",
    "CoQueue",
    "CoRwlock",
    "Coroutine",
    "CoroutineExit",
    "co_sleep_ns",
    "co_wake",
    "coroutine_self",
    "coroutine_yield",
    "in_coroutine",
]
