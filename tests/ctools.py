"""Compiling and running small C programs against the installed libqloop."""
import os
import shlex
import shutil
import subprocess
import sysconfig

import pytest

import qloop


def c_compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    argv = shlex.split(cc)
    if not shutil.which(argv[0]):
        argv = ["cc"]
    if not shutil.which(argv[0]):
        pytest.skip("no C compiler")
    return argv


def sanitizer_flags():
    # ci/sanitize installs a libqloop built with ASan+UBSan: a program linking
    # it must be compiled with the same sanitizers (and then runs under them).
    with open(os.path.join(qloop.get_library_dir(), "libqloop.a"), "rb") as f:
        data = f.read()
    flags = []
    if b"__asan_init" in data:
        flags.append("-fsanitize=address")
    if b"__ubsan_handle" in data:
        flags.append("-fsanitize=undefined")
    return flags


def run_program(exe):
    env = dict(os.environ)
    env.pop("QLOOP_NOTIFIER", None)
    # Under ci/sanitize the Python running this test has libasan preloaded;
    # the program links its own sanitizer runtimes if it needs them.
    env.pop("LD_PRELOAD", None)
    p = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def compile_program(argv, tmp_path):
    p = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, "%s\n%s%s" % (shlex.join(argv), p.stdout, p.stderr)
