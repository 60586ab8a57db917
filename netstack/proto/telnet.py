"""The server side of telnet (RFC 854/855) and tn3270 (RFC 1576) as QEMU's chardev does
it, sans-IO.

Owns :class:`TelnetServer`, the layer behind ``-chardev socket,server=on,telnet=on`` and
``tn3270=on`` (``chardev/char-socket.c``: ``tcp_chr_telnet_init``,
``tcp_chr_process_IAC_bytes``). On connect it sends QEMU's negotiation, byte for byte:

* telnet: ``IAC WILL ECHO, IAC WILL SUPPRESS-GO-AHEAD, IAC WILL BINARY, IAC DO BINARY``
  (character mode, no local echo, 8-bit clean);
* tn3270: ``IAC DO EOR, IAC WILL EOR, IAC DO BINARY, IAC WILL BINARY, IAC DO
  TERMINAL-TYPE, IAC SB TERMINAL-TYPE SEND IAC SE``.

Input: ``IAC IAC`` is a data byte 0xFF; option commands (``WILL``/``WONT``/``DO``/``DONT``
+ option) are removed; ``IAC BREAK`` becomes a break event for the front end (QEMU's
``CHR_EVENT_BREAK``); other two-byte commands (NOP, IP, AYT, GA, ...) are removed. In
tn3270 mode ``IAC EOR``, ``IAC SB`` and ``IAC SE`` are passed to the front end unchanged
(they delimit 3270 records and carry the terminal type; QEMU's 3270 front end parses
them); in telnet mode a subnegotiation ``IAC SB ... IAC SE`` is removed whole.

Output: in telnet mode a 0xFF data byte is sent as ``IAC IAC``; tn3270 output is passed
unchanged (the 3270 front end writes its own ``IAC EOR``).

Deviations from QEMU 7.2, all for correctness towards real clients: QEMU removes *three*
bytes for every command but ``IAC IAC`` and ``IAC BREAK`` (so ``IAC NOP`` eats the next
data byte), passes a telnet-mode subnegotiation's body on as data, never doubles 0xFF on
output (a guest's 0xFF byte reaches the client as a command), and never answers a
client's option requests. Here two-byte commands are two bytes, subnegotiations are
removed, 0xFF is doubled, and a request for an option the server does not do is refused
once (``DO x`` -> ``WONT x``, ``WILL x`` -> ``DONT x``; ``DONT`` of an offered option is
acknowledged with ``WONT``), as RFC 854 asks. The bytes sent on connect are QEMU's.

Invariants: ``feed`` never raises and holds no input beyond its 1-byte parser state;
at most one answer per option and direction is ever sent (no negotiation loops, no
amplification of a flood).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .layer import Step

IAC, DONT, DO, WONT, WILL, SB = 255, 254, 253, 252, 251, 250
GA, EL, EC, AYT, AO, IP = 249, 248, 247, 246, 245, 244
BREAK, DM, NOP, SE, EOR = 243, 242, 241, 240, 239

OPT_BINARY, OPT_ECHO, OPT_SGA, OPT_TTYPE, OPT_EOR = 0, 1, 3, 24, 25

TELNET_INIT: Final = bytes(
    (IAC, WILL, OPT_ECHO, IAC, WILL, OPT_SGA, IAC, WILL, OPT_BINARY, IAC, DO, OPT_BINARY)
)
TN3270_INIT: Final = bytes(
    (IAC, DO, OPT_EOR, IAC, WILL, OPT_EOR, IAC, DO, OPT_BINARY, IAC, WILL, OPT_BINARY,
     IAC, DO, OPT_TTYPE, IAC, SB, OPT_TTYPE, 1, IAC, SE)
)  # fmt: skip

_DATA, _IAC, _OPT, _SB, _SB_IAC = range(5)


class TelnetServer:
    """The telnet (or tn3270) server side of one connection."""

    def __init__(self, *, tn3270: bool = False, on_break: Callable[[], None] | None = None):
        self.tn3270 = tn3270
        self.on_break = on_break
        self.opened = False
        self.closed = False
        self.error: str | None = None
        #: Counters: commands seen, breaks, options refused.
        self.commands = 0
        self.breaks = 0
        self._state = _DATA
        self._verb = 0
        if tn3270:
            self._we_do = {OPT_EOR, OPT_BINARY}  # options we offered to perform (WILL)
            self._they_may = {OPT_EOR, OPT_BINARY, OPT_TTYPE}  # options we asked for (DO)
        else:
            self._we_do = {OPT_ECHO, OPT_SGA, OPT_BINARY}
            self._they_may = {OPT_BINARY}
        self._answered: set[tuple[int, int]] = set()

    def begin(self) -> bytes:
        """QEMU's negotiation, sent on connect; data may flow from now on."""
        self.opened = True
        return TN3270_INIT if self.tn3270 else TELNET_INIT

    def feed(self, data: bytes) -> Step:
        step = Step()
        if self.closed:
            return step
        if self._state == _DATA and IAC not in data:
            step.data = data
            return step
        out = bytearray()
        reply = bytearray()
        state = self._state
        for byte in data:
            if state == _DATA:
                if byte == IAC:
                    state = _IAC
                else:
                    out.append(byte)
            elif state == _IAC:
                state = self._command(byte, out)
            elif state == _OPT:
                self._option(self._verb, byte, reply)
                state = _DATA
            elif state == _SB:
                if byte == IAC:
                    state = _SB_IAC
            elif byte == SE:  # _SB_IAC
                state = _DATA
            elif byte == IAC:
                state = _SB  # an escaped 0xFF inside the subnegotiation
            else:
                # RFC 855 allows nothing else here: end the subnegotiation, take the command.
                state = self._command(byte, out)
        self._state = state
        step.data = bytes(out)
        step.reply = bytes(reply)
        return step

    def _command(self, byte: int, out: bytearray) -> int:
        """The byte after IAC; returns the next parser state."""
        self.commands += 1
        if byte == IAC:
            out.append(IAC)
            return _DATA
        if byte in (WILL, WONT, DO, DONT):
            self._verb = byte
            return _OPT
        if self.tn3270 and byte in (EOR, SB, SE):
            out += bytes((IAC, byte))
            return _DATA
        if byte == SB:
            return _SB
        if byte == BREAK:
            self.breaks += 1
            if self.on_break is not None:
                self.on_break()
        return _DATA

    def _option(self, verb: int, opt: int, reply: bytearray) -> None:
        if verb == DO and opt not in self._we_do:
            answer = WONT
        elif verb == DONT and opt in self._we_do:
            self._we_do.discard(opt)
            answer = WONT
        elif verb == WILL and opt not in self._they_may:
            answer = DONT
        else:
            return
        key = (answer, opt)
        if key in self._answered:
            return
        self._answered.add(key)
        reply += bytes((IAC, answer, opt))

    def encode(self, data: bytes) -> bytes:
        if self.tn3270 or IAC not in data:
            return data
        return data.replace(b"\xff", b"\xff\xff")

    def close(self) -> bytes:
        self.closed = True
        return b""
