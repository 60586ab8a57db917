"""The driver conformance harness: what every driver's test case provides.

A case creates its netdev in a real :class:`~netstack.daemon.Netstack` and an *outside*
peer that talks to it the way the real peer would (a socket for socket-type drivers, a
tap's namespace for tap, ...). The generic tests in ``test_conformance.py`` then join the
netdev to a hub with an in-process recording client (the *inside*) and check the core
contract: frames cross both ways, link down stops them, a receiver that cannot take frames
gets them later in order, deleting the netdev purges and frees its id, introspection shows
it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from netstack.daemon import Netstack


class Outside(abc.ABC):
    """The far side of a driver under test."""

    #: False for drivers whose outside cannot stop accepting (datagram sockets).
    can_pause = True

    @abc.abstractmethod
    async def send(self, frame: bytes) -> None:
        """Make the driver receive ``frame`` from outside."""

    @abc.abstractmethod
    async def recv(self, timeout: float = 2.0) -> bytes | None:
        """The next frame the driver sent out, or None after ``timeout``."""

    async def pause(self) -> None:  # noqa: B027 - optional hook
        """Stop accepting frames from the driver (fill buffers)."""

    async def resume(self) -> None:  # noqa: B027 - optional hook
        """Accept frames again."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the outside's resources."""


class DriverCase(abc.ABC):
    """One driver configuration under test."""

    #: Test id (pytest parameter id).
    id: str
    #: ``Netdev`` type (the ``type=`` of ``info network``).
    type: str
    #: Whether frames from outside may be padded or otherwise altered (none may).
    name = "dut"

    @abc.abstractmethod
    def registry(self) -> dict[str, object]:
        """The driver registry the daemon needs for this case (incl. hubport)."""

    @abc.abstractmethod
    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        """Create the netdev named :attr:`name` in ``ns`` and yield its outside."""
        yield  # type: ignore[misc]
