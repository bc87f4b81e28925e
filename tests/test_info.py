"""``python -m qloop info``."""
import os
import subprocess
import sys

import pytest

import qloop
from qloop import _info


def run_info(tmp_path, **env):
    # Run from an empty directory: from the repository root the source
    # package (no compiled module) would shadow the installed one.
    e = dict(os.environ)
    for var in ("QLOOP_NOTIFIER", "QLOOP_FDMON", "QLOOP_COROUTINE", "QLOOP_STACK_SIZE"):
        e.pop(var, None)
    e.update(env)
    p = subprocess.run([sys.executable, "-m", "qloop", "info"], cwd=tmp_path, env=e,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = {}
    for line in p.stdout.splitlines():
        name, _, value = line.partition(":")
        lines[name.strip()] = value.strip()
    return lines


def test_info_prints_version_and_notifier(tmp_path):
    lines = run_info(tmp_path)
    assert lines["qloop"] == qloop.__version__
    assert lines["event notifier"] in ("eventfd", "pipe")
    assert lines["python"].startswith("%d.%d." % sys.version_info[:2])
    assert os.path.isfile(os.path.join(lines["include dir"], "qloop", "qloop.h"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="eventfd is Linux-only")
def test_info_follows_qloop_notifier(tmp_path):
    assert run_info(tmp_path)["event notifier"] == "eventfd"
    assert run_info(tmp_path, QLOOP_NOTIFIER="pipe")["event notifier"] == "pipe"


def test_info_lists_registered_providers(monkeypatch):
    monkeypatch.setattr(qloop, "_INFO_PROVIDERS", [("widget", lambda: "blue")], raising=False)
    assert ("widget", "blue") in _info.info_lines()


def test_info_shows_backends_that_exist():
    names = [name for name, _ in _info.info_lines()]
    if hasattr(qloop.lib, "ql_coroutine_backend"):
        assert "coroutine backend" in names and "stack size" in names
    if hasattr(qloop.lib, "ql_context_fdmon_name"):
        assert "fd monitor" in names


def test_main_without_command_prints_help(tmp_path):
    p = subprocess.run([sys.executable, "-m", "qloop"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "info" in p.stdout


@pytest.mark.skipif(not hasattr(qloop.lib, "ql_context_fdmon_name"), reason="no AioContext yet")
def test_info_follows_qloop_fdmon(tmp_path):
    assert run_info(tmp_path)["fd monitor"] in ("epoll", "poll")
    assert run_info(tmp_path, QLOOP_FDMON="poll")["fd monitor"] == "poll"
