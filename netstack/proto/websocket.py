"""The server side of WebSocket (RFC 6455), sans-IO: opening handshake and framing.

Owns :class:`WebSocketServer`, the machine behind ``-chardev socket,websocket=on``
(QEMU: ``io/channel-websock.c``, used by ``chardev/char-socket.c``). It takes the bytes a
client sent (:meth:`WebSocketServer.feed`) and returns a :class:`Step`: application bytes
for the front end, bytes to send back (the handshake answer, pongs, close frames), and
whether the connection is over. :meth:`WebSocketServer.encode` frames the front end's
output; :meth:`WebSocketServer.close` starts the closing handshake.

Handshake, as QEMU checks it and with its texts (each failure answers with an HTTP error
and ends the connection): the request must end (``\\r\\n\\r\\n``) within 4096 bytes
(``403 Request Entity Too Large``, "End of headers not found in first 4096 bytes");
``GET / HTTP/1.1`` ("Unsupported HTTP method X", "Unexpected HTTP path X" with ``404 Not
Found``, "Unsupported HTTP version X"); at most 32 header lines, each with a colon ("Too
many HTTP headers", "Malformed HTTP header"); ``Sec-WebSocket-Version``,
``Sec-WebSocket-Key``, ``Host``, ``Connection`` and ``Upgrade`` present in that order
("Missing websocket version header data", ...); a ``Sec-WebSocket-Protocol`` header, when
there is one, must offer ``binary`` and then the answer selects it; version 13; a
24-character key; ``Connection`` lists ``Upgrade``; ``Upgrade: websocket``. The ``101``
answer carries QEMU's ``Server: QEMU VNC`` and ``Date`` headers.

Frames: output is one unfragmented *binary* frame per write, as QEMU sends. Input:

* binary and text data frames, fragmented or not (continuation frames), unmasked into the
  application stream as they arrive; text is checked to be UTF-8 across fragments;
* ping is answered with a pong carrying the same payload; pong is ignored;
* close is answered with a close echoing the status code (1000 when the client gave
  none), and the connection ends.

Hostile input ends the connection with a close frame naming the reason, never anything
worse: unmasked frames (1002 "client frames must be masked"), reserved bits, unknown
opcodes, fragmented or over-125-byte control frames, a continuation with nothing to
continue or a new message inside a fragmented one (1002), invalid UTF-8 (1007), and data
frames over ``max_frame`` bytes (1009). :attr:`WebSocketServer.error` then says what
happened; the adapter counts and logs it.

Deviations from QEMU 7.2: text frames and fragmented text are accepted (QEMU closes with
1003, which makes a browser's ``ws.send(string)`` useless); reserved bits and unknown
opcodes are refused (QEMU ignores the former); a frame size limit exists (QEMU has none);
a malformed request line answers ``400`` (QEMU closes without an answer); the ``400``
answer ends with the blank line HTTP requires (QEMU's lacks it); QEMU 7.2 sends
the QMP greeting over a websocket chardev but never processes the client's input there
(and, not reading, never notices the client leave: the chardev accepts no other client);
this machine processes input and ends connections properly.

Invariants: :meth:`feed` never raises on any input; after :attr:`closed` it ignores input;
control frames are handled only when complete; memory held is bounded by the handshake
limit plus one control frame (data payloads are passed on as they arrive).
"""

from __future__ import annotations

import base64
import codecs
import email.utils
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from netstack.errors import RemoteInputError

from .layer import Step

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE: Final = 4096
MAX_HEADERS: Final = 32
#: Largest data frame payload accepted (a policy: QEMU has no limit).
DEFAULT_MAX_FRAME: Final = 1 << 20

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS: Final = (OP_CONT, OP_TEXT, OP_BINARY)
_CONTROL_OPS: Final = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL = 1000, 1001, 1002
CLOSE_INVALID_DATA, CLOSE_TOO_BIG = 1007, 1009

