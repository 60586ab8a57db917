"""Debian packages for the guest: resolve, download (``apt-get download``) and unpack
(``dpkg-deb -x``, which is what ``dpkg -x`` runs) them into the guest cache directory.

Owns the cache layout below ``cache_root()``:

* ``debs/<package>_<version>_<arch>.deb`` -- downloaded packages, never modified;
* ``extract/<deb file stem>/`` -- a package unpacked with ``dpkg-deb -x``; it exists only once
  complete (unpacked in a temporary directory, then renamed);
* ``apt-candidates.json`` -- apt's answer for the packages, reused until apt's lists change;
* ``.lock`` -- an ``flock`` taken by :func:`cache_lock` around every change, so several
  processes (parallel test runs) can share one cache.

Nothing here needs root. Without network or apt lists, packages already in the cache are used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

CACHE_ENV = "NETSTACK_GUEST_CACHE"
KERNEL_PACKAGE_ENV = "NETSTACK_GUEST_KERNEL_PKG"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"


class DebError(RuntimeError):
    """A package could not be resolved, downloaded or unpacked."""


def cache_root(override: Path | str | None = None) -> Path:
    """The guest cache directory: ``override``, ``$NETSTACK_GUEST_CACHE`` or
    ``$XDG_CACHE_HOME/netstack/guest`` (``~/.cache/netstack/guest``). Created if missing."""
    if override is not None:
        root = Path(override)
    elif os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "netstack" / "guest"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``root/.lock`` (blocks until it is free)."""
    with open(root / ".lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DebError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise DebError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _apt_stamp() -> str:
    """Changes whenever apt's view of the archive may have changed (apt-get update, sources)."""
    parts = []
    for path in ("/var/lib/apt/lists", "/etc/apt/sources.list", "/etc/apt/sources.list.d"):
        with contextlib.suppress(OSError):
            parts.append(f"{path}:{os.stat(path).st_mtime_ns}")
    return ";".join(parts)


def _parse_records(text: str) -> dict[str, dict[str, str]]:
    records: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for match in re.finditer(r"^([A-Za-z0-9-]+):[ \t]*(.*)$", stanza, re.M):
            fields.setdefault(match.group(1), match.group(2).strip())
        if "Package" in fields:
            records.setdefault(fields["Package"], fields)
    return records


def candidates(root: Path, packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """apt's candidate record (``Version``, ``Depends``, ...) of each package, from one
    ``apt-cache show`` call; memoised in ``root/apt-candidates.json`` until apt's lists change
    (``apt-cache`` takes most of a second here). Call with :func:`cache_lock` held."""
    memo = root / "apt-candidates.json"
    key = {"stamp": _apt_stamp(), "packages": sorted(packages)}
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(memo.read_text())
        if saved.get("key") == key:
            return dict(saved["records"])
    out = _run(["apt-cache", "show", "--no-all-versions", *packages])
    records = _parse_records(out)
    missing = [p for p in packages if p not in records]
    if missing:
        raise DebError(f"apt knows no candidate for {missing} (run apt-get update?)")
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "records": records}, indent=1))
    os.replace(tmp, memo)
    return records


def kernel_from_meta(record: Mapping[str, str]) -> tuple[str, str | None]:
    """``(package, version)`` of the kernel a ``linux-image-*`` meta-package record depends on,
    e.g. ``("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2")``."""
    match = re.search(r"(linux-image-[^\s,(]+)\s*(?:\(=\s*([^)\s]+)\))?", record.get("Depends", ""))
    if match is None:
        raise DebError(f"cannot tell which kernel {record.get('Package')} depends on")
    return match.group(1), match.group(2)


def _cached(debs: Path, package: str, version: str | None) -> Path | None:
    quoted = version.replace(":", "%3a") if version else "*"
    found = sorted(debs.glob(f"{package}_{quoted}_*.deb"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def fetch(package: str, version: str | None, root: Path) -> Path:
    """The ``.deb`` of ``package`` at ``version`` (apt's candidate), downloading it into
    ``root/debs`` if it is not there yet. ``version=None`` (apt could not say) takes the newest
    cached one, else downloads. Call with :func:`cache_lock` held."""
    debs = root / "debs"
    debs.mkdir(exist_ok=True)
    hit = _cached(debs, package, version)
    if hit is not None:
        return hit
    if version is None:
        stale = _cached(debs, package, None)
        if stale is not None:
            return stale
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
        # apt may warn that user _apt cannot write here (it then downloads as root): harmless.
        spec = f"{package}={version}" if version else package
        _run(["apt-get", "download", "-q", spec], cwd=Path(tmp))
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if len(got) != 1:
            raise DebError(f"apt-get download {package} produced {got}")
        final = debs / got[0].name
        os.replace(got[0], final)
    return final


def extract(deb: Path, root: Path) -> Path:
    """The directory ``deb`` is unpacked in (``dpkg-deb -x``), unpacking it first if needed.
    Call with :func:`cache_lock` held."""
    target = root / "extract" / deb.name.removesuffix(".deb")
    if target.is_dir():
        return target
    target.parent.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
