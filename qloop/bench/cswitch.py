"""cswitch: C-level coroutine switch cost (enter + yield round trip), no Python.

qloop: cswitch.c, compiled on first use against the installed core
(qloop.get_include(), qloop.get_library_dir(): libqloop.a) into
$XDG_CACHE_HOME/qloop-bench, times N enter + yield round trips
(``per_op_ns``) and N create + enter + finish (``lifecycle_ns``).
qemu: QEMU's own ``tests/unit/test-coroutine -m perf -p /perf/yield`` from
the build directory given with ``--qemu-build PATH`` (or the environment
variable QLOOP_BENCH_QEMU_BUILD); without one it reports n/a, and the runner
prints the anchor figure from docs/anchors.md as context instead.
"""
import hashlib
import json
import os
import re
import subprocess
import sys

from ._common import NotAvailable, cache_dir, cli

NAME = "cswitch"
VARIANTS = ()
DEFAULT_N = 20_000_000
QUICK_N = 2_000_000
CALLGRIND_N = None   # a C program: run it under callgrind yourself if needed
FLOORS = ()
REQUIRES = {}
# QEMU v10.0.2 /perf/yield on this kind of machine (docs/anchors.md), median of 3.
QEMU_ANCHOR_NS = 66.6


def add_arguments(p):
    p.add_argument("--qemu-build", default=os.environ.get("QLOOP_BENCH_QEMU_BUILD"),
                   help="a QEMU build directory holding tests/unit/test-coroutine")


def build():
    """Compile cswitch.c against libqloop; return the executable's path."""
    import qloop
    inc, libdir = qloop.get_include(), qloop.get_library_dir()
    lib = os.path.join(libdir, "libqloop.a")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cswitch.c")
    if not os.path.exists(lib):
        raise NotAvailable("libqloop.a not found in %s" % libdir)
    if not os.path.exists(os.path.join(inc, "qloop", "coroutine.h")):
        raise NotAvailable("C coroutines are not implemented (no qloop/coroutine.h)")
    key = hashlib.sha1()
    for path in (src, lib):
        st = os.stat(path)
        key.update(("%s:%d:%d;" % (path, st.st_size, st.st_mtime_ns)).encode())
    exe = os.path.join(cache_dir(), "cswitch-" + key.hexdigest()[:16])
    if os.path.exists(exe):
        _prune(exe, keep=KEEP_BUILDS)
        return exe
    cc = os.environ.get("CC", "cc")
    tmp = exe + ".%d" % os.getpid()
    r = subprocess.run([cc, "-O2", "-std=c11", "-I", inc, "-o", tmp, src, "-L", libdir,
                        "-lqloop", "-pthread"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        if "undefined reference to `ql_co" in r.stdout:
            raise NotAvailable("C coroutines are not in libqloop yet")
        raise RuntimeError("building cswitch failed:\n" + r.stdout)
    os.replace(tmp, exe)
    _prune(exe, keep=KEEP_BUILDS)
    return exe


KEEP_BUILDS = 4


def _prune(exe, keep):
    """Remove all but the ``keep`` newest cswitch builds beside ``exe``: each
    libqloop build (another Python, a rebuild) gets its own, and the cache
    would otherwise grow by one executable per build forever."""
    d = os.path.dirname(exe)
    builds = []
    for name in os.listdir(d):
        path = os.path.join(d, name)
        if name.startswith("cswitch-") and "." not in name and path != exe:
            try:
                builds.append((os.stat(path).st_mtime_ns, path))
            except OSError:
                pass
    builds.sort(reverse=True)
    for _, path in builds[max(keep - 1, 0):]:
        try:
            os.unlink(path)
        except OSError:
            pass


def run_qloop(n, variant, opts):
    exe = build()
    r = subprocess.run([exe, str(n)], stdout=subprocess.PIPE, text=True, check=True)
    res = json.loads(r.stdout)
    return {"seconds": res["yield_ns"] * n / 1e9, "lifecycle_ns": res["lifecycle_ns"],
            "backend": res["backend"]}


def run_qemu(n, variant, opts):
    build_dir = opts.get("qemu_build")
    if not build_dir:
        raise NotAvailable("no QEMU build given (--qemu-build PATH); anchor: %.1f ns"
                           % QEMU_ANCHOR_NS)
    exe = os.path.join(build_dir, "tests", "unit", "test-coroutine")
    if not os.access(exe, os.X_OK):
        raise NotAvailable("%s is not an executable" % exe)
    r = subprocess.run([exe, "-m", "perf", "-p", "/perf/yield", "--verbose"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=600)
    m = re.search(r"Yield (\d+) iterations: ([0-9.]+) s", r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError("test-coroutine -m perf gave no /perf/yield figure:\n"
                           + r.stdout[-2000:])
    iters, secs = int(m.group(1)), float(m.group(2))
    return {"seconds": secs, "ops": iters}


IMPLS = {"qloop": run_qloop, "qemu": run_qemu}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
