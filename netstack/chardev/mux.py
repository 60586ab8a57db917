"""The ``mux`` chardev: several front ends sharing one back end (``chardev/char-mux.c``).

A mux is the one front end of its base chardev (``ChardevMux.chardev``, or
``<id>-base`` for the command line's ``mux=on``; the base is then busy). Up to
:data:`MAX_MUX` front ends attach to the mux. For every connection of the base, each
attached front end gets its own session (a :class:`~.connections.MemoryConnection`):

* output: whatever any front end writes goes to the base connection (optionally with
  ``[hh:mm:ss.mmm]`` timestamps at line starts, toggled by ``C-a t``);
* input: goes to the front end that has the *focus* only. The front end attached last
  takes the focus (as QEMU's ``qemu_chr_fe_set_handlers``); ``C-a c`` moves it to the
  next front end in attach order, wrapping around;
* escapes (``C-a`` = 0x01, QEMU's default ``term_escape_char``): ``C-a c`` switch focus,
  ``C-a h`` or ``C-a ?`` print the help, ``C-a b`` send a break to the focused front end,
  ``C-a t`` toggle timestamps, ``C-a C-a`` send one ``C-a``; any other byte after ``C-a``
  is swallowed. QEMU's ``C-a x`` (quit the emulator) and ``C-a s`` (commit disks) have
  no meaning for the daemon and are swallowed too.

Deviations: input a front end has not read yet stays queued for it (in QEMU a small
per-front-end buffer); QEMU's ``MUX_IN``/``MUX_OUT`` focus events have no counterpart in
the front-end protocol; ``chardev-change`` of a mux is refused, as in QEMU (``Mux device
hotswap not supported yet``). The ``query-chardev`` filename is ``mux``.

Invariants: every session task belongs to the mux; when the base connection ends every
session ends; closing the mux detaches it from its base.
"""

from __future__ import annotations

import logging
import time

from netstack.errors import GenericError

from .base import Chardev, Connection, Frontend
from .connections import MemoryConnection

log = logging.getLogger("netstack.chardev")

MAX_MUX = 4
ESCAPE = 0x01  # C-a

_HELP = (
    "% h    print this help\n\r",
    "% b    send break (magic sysrq)\n\r",
    "% c    switch between console and monitor\n\r",
    "% t    toggle console timestamps\n\r",
    "% %  sends %\n\r",
)


class _MuxPort:
    """What the mux looks like to its base chardev: a single-connection front end."""

    multi_connection = False
    raw_socket = False

    def __init__(self, mux: MuxChardev) -> None:
        self.mux = mux

    async def serve(self, conn: Connection) -> None:
        await self.mux.serve_base(conn)

    def on_break(self) -> None:
        self.mux.send_break()


