"""The sans-IO WebSocket server (netstack.proto.websocket): handshake checks with QEMU's
texts, framing, control frames, and hostile input (each ends the connection cleanly)."""

from __future__ import annotations

import base64
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.proto.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WebSocketServer,
    accept_key,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def request(path: str = "/", extra: str = "", **overrides: str | None) -> bytes:
    headers = {
        "Host": "127.0.0.1:1",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + extra + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
                 rsv: int = 0) -> bytes:  # fmt: skip
    b0 = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        head = bytes((b0, (0x80 if mask else 0) | size))
    elif size < 65536:
        head = struct.pack(">BBH", b0, (0x80 if mask else 0) | 126, size)
    else:
        head = struct.pack(">BBQ", b0, (0x80 if mask else 0) | 127, size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def opened() -> WebSocketServer:
    ws = WebSocketServer(date=lambda: "Mon, 07 Dec 2026 10:00:00 GMT")
    step = ws.feed(request())
    assert step.opened and ws.opened
    return ws


def parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        b0, b1 = data[0], data[1]
        assert b1 & 0x80 == 0, "server frames are not masked"
        size, at = b1 & 0x7F, 2
        if size == 126:
            size, at = struct.unpack_from(">H", data, 2)[0], 4
        elif size == 127:
            size, at = struct.unpack_from(">Q", data, 2)[0], 10
        out.append((b0 & 0x0F, data[at : at + size]))
        data = data[at + size :]
    return out


def test_accept_key_rfc_example() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_answer_is_qemus() -> None:
    ws = WebSocketServer(date=lambda: "Mon, 07 Dec 2026 10:00:00 GMT")
    step = ws.feed(request(Sec_WebSocket_Protocol="binary, base64"))
    assert step.reply == (
        b"HTTP/1.1 101 Switching Protocols\r\nServer: QEMU VNC\r\n"
        b"Date: Mon, 07 Dec 2026 10:00:00 GMT\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: binary\r\n\r\n"
    )
    plain = WebSocketServer().feed(request())
    assert b"Sec-WebSocket-Protocol" not in plain.reply


def test_handshake_in_pieces_then_frames_in_the_same_read() -> None:
    ws = WebSocketServer()
    raw = request() + client_frame(OP_BINARY, b"hello")
    steps = [ws.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)]
    assert sum(s.opened for s in steps) == 1
    assert b"".join(s.data for s in steps) == b"hello"


@pytest.mark.parametrize(
    ("raw", "error", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "Missing HTTP header delimiter", b"400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", "Unsupported HTTP method POST", b"400"),
        (b"GET /qmp HTTP/1.1\r\nHost: x\r\n\r\n", "Unexpected HTTP path /qmp", b"404"),
        (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", "Unsupported HTTP version HTTP/1.0", b"400"),
        (b"GET /\r\nHost: x\r\n\r\n", "Missing HTTP version delimiter", b"400"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "Malformed HTTP header", b"400"),
        (request(Sec_WebSocket_Version=None), "Missing websocket version header data", b"400"),
        (request(Sec_WebSocket_Key=None), "Missing websocket key header data", b"400"),
        (request(Host=None), "Missing websocket host header data", b"400"),
        (request(Connection=None), "Missing websocket connection header data", b"400"),
        (request(Upgrade=None), "Missing websocket upgrade header data", b"400"),
        (request(Sec_WebSocket_Protocol="chat"),
         "No 'binary' protocol is supported by client 'chat'", b"400"),
        (request(Sec_WebSocket_Version="8"), "Version '13' is not supported by client '8'",
         b"400"),
        (request(Sec_WebSocket_Key="short"), "Key length '5' was not as expected '24'", b"400"),
        (request(Connection="keep-alive"), "No connection upgrade requested 'keep-alive'",
         b"400"),
        (request(Upgrade="h2c"), "Incorrect upgrade method 'h2c'", b"400"),
        (request(extra="".join(f"\r\nX-{i}: {i}" for i in range(40))), "Too many HTTP headers",
         b"400"),
    ],
)  # fmt: skip
def test_handshake_refusals(raw: bytes, error: str, status: bytes) -> None:
    ws = WebSocketServer()
    step = ws.feed(raw)
    assert step.closed and ws.closed and not ws.opened
    assert ws.error == error
    assert step.reply.startswith(b"HTTP/1.1 " + status)
    assert ws.feed(client_frame(OP_BINARY, b"x")).data == b""


def test_endless_headers_get_403() -> None:
    ws = WebSocketServer()
    step = ws.feed(b"GET / HTTP/1.1\r\n" + b"X-A: " + b"a" * 5000)
    assert step.closed
    assert step.reply.startswith(b"HTTP/1.1 403 Request Entity Too Large\r\n")
    assert ws.error == "End of headers not found in first 4096 bytes"


def test_data_frames_text_binary_fragmented_and_sizes() -> None:
    ws = opened()
    big = os.urandom(70000)
    raw = (
        client_frame(OP_TEXT, b'{"execute": "x"}')
        + client_frame(OP_BINARY, b"A" * 200)
        + client_frame(OP_BINARY, big)
        + client_frame(OP_TEXT, "h\u00e9".encode()[:2], fin=False)
        + client_frame(OP_PING, b"p1")
        + client_frame(OP_CONT, "h\u00e9".encode()[2:], fin=True)
    )
    data = b"".join(ws.feed(raw[i : i + 1000]).data for i in range(0, len(raw), 1000))
    assert data == b'{"execute": "x"}' + b"A" * 200 + big + "h\u00e9".encode()
    assert not ws.closed


