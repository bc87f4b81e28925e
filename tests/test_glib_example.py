"""The GLib example: a qloop context as a real GSource in g_main_loop_run()."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import qloop
from ctools import c_compiler, compile_program, run_program, sanitizer_flags

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def glib_flags():
    if not shutil.which("pkg-config"):
        return None
    r = subprocess.run(["pkg-config", "--cflags", "--libs", "glib-2.0"],
                       capture_output=True, text=True)
    return r.stdout.split() if r.returncode == 0 else None


def test_glib_main_loop_runs_qloop_context(tmp_path):
    src = EXAMPLES / "glib_example.c"
    if not src.exists():
        pytest.skip("examples/ not available next to the tests")
    flags = glib_flags()
    if flags is None:
        pytest.skip("GLib development files not installed")
    exe = str(tmp_path / "glib_example")
    lib = os.path.join(qloop.get_library_dir(), "libqloop.a")
    compile_program(c_compiler() + ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Werror"]
                    + sanitizer_flags() + ["-o", exe, str(src), "-I", qloop.get_include(),
                                           "-I", str(EXAMPLES), lib, "-pthread", *flags],
                    tmp_path)
    lines = run_program(exe).split()
    assert lines[-1] == "OK"
    assert sorted(lines[:-1]) == sorted(["bh", "qloop-timer", "pipe", "glib-timeout", "thread-bh"])