_COMMON: Final = "Server: QEMU VNC\r\nDate: {date}\r\n"
_OK: Final = (
    "HTTP/1.1 101 Switching Protocols\r\n" + _COMMON + "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{proto}\r\n"
)
_NOT_FOUND: Final = "HTTP/1.1 404 Not Found\r\n" + _COMMON + "Connection: close\r\n\r\n"
_BAD_REQUEST: Final = (
    "HTTP/1.1 400 Bad Request\r\n" + _COMMON + "Connection: close\r\nSec-WebSocket-Version: 13\r\n"
)
_TOO_LARGE: Final = (
    "HTTP/1.1 403 Request Entity Too Large\r\n" + _COMMON + "Connection: close\r\n\r\n"
)
_FORBIDDEN: Final = "HTTP/1.1 403 Forbidden\r\n" + _COMMON + "Connection: close\r\n\r\n"


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1(key.encode("latin-1") + GUID).digest()
    return base64.b64encode(digest).decode()


def http_date() -> str:
    """``Date`` header text (``%a, %d %b %Y %H:%M:%S GMT``)."""
    return email.utils.formatdate(usegmt=True)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked server frame with FIN set."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, size))
    elif size < 65536:
        header = struct.pack(">BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack(">BBQ", 0x80 | opcode, 127, size)
    return header + payload


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack(">H", code) + reason.encode()


def valid_close_code(code: int) -> bool:
    """Close codes a peer may send (RFC 6455 §7.4, IANA registry)."""
    if 1000 <= code <= 1014:
        return code not in (1004, 1005, 1006)
    return 3000 <= code <= 4999


class HandshakeError(RemoteInputError):
    """A refused opening handshake: ``response`` is the HTTP answer to send."""

    def __init__(self, message: str, response: str) -> None:
        super().__init__(message)
        self.response = response


@dataclass
class _Frame:
    fin: bool
    opcode: int
    mask: bytes
    remain: int
    offset: int = 0
    control: bytearray = field(default_factory=bytearray)


class WebSocketServer:
    """One server-side WebSocket connection."""

    def __init__(
        self,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        date: Callable[[], str] = http_date,
        origin_ok: Callable[[str], bool] | None = None,
    ) -> None:
        self.max_frame = max_frame
        self._date = date
        #: Beyond QEMU, which checks no ``Origin``: when set, a handshake whose ``Origin``
        #: header it rejects gets 403 (a page of another site in the user's browser must not
        #: reach the monitor). Clients that send no ``Origin`` (not browsers) pass.
        self.origin_ok = origin_ok
        self.opened = False
        self.closed = False
        #: Why the connection ended abnormally (None: it did not, or cleanly).
        self.error: str | None = None
        #: The client's ``Sec-WebSocket-Protocol`` offer, once open.
        self.protocols: str | None = None
        self._buf = bytearray()
        self._frame: _Frame | None = None
        #: Opcode of the fragmented message in progress (text/binary) or None.
        self._message: int | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._close_sent = False

    # -- input -------------------------------------------------------------------------------

    def begin(self) -> bytes:
        """Nothing: the client speaks first."""
        return b""

    def feed(self, data: bytes) -> Step:
        step = Step()
        if self.closed:
            return step
        self._buf += data
        if not self.opened:
            self._handshake(step)
            if not self.opened:
                return step
        out = bytearray()
        try:
            self._frames(out, step)
        except _Fail as exc:
            self.error = exc.message
            step.reply += self._send_close(exc.code, exc.reason)
            self._end(step)
        step.data = bytes(out)
        return step

    def _end(self, step: Step) -> None:
        self.closed = True
        step.closed = True
        self._buf.clear()

    def _handshake(self, step: Step) -> None:
        end = self._buf.find(b"\r\n\r\n", 0, MAX_HANDSHAKE + 4)
        if end < 0 or end + 4 > MAX_HANDSHAKE:
            if len(self._buf) >= MAX_HANDSHAKE:
                self.error = "End of headers not found in first 4096 bytes"
                step.reply = _TOO_LARGE.format(date=self._date()).encode()
                self._end(step)
            return
        request = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        try:
            step.reply = self._answer(request).encode("latin-1")
        except HandshakeError as exc:
            self.error = str(exc)
            step.reply = exc.response.format(date=self._date()).encode()
            self._end(step)
            return
        self.opened = True
        step.opened = True

    def _answer(self, request: str) -> str:
        bad = _BAD_REQUEST + "\r\n"
        line, sep, rest = request.partition("\r\n")
        if not sep:
            raise HandshakeError("Missing HTTP header delimiter", bad)
        method, sep, target = line.partition(" ")
        if not sep:
            raise HandshakeError("Missing HTTP path delimiter", bad)
        if method != "GET":
            raise HandshakeError(f"Unsupported HTTP method {method}", bad)
        path, sep, version = target.partition(" ")
        if not sep:
            raise HandshakeError("Missing HTTP version delimiter", bad)
        if path != "/":
            raise HandshakeError(f"Unexpected HTTP path {path}", _NOT_FOUND)
        if version != "HTTP/1.1":
            raise HandshakeError(f"Unsupported HTTP version {version}", bad)
        headers: dict[str, str] = {}
        lines = rest.split("\r\n")
        for count, text in enumerate(lines):
            name, sep, value = text.partition(":")
            if not sep:
                raise HandshakeError("Malformed HTTP header", bad)
            if count >= MAX_HEADERS:
                raise HandshakeError("Too many HTTP headers", bad)
            headers.setdefault(name.lower(), value.strip(" \t"))
        origin = headers.get("origin")
        if origin is not None and self.origin_ok is not None and not self.origin_ok(origin):
            raise HandshakeError(f"Origin '{origin[:64]}' is not allowed", _FORBIDDEN)
        protocols = headers.get("sec-websocket-protocol")
        found: dict[str, str] = {}
        for header, what in (
            ("sec-websocket-version", "version"),
            ("sec-websocket-key", "key"),
            ("host", "host"),
            ("connection", "connection"),
            ("upgrade", "upgrade"),
        ):
            present = headers.get(header)
            if present is None:
                raise HandshakeError(f"Missing websocket {what} header data", bad)
            found[what] = present
        if protocols is not None and "binary" not in protocols:
            raise HandshakeError(f"No 'binary' protocol is supported by client '{protocols}'", bad)
        if found["version"] != "13":
            raise HandshakeError(
                f"Version '13' is not supported by client '{found['version']}'", bad
            )
        if len(found["key"]) != 24:
            raise HandshakeError(f"Key length '{len(found['key'])}' was not as expected '24'", bad)
        tokens = [t.strip().lower() for t in found["connection"].split(",")]
        if "upgrade" not in tokens:
            raise HandshakeError(f"No connection upgrade requested '{found['connection']}'", bad)
        if found["upgrade"].lower() != "websocket":
            raise HandshakeError(f"Incorrect upgrade method '{found['upgrade']}'", bad)
        self.protocols = protocols
        proto = "Sec-WebSocket-Protocol: binary\r\n" if protocols is not None else ""
        return _OK.format(date=self._date(), accept=accept_key(found["key"]), proto=proto)

    def _frames(self, out: bytearray, step: Step) -> None:
        buf = self._buf
        while not self.closed:
            frame = self._frame
            if frame is None:
                frame = self._header()
                if frame is None:
                    return
                self._frame = frame
            take = min(frame.remain, len(buf))
            if frame.opcode in _CONTROL_OPS:
                if take < frame.remain:
                    return  # control frames are handled whole
                frame.control += _unmask(buf[:take], frame.mask, 0)
            elif take:
                chunk = _unmask(buf[:take], frame.mask, frame.offset)
                if self._message == OP_TEXT:
                    self._check_text(chunk, final=False)
                out += chunk
            del buf[:take]
            frame.remain -= take
            frame.offset += take
            if frame.remain:
                return
            self._frame = None
            self._complete(frame, step)

    def _header(self) -> _Frame | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, opcode, size = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x7F
        if b0 & 0x70:
            raise _Fail(CLOSE_PROTOCOL, "reserved bits set", "reserved bits set in frame header")
        if opcode not in _DATA_OPS and opcode not in _CONTROL_OPS:
            raise _Fail(CLOSE_PROTOCOL, "unknown opcode", f"unknown opcode {opcode:#x}")
        if not b1 & 0x80:
            raise _Fail(
                CLOSE_PROTOCOL, "client frames must be masked",
                "client websocket frames must be masked",
            )  # fmt: skip
        if opcode in _CONTROL_OPS:
            if not fin:
                raise _Fail(CLOSE_PROTOCOL, "fragmented control frame",
                            "websocket control frame is fragmented")  # fmt: skip
            if size > 125:
                raise _Fail(CLOSE_PROTOCOL, "control frame is too large",
                            "websocket control frame is too large")  # fmt: skip
        need = 2 + (2 if size == 126 else 8 if size == 127 else 0) + 4
        if len(buf) < need:
            return None
        if size == 126:
            size = struct.unpack_from(">H", buf, 2)[0]
        elif size == 127:
            size = struct.unpack_from(">Q", buf, 2)[0]
            if size >> 63:
                raise _Fail(CLOSE_PROTOCOL, "invalid frame length", "frame length has MSB set")
        if opcode in _DATA_OPS:
            if size > self.max_frame:
                raise _Fail(CLOSE_TOO_BIG, "frame too large",
                            f"frame of {size} bytes exceeds {self.max_frame}")  # fmt: skip
            if opcode == OP_CONT:
                if self._message is None:
                    raise _Fail(CLOSE_PROTOCOL, "nothing to continue",
                                "continuation frame without a message")  # fmt: skip
            elif self._message is not None:
                raise _Fail(CLOSE_PROTOCOL, "message interrupted",
                            "new data frame inside a fragmented message")  # fmt: skip
            else:
                self._message = opcode
        mask = bytes(buf[need - 4 : need])
        del buf[:need]
        return _Frame(fin=fin, opcode=opcode, mask=mask, remain=size)

    def _complete(self, frame: _Frame, step: Step) -> None:
        if frame.opcode in _DATA_OPS:
            if frame.fin:
                if self._message == OP_TEXT:
                    self._check_text(b"", final=True)
                self._message = None
            return
        payload = bytes(frame.control)
        if frame.opcode == OP_PING:
            step.reply += encode_frame(OP_PONG, payload)
        elif frame.opcode == OP_CLOSE:
            code = CLOSE_NORMAL
            if len(payload) == 1:
                raise _Fail(CLOSE_PROTOCOL, "invalid close frame", "close frame of 1 byte")
            if len(payload) >= 2:
                code = struct.unpack_from(">H", payload)[0]
                if not valid_close_code(code):
                    raise _Fail(CLOSE_PROTOCOL, "invalid close code", f"close code {code}")
                try:
                    payload[2:].decode()
                except UnicodeDecodeError:
                    raise _Fail(CLOSE_INVALID_DATA, "invalid close reason",
                                "close reason is not UTF-8") from None  # fmt: skip
            step.reply += self._send_close(code, "")
            self._end(step)

    def _check_text(self, chunk: bytes, *, final: bool) -> None:
        try:
            self._utf8.decode(chunk, final=final)
        except UnicodeDecodeError:
            raise _Fail(CLOSE_INVALID_DATA, "invalid UTF-8",
                        "text frame is not valid UTF-8") from None  # fmt: skip
        if final:
            self._utf8.reset()

    # -- output ------------------------------------------------------------------------------

    def encode(self, data: bytes) -> bytes:
        """The front end's output as a binary frame (nothing once closing)."""
        if not self.opened or self._close_sent or not data:
            return b""
        return encode_frame(OP_BINARY, data)

    def close(self, code: int = CLOSE_GOING_AWAY, reason: str = "") -> bytes:
        """Start the closing handshake (the server goes away); the adapter then ends the
        TCP connection without waiting for the client's answer (RFC 6455 allows it)."""
        if not self.opened:
            return b""
        return self._send_close(code, reason)

    def _send_close(self, code: int, reason: str) -> bytes:
        if self._close_sent:
            return b""
        self._close_sent = True
        return encode_frame(OP_CLOSE, close_payload(code, reason[:123]))


class _Fail(RemoteInputError):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def _unmask(data: bytes | bytearray, mask: bytes, offset: int) -> bytes:
    """XOR ``data`` with ``mask``, the mask rotated by ``offset`` bytes."""
    n = len(data)
    if not n:
        return b""
    rot = offset & 3
    key = mask[rot:] + mask[:rot]
    full = (key * ((n >> 2) + 1))[:n]
    value = int.from_bytes(data, "little") ^ int.from_bytes(full, "little")
    return value.to_bytes(n, "little")
