"""``python -m qloop info``: versions and the backends in use."""
import platform
import sys


def _coroutine_lines(ffi, lib):
    return [
        ("coroutine backend", ffi.string(lib.ql_coroutine_backend()).decode()),
        ("stack size", "%d bytes" % lib.ql_coroutine_default_stack_size()),
    ]


def _fdmon_lines(ffi, lib):
    ctx = lib.ql_context_new()
    if ctx == ffi.NULL:
        return [("fd monitor", "unavailable (%s)" % ffi.errno)]
    try:
        return [("fd monitor", ffi.string(lib.ql_context_fdmon_name(ctx)).decode())]
    finally:
        lib.ql_context_free(ctx)


# Lines for parts of libqloop that a build may not have yet: each probe runs
# only when every C function it needs is exported by the cffi module.
_PROBES = [
    (("ql_coroutine_backend", "ql_coroutine_default_stack_size"), _coroutine_lines),
    (("ql_context_new", "ql_context_fdmon_name", "ql_context_free"), _fdmon_lines),
]


def info_lines():
    import qloop
    from qloop._qloop import ffi, lib

    lines = [
        ("qloop", qloop.__version__),
        ("python", "%s (%s)" % (platform.python_version(), sys.executable)),
        ("platform", "%s %s" % (platform.system(), platform.machine())),
        ("event notifier", ffi.string(lib.ql_notifier_default_kind()).decode()),
    ]
    for needs, probe in _PROBES:
        if all(hasattr(lib, name) for name in needs):
            lines.extend(probe(ffi, lib))
    # Other modules may register (name, callable returning a str) pairs.
    for name, fn in getattr(qloop, "_INFO_PROVIDERS", ()):
        lines.append((name, fn()))
    lines.append(("include dir", qloop.get_include()))
    lines.append(("library dir", qloop.get_library_dir()))
    return lines


def main(argv=None):
    lines = info_lines()
    width = max(len(name) for name, _ in lines) + 2
    for name, value in lines:
        print("%-*s %s" % (width, name + ":", value))
    return 0