class MuxChardev(Chardev):
    """``mux`` over ``base``."""

    backend = "mux"

    def __init__(self, chardev_id: str, base: Chardev) -> None:
        super().__init__(chardev_id)
        self.base = base
        self.frontends: list[Frontend] = []
        self.focus = -1
        self.timestamps = False
        self._ts_start = -1.0
        self._linestart = False
        self._got_escape = False
        self._base_conn: Connection | None = None
        self._sessions: dict[int, MemoryConnection] = {}  # id(front end) -> session
        self._port = _MuxPort(self)

    async def start(self) -> None:
        if self.base.frontend is not None:
            raise GenericError(f"Device '{self.base.id}' is in use")
        self.base.attach(self._port)

    async def close(self) -> None:
        if self.base.frontend is self._port:
            self.base.detach()
        await super().close()

    # -- front ends -------------------------------------------------------------------------

    @property
    def frontend_open(self) -> bool:
        return bool(self.frontends)

    @property
    def busy(self) -> bool:
        return bool(self.frontends)

    def attach(self, frontend: Frontend) -> None:
        if len(self.frontends) >= MAX_MUX:
            raise GenericError(
                f"too many uses of multiplexed chardev '{self.id}' (maximum is {MAX_MUX})"
            )
        if getattr(frontend, "raw_socket", False):
            raise GenericError(f'chardev "{self.id}" does not support FD passing')
        self.frontends.append(frontend)
        self._set_focus(len(self.frontends) - 1)
        if self._base_conn is not None:
            self._open_session(frontend, self._base_conn)

    def detach(self, frontend: Frontend | None = None) -> None:
        """Detach ``frontend`` (default: the focused one)."""
        if frontend is None:
            frontend = self.frontend
        if frontend is None or frontend not in self.frontends:
            return
        index = self.frontends.index(frontend)
        focused = self.frontends[self.focus] if self.focus >= 0 else None
        self.frontends.remove(frontend)
        session = self._sessions.pop(id(frontend), None)
        if session is not None:
            session.close()
        if not self.frontends:
            self.focus = -1
        elif focused is frontend:
            self.focus = index % len(self.frontends)
        else:
            assert focused is not None
            self.focus = self.frontends.index(focused)
        self.frontend = self.frontends[self.focus] if self.focus >= 0 else None

    def _set_focus(self, index: int) -> None:
        self.focus = index
        self.frontend = self.frontends[index]

    def send_break(self) -> None:
        handler = getattr(self.frontend, "on_break", None)
        if callable(handler):
            handler()

    # -- sessions ---------------------------------------------------------------------------

    async def serve_base(self, conn: Connection) -> None:
        """One connection of the base chardev: run a session for each front end."""
        self._base_conn = conn
        try:
            for fe in list(self.frontends):
                self._open_session(fe, conn)
            while True:
                data = await conn.read()
                if not data:
                    break
                self._input(data)
        finally:
            self._base_conn = None
            for session in list(self._sessions.values()):
                session.close()
            self._sessions.clear()

    def _open_session(self, fe: Frontend, conn: Connection) -> None:
        session = MemoryConnection(self._output, peer=conn.peer, on_write=self.log_hook)
        self._sessions[id(fe)] = session
        self.connections.append(session)

        async def run() -> None:
            try:
                await fe.serve(session)
            except Exception:
                log.exception("chardev %s: front end failed", self.id)
            finally:
                session.close()
                if self._sessions.get(id(fe)) is session:
                    del self._sessions[id(fe)]
                if session in self.connections:
                    self.connections.remove(session)

        self.spawn(run())

    # -- data -------------------------------------------------------------------------------

    def _input(self, data: bytes) -> None:
        run = bytearray()
        for byte in data:
            if self._got_escape:
                self._got_escape = False
                if byte == ESCAPE:
                    run.append(byte)
                    continue
                self._deliver(bytes(run))
                run.clear()
                self._command(byte)
            elif byte == ESCAPE:
                self._got_escape = True
            else:
                run.append(byte)
        self._deliver(bytes(run))

    def _deliver(self, data: bytes) -> None:
        if data and self.frontend is not None:
            session = self._sessions.get(id(self.frontend))
            if session is not None:
                session.feed(data)

    def _command(self, byte: int) -> None:
        ch = chr(byte)
        if ch in "h?":
            self._print_help()
        elif ch == "b":
            self.send_break()
        elif ch == "c" and self.frontends:
            self._set_focus((self.focus + 1) % len(self.frontends))
        elif ch == "t":
            self.timestamps = not self.timestamps
            self._ts_start = -1.0
            self._linestart = False

    def _print_help(self) -> None:
        if self._base_conn is None:
            return
        text = "\n\r" + "".join(line.replace("%", "C-a") for line in _HELP)
        self._base_conn.write(text.encode())

    def _output(self, data: bytes) -> None:
        conn = self._base_conn
        if conn is None:
            return
        if not self.timestamps:
            conn.write(data)
            return
        out = bytearray()
        for byte in data:
            if self._linestart:
                out += self._stamp()
                self._linestart = False
            out.append(byte)
            if byte == 0x0A:
                self._linestart = True
        conn.write(bytes(out))

    def _stamp(self) -> bytes:
        now = time.monotonic()
        if self._ts_start < 0:
            self._ts_start = now
        ms = int((now - self._ts_start) * 1000)
        secs = ms // 1000
        return (
            f"[{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{ms % 1000:03d}] "
        ).encode()
