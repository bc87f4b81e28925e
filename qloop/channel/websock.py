"""QIOChannelWebsock: the server side of RFC 6455 over any channel
(io/channel-websock.c model, our own code).

``QIOChannelWebsock.new_server(master)`` then ``handshake(cb=None,
context=None)`` (same driver as TLS: task / coroutine / blocking) reads the
HTTP upgrade request (at most 4096 bytes of headers) and answers
``101 Switching Protocols`` with Sec-WebSocket-Accept.  A malformed request
gets ``400 Bad Request`` (``404`` for another path, ``403`` when the headers
do not fit), the master is shut down and the handshake fails with
:class:`WebsockError`.  Required: ``GET <path> HTTP/1.1``, Host,
``Upgrade: websocket``, ``Connection: Upgrade``, ``Sec-WebSocket-Version:
13``, a 24-character Sec-WebSocket-Key and, unless ``protocols=None``, a
Sec-WebSocket-Protocol offering "binary".

After the handshake every write is sent as one unmasked binary frame; reads
return the payload of binary frames (fragmented messages are joined).
Client frames must be masked (else close 1002); text and unknown opcodes get
1003; control frames over 125 bytes or fragmented get 1002; a frame or
message over ``max_size`` gets 1009.  A ping is answered with a pong
carrying its payload.  A close frame from the peer is echoed, the master is
shut down and reads return b"" (``close_code``/``close_reason`` hold what
the peer sent).  ``close_with(code, reason)`` sends a close frame.
"""
import base64
import email.utils
import errno
import hashlib
import struct

from .base import FEATURE_SHUTDOWN, IO_IN, IO_OUT, SHUTDOWN_BOTH, QIOChannel
from .handshake import HandshakeMixin

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER = 4096
MAX_BUFFER = 8192  # queued encoded output before writes report "would block"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_SERVER_ERROR = 1011


class WebsockError(OSError):
    """A websocket protocol failure (handshake or framing).  ``status`` is the
    HTTP status sent (handshake) or the close code sent (framing)."""

    def __init__(self, status, message):
        super().__init__(errno.EPROTO, message)
        self.status = status


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    if isinstance(key, str):
        key = key.encode("ascii")
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode("ascii")


def xor_mask(payload, mask):
    n = len(payload)
    if not n:
        return b""
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(m, "little")).to_bytes(n, "little")


