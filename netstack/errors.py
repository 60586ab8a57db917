"""The one error tree of netstack.

Every error netstack raises on purpose derives from :class:`NetstackError`; ``desc`` is its
text. Three kinds sit below it:

:class:`ControlError`
    A failed request of a user or a QMP client: it carries the QMP error class it maps to
    (``qapi/error.json``) and QEMU's text where QEMU has one, so a client cannot tell the
    daemon from QEMU by its errors. :class:`GenericError`, :class:`DeviceNotFound`,
    :class:`CommandNotFound` and the configuration errors derive from it.
:class:`RemoteInputError`
    Garbage received from a guest or a peer (a vhost-user front end's message or ring, a
    stream's frame length, a websocket handshake, a QMP client's JSON, an HTTP request).
    Whoever receives the input catches it at that one boundary, counts it and logs it
    (rate-limited), answers or drops as the protocol says, and keeps serving; it is never
    fatal and never reaches a QMP client as a command failure.
:class:`StartupError`
    The command line or the host refuses what the daemon was asked to do at start (usage,
    privileges, confinement, socket activation): one line on stderr, exit status 1.

Internal failures (:class:`NetstackError` directly) are conversions and lookups whose
callers turn them into one of the kinds above with the right text.
"""

from __future__ import annotations


class NetstackError(Exception):
    """Base of all netstack errors; ``qmp_class`` names the QMP ErrorClass."""

    qmp_class = "GenericError"

    @property
    def desc(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ControlError(NetstackError):
    """A request refused with a QMP-visible error class and QEMU's text."""


class GenericError(ControlError):
    """QMP ``GenericError``: the catch-all class QEMU uses for most failures."""


class DeviceNotFound(ControlError):
    """QMP ``DeviceNotFound`` (set_link, netdev_del, filter chardevs)."""

    qmp_class = "DeviceNotFound"


class CommandNotFound(ControlError):
    """QMP ``CommandNotFound``."""

    qmp_class = "CommandNotFound"


class RemoteInputError(NetstackError):
    """Malformed input from a guest or a peer: count it, drop it, keep serving."""


class StartupError(NetstackError):
    """The command line or the host environment refuses a start-up request."""
