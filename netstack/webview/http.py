"""The web view's HTTP/1.1 wire format: request heads in, responses out (sans-IO).

Owns :func:`parse_head` (one request head, RFC 9112 §2-3: request line, header fields)
and :func:`response` (a complete response with ``Content-Length``). The server reads one
request per connection and closes it after the response (``Connection: close``): the
page makes a handful of requests, so keep-alive buys nothing and the state machine stays
trivial.

Limits: a head of at most :data:`MAX_HEAD` bytes, at most :data:`MAX_FIELDS` fields, a
body (for ``POST``) of at most :data:`MAX_BODY` bytes. Anything malformed raises
:class:`BadRequest`, answered ``400`` (or the status it carries) and counted by the
server; nothing here touches a socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

from netstack.errors import RemoteInputError

MAX_HEAD: Final = 8192
MAX_FIELDS: Final = 64
MAX_BODY: Final = 4096

_REQUEST_LINE: Final = re.compile(r"^([A-Z]{1,16}) (\S{1,2048}) HTTP/1\.([01])$")
_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

REASONS: Final = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(RemoteInputError):
    """A request that cannot be served; ``status`` is the answer."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_length(self) -> int:
        text = self.headers.get("content-length", "0")
        if not text.isdigit() or len(text) > 9:
            raise BadRequest("bad Content-Length")
        length = int(text)
        if length > MAX_BODY:
            raise BadRequest("request body too large", 413)
        return length


def parse_head(head: bytes) -> Request:
    """Parse a request head (request line and fields, up to and excluding the blank line)."""
    if len(head) > MAX_HEAD:
        raise BadRequest("request head too large", 431)
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("request head is not ASCII") from None
    lines = text.split("\r\n")
    m = _REQUEST_LINE.match(lines[0])
    if m is None:
        raise BadRequest("malformed request line")
    method, target = m.group(1), m.group(2)
    if not target.startswith("/"):
        raise BadRequest("request target must be an absolute path")
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_FIELDS:
        raise BadRequest("too many header fields", 431)
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise BadRequest("malformed header field")
        key = name.lower()
        if key in headers:
            if key in ("host", "content-length", "transfer-encoding"):
                raise BadRequest(f"repeated {name}")
            headers[key] += ", " + value.strip(" \t")
        else:
            headers[key] = value.strip(" \t")
    if "transfer-encoding" in headers:
        raise BadRequest("request bodies must have a Content-Length")
    parts = urlsplit(target)
    path = unquote(parts.path)
    if "\0" in path or "/../" in path + "/" or "\\" in path:
        raise BadRequest("bad path")
    query = dict(parse_qsl(parts.query, keep_blank_values=True, max_num_fields=16))
    return Request(method, path, query, headers)


def response(
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    extra: dict[str, str] | None = None,
) -> bytes:
    """A whole response; every one carries the same security headers."""
    fields = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Connection": "close",
        **(extra or {}),
    }
    return head_bytes(status, fields) + body


def head_bytes(status: int, fields: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
