"""QIOChannelTLS with a certificate made by the test, against itself and
against openssl s_server / s_client."""
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

import qloop
from tlsutil import contexts, make_pki


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def tls_pair(pki, hostname="localhost"):
    sctx, cctx = contexts(pki)
    a, b = qloop.QIOChannelSocket.pair()
    srv = qloop.QIOChannelTLS.new_server(a, sctx)
    cli = qloop.QIOChannelTLS.new_client(b, cctx, hostname)
    return srv, cli


def test_handshake_task_and_blocking_peer_then_data(pki):
    srv, cli = tls_pair(pki)
    errs = []
    t = threading.Thread(target=lambda: srv.handshake())
    t.start()
    ctx = qloop.AioContext()
    done = []
    task = cli.handshake(lambda task: done.append(task.error), context=ctx)
    assert isinstance(task, qloop.QIOTask)
    while not done:
        ctx.poll(True)
    t.join()
    assert done == [None] and not errs
    assert cli.version.startswith("TLS")
    assert cli.getpeercert()["subject"][0][0][1] == "localhost"
    cli.write_all(b"secret" * 10000)
    assert srv.read_all(60000) == b"secret" * 10000
    srv.write_all(b"back")
    assert cli.read_all(4) == b"back"
    cli.close()
    srv.close()
    ctx.close()


def test_hostname_mismatch_fails_with_ssl_error(pki):
    srv, cli = tls_pair(pki, hostname="not-localhost.example")
    t = threading.Thread(target=lambda: pytest.raises(Exception, srv.handshake))
    t.start()
    ctx = qloop.AioContext()
    done = []
    cli.handshake(lambda task: done.append(task.error), context=ctx)
    while not done:
        ctx.poll(True)
    assert isinstance(done[0], ssl.SSLCertVerificationError)
    assert "hostname" in str(done[0]).lower() or "match" in str(done[0]).lower()
    cli.close()
    t.join()
    srv.close()
    ctx.close()


def test_untrusted_certificate_fails(pki, tmp_path):
    sctx, _ = contexts(pki)
    a, b = qloop.QIOChannelSocket.pair()
    srv = qloop.QIOChannelTLS.new_server(a, sctx)
    cli = qloop.QIOChannelTLS.new_client(b, ssl.create_default_context(), "localhost")
    t = threading.Thread(target=lambda: pytest.raises(Exception, srv.handshake))
    t.start()
    with pytest.raises(ssl.SSLCertVerificationError):
        cli.handshake()
    cli.close()
    t.join()
    srv.close()


def test_close_notify_reads_as_eof(pki):
    srv, cli = tls_pair(pki)
    t = threading.Thread(target=srv.handshake)
    t.start()
    cli.handshake()
    t.join()
    cli.write_all(b"bye")
    cli.shutdown(qloop.SHUTDOWN_WRITE)
    assert srv.read_all(3) == b"bye"
    assert srv.read(10) == b""  # close_notify, not an abrupt EOF
    srv.close()
    cli.close()


def test_abrupt_eof_is_an_error(pki):
    srv, cli = tls_pair(pki)
    t = threading.Thread(target=srv.handshake)
    t.start()
    cli.handshake()
    t.join()
    cli.master.close()  # no close_notify: an error (SSLEOFError, or a reset), not b""
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        srv.read(10)
    srv.close()


def test_nonblocking_master_read_returns_none(pki):
    srv, cli = tls_pair(pki)
    t = threading.Thread(target=srv.handshake)
    t.start()
    cli.handshake()
    t.join()
    cli.set_blocking(False)
    assert cli.read(10) is None
    srv.write_all(b"now")
    assert cli.read_all(3) == b"now"
    srv.close()
    cli.close()


def test_close_cancels_pending_handshake(pki):
    sctx, cctx = contexts(pki)
    a, b = qloop.QIOChannelSocket.pair()
    cli = qloop.QIOChannelTLS.new_client(b, cctx, "localhost")
    ctx = qloop.AioContext()
    done = []
    cli.handshake(lambda task: done.append(task.error), context=ctx)
    cli.close()
    ctx.poll(False)
    assert len(done) == 1 and done[0].errno == 125  # ECANCELED
    a.close()
    ctx.close()


def test_bad_arguments():
    a, b = qloop.QIOChannelSocket.pair()
    with pytest.raises(TypeError, match="ssl_context"):
        qloop.QIOChannelTLS.new_server(a, None)
    with pytest.raises(TypeError, match="master"):
        qloop.QIOChannelTLS.new_server(3, ssl.create_default_context())
    a.close()
    b.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")


@needs_openssl
def test_client_against_openssl_s_server(pki):
    ca, cert, key = pki
    port = free_port()
    p = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", cert,
                          "-key", key, "-naccept", "1", "-rev", "-quiet"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        ch = qloop.QIOChannelSocket()
        for _ in range(200):
            try:
                ch.connect_sync(("127.0.0.1", port))
                break
            except ConnectionRefusedError:
                import time
                time.sleep(0.02)
        _, cctx = contexts(pki)
        tls = qloop.QIOChannelTLS.new_client(ch, cctx, "localhost")
        tls.handshake()
        tls.write_all(b"hello qloop\n")
        got = b""
        while not got.endswith(b"\n"):
            d = tls.read(100)
            assert d
            got += d
        assert got.strip() == b"poolq olleh"
        tls.close()
    finally:
        p.kill()
        p.wait()


@needs_openssl
def test_server_against_openssl_s_client(pki):
    ca, cert, key = pki
    sctx, _ = contexts(pki)
    lst = qloop.QIOChannelSocket()
    lst.listen_sync(("127.0.0.1", 0))
    port = lst.local_address[1]
    p = subprocess.Popen(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                          "-CAfile", ca, "-verify_return_error", "-servername", "localhost",
                          "-quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        conn = lst.accept()
        tls = qloop.QIOChannelTLS.new_server(conn, sctx)
        tls.handshake()
        p.stdin.write(b"ping from s_client\n")
        p.stdin.flush()
        line = b""
        while not line.endswith(b"\n"):
            d = tls.read(100)
            assert d
            line += d
        assert line == b"ping from s_client\n"
        tls.write_all(b"pong from qloop\n")
        assert p.stdout.readline() == b"pong from qloop\n"
        tls.shutdown(qloop.SHUTDOWN_BOTH)
        tls.close()
    finally:
        p.kill()
        p.wait()
        lst.close()