def test_ping_gets_pong_and_pong_is_ignored() -> None:
    ws = opened()
    step = ws.feed(client_frame(OP_PING, b"are you there") + client_frame(OP_PONG, b"x"))
    assert parse_server_frames(step.reply) == [(OP_PONG, b"are you there")]
    assert step.data == b""


def test_output_is_binary_frames() -> None:
    ws = opened()
    assert parse_server_frames(ws.encode(b"x" * 300)) == [(OP_BINARY, b"x" * 300)]
    assert parse_server_frames(ws.encode(b"y" * 70000)) == [(OP_BINARY, b"y" * 70000)]
    assert ws.encode(b"") == b""


def test_client_close_is_echoed() -> None:
    ws = opened()
    step = ws.feed(client_frame(OP_CLOSE, struct.pack(">H", 1000) + b"bye"))
    assert step.closed and ws.error is None
    assert parse_server_frames(step.reply) == [(OP_CLOSE, struct.pack(">H", 1000))]
    ws2 = opened()
    step = ws2.feed(client_frame(OP_CLOSE, b""))
    assert parse_server_frames(step.reply) == [(OP_CLOSE, struct.pack(">H", 1000))]


def test_server_close() -> None:
    ws = opened()
    assert parse_server_frames(ws.close()) == [(OP_CLOSE, struct.pack(">H", 1001))]
    assert ws.close() == b"" and ws.encode(b"late") == b""


@pytest.mark.parametrize(
    ("raw", "code", "error"),
    [
        (client_frame(OP_BINARY, b"x", mask=False), 1002, "client websocket frames must be masked"),
        (client_frame(OP_BINARY, b"x", rsv=0x40), 1002, "reserved bits set in frame header"),
        (client_frame(0x3, b"x"), 1002, "unknown opcode 0x3"),
        (client_frame(0xB, b"x"), 1002, "unknown opcode 0xb"),
        (client_frame(OP_PING, b"x", fin=False), 1002, "websocket control frame is fragmented"),
        (client_frame(OP_PING, b"x" * 126), 1002, "websocket control frame is too large"),
        (client_frame(OP_CONT, b"x"), 1002, "continuation frame without a message"),
        (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_BINARY, b"b"), 1002,
         "new data frame inside a fragmented message"),
        (client_frame(OP_TEXT, b"\xff\xfe"), 1007, "text frame is not valid UTF-8"),
        (client_frame(OP_TEXT, b"\xc3", fin=True), 1007, "text frame is not valid UTF-8"),
        (client_frame(OP_CLOSE, b"\x03"), 1002, "close frame of 1 byte"),
        (client_frame(OP_CLOSE, struct.pack(">H", 1005)), 1002, "close code 1005"),
        (client_frame(OP_CLOSE, struct.pack(">H", 1000) + b"\xff"), 1007,
         "close reason is not UTF-8"),
        (bytes((0x82, 0xFF)) + struct.pack(">Q", 1 << 63) + b"mask", 1002,
         "frame length has MSB set"),
        (bytes((0x82, 0xFF)) + struct.pack(">Q", 1 << 40) + b"mask", 1009,
         "frame of 1099511627776 bytes exceeds 1048576"),
    ],
)  # fmt: skip
def test_hostile_frames_end_the_connection(raw: bytes, code: int, error: str) -> None:
    ws = opened()
    step = ws.feed(raw)
    assert step.closed and ws.closed
    assert ws.error == error
    ((op, payload),) = parse_server_frames(step.reply)
    assert op == OP_CLOSE and struct.unpack_from(">H", payload)[0] == code
    assert ws.feed(client_frame(OP_BINARY, b"after")).data == b""


def test_oversize_frame_refused_before_its_payload() -> None:
    ws = WebSocketServer(max_frame=1000)
    ws.feed(request())
    head = client_frame(OP_BINARY, b"x" * 1001)[:8]
    step = ws.feed(head)
    assert step.closed and ws.error == "frame of 1001 bytes exceeds 1000"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64))
def test_any_bytes_after_handshake_never_raise(junk: bytes, chunk: int) -> None:
    ws = opened()
    for i in range(0, len(junk), chunk):
        ws.feed(junk[i : i + chunk])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 997))
def test_any_bytes_as_handshake_never_raise(junk: bytes, chunk: int) -> None:
    ws = WebSocketServer()
    for i in range(0, len(junk), chunk):
        ws.feed(junk[i : i + chunk])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
def test_chunking_invariance(payloads: list[bytes], chunk: int) -> None:
    raw = b"".join(client_frame(OP_BINARY, p) for p in payloads)
    ws = opened()
    got = b"".join(ws.feed(raw[i : i + chunk]).data for i in range(0, len(raw), chunk))
    assert got == b"".join(payloads)


def test_key_must_be_24_chars_not_base64_checked() -> None:
    # QEMU only checks the length; so does this machine.
    key = base64.b64encode(b"0123456789abcdef").decode()
    assert WebSocketServer().feed(request(Sec_WebSocket_Key=key)).opened
