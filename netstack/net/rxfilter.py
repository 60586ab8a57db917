"""The virtio-net receive filter of one NIC: state, management programming, verdicts, query.

What it owns
    The rx-filter state QEMU keeps in ``VirtIONet`` (``hw/net/virtio-net.c``): the six rx
    modes, the current MAC, the 64-entry MAC table (unicast entries first, multicast from
    ``first_multi``) with its two overflow flags, the 4096-bit VLAN bitmap and whether
    ``VIRTIO_NET_F_CTRL_VLAN`` is negotiated. It is sans-IO: no sockets, no loop, no QMP.

Spec followed (``hw/net/virtio-net.c``)
    * :meth:`RxFilter.accepts` is ``receive_filter`` in QEMU's order: promiscuous accepts
      everything, even truncated frames; then length checks; then the 802.1Q check (TPID
      0x8100 only, and before the broadcast check, so a tagged broadcast on an unknown VLAN
      is dropped); then multicast/broadcast rules; then unicast rules.
    * The state is changed by :meth:`RxFilter.program` only: a vhost-user back end never
      sees the guest's control queue (QEMU, the front end, handles ``VIRTIO_NET_CTRL_RX``/
      ``MAC``/``VLAN`` in ``virtio_net_handle_ctrl`` and keeps its own filter), and no
      front end here has a guest that issues those commands, so there is no control-queue
      decoder. :meth:`RxFilter.program` applies the same table rules as
      ``virtio_net_handle_mac`` (64 entries, unicast first, the two overflow flags).
    * :meth:`RxFilter.info` builds ``RxFilterInfo`` as ``query-rx-filter`` does: schema key
      order, tables in reverse table order, ``vlan-table`` in descending vid order.
    * The ``NIC_RX_FILTER_CHANGED`` gate (``rxfilter_notify``): enabled at creation; every
      successful :meth:`RxFilter.program` call (as every RX-mode, MAC or VLAN command in
      QEMU) calls ``notify`` if the gate is open and closes it, even if no value changed;
      :meth:`RxFilter.info` re-opens it. The daemon turns ``notify`` into the QMP event.

Deliberate choices
    * ``broadcast-allowed``: QEMU fills it from ``nobcast``, so it reports ``false`` while
      broadcasts are accepted. We report the truth (``not nobcast``): a QMP client reading a
      field named "broadcast-allowed" wants to know whether broadcasts are allowed, and no
      known client depends on the inversion. :data:`QEMU_INVERTED_BROADCAST_ALLOWED` is the
      one switch; set it to ``True`` to reproduce QEMU's report byte for byte.
    * :meth:`RxFilter.program` is the typed entry point for a QMP command
      (``set-rx-filter``); unlike the guest's commands it refuses entries that could never
      match (a multicast address in the unicast half, and the reverse).

Invariants
    * ``0 <= first_multi <= in_use <= 64``; the table holds exactly ``in_use`` 6-byte
      entries; an overflowed half stores no entries.
    * ``version`` increases on every state change (derived data such as the numpy plan of
      :mod:`netstack.net.rxbatch` caches on it); ``on_change`` runs after every change.
    * Without VLAN filtering every vid is allowed (the bitmap is all ones).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from netstack.errors import GenericError

__all__ = [
    "BROADCAST_MAC",
    "MAC_TABLE_ENTRIES",
    "MAX_VLAN",
    "QEMU_INVERTED_BROADCAST_ALLOWED",
    "RX_MODES",
    "RxFilter",
    "format_mac",
    "parse_mac",
]

#: The broadcast-allowed switch (see the module docstring). ``False``: report the truth,
#: ``not nobcast``. ``True``: reproduce QEMU, which reports ``nobcast``.
QEMU_INVERTED_BROADCAST_ALLOWED: bool = False

ETH_ALEN: Final = 6
MAC_TABLE_ENTRIES: Final = 64
MAX_VLAN: Final = 4096
BROADCAST_MAC: Final = b"\xff" * ETH_ALEN

#: Rx modes in ``VIRTIO_NET_CTRL_RX`` command order (``include/standard-headers/linux/
#: virtio_net.h``): ``RX_MODES[cmd]`` is the mode that command number sets.
RX_MODES: Final = ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast")

_MAC_RE: Final = re.compile(r"[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2})(?:\1[0-9A-Fa-f]{2}){4}")

_Frame = TypeVar("_Frame", bytes, bytearray, memoryview)


def format_mac(mac: bytes) -> str:
    """``xx:xx:xx:xx:xx:xx`` in lower case, as QEMU's ``qemu_mac_strdup_printf``."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """Parse ``xx:xx:xx:xx:xx:xx`` (or ``-`` separated); raise :class:`GenericError`."""
    if not _MAC_RE.fullmatch(text):
        raise GenericError(f"invalid MAC address '{text}'")
    return bytes.fromhex(text.replace(":", "").replace("-", ""))


