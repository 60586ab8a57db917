"""The daemon's chardev table and the back-end factory (``chardev/char.c``'s QMP side).

Owns :func:`create_backend` (``qapi.Chardev`` record -> back end object) and
:class:`ChardevTable`, which implements ``chardev-add``, ``chardev-change``,
``chardev-remove``, ``chardev-send-break``, ``query-chardev``,
``query-chardev-backends``, ``ringbuf-write`` and ``ringbuf-read`` with QEMU 10.0's
validation order and error texts (all ``GenericError``):

* add: ``Chardev with id 'X' already exists``; a back end that fails to open is wrapped
  ``Failed to add chardev 'X': <reason>`` (the command line's ``-chardev`` reports the
  bare reason, and a duplicate as ``Duplicate ID 'X' for chardev``);
* change: ``Chardev 'X' does not exist``, ``Mux device hotswap not supported yet``,
  ``Chardev user does not support chardev hotswap``, ``Chardev 'X' change failed``; a
  chardev without front end is simply removed and added again (if that add fails, the
  old chardev is gone, as in QEMU); a new back end that fails to open reports the bare
  reason;
* remove / send-break: ``Chardev 'X' not found``, ``Chardev 'X' is busy``;
* ringbuf: ``Device 'X' not found``, ``X is not a ringbuf device``,
  ``size must be greater than zero``.

Back ends that have no meaning in a daemon (``vc``, ``console``, ``serial``, ...) are
refused: ``chardev backend 'vc' is not available in netstack: it needs a display``.

Deviation: ``query-chardev`` lists chardevs in creation order; QEMU walks a QOM hash
table (an order no client can rely on). ``query-chardev-backends`` lists the back ends
netstack can create, in ``ChardevBackendKind`` order.

Invariants: an id is reserved while its back end opens (a concurrent add of the same id
fails); a chardev is in the table only once fully open; :meth:`ChardevTable.close_all`
closes in reverse creation order (a mux before its base) and removes every socket file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Final

from netstack.errors import GenericError
from netstack.qapi.chardev import (
    CHARDEV_TYPES,
    ChardevFile,
    ChardevHostdev,
    ChardevMux,
    ChardevRingbuf,
    ChardevSocket,
    ChardevStdio,
    ChardevUdp,
)
from netstack.qapi.chardev import (
    Chardev as ChardevSpec,
)

from .base import Chardev
from .files import FileChardev, PipeChardev
from .memory import NullChardev, RingbufChardev
from .mux import MuxChardev
from .sockaddr import FdLookup
from .sockets import SocketChardev
from .terminals import PtyChardev, StdioChardev
from .udp import UdpChardev

SUPPORTED: Final = ("file", "pipe", "socket", "udp", "pty", "null", "mux", "stdio", "ringbuf",
                    "memory")  # fmt: skip
"""Back ends netstack can create (``query-chardev-backends``)."""

UNAVAILABLE: Final[dict[str, str]] = {
    "serial": "host serial ports are a guest hardware matter",
    "parallel": "host parallel ports are a guest hardware matter",
    "msmouse": "it emulates guest hardware",
    "wctablet": "it emulates guest hardware",
    "braille": "it needs a braille display",
    "testdev": "it emulates guest hardware",
    "console": "it needs a display",
    "spicevmc": "it needs a SPICE display",
    "spiceport": "it needs a SPICE display",
    "qemu-vdagent": "it needs a display and a guest agent",
    "dbus": "it needs a D-Bus display",
    "vc": "it needs a display",
}
"""Why the other ``ChardevBackendKind`` values are refused."""


def create_backend(
    spec: ChardevSpec,
    *,
    socket_mode: int | None = None,
    fd_lookup: FdLookup | None = None,
    lookup: Callable[[str], Chardev | None] | None = None,
    objects: Callable[[str], Any] | None = None,
) -> Chardev:
    """A back end object for ``spec`` (nothing opened yet: call ``open_log`` and
    ``start``). ``lookup`` finds a mux's base chardev by id, ``objects`` a QOM object
    (``tls-creds``) by id."""
    kind, opts, cid = spec.backend_type, spec.options, spec.id
    if kind in UNAVAILABLE:
        raise GenericError(
            f"chardev backend '{kind}' is not available in netstack: {UNAVAILABLE[kind]}"
        )
    dev: Chardev
    if kind == "socket" and isinstance(opts, ChardevSocket):
        dev = SocketChardev(cid, opts, mode=socket_mode, fd_lookup=fd_lookup, objects=objects)
    elif kind == "udp" and isinstance(opts, ChardevUdp):
        dev = UdpChardev(cid, opts)
    elif kind == "file" and isinstance(opts, ChardevFile):
        dev = FileChardev(cid, opts)
    elif kind == "pipe" and isinstance(opts, ChardevHostdev):
        dev = PipeChardev(cid, opts.device)
    elif kind == "pty":
        dev = PtyChardev(cid)
    elif kind == "null":
        dev = NullChardev(cid)
    elif kind in ("ringbuf", "memory") and isinstance(opts, ChardevRingbuf):
        dev = RingbufChardev(cid, opts.size, alias=kind)
    elif kind == "stdio" and isinstance(opts, ChardevStdio):
        dev = StdioChardev(cid, opts.signal)
    elif kind == "mux" and isinstance(opts, ChardevMux):
        base = lookup(opts.chardev) if lookup is not None else None
        if base is None:
            raise GenericError(f"mux: base chardev {opts.chardev} not found")
        dev = MuxChardev(cid, base)
    else:
        raise GenericError(f"'{kind}' is not a valid char driver name")
    return dev


class ChardevTable:
    """Every chardev of the daemon, by id."""

    def __init__(
        self,
        *,
        fd_lookup: FdLookup | None = None,
        objects: Callable[[str], Any] | None = None,
    ) -> None:
        self._devs: dict[str, Chardev] = {}
        self._opening: set[str] = set()
        self._fd_lookup = fd_lookup
        #: Finds QOM objects (TLS credentials) by id; the daemon sets it.
        self.objects = objects

    # -- lookup ----------------------------------------------------------------------------

    def get(self, chardev_id: str) -> Chardev | None:
        return self._devs.get(chardev_id)

    def __contains__(self, chardev_id: object) -> bool:
        return chardev_id in self._devs

    def __iter__(self) -> Iterator[Chardev]:
        return iter(list(self._devs.values()))

    def __len__(self) -> int:
        return len(self._devs)

    # -- chardev-add -----------------------------------------------------------------------

    async def add(
        self, spec: ChardevSpec, *, socket_mode: int | None = None, from_cli: bool = False
    ) -> dict[str, Any]:
        """``chardev-add`` (``from_cli``: ``-chardev``/``-qmp`` texts, ``mux=on``).

        Returns ``{}``, or ``{"pty": PATH}`` for a pty. ``socket_mode`` sets the
        permissions of a unix socket file the chardev creates (the daemon's own QMP
        sockets: 0o600); None leaves them to the umask, as QEMU does."""
        cid = spec.id
        ids = (cid, f"{cid}-base") if spec.mux else (cid,)
        for one in ids:
            if one in self._devs or one in self._opening:
                if from_cli:
                    raise GenericError(f"Duplicate ID '{one}' for chardev")
                raise GenericError(f"Chardev with id '{one}' already exists")
        self._opening.update(ids)
        try:
            if spec.mux:
                base_spec = ChardevSpec(id=f"{cid}-base", backend_type=spec.backend_type,
                                        options=spec.options)  # fmt: skip
                base = await self._open(base_spec, socket_mode)
                self._devs[base.id] = base
                try:
                    dev = await self._open(
                        ChardevSpec(id=cid, backend_type="mux",
                                    options=ChardevMux(chardev=base.id)),
                        None,
                    )  # fmt: skip
                except BaseException:
                    del self._devs[base.id]
                    await base.close()
                    raise
            else:
                dev = await self._open(spec, socket_mode)
        except GenericError as exc:
            if from_cli:
                raise
            raise GenericError(f"Failed to add chardev '{cid}': {exc.desc}") from exc
        finally:
            self._opening.difference_update(ids)
        self._devs[cid] = dev
        return _chardev_return(dev)

    async def _open(self, spec: ChardevSpec, socket_mode: int | None) -> Chardev:
        dev = create_backend(
            spec,
            socket_mode=socket_mode,
            fd_lookup=self._fd_lookup,
            lookup=self.get,
            objects=self.objects,
        )
        try:
            dev.open_log(spec.options.logfile, spec.options.logappend)
            await dev.start()
        except BaseException:
            await dev.close()
            raise
        return dev

    # -- chardev-change --------------------------------------------------------------------

    async def change(self, spec: ChardevSpec) -> dict[str, Any]:
        """``chardev-change``: a new back end under the same id and front end."""
        cid = spec.id
        old = self._devs.get(cid)
        if old is None:
            raise GenericError(f"Chardev '{cid}' does not exist")
        if isinstance(old, MuxChardev):
            raise GenericError("Mux device hotswap not supported yet")
        fe = old.frontend
        if fe is None:
            del self._devs[cid]
            await old.close()
            return await self.add(spec)
        if not getattr(fe, "supports_hotswap", False):
            raise GenericError("Chardev user does not support chardev hotswap")
        self._opening.add(cid)
        try:
            new = await self._open(spec, None)
        finally:
            self._opening.discard(cid)
        old.detach()
        try:
            new.attach(fe)
        except GenericError as exc:
            old.attach(fe)
            await new.close()
            raise GenericError(f"Chardev '{cid}' change failed") from exc
        self._devs[cid] = new
        await old.close()
        return _chardev_return(new)

    # -- chardev-remove, chardev-send-break ------------------------------------------------

    async def remove(self, chardev_id: str) -> None:
        dev = self._devs.get(chardev_id)
        if dev is None:
            raise GenericError(f"Chardev '{chardev_id}' not found")
        if dev.busy:
            raise GenericError(f"Chardev '{chardev_id}' is busy")
        del self._devs[chardev_id]
        await dev.close()

    def send_break(self, chardev_id: str) -> None:
        dev = self._devs.get(chardev_id)
        if dev is None:
            raise GenericError(f"Chardev '{chardev_id}' not found")
        dev.send_break()

    # -- queries ---------------------------------------------------------------------------

    def query(self) -> list[dict[str, Any]]:
        """``query-chardev``: ``[{label, filename, frontend-open}]``."""
        return [dev.describe() for dev in self._devs.values()]

    @staticmethod
    def query_backends() -> list[dict[str, Any]]:
        """``query-chardev-backends``."""
        return [{"name": name} for name in CHARDEV_TYPES if name in SUPPORTED]

    # -- ring buffers ----------------------------------------------------------------------

    def _ringbuf(self, device: str) -> RingbufChardev:
        dev = self._devs.get(device)
        if dev is None:
            raise GenericError(f"Device '{device}' not found")
        if not isinstance(dev, RingbufChardev):
            raise GenericError(f"{device} is not a ringbuf device")
        return dev

    def ringbuf_write(self, device: str, data: str, format: str | None = None) -> None:
        """``ringbuf-write`` (``format``: ``utf8`` (default) or ``base64``)."""
        self._ringbuf(device).qmp_write(data, format)

    def ringbuf_read(self, device: str, size: int, format: str | None = None) -> str:
        """``ringbuf-read``."""
        return self._ringbuf(device).qmp_read(size, format)

    # -- shutdown --------------------------------------------------------------------------

    async def close_all(self) -> None:
        """Close every chardev, newest first (front ends are cut off)."""
        for cid in reversed(list(self._devs)):
            dev = self._devs.pop(cid)
            with contextlib.suppress(Exception):
                await dev.close()


def _chardev_return(dev: Chardev) -> dict[str, Any]:
    """``ChardevReturn``: the pty path for a pty."""
    if isinstance(dev, PtyChardev):
        return {"pty": dev.pty_name}
    return {}
