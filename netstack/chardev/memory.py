"""Back ends that live in memory: ``null``, ``ringbuf`` and its alias ``memory``.

Follows ``chardev/char.c`` (null: output discarded, no input), ``chardev/char-ringbuf.c``
and the two QMP commands on ring buffers:

* a ring buffer keeps the last ``size`` bytes the front end wrote (``size`` defaults to
  65536 and must be a power of two: ``size of ringbuf chardev must be power of two``);
  writing into a full buffer drops the oldest bytes;
* ``ringbuf-write`` puts data into the same buffer, bypassing the log file, exactly as
  QEMU (``utf8``: the text up to its first NUL; ``base64``: decoded with QEMU's rules);
* ``ringbuf-read`` consumes up to ``size`` bytes. With ``base64`` they come back encoded;
  with ``utf8`` QEMU hands the raw bytes to its JSON writer, so the text ends at the first
  NUL byte and every invalid (modified) UTF-8 sequence becomes one U+FFFD, the
  overlong ``C0 80`` is U+0000 - :func:`qemu_utf8_text` reproduces that exactly.

The ``query-chardev`` filename is the type name: ``null``, ``ringbuf`` or ``memory``.

Deviations: a ``size`` of 0 (which QEMU accepts, then crashes on the first write) is
refused with the power-of-two error; the buffer grows with its content instead of being
allocated up front, so a huge ``size`` costs nothing until used.
"""

from __future__ import annotations

import base64
from typing import Final

from netstack.errors import GenericError

from .base import Chardev
from .connections import MemoryConnection

DEFAULT_RINGBUF_SIZE: Final = 65536

_B64_ALPHABET: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n"
)
_B64_SYMBOLS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class NullChardev(Chardev):
    """``null``: swallow output (still logged), never any input."""

    backend = "null"

    def on_attach(self) -> None:
        self.serve_connection(MemoryConnection(on_write=self.log_hook))


class RingbufChardev(Chardev):
    """``ringbuf``/``memory``: the last ``size`` bytes written by the front end."""

    backend = "ringbuf"

    def __init__(self, chardev_id: str, size: int | None, *, alias: str = "ringbuf") -> None:
        super().__init__(chardev_id)
        self.size = DEFAULT_RINGBUF_SIZE if size is None else size
        self.type_name = alias
        self._buf = bytearray()
        self.prod = 0  # bytes ever written, as QEMU's counters
        self.cons = 0

    async def start(self) -> None:
        if self.size <= 0 or self.size & (self.size - 1):
            raise GenericError("size of ringbuf chardev must be power of two")

    def filename(self) -> str:
        return self.type_name

    def on_attach(self) -> None:
        self.serve_connection(MemoryConnection(self.put, on_write=self.log_hook))

    # -- the ring --------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Bytes readable (``ringbuf_count``)."""
        return len(self._buf)

    def put(self, data: bytes) -> None:
        """``ringbuf_chr_write``: append, dropping the oldest bytes past ``size``."""
        self._buf += data
        self.prod += len(data)
        excess = len(self._buf) - self.size
        if excess > 0:
            del self._buf[:excess]
            self.cons += excess

    def take(self, size: int) -> bytes:
        """``ringbuf_chr_read``: consume up to ``size`` bytes."""
        out = bytes(self._buf[:size])
        del self._buf[:size]
        self.cons += len(out)
        return out

    # -- QMP -------------------------------------------------------------------------------

    def qmp_write(self, data: str, fmt: str | None) -> None:
        """``ringbuf-write`` (the caller found the device)."""
        if fmt == "base64":
            self.put(glib_base64_decode(data))
        else:
            self.put(data.encode("utf-8", "surrogatepass").split(b"\0", 1)[0])

    def qmp_read(self, size: int, fmt: str | None) -> str:
        """``ringbuf-read`` (the caller found the device)."""
        if size <= 0:
            raise GenericError("size must be greater than zero")
        data = self.take(size)
        if fmt == "base64":
            return base64.b64encode(data).decode("ascii")
        return qemu_utf8_text(data)


def glib_base64_decode(text: str) -> bytes:
    """``qbase64_decode``: reject characters outside the alphabet, then decode like
    ``g_base64_decode`` (newlines skipped, ``=`` counts as a zero sextet that also drops
    bytes at the end of its quantum, an incomplete final quantum is ignored)."""
    raw = text.encode("utf-8", "surrogatepass")
    if b"\0" in raw:
        raw = raw.split(b"\0", 1)[0]  # a C string ends at its NUL
    if not _B64_ALPHABET.issuperset(raw):
        raise GenericError("Base64 data contains invalid characters")
    out = bytearray()
    value = 0
    count = 0
    last = [0, 0]
    for ch in raw:
        if ch == 0x0A:
            continue
        rank = 0 if ch == 0x3D else _B64_SYMBOLS.index(ch)
        last[1], last[0] = last[0], ch
        value = (value << 6) | rank
        count += 1
        if count == 4:
            out.append((value >> 16) & 0xFF)
            if last[1] != 0x3D:
                out.append((value >> 8) & 0xFF)
            if last[0] != 0x3D:
                out.append(value & 0xFF)
            value = 0
            count = 0
    return bytes(out)


_MIN_CP: Final = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def _mod_utf8_codepoint(data: bytes, pos: int) -> tuple[int, int]:
    """QEMU's ``mod_utf8_codepoint`` on ``data[pos:]`` (no NUL inside): (cp or -1, end)."""
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return byte, pos
    if byte >= 0xFE or not byte & 0x40:
        return -1, pos  # impossible byte or unexpected continuation byte
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = data[pos] if pos < len(data) else 0
        if nxt & 0xC0 != 0x80:
            return -1, pos  # continuation byte missing
        pos += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if (
        cp > 0x10FFFF
        or 0xFDD0 <= cp <= 0xFDEF
        or cp & 0xFFFE == 0xFFFE
        or 0xD800 <= cp <= 0xDFFF
        or (cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2))
    ):
        return -1, pos
    return cp, pos


def qemu_utf8_text(data: bytes) -> str:
    """The string QEMU's JSON writer makes of raw bytes: up to the first NUL, each invalid
    sequence one U+FFFD, ``C0 80`` U+0000."""
    data = data.split(b"\0", 1)[0]
    out: list[str] = []
    pos = 0
    while pos < len(data):
        cp, pos = _mod_utf8_codepoint(data, pos)
        out.append("\ufffd" if cp < 0 else chr(cp))
    return "".join(out)
