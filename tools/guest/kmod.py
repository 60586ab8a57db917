"""Kernel-module selection for the guest: find modules in an extracted kernel package, read
their dependencies, and order them for ``insmod``.

Owns: the module index of one ``lib/modules/<version>`` tree, ``.modinfo`` parsing (a minimal
ELF64 section reader, so no ``modinfo``/``depmod`` is needed: Debian's package ships no
``modules.dep``), and decompression of ``.ko.xz``/``.ko.gz``/``.ko.zst``. Invariants: a module
built into the kernel (listed in ``modules.builtin``) is never loaded; the returned order puts
every module after all of its dependencies, and is deterministic.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


class ModuleError(RuntimeError):
    """A requested module is missing, unreadable or has a dependency cycle."""


def module_name(path: Path | str) -> str:
    """The kernel's name for a module file: ``virtio-rng.ko.xz`` -> ``virtio_rng``."""
    base = Path(path).name
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_module(path: Path) -> bytes:
    """The uncompressed ELF image of a module file."""
    raw = path.read_bytes()
    name = path.name
    if name.endswith(".xz"):
        return lzma.decompress(raw)
    if name.endswith(".gz"):
        return gzip.decompress(raw)
    if name.endswith(".zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise ModuleError(f"{path} is zstd-compressed and no zstd binary is installed")
        done = subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True)
        return done.stdout
    return raw


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The ``key=value`` strings of a module's ``.modinfo`` section (ELF64 little-endian)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ModuleError("not a little-endian ELF64 object")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name_off = struct.unpack_from("<I", elf, base)[0]
        offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
        return name_off, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name_off, offset, size = section(i)
        end = elf.index(b"\0", str_off + name_off)
        if elf[str_off + name_off : end] == b".modinfo":
            info: dict[str, list[str]] = {}
            for item in elf[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    raise ModuleError("no .modinfo section")


@dataclass(frozen=True)
class Module:
    """A module chosen for the guest, already decompressed."""

    name: str
    source: Path
    image: bytes
    depends: tuple[str, ...]


class ModuleTree:
    """The modules of one kernel: ``root`` is its ``lib/modules/<version>`` directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, Path] = {}
        for path in sorted((root / "kernel").rglob("*.ko*")):
            if path.name.endswith(_SUFFIXES):
                self.files.setdefault(module_name(path), path)
        builtin = root / "modules.builtin"
        lines = builtin.read_text().split() if builtin.exists() else []
        self.builtin = frozenset(module_name(line) for line in lines)

    def is_builtin(self, name: str) -> bool:
        return name in self.builtin

    def resolve(self, wanted: Iterable[str]) -> list[Module]:
        """``wanted`` plus their dependencies, each after everything it depends on.

        Built-in modules are skipped silently; a name that is neither built in nor present
        raises :class:`ModuleError`.
        """
        loaded: dict[str, Module] = {}
        order: list[Module] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            name = name.replace("-", "_")
            if name in loaded or self.is_builtin(name):
                return
            if name in visiting:
                raise ModuleError(f"dependency cycle through {name}")
            path = self.files.get(name)
            if path is None:
                raise ModuleError(f"module {name} is neither built in nor in {self.root}")
            visiting.add(name)
            image = read_module(path)
            deps = tuple(d for v in modinfo(image).get("depends", []) for d in v.split(",") if d)
            for dep in deps:
                visit(dep)
            visiting.discard(name)
            module = Module(name, path, image, deps)
            loaded[name] = module
            order.append(module)

        for name in wanted:
            visit(name)
        return order
