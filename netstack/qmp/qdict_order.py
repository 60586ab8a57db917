"""The member order QEMU prints JSON objects in.

QEMU keeps JSON objects in ``QDict`` hash tables (512 buckets, ``tdb_hash`` of the key)
and walks them bucket by bucket, newest entry first within a bucket. That order decides
both the order of members on the wire (``{"timestamp": ..., "event": ...}``, version
``{"micro", "minor", "major"}``) and the order in which ``qmp_dispatch`` checks request
members (which error a request with two bad members gets). Clients must not care, but
reproducing it makes our output byte-identical to QEMU's.
"""

from __future__ import annotations

from typing import Any

QDICT_BUCKET_MAX = 512


def tdb_hash(key: str) -> int:
    # QEMU stores U+0000 in modified UTF-8 (C0 80) and hashes those two bytes.
    data = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


_BUCKETS: dict[str, int] = {}


def bucket(key: str) -> int:
    b = _BUCKETS.get(key)
    if b is None:
        b = tdb_hash(key) % QDICT_BUCKET_MAX
        if len(_BUCKETS) < 4096:
            _BUCKETS[key] = b
    return b


def ordered_keys(d: dict[str, Any]) -> list[str]:
    """Keys of ``d`` (in insertion order) as QEMU would iterate them."""
    keys = list(d)
    # Stable sort by bucket of the reversed list: newest first within a bucket.
    keys.reverse()
    keys.sort(key=bucket)
    return keys
