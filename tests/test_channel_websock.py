"""QIOChannelWebsock (server side) against the websockets package and the
built-in test client, over real sockets."""
import struct
import threading

import pytest

import qloop
from qloop.channel import websock as ws


def server_pair(**kw):
    a, b = qloop.QIOChannelSocket.pair()
    return qloop.QIOChannelWebsock.new_server(a, **kw), ws.WebsockClient(b)


def handshaken(**kw):
    srv, cli = server_pair(**kw)
    t = threading.Thread(target=srv.handshake)
    t.start()
    status, _ = cli.handshake()
    t.join()
    assert status == 101 and srv.handshake_done
    return srv, cli


def test_accept_key_rfc_example():
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_binary_roundtrip_and_fragmentation():
    srv, cli = handshaken()
    cli.send(b"hello")
    assert srv.read_all(5) == b"hello"
    cli.send(b"frag-", fin=False)
    cli.send(b"ment", opcode=ws.OP_CONT, fin=False)
    cli.send(b"ed", opcode=ws.OP_CONT)
    assert srv.read_all(11) == b"frag-mented"
    srv.write_all(b"x" * 70000)  # 64-bit length
    assert cli.recv() == (ws.OP_BINARY, b"x" * 70000)
    srv.write_all(b"y" * 300)  # 16-bit length
    assert cli.recv() == (ws.OP_BINARY, b"y" * 300)
    srv.close()
    cli.ch.close()


def test_ping_gets_pong_with_payload():
    srv, cli = handshaken()
    cli.send(b"are you there", opcode=ws.OP_PING)
    cli.send(b"data")
    assert srv.read_all(4) == b"data"
    assert cli.recv() == (ws.OP_PONG, b"are you there")
    srv.close()
    cli.ch.close()


def test_unmasked_client_frame_closes_1002():
    srv, cli = handshaken()
    cli.send(b"naked", mask=False)
    with pytest.raises(ws.WebsockError) as ei:
        srv.read(10)
    assert ei.value.status == 1002
    op, payload = cli.recv()
    assert op == ws.OP_CLOSE and struct.unpack(">H", payload[:2])[0] == 1002
    assert b"masked" in payload
    srv.close()
    cli.ch.close()


def test_text_frame_closes_1003():
    srv, cli = handshaken()
    cli.send(b"text", opcode=ws.OP_TEXT)
    with pytest.raises(ws.WebsockError) as ei:
        srv.read(10)
    assert ei.value.status == 1003
    assert cli.recv()[0] == ws.OP_CLOSE
    srv.close()
    cli.ch.close()


def test_oversized_frame_closes_1009():
    srv, cli = handshaken(max_size=1000)
    cli.send(b"z" * 1001)
    with pytest.raises(ws.WebsockError) as ei:
        srv.read(10)
    assert ei.value.status == 1009
    op, payload = cli.recv()
    assert op == ws.OP_CLOSE and struct.unpack(">H", payload[:2])[0] == 1009
    srv.close()
    cli.ch.close()


def test_peer_close_is_echoed_and_reads_eof():
    srv, cli = handshaken()
    cli.send(struct.pack(">H", 1001) + b"going away", opcode=ws.OP_CLOSE)
    assert srv.read(10) == b""
    assert (srv.close_code, srv.close_reason) == (1001, "going away")
    op, payload = cli.recv()
    assert op == ws.OP_CLOSE and struct.unpack(">H", payload[:2])[0] == 1001
    with pytest.raises(BrokenPipeError):
        srv.write(b"late")
    srv.close()
    cli.ch.close()


@pytest.mark.parametrize("request_text,status", [
    (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n"
     b"Sec-WebSocket-Protocol: binary\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 5000 + b"\r\n\r\n", 403),
])
def test_malformed_handshake_gets_http_error_and_close(request_text, status):
    srv, cli = server_pair()
    ctx = qloop.AioContext()
    done = []
    srv.handshake(lambda task: done.append(task.error), context=ctx)
    cli.ch.write_all(request_text)
    while not done:
        ctx.poll(True)
    assert isinstance(done[0], ws.WebsockError) and done[0].status == status
    resp = b""
    while True:
        d = cli.ch.read(4096)
        if not d:
            break  # closed after the response
        resp += d
    assert resp.startswith(b"HTTP/1.1 %d " % status)
    srv.close()
    cli.ch.close()
    ctx.close()


def test_interop_with_websockets_package():
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    lst = qloop.QIOChannelSocket()
    lst.listen_sync(("127.0.0.1", 0))
    port = lst.local_address[1]
    result = {}

    def client():
        with connect("ws://127.0.0.1:%d/" % port, subprotocols=["binary"]) as c:
            c.send(b"from websockets" * 1000)
            result["echo"] = c.recv(timeout=30)
            c.ping(b"p").wait(timeout=30)
            result["pong"] = True

    t = threading.Thread(target=client)
    t.start()
    conn = lst.accept()
    srv = qloop.QIOChannelWebsock.new_server(conn)
    srv.handshake()
    msg = srv.read_all(15000)
    srv.write_all(msg[::-1])
    # keep reading so the ping is answered; the client then closes
    assert srv.read(100) == b""
    t.join()
    assert result["echo"] == msg[::-1] and result["pong"]
    assert srv.close_code == 1000
    srv.close()
    lst.close()
