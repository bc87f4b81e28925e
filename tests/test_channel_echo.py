"""The echo demo and the bench echo server, run for real (bounded)."""
import os
import socket
import subprocess
import sys

import pytest

from qloop import _echo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_echo_demo_reports_round_trips(capsys):
    rt, mbs = _echo.run(clients=3, size=100, seconds=0.3, progress=False)
    assert rt > 0 and mbs > 0
    out = capsys.readouterr().out
    assert "round trips/s" in out and "MB/s" in out


def test_echo_demo_large_messages():
    rt, _ = _echo.run(clients=2, size=300000, seconds=0.3, progress=False)
    assert rt > 0


def test_echo_cli_bad_args():
    r = subprocess.run([sys.executable, "-m", "qloop", "echo", "--clients", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--clients" in r.stderr


def test_bench_echo_server_prints_ready_and_echoes():
    script = os.path.join(ROOT, "bench", "echo_qloop_server.py")
    if not os.path.exists(script):
        pytest.skip("bench/ is not next to tests/ (wheel test run)")
    p = subprocess.Popen([sys.executable, script,
                          "--port", "0", "--seconds", "30"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("READY ")
        port = int(line.split()[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            payload = os.urandom(200000)
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += s.recv(65536)
            assert got == payload
    finally:
        p.terminate()
        assert p.wait(timeout=30) == 0
