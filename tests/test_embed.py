"""Embedding libqloop in a C program, from the installed package alone."""
import os
import shlex
import shutil
import subprocess
import sysconfig

import pytest

import qloop
from ctools import c_compiler, compile_program, run_program, sanitizer_flags

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "c_embed", "embed_notifier.c")
EXPECTED = "OK qloop %s eventfd\n" % qloop.__version__
WARNINGS = ["-std=c11", "-Wall", "-Wextra", "-Werror"]


def editable():
    # meson-python's editable installs load the package through its own finder;
    # headers then live in the source tree and the library in the build dir.
    return type(qloop.__spec__.loader).__module__.endswith("_editable_loader")


def test_headers_and_library_are_installed():
    inc = qloop.get_include()
    libdir = qloop.get_library_dir()
    for h in ("qloop.h", "notifier.h", "blocking.h", "version.h"):
        assert os.path.isfile(os.path.join(inc, "qloop", h)), h
    assert os.path.isfile(os.path.join(libdir, "libqloop.a"))


@pytest.mark.skipif(editable(), reason="editable install: headers are in the source tree")
def test_non_editable_paths_are_inside_the_package():
    pkg = os.path.dirname(os.path.abspath(qloop.__file__))
    assert os.path.isfile(os.path.join(pkg, "__init__.py"))
    assert qloop.get_include() == os.path.join(pkg, "include")
    assert qloop.get_library_dir() == os.path.join(pkg, "lib")
    assert qloop.get_pkgconfig_dir() == os.path.join(pkg, "lib", "pkgconfig")
    assert os.path.isfile(os.path.join(qloop.get_pkgconfig_dir(), "qloop.pc"))
    site_dirs = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    assert os.path.realpath(os.path.dirname(pkg)) in site_dirs


def test_embed_with_get_include_and_library_dir(tmp_path):
    exe = str(tmp_path / "embed_notifier")
    compile_program(c_compiler() + WARNINGS + sanitizer_flags() + [
        SOURCE, "-I", qloop.get_include(),
        "-L", qloop.get_library_dir(), "-lqloop", "-pthread", "-o", exe], tmp_path)
    assert run_program(exe) == EXPECTED


@pytest.mark.skipif(editable(), reason="the .pc file's layout is only valid in a real install")
@pytest.mark.skipif(not shutil.which("pkg-config"), reason="pkg-config is not installed")
def test_embed_with_pkg_config(tmp_path):
    env = dict(os.environ, PKG_CONFIG_PATH=qloop.get_pkgconfig_dir())
    p = subprocess.run(["pkg-config", "--cflags", "--libs", "qloop"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    flags = shlex.split(p.stdout)
    # The .pc names the static library by its full path, so no system
    # libqloop can be picked up instead.
    assert os.path.join(qloop.get_library_dir(), "libqloop.a") in [
        os.path.normpath(f) for f in flags]
    exe = str(tmp_path / "embed_notifier")
    compile_program(c_compiler() + WARNINGS + sanitizer_flags() + [SOURCE] + flags + ["-o", exe], tmp_path)
    assert run_program(exe) == EXPECTED
    p = subprocess.run(["pkg-config", "--modversion", "qloop"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout.strip() == qloop.__version__


@pytest.mark.skipif(not shutil.which("c++"), reason="no C++ compiler")
def test_headers_compile_as_cplusplus(tmp_path):
    src = tmp_path / "use.cpp"
    src.write_text('#include <qloop/qloop.h>\n'
                   'int main() { QLNotifier n; return ql_notifier_init(&n); }\n')
    compile_program(["c++", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                     "-I", qloop.get_include(), str(src)], tmp_path)
