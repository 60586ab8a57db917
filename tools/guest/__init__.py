"""A tiny, reusable Linux guest for interop tests: Debian's cloud kernel and a busybox
initramfs, booted by ``qemu-system-x86_64`` under TCG with whatever netdevs a test needs.

Public API (see the submodules for details)::

    image = build()                                   # cached; builds once per content
    result = run_guest_sync("udhcpc -i eth0 -q -n", ["-netdev", "user,id=n0",
                            *virtio_nic_args("n0", "52:54:00:12:34:56")], image=image)
    result.check(); result.exit_status; result.output; result.boot_seconds

    async with Guest(image, script, qemu_args, name="a") as guest:   # several at once
        await guest.wait_for("lease of", timeout=20)
        result = await guest.wait()

Submodules: :mod:`.cpio` (newc writer), :mod:`.kmod` (module selection), :mod:`.debs`
(package cache), :mod:`.image` (initramfs and ``/init``), :mod:`.runner` (QEMU), :mod:`.host`
(QEMU discovery and installation). Importing this package has no side effects.
"""

from .host import HostUnavailable, ensure_qemu, find_qemu
from .image import EXIT_MARKER, READY_MARKER, UDHCPC_SCRIPT_PATH, GuestImage, ImageError, build
from .image import overlay as make_overlay
from .runner import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT,
    Guest,
    GuestError,
    GuestResult,
    run_guest,
    run_guest_sync,
    shared_memory_args,
    virtio_nic_args,
)

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT",
    "EXIT_MARKER",
    "READY_MARKER",
    "UDHCPC_SCRIPT_PATH",
    "Guest",
    "GuestError",
    "GuestImage",
    "GuestResult",
    "HostUnavailable",
    "ImageError",
    "build",
    "ensure_qemu",
    "find_qemu",
    "make_overlay",
    "run_guest",
    "run_guest_sync",
    "shared_memory_args",
    "virtio_nic_args",
]
