"""Which data path runs: compiled extension modules or the pure-Python reference.

Owns the one decision point for every optional compiled module of the tree. A compiled
module is an accelerator of a pure-Python module that stays complete and is the reference
for behaviour: code asks :func:`load` for the extension and falls back to its Python
implementation when ``None`` comes back. ``load`` returns ``None`` when

- the environment variable ``NETSTACK_PURE_PYTHON`` is set to anything but ``""``/``0``
  (CI runs the suite once this way, so both paths are tested), or
- the extension was not built (no compiler at install time: ``pip install`` without gcc
  still gives a working netstackd), or it fails to import.

:func:`status` says which path each registered module took; ``netstackd -version`` and the
start-up log print :func:`describe`.

Invariant: the choice is made once per module name per process (the first ``load`` wins and
is cached), so one process never mixes the two paths for the same module.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_ENV = "NETSTACK_PURE_PYTHON"

_loaded: dict[str, ModuleType | None] = {}
_why: dict[str, str] = {}


def pure_python_forced() -> bool:
    """True when the environment asks for the pure-Python path everywhere."""
    return os.environ.get(_ENV, "") not in ("", "0")


def load(name: str) -> ModuleType | None:
    """The compiled module ``name`` (dotted import path), or None to use Python.

    The result is cached: later calls with the same name return the same answer.
    """
    if name in _loaded:
        return _loaded[name]
    mod: ModuleType | None = None
    if pure_python_forced():
        _why[name] = f"python ({_ENV} set)"
    else:
        try:
            mod = importlib.import_module(name)
            _why[name] = "compiled"
        except ImportError as exc:
            _why[name] = f"python (not built: {exc})"
    _loaded[name] = mod
    return mod


def status() -> dict[str, str]:
    """Each module asked for so far and the path it took."""
    return dict(_why)


def describe() -> str:
    """One line for ``-version`` and the start-up log."""
    if not _why:
        return "data path: pure Python (no compiled modules requested)"
    compiled = sorted(n for n, w in _why.items() if w == "compiled")
    if len(compiled) == len(_why):
        return "data path: compiled (" + ", ".join(compiled) + ")"
    if not compiled:
        return "data path: pure Python (" + next(iter(sorted(_why.values()))) + ")"
    rest = sorted(f"{n}: {w}" for n, w in _why.items() if w != "compiled")
    return "data path: mixed (compiled: " + ", ".join(compiled) + "; " + "; ".join(rest) + ")"
