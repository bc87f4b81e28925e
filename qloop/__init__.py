"""qloop: QEMU's event-loop model for Python, over a small C core.

AioContext (bottom halves, timers, fd handlers), stackful coroutines, a thread
pool, QIOTask and QIOChannel.  See README.md for what exists today.
"""
import importlib.machinery
import importlib.resources
import importlib.util
import os
import sys

from . import _qloop
from ._qloop import ffi, lib


def _load_core():
    # qloop._core is compiled into the same shared object as the cffi module
    # (one copy of libqloop's state); load it from that file under its own name.
    name = __name__ + "._core"
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.ExtensionFileLoader(name, _qloop.__file__)
    spec = importlib.util.spec_from_file_location(name, _qloop.__file__, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    loader.exec_module(mod)
    return mod


_core = _load_core()

from ._errors import check_errno  # noqa: E402
from .notifier import EventNotifier  # noqa: E402
from .context import (  # noqa: E402
    BH,
    CLOCK_HOST,
    CLOCK_REALTIME,
    CLOCK_VIRTUAL,
    AioContext,
    Timer,
    VirtualClock,
)
from .aiocb import AIOCB, AIOCBPool  # noqa: E402
from .iothread import IOThread  # noqa: E402
from .threadpool import (  # noqa: E402
    CancelledError,
    ThreadPool,
    ThreadPoolRequest,
    get_thread_pool,
    run_in_thread,
)
from .task import QIOTask  # noqa: E402
from .mainloop import (  # noqa: E402
    add_child_watch,
    add_polling_cb,
    aio_flush,
    aio_wait,
    del_polling_cb,
    get_aio_context,
    get_iohandler_context,
    init_main_loop,
    iothread_lock,
    main_loop_wait,
    notify_event,
    run,
    set_fd_handler,
)
from .coroutine import (  # noqa: E402
    CoMutex,
    CoQueue,
    CoRwlock,
    Coroutine,
    CoroutineExit,
    co_sleep_ns,
    co_wake,
    coroutine_self,
    coroutine_yield,
    in_coroutine,
)

__version__ = ffi.string(lib.ql_version()).decode()


def _data_file(*parts):
    # importlib.resources maps onto the installed tree and onto meson-python's
    # editable tree alike (__file__ points at the sources in editable mode).
    # Look up a file, then take its directory.
    return str(importlib.resources.files(__name__).joinpath(*parts))


def get_include():
    """Directory to put on the C include path for ``#include <qloop/qloop.h>``."""
    return os.path.dirname(os.path.dirname(_data_file("include", "qloop", "qloop.h")))


def get_library_dir():
    """Directory holding the static library ``libqloop.a`` (link with -pthread)."""
    return os.path.dirname(_data_file("lib", "libqloop.a"))


def get_pkgconfig_dir():
    """Directory holding ``qloop.pc`` (for PKG_CONFIG_PATH)."""
    return os.path.join(get_library_dir(), "pkgconfig")


__all__ = [
    "add_child_watch",
    "add_polling_cb",
    "aio_flush",
    "aio_wait",
    "AIOCB",
    "AIOCBPool",
    "AioContext",
    "BH",
    "CancelledError",
    "check_errno",
    "CLOCK_HOST",
    "CLOCK_REALTIME",
    "CLOCK_VIRTUAL",
    "co_sleep_ns",
    "co_wake",
    "CoMutex",
    "CoQueue",
    "Coroutine",
    "coroutine_self",
    "coroutine_yield",
    "CoroutineExit",
    "CoRwlock",
    "del_polling_cb",
    "EventNotifier",
    "ffi",
    "get_aio_context",
    "get_include",
    "get_iohandler_context",
    "get_library_dir",
    "get_pkgconfig_dir",
    "get_thread_pool",
    "in_coroutine",
    "init_main_loop",
    "IOThread",
    "iothread_lock",
    "lib",
    "main_loop_wait",
    "notify_event",
    "QIOTask",
    "run",
    "run_in_thread",
    "set_fd_handler",
    "ThreadPool",
    "ThreadPoolRequest",
    "Timer",
    "VirtualClock",
]
