"""QIOChannelCommand: real child processes, no zombies."""
import os
import sys

import pytest

import qloop


def is_zombie_or_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def assert_reaped(pid):
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not os.path.exists("/proc/%d" % pid)


def test_cat_roundtrip_and_close_reaps():
    c = qloop.QIOChannelCommand(["cat"])
    c.write_all(b"hello child")
    assert c.read_all(11) == b"hello child"
    c.close()
    assert c.returncode == 0
    assert_reaped(c.pid)


def test_read_only_mode_reads_child_output():
    c = qloop.QIOChannelCommand([sys.executable, "-c", "print('out')"], mode="r")
    assert c.read_all_eof(4) == b"out\n"
    assert c.read(1) == b""
    c.close()
    assert_reaped(c.pid)


def test_write_only_mode():
    c = qloop.QIOChannelCommand([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                mode="w")
    c.write_all(b"x" * 100000)
    c.close()
    assert c.returncode == 0
    assert_reaped(c.pid)


def test_close_kill_after_kills_stubborn_child():
    c = qloop.QIOChannelCommand([sys.executable, "-c",
                                 "import signal,time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"])
    assert c.read_all(6) == b"ready\n"  # SIGTERM is ignored from now on
    c.close(kill_after=0.05)
    assert c.returncode == -9
    assert_reaped(c.pid)


def test_gc_of_unclosed_channel_reaps_child():
    import gc

    c = qloop.QIOChannelCommand(["sleep", "60"])
    pid = c.pid
    del c
    gc.collect()
    assert_reaped(pid)


def test_child_exit_gives_eof_and_status():
    c = qloop.QIOChannelCommand([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert c.read(10) == b""
    c.close()
    assert c.returncode == 3


def test_exec_failure_is_oserror():
    with pytest.raises(OSError):
        qloop.QIOChannelCommand(["/nonexistent/program"])


def test_bad_arguments():
    with pytest.raises(TypeError, match="argv"):
        qloop.QIOChannelCommand("cat")
    with pytest.raises(ValueError, match="argv"):
        qloop.QIOChannelCommand([])
    with pytest.raises(ValueError, match="mode"):
        qloop.QIOChannelCommand(["cat"], mode="x")


def test_watch_on_two_fds(ctx):
    c = qloop.QIOChannelCommand(["cat"])
    c.set_blocking(False)
    got = []

    def readable(ch, cond):
        data = ch.read(100)
        if data:
            got.append(data)
        return not data

    c.add_watch(qloop.IO_IN, readable, ctx)
    wrote = []
    c.add_watch(qloop.IO_OUT, lambda ch, cond: wrote.append(ch.write(b"via watch")) and False,
                ctx)
    while b"".join(got) != b"via watch":
        ctx.poll(True)
    assert wrote == [9]
    c.close()
    assert_reaped(c.pid)
