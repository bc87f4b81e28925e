"""``python -m qloop info``: versions and the backends in use."""
import platform
import sys


def info_lines():
    import qloop
    from qloop._qloop import ffi, lib

    lines = [
        ("qloop", qloop.__version__),
        ("python", "%s (%s)" % (platform.python_version(), sys.executable)),
        ("platform", "%s %s" % (platform.system(), platform.machine())),
        ("event notifier", ffi.string(lib.ql_notifier_default_kind()).decode()),
    ]
    for name, fn in getattr(qloop, "_INFO_PROVIDERS", ()):
        lines.append((name, fn()))
    lines.append(("include dir", qloop.get_include()))
    lines.append(("library dir", qloop.get_library_dir()))
    return lines


def main(argv=None):
    for name, value in info_lines():
        print("%-16s %s" % (name + ":", value))
    return 0
