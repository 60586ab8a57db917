"""The one error tree of netstack.

Every error a user or a QMP client can see derives from :class:`NetstackError` and carries
the QMP error class it maps to (``qapi/error.json``). Messages are QEMU's texts where QEMU
has one, so a client cannot tell the daemon from QEMU by its errors.

:class:`RemoteError` is different in kind: it describes garbage received from a guest or a
peer. It is counted and logged (rate-limited) by whoever catches it, never fatal, and never
reaches a QMP client as a command failure.
"""

from __future__ import annotations


class NetstackError(Exception):
    """Base of all netstack errors; ``qmp_class`` names the QMP ErrorClass."""

    qmp_class = "GenericError"

    @property
    def desc(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class GenericError(NetstackError):
    """QMP ``GenericError``: the catch-all class QEMU uses for most failures."""


class DeviceNotFound(NetstackError):
    """QMP ``DeviceNotFound`` (set_link, netdev_del, filter chardevs)."""

    qmp_class = "DeviceNotFound"


class CommandNotFound(NetstackError):
    """QMP ``CommandNotFound``."""

    qmp_class = "CommandNotFound"


class RemoteError(Exception):
    """Malformed input from a guest or a peer: count it, drop it, keep serving."""