def _mac_arg(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        return parse_mac(value)
    mac = bytes(value)
    if len(mac) != ETH_ALEN:
        raise GenericError(f"{what}: a MAC address has 6 bytes, got {len(mac)}")
    return mac


class RxFilter:
    """virtio-net rx filter state of one NIC (queue 0), with QEMU's semantics.

    ``mac`` is the configured MAC. ``on_change`` runs after every state change; ``notify``
    runs when a change passes the ``NIC_RX_FILTER_CHANGED`` gate.
    """

    __slots__ = (
        "_allmulti",
        "_alluni",
        "_conf_mac",
        "_event_enabled",
        "_first_multi",
        "_mac",
        "_multi_overflow",
        "_multi_set",
        "_nobcast",
        "_nomulti",
        "_nouni",
        "_promisc",
        "_table",
        "_uni_overflow",
        "_uni_set",
        "_version",
        "_vlan_negotiated",
        "_vlans",
        "notify",
        "on_change",
    )

    def __init__(
        self,
        mac: bytes,
        *,
        vlan_negotiated: bool = False,
        on_change: Callable[[], None] | None = None,
        notify: Callable[[], None] | None = None,
    ) -> None:
        if len(mac) != ETH_ALEN:
            raise ValueError(f"a MAC address has 6 bytes, got {len(mac)}")
        self._conf_mac = bytes(mac)
        self.on_change = on_change
        self.notify = notify
        self._event_enabled = True
        self._version = 0
        self._vlan_negotiated = vlan_negotiated
        # One byte per vid (0/1): all ones at realize, all zeros once CTRL_VLAN is negotiated.
        self._vlans = bytearray(b"\x00" if vlan_negotiated else b"\x01") * MAX_VLAN
        self._init_state()

    def _init_state(self) -> None:
        self._promisc = True
        self._allmulti = self._alluni = self._nomulti = self._nouni = self._nobcast = False
        self._mac = self._conf_mac
        self._table: tuple[bytes, ...] = ()
        self._first_multi = 0
        self._uni_overflow = self._multi_overflow = False
        self._rebuild_sets()

    def _rebuild_sets(self) -> None:
        fm = self._first_multi
        self._uni_set = frozenset((*self._table[:fm], self._mac))
        self._multi_set = frozenset(self._table[fm:])

    def _changed(self) -> None:
        self._version += 1
        if self.on_change is not None:
            self.on_change()
        if self._event_enabled:
            self._event_enabled = False
            if self.notify is not None:
                self.notify()

    # ------------------------------------------------------------------ read-only state

    @property
    def version(self) -> int:
        """Increases on every state change."""
        return self._version

    @property
    def event_enabled(self) -> bool:
        """Whether the next change will call ``notify`` (re-armed by :meth:`info`)."""
        return self._event_enabled

    @property
    def promisc(self) -> bool:
        return self._promisc

    @property
    def allmulti(self) -> bool:
        return self._allmulti

    @property
    def alluni(self) -> bool:
        return self._alluni

    @property
    def nomulti(self) -> bool:
        return self._nomulti

    @property
    def nouni(self) -> bool:
        return self._nouni

    @property
    def nobcast(self) -> bool:
        return self._nobcast

    @property
    def rx_modes(self) -> dict[str, bool]:
        """The six rx modes by name, in :data:`RX_MODES` order."""
        return {name: bool(getattr(self, "_" + name)) for name in RX_MODES}

    @property
    def mac(self) -> bytes:
        """The current MAC (:meth:`program` changes it)."""
        return self._mac

    @property
    def configured_mac(self) -> bytes:
        return self._conf_mac

    @property
    def first_multi(self) -> int:
        return self._first_multi

    @property
    def in_use(self) -> int:
        return len(self._table)

    @property
    def unicast_table(self) -> tuple[bytes, ...]:
        """Entries ``[0, first_multi)`` in table order."""
        return self._table[: self._first_multi]

    @property
    def multicast_table(self) -> tuple[bytes, ...]:
        """Entries ``[first_multi, in_use)`` in table order."""
        return self._table[self._first_multi :]

    @property
    def uni_overflow(self) -> bool:
        return self._uni_overflow

    @property
    def multi_overflow(self) -> bool:
        return self._multi_overflow

    @property
    def vlan_negotiated(self) -> bool:
        """Whether ``VIRTIO_NET_F_CTRL_VLAN`` is negotiated (else ``vlan`` reports ``all``)."""
        return self._vlan_negotiated

    @property
    def vlan_bitmap(self) -> bytes:
        """4096 bytes, ``1`` where the vid is allowed (a copy)."""
        return bytes(self._vlans)

    def vlan_allowed(self, vid: int) -> bool:
        return bool(self._vlans[vid])

    # ------------------------------------------------------------------ verdicts

    def accepts(self, frame: bytes | bytearray | memoryview, hdr_len: int = 0) -> bool:
        """QEMU's ``receive_filter``: whether the NIC keeps ``frame``.

        ``hdr_len`` is the length of the host vnet header in front of the Ethernet header
        (0, 10 or 12). A ``memoryview`` must be one-dimensional with unsigned-byte items.
        """
        if self._promisc:
            return True
        h = hdr_len
        size = len(frame)
        if size < h + 14:
            return False
        if frame[h + 12] == 0x81 and frame[h + 13] == 0x00:
            if size < h + 16:
                return False
            if not self._vlans[((frame[h + 14] & 0x0F) << 8) | frame[h + 15]]:
                return False
        dst = bytes(frame[h : h + ETH_ALEN])
        if frame[h] & 1:
            if dst == BROADCAST_MAC:
                return not self._nobcast
            if self._nomulti:
                return False
            if self._allmulti or self._multi_overflow:
                return True
            return dst in self._multi_set
        if self._nouni:
            return False
        if self._alluni or self._uni_overflow:
            return True
        return dst in self._uni_set

    def filter_batch(self, frames: Sequence[_Frame], hdr_len: int = 0) -> list[_Frame]:
        """The frames :meth:`accepts` keeps, in order (pure Python reference)."""
        if self._promisc:
            return list(frames)
        accepts = self.accepts
        return [f for f in frames if accepts(f, hdr_len)]

    # ------------------------------------------------------------------ management API

    def program(
        self,
        *,
        rx_modes: Mapping[str, bool] | None = None,
        mac: bytes | str | None = None,
        unicast: Sequence[bytes | str] | None = None,
        multicast: Sequence[bytes | str] | None = None,
        vlans: Iterable[int] | None = None,
        vlan_filtering: bool | None = None,
    ) -> None:
        """Program the filter from management (the daemon's QMP command); all or nothing.

        Every argument left ``None`` keeps its current state.
        * ``rx_modes``: any subset of :data:`RX_MODES` mapped to booleans.
        * ``mac``: the current MAC (as MAC_ADDR_SET); must be a unicast address.
        * ``unicast`` / ``multicast``: replace that half of the MAC table (the other half is
          kept, or recomputed against the space left). The guest's MAC_TABLE_SET rules apply:
          more than 64 unicast entries sets ``unicast-overflow`` (accept all unicast) and
          stores none; more multicast entries than the space left sets
          ``multicast-overflow``. Unicast entries must be unicast addresses and multicast
          entries multicast addresses (the guest path accepts entries that can never
          match; management gets an error instead).
        * ``vlan_filtering``: ``True`` behaves like negotiating ``CTRL_VLAN`` (the bitmap is
          cleared if filtering was off), ``False`` like withdrawing it (all vids allowed).
        * ``vlans``: exactly these vids are allowed afterwards; implies filtering on, and
          combining it with ``vlan_filtering=False`` is an error.

        MACs are 6 ``bytes`` or ``xx:xx:xx:xx:xx:xx`` strings. Raises :class:`GenericError`
        on any invalid argument, with the filter unchanged. A call with at least one argument
        counts as one change: ``on_change`` runs and the event gate is consulted once.
        """
        modes: dict[str, bool] = {}
        if rx_modes is not None:
            for name, value in rx_modes.items():
                if name not in RX_MODES:
                    raise GenericError(f"rx mode '{name}' is not one of {', '.join(RX_MODES)}")
                if not isinstance(value, bool):
                    raise GenericError(f"rx mode '{name}' must be a boolean")
                modes[name] = value
        new_mac = None if mac is None else _mac_arg(mac, "mac")
        if new_mac is not None and new_mac[0] & 1:
            raise GenericError(f"mac {format_mac(new_mac)} is not a unicast address")
        uni = None if unicast is None else [_mac_arg(m, "unicast") for m in unicast]
        for m in uni or ():
            if m[0] & 1:
                raise GenericError(f"unicast entry {format_mac(m)} is a multicast address")
        multi = None if multicast is None else [_mac_arg(m, "multicast") for m in multicast]
        for m in multi or ():
            if not m[0] & 1:
                raise GenericError(f"multicast entry {format_mac(m)} is a unicast address")
        vids: set[int] | None = None
        if vlans is not None:
            if vlan_filtering is False:
                raise GenericError("'vlans' requires VLAN filtering")
            vids = set()
            for vid in vlans:
                if isinstance(vid, bool) or not isinstance(vid, int) or not 0 <= vid < MAX_VLAN:
                    raise GenericError(f"VLAN id {vid!r} is out of range (0..{MAX_VLAN - 1})")
                vids.add(vid)
        given = (new_mac, uni, multi, vids, vlan_filtering)
        if not modes and all(x is None for x in given):
            return

        # Validated: apply everything, then report one change.
        for name, value in modes.items():
            setattr(self, "_" + name, value)
        if new_mac is not None:
            self._mac = new_mac
        if uni is not None or multi is not None:
            self._program_table(uni, multi)
        self._rebuild_sets()
        if vlan_filtering is not None or vids is not None:
            negotiated = vids is not None or bool(vlan_filtering)
            if negotiated != self._vlan_negotiated:
                self._vlan_negotiated = negotiated
                self._vlans[:] = (b"\x00" if negotiated else b"\x01") * MAX_VLAN
            if vids is not None:
                self._vlans[:] = bytes(MAX_VLAN)
                for vid in vids:
                    self._vlans[vid] = 1
        self._changed()

    def _set_table(
        self, table: tuple[bytes, ...], first_multi: int, uni_overflow: bool, multi_overflow: bool
    ) -> None:
        self._table = table
        self._first_multi = first_multi
        self._uni_overflow = uni_overflow
        self._multi_overflow = multi_overflow
        self._rebuild_sets()

    def _program_table(self, uni: list[bytes] | None, multi: list[bytes] | None) -> None:
        if uni is None:
            uni_stored = list(self.unicast_table)
            uni_overflow = self._uni_overflow
        else:
            uni_overflow = len(uni) > MAC_TABLE_ENTRIES
            uni_stored = [] if uni_overflow else uni
        if multi is None:
            multi = list(self.multicast_table)
            force_multi_overflow = self._multi_overflow
        else:
            force_multi_overflow = False
        multi_overflow = force_multi_overflow or len(multi) > MAC_TABLE_ENTRIES - len(uni_stored)
        table = tuple(uni_stored) + (() if multi_overflow else tuple(multi))
        self._set_table(table, len(uni_stored), uni_overflow, multi_overflow)

    # ------------------------------------------------------------------ query

    def info(self, name: str) -> dict[str, Any]:
        """``RxFilterInfo`` for ``query-rx-filter``; re-arms the ``NIC_RX_FILTER_CHANGED`` gate.

        ``name`` is the NIC's net client id. Keys, in QAPI schema order: ``name``,
        ``promiscuous``, ``multicast``, ``unicast``, ``vlan`` (each ``"normal"``, ``"none"`` or
        ``"all"``), ``broadcast-allowed``, ``multicast-overflow``, ``unicast-overflow``,
        ``main-mac``, ``vlan-table`` (descending vids), ``unicast-table`` and
        ``multicast-table`` (lower-case MAC strings, reverse table order).
        """
        unicast = "none" if self._nouni else "all" if self._alluni else "normal"
        multicast = "none" if self._nomulti else "all" if self._allmulti else "normal"
        vlan_table = [vid for vid in range(MAX_VLAN - 1, -1, -1) if self._vlans[vid]]
        if not self._vlan_negotiated:
            vlan = "all"
        elif not vlan_table:
            vlan = "none"
        else:
            vlan = "normal"
        broadcast_allowed = self._nobcast if QEMU_INVERTED_BROADCAST_ALLOWED else not self._nobcast
        self._event_enabled = True
        return {
            "name": name,
            "promiscuous": self._promisc,
            "multicast": multicast,
            "unicast": unicast,
            "vlan": vlan,
            "broadcast-allowed": broadcast_allowed,
            "multicast-overflow": self._multi_overflow,
            "unicast-overflow": self._uni_overflow,
            "main-mac": format_mac(self._mac),
            "vlan-table": vlan_table,
            "unicast-table": [format_mac(m) for m in reversed(self.unicast_table)],
            "multicast-table": [format_mac(m) for m in reversed(self.multicast_table)],
        }

    def __repr__(self) -> str:
        modes = ",".join(n for n in RX_MODES if getattr(self, "_" + n)) or "-"
        uni, multi = len(self.unicast_table), len(self.multicast_table)
        return f"<RxFilter mac={format_mac(self._mac)} modes={modes} uni={uni} multi={multi}>"