def encode_frame(opcode, payload, mask=None, fin=True):
    """One frame; ``mask`` (4 bytes) masks it (the client side does)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if mask is not None:
        return head + mask + xor_mask(bytes(payload), mask)
    return head + bytes(payload)


def _http_date():
    return email.utils.formatdate(usegmt=True)


class QIOChannelWebsock(HandshakeMixin, QIOChannel):
    def __init__(self, master, path="/", protocols=("binary",), max_size=1 << 20):
        super().__init__()
        if not isinstance(master, QIOChannel):
            raise TypeError("master must be a QIOChannel, not %s" % type(master).__name__)
        if not isinstance(max_size, int) or max_size < 126:
            raise ValueError("max_size must be an int >= 126, not %r" % (max_size,))
        self.master = master
        self.path = path
        self.protocols = protocols
        self.max_size = max_size
        if master.has_feature(FEATURE_SHUTDOWN):
            self.set_feature(FEATURE_SHUTDOWN)
        self._hs_buf = b""
        self._hs_response = None
        self._hs_error = None
        self.handshake_done = False
        self.request_headers = {}
        self._raw = bytearray()   # encoded input not yet decoded
        self._rbuf = bytearray()  # decoded binary payload for readers
        self._wbuf = bytearray()  # encoded output not yet written
        self._frag = None         # payload of a fragmented message in progress
        self._pong_queued = False
        self._eof = False
        self._closed_by_peer = False
        self._close_sent = False
        self._error = None
        self.close_code = None
        self.close_reason = None

    @classmethod
    def new_server(cls, master, **kw):
        """Server end over ``master`` (options: path, protocols, max_size)."""
        return cls(master, **kw)

    # ---- handshake ------------------------------------------------------
    def _hs_input(self):
        data = self.master.read(MAX_HEADER + 1 - len(self._hs_buf))
        if data is None:
            return
        if not data:
            raise WebsockError(0, "websocket handshake: the peer closed the connection")
        self._hs_buf += data
        end = self._hs_buf.find(b"\r\n\r\n")
        if end >= 0 and end + 4 <= MAX_HEADER:
            head, rest = self._hs_buf[:end], self._hs_buf[end + 4:]
            self._raw += rest
            self._process_request(head)
        elif len(self._hs_buf) >= MAX_HEADER:
            self._reject(403, "Request Entity Too Large",
                         "End of headers not found in first %d bytes" % MAX_HEADER)

    def _reject(self, status, text, why):
        self._hs_error = WebsockError(status, "websocket handshake: " + why)
        self._hs_response = ("HTTP/1.1 %d %s\r\nServer: qloop\r\nDate: %s\r\n"
                             "Connection: close\r\nSec-WebSocket-Version: 13\r\n"
                             "Content-Length: 0\r\n\r\n" % (status, text, _http_date())).encode()

    def _process_request(self, head):
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
            return self._reject(400, "Bad Request", "undecodable request")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
            return self._reject(400, "Bad Request", "bad request line %r" % lines[0][:80])
        if parts[1] != self.path:
            return self._reject(404, "Not Found", "no websocket at path %r" % parts[1][:80])
        headers = {}
        for line in lines[1:]:
            if ":" not in line:
                return self._reject(400, "Bad Request", "bad header line %r" % line[:80])
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
            if len(headers) > 32:
                return self._reject(400, "Bad Request", "too many headers")
        self.request_headers = headers
        want = {"host", "upgrade", "connection", "sec-websocket-version", "sec-websocket-key"}
        missing = sorted(want - set(headers))
        if missing:
            return self._reject(400, "Bad Request", "missing header(s) " + ", ".join(missing))
        if headers["upgrade"].lower() != "websocket":
            return self._reject(400, "Bad Request", "Upgrade is not websocket")
        if "upgrade" not in [t.strip().lower() for t in headers["connection"].split(",")]:
            return self._reject(400, "Bad Request", "Connection does not ask for Upgrade")
        if headers["sec-websocket-version"] != "13":
            return self._reject(400, "Bad Request", "unsupported websocket version")
        key = headers["sec-websocket-key"]
        if len(key) != 24:
            return self._reject(400, "Bad Request", "Sec-WebSocket-Key is not 24 characters")
        proto_line = ""
        if self.protocols is not None:
            offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
            chosen = [p for p in self.protocols if p in offered]
            if not chosen:
                return self._reject(400, "Bad Request", "no acceptable Sec-WebSocket-Protocol "
                                    "(need one of %s)" % ", ".join(self.protocols))
            proto_line = "Sec-WebSocket-Protocol: %s\r\n" % chosen[0]
        self._hs_response = ("HTTP/1.1 101 Switching Protocols\r\nServer: qloop\r\nDate: %s\r\n"
                             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Accept: %s\r\n%s\r\n"
                             % (_http_date(), accept_key(key), proto_line)).encode()

    def _hs_advance(self):
        if self._hs_response is None:
            return IO_IN
        while self._hs_response:
            n = self.master.write(self._hs_response)
            if n is None:
                return IO_OUT
            self._hs_response = self._hs_response[n:]
        if self._hs_error is not None:
            try:
                self.master.shutdown(SHUTDOWN_BOTH)
            except OSError:
                pass
            raise self._hs_error
        self.handshake_done = True
        return None

    # ---- framing ----------------------------------------------------------
    def _fail(self, code, reason):
        """Protocol error: send a close frame, shut the master down, raise."""
        if not self._close_sent:
            self._queue(encode_frame(OP_CLOSE, struct.pack(">H", code) + reason.encode()))
            self._close_sent = True
            try:
                self._flush()
                self.master.shutdown(SHUTDOWN_BOTH)
            except OSError:
                pass
        self._error = WebsockError(code, "websocket: " + reason)
        raise self._error

    def _queue(self, frame):
        self._wbuf += frame

    def _flush(self):
        """Write queued output; True when it is all out."""
        while self._wbuf:
            n = self.master.write(self._wbuf)
            if n is None:
                return False
            del self._wbuf[:n]
        return True

    def _decode(self):
        """Decode every complete frame in the raw input."""
        raw = self._raw
        while len(raw) >= 2:
            b0, b1 = raw[0], raw[1]
            fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            pos = 2
            if b0 & 0x70:
                self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not masked:
                self._fail(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            if opcode & 0x8 and (n > 125 or not fin):
                self._fail(CLOSE_PROTOCOL_ERROR, "control frame is too large or fragmented")
            if n == 126:
                if len(raw) < 4:
                    return
                n = struct.unpack_from(">H", raw, 2)[0]
                pos = 4
            elif n == 127:
                if len(raw) < 10:
                    return
                n = struct.unpack_from(">Q", raw, 2)[0]
                pos = 10
            if n > self.max_size:
                self._fail(CLOSE_TOO_LARGE, "frame of %d bytes is over the %d-byte limit"
                           % (n, self.max_size))
            if len(raw) < pos + 4 + n:
                return
            mask = bytes(raw[pos:pos + 4])
            payload = xor_mask(bytes(raw[pos + 4:pos + 4 + n]), mask)
            del raw[:pos + 4 + n]
            self._frame(fin, opcode, payload)

    def _frame(self, fin, opcode, payload):
        if opcode in (OP_BINARY, OP_CONT):
            if opcode == OP_CONT and self._frag is None:
                self._fail(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
            if opcode == OP_BINARY and self._frag is not None:
                self._fail(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin and self._frag is None:
                self._rbuf += payload
                return
            frag = (self._frag or b"") + payload
            if len(frag) > self.max_size:
                self._fail(CLOSE_TOO_LARGE, "message over the %d-byte limit" % self.max_size)
            if fin:
                self._rbuf += frag
                self._frag = None
            else:
                self._frag = frag
        elif opcode == OP_PING:
            if not self._pong_queued:
                self._queue(encode_frame(OP_PONG, payload))
                self._pong_queued = True
                self._pong_queued = not self._flush()
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            if len(payload) >= 2:
                self.close_code = struct.unpack(">H", payload[:2])[0]
                self.close_reason = payload[2:].decode("utf-8", "replace")
            if not self._close_sent:
                reply = payload if payload else struct.pack(">H", CLOSE_NORMAL) + \
                    b"peer requested close"
                self._queue(encode_frame(OP_CLOSE, reply[:125]))
                self._close_sent = True
                try:
                    self._flush()
                except OSError:
                    pass
            self._closed_by_peer = True
            try:
                self.master.shutdown(SHUTDOWN_BOTH)
            except OSError:
                pass
        elif opcode == OP_TEXT:
            self._fail(CLOSE_INVALID_DATA, "unsupported opcode (text frames are not accepted)")
        else:
            self._fail(CLOSE_INVALID_DATA, "unsupported opcode 0x%x" % opcode)

    # ---- I/O --------------------------------------------------------------
    def _io_readv(self, buffers, want_fds):
        if self._error is not None:
            raise self._error
        while not self._rbuf:
            if self._closed_by_peer or self._eof:
                return (0, [])
            if self._wbuf:
                self._flush()
            data = self.master.read(65536)
            if data is None:
                return None
            if not data:
                self._eof = True
                if self._frag is not None or self._raw:
                    self._error = WebsockError(0, "websocket: connection closed mid-frame")
                    raise self._error
                return (0, [])
            self._raw += data
            self._decode()
        n = 0
        for b in buffers:
            v = memoryview(b).cast("B")
            take = min(len(v), len(self._rbuf) - n)
            v[:take] = self._rbuf[n:n + take]
            n += take
        del self._rbuf[:n]
        return (n, [])

    def _io_writev(self, buffers, fds):
        if self._error is not None:
            raise self._error
        if self._closed_by_peer or self._close_sent or self._eof:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe: websocket is closed")
        if len(self._wbuf) >= MAX_BUFFER and not self._flush():
            return None
        data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
        if not data:
            return 0
        self._queue(encode_frame(OP_BINARY, data))
        self._flush()
        return len(data)

    def writev_all(self, buffers, *, fds=()):
        super().writev_all(buffers, fds=fds)
        while not self._flush():
            self._wait_master(IO_OUT)

    def close_with(self, code=CLOSE_NORMAL, reason=""):
        """Send a close frame with ``code`` and ``reason`` (if not sent yet)."""
        if not self._close_sent:
            self._queue(encode_frame(OP_CLOSE, struct.pack(">H", code) + reason.encode()[:123]))
            self._close_sent = True
        while not self._flush():
            self._wait_master(IO_OUT)

    # ---- readiness / control -----------------------------------------
    def _buffered_input(self):
        return bool(self._rbuf or self._eof or self._closed_by_peer or self._error is not None)

    def shutdown(self, how):
        self.master.shutdown(how)


# ---- a minimal client, for tests and tools ------------------------------

class WebsockClient:
    """Client side over a connected QIOChannel (blocking): ``handshake()``,
    ``send(data, opcode=OP_BINARY, fin=True, mask=True)``, ``recv() ->
    (opcode, payload)``."""

    def __init__(self, channel, host="localhost", path="/", protocol="binary"):
        self.ch = channel
        self.host = host
        self.path = path
        self.protocol = protocol

    def handshake(self, extra_headers=""):
        import os

        key = base64.b64encode(os.urandom(16)).decode()
        proto = "Sec-WebSocket-Protocol: %s\r\n" % self.protocol if self.protocol else ""
        req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s\r\n"
               % (self.path, self.host, key, proto, extra_headers))
        self.ch.write_all(req.encode())
        resp = b""
        while b"\r\n\r\n" not in resp:
            d = self.ch.read(1)
            if not d:
                break
            resp += d
        status = int(resp.split(b" ", 2)[1]) if resp else 0
        if status == 101 and ("Sec-WebSocket-Accept: " + accept_key(key)).encode() not in resp:
            raise WebsockError(status, "bad Sec-WebSocket-Accept")
        return status, resp

    def send(self, data, opcode=OP_BINARY, fin=True, mask=True):
        import os

        self.ch.write_all(encode_frame(opcode, data, os.urandom(4) if mask else None, fin))

    def recv(self):
        head = self.ch.read_all(2)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", self.ch.read_all(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self.ch.read_all(8))[0]
        return head[0] & 0x0F, self.ch.read_all(n) if n else b""
