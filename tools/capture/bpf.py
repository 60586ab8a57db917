"""Capture filters in tcpdump syntax, compiled and run by libpcap through ctypes.

``pcap_open_dead`` + ``pcap_compile`` turn an expression such as ``icmp or arp`` into a
BPF program for Ethernet (DLT_EN10MB); ``pcap_offline_filter`` runs it on one frame.
libpcap ships with tshark/tcpdump (``libpcap.so.0.8`` on Debian); when it is missing
:class:`BpfFilter` raises :class:`FilterUnavailable` and the tool says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

LINKTYPE_ETHERNET: Final = 1
PCAP_NETMASK_UNKNOWN: Final = 0xFFFFFFFF
_CANDIDATES: Final = ("libpcap.so.1", "libpcap.so.0.8", "libpcap.so")


class FilterUnavailable(Exception):
    """libpcap cannot be loaded."""


class FilterSyntaxError(ValueError):
    """libpcap rejected the expression; the message is libpcap's."""


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


def _load() -> ctypes.CDLL:
    names = [n for n in (ctypes.util.find_library("pcap"),) if n] + list(_CANDIDATES)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        ]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_offline_filter.restype = ctypes.c_int
        lib.pcap_offline_filter.argtypes = [
            ctypes.POINTER(_BpfProgram),
            ctypes.POINTER(_PktHdr),
            ctypes.c_char_p,
        ]
        return lib
    raise FilterUnavailable("libpcap not found (install libpcap0.8, e.g. with tshark)")


class BpfFilter:
    """A compiled capture filter; :meth:`matches` tests one frame."""

    def __init__(self, expression: str, snaplen: int = 65535) -> None:
        self.expression = expression
        self._lib = _load()
        self._prog = _BpfProgram()
        handle = self._lib.pcap_open_dead(LINKTYPE_ETHERNET, snaplen)
        if not handle:
            raise FilterUnavailable("pcap_open_dead failed")
        try:
            rc = self._lib.pcap_compile(
                handle, ctypes.byref(self._prog), expression.encode(), 1, PCAP_NETMASK_UNKNOWN
            )
            if rc != 0:
                raise FilterSyntaxError(self._lib.pcap_geterr(handle).decode(errors="replace"))
        finally:
            self._lib.pcap_close(handle)
        self._hdr = _PktHdr()
        self._compiled = True

    def matches(self, data: bytes, length: int) -> bool:
        hdr = self._hdr
        hdr.caplen = len(data)
        hdr.len = length
        return bool(
            self._lib.pcap_offline_filter(ctypes.byref(self._prog), ctypes.byref(hdr), data)
        )

    def close(self) -> None:
        if self._compiled:
            self._lib.pcap_freecode(ctypes.byref(self._prog))
            self._compiled = False
