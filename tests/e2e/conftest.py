"""Fixtures for end-to-end tests that boot the tiny QEMU test guest (:mod:`tools.guest`).

``qemu_binary`` finds ``qemu-system-x86_64``, installing it with ``tools/setup-deps.sh`` when
missing (set ``NETSTACK_NO_INSTALL=1`` to forbid that); it skips only when QEMU is absent and
cannot be installed. ``guest_image`` builds (or finds in the cache) the guest image once per
session; a failure to build is an error, not a skip.
"""

from __future__ import annotations

import os

import pytest

from tools.guest import GuestImage, HostUnavailable, build, ensure_qemu


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    try:
        return ensure_qemu(install=os.environ.get("NETSTACK_NO_INSTALL") != "1")
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")


@pytest.fixture(scope="session")
def guest_image(qemu_binary: str) -> GuestImage:
    return build()
