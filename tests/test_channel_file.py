"""QIOChannelFile over regular files and pipes."""
import os

import pytest

import qloop


def test_file_path_write_seek_read(tmp_path):
    p = tmp_path / "f"
    f = qloop.QIOChannelFile(str(p), "w+")
    assert f.has_feature(qloop.FEATURE_SEEKABLE)
    f.write_all(b"hello world")
    assert f.seek(6) == 6
    assert f.read_all(5) == b"world"
    assert f.read(5) == b""
    f.close()
    assert p.read_bytes() == b"hello world"


def test_file_missing_is_filenotfound(tmp_path):
    with pytest.raises(FileNotFoundError):
        qloop.QIOChannelFile(str(tmp_path / "nope"), "r")


def test_bad_mode_and_type():
    with pytest.raises(ValueError, match="mode"):
        qloop.QIOChannelFile("/dev/null", "q")
    with pytest.raises(TypeError, match="file"):
        qloop.QIOChannelFile(1.5)


def test_pipe_not_seekable_and_roundtrip():
    r, w = os.pipe()
    rc, wc = qloop.QIOChannelFile(r), qloop.QIOChannelFile(w)
    assert not rc.has_feature(qloop.FEATURE_SEEKABLE)
    with pytest.raises(OSError) as ei:
        rc.seek(0)
    assert ei.value.errno == 29  # ESPIPE
    wc.write_all(b"pipe data")
    assert rc.read_all(9) == b"pipe data"
    wc.close()
    assert rc.read(1) == b""
    rc.close()


def test_pipe_nonblocking_none_then_data():
    r, w = os.pipe()
    rc = qloop.QIOChannelFile(r)
    rc.set_blocking(False)
    assert rc.read(4) is None
    os.write(w, b"x")
    assert rc.read(4) == b"x"
    os.close(w)
    rc.close()


def test_pipe_read_all_waits_across_threads():
    import threading

    r, w = os.pipe()
    rc, wc = qloop.QIOChannelFile(r), qloop.QIOChannelFile(w)
    t = threading.Thread(target=lambda: [wc.write_all(b"y" * 1000) for _ in range(100)])
    t.start()
    assert rc.read_all(100000) == b"y" * 100000
    t.join()
    rc.close()
    wc.close()


def test_write_to_pipe_without_reader_is_brokenpipe():
    r, w = os.pipe()
    os.close(r)
    wc = qloop.QIOChannelFile(w)
    with pytest.raises(BrokenPipeError):
        wc.write_all(b"x")
    wc.close()


def test_close_twice_and_closed_errors(tmp_path):
    f = qloop.QIOChannelFile(str(tmp_path / "f"), "w")
    f.close()
    f.close()
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.write(b"x")
