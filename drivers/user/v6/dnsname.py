"""Domain names in uncompressed DNS wire format, as DHCPv6 option 24 (RFC 3646 §4) and
the RA DNSSL option (RFC 8106 §5.2) carry them: RFC 1035 §3.1 labels, no compression.

Invariant: every name produced is at most 255 bytes, every label 1..63 bytes; names that
cannot be encoded (empty labels, over-long labels or names, non-IDNA text) are left out.
"""

from __future__ import annotations


def dns_name(domain: str) -> bytes | None:
    """``domain`` in wire format, or None if it cannot be encoded."""
    labels = domain[:-1].split(".") if domain.endswith(".") else domain.split(".")
    if any(not label for label in labels):
        return None
    out = b""
    for label in labels:
        try:
            raw = label.encode("ascii") if label.isascii() else label.encode("idna")
        except UnicodeError:
            return None
        if not 0 < len(raw) <= 63:
            return None
        out += bytes((len(raw),)) + raw
    out += b"\0"
    return out if len(out) <= 255 else None


def dns_names(domains: tuple[str, ...] | list[str]) -> bytes:
    """The encodable names of ``domains``, concatenated in order."""
    return b"".join(n for n in (dns_name(d) for d in domains) if n is not None)
