"""The vhost-user socket, front-end side: connect (client) or listen-and-accept (server),
send messages with their fds (SCM_RIGHTS), read replies, and run :mod:`.session` plans.

A thin asyncio adapter: all protocol decisions live in :mod:`.protocol` and
:mod:`.session`. Every reply wait is bounded (``reply_timeout``): a back end that never
answers raises :class:`ReplyTimeout` instead of hanging the caller. The socket is
non-blocking; a send that would block waits for writability on the loop.

Invariants: each :class:`Message` leaves in order, its fds attached to its first byte; the
channel never closes fds it was given to send (the owner does); a closed or broken
channel raises :class:`ChannelClosed` on every later use.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from typing import TypeVar

from .protocol import Message, Reply, ReplyParser
from .session import Expect, Plan, Step

T = TypeVar("T")
DEFAULT_TIMEOUT = 5.0


class ChannelClosed(ConnectionError):
    """The back end closed the connection (or the channel was closed here)."""


class ReplyTimeout(TimeoutError):
    """No reply within the channel's timeout."""


class Channel:
    """One connected vhost-user socket."""

    def __init__(self, sock: socket.socket, *, reply_timeout: float = DEFAULT_TIMEOUT) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reply_timeout = reply_timeout
        self._parser = ReplyParser()
        self._replies: list[Reply] = []
        self._closed = False
        self.sent = 0

    @classmethod
    async def connect(
        cls, path: str, *, timeout: float = DEFAULT_TIMEOUT, reply_timeout: float = DEFAULT_TIMEOUT
    ) -> Channel:
        """Connect to a back end's listening socket, retrying until ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, path)
                return cls(sock, reply_timeout=reply_timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)
            except BaseException:
                sock.close()
                raise

    @classmethod
    async def accept(
        cls,
        path: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        reply_timeout: float = DEFAULT_TIMEOUT,
    ) -> Channel:
        """Listen on ``path`` (a stale socket file is replaced) and take one back end."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            lsock.bind(path)
            lsock.listen(1)
            lsock.setblocking(False)
            loop = asyncio.get_running_loop()
            conn, _ = await asyncio.wait_for(loop.sock_accept(lsock), timeout)
            return cls(conn, reply_timeout=reply_timeout)
        finally:
            lsock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    # -- raw I/O -------------------------------------------------------------------------

    async def send_raw(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        """Bytes on the wire, fds attached to the first byte (hostile mode uses it too)."""
        if self._closed:
            raise ChannelClosed("channel closed")
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(_fd_array(fds)))] if fds else []
        while view:
            try:
                n = self.sock.sendmsg([view], anc)
            except BlockingIOError:
                fut: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self.sock, _wake, fut)
                try:
                    await fut
                finally:
                    loop.remove_writer(self.sock)
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                raise ChannelClosed(str(exc)) from exc
            view = view[n:]
            anc = []
        self.sent += 1

    async def send(self, msg: Message) -> None:
        await self.send_raw(msg.encode(), msg.fds)

    async def recv_reply(self, timeout: float | None = None) -> Reply:
        if self._replies:
            return self._replies.pop(0)
        loop = asyncio.get_running_loop()
        limit = self.reply_timeout if timeout is None else timeout
        deadline = loop.time() + limit
        while not self._replies:
            if self._closed:
                raise ChannelClosed("channel closed")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ReplyTimeout(f"no reply within {limit} s")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), remaining)
            except TimeoutError:
                raise ReplyTimeout(f"no reply within {limit} s") from None
            except (ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                raise ChannelClosed(str(exc)) from exc
            if not data:
                self.close()
                raise ChannelClosed("back end closed the connection")
            self._replies.extend(self._parser.feed(data))
        return self._replies.pop(0)

    async def peer_closed(self, timeout: float = 0.5) -> bool:
        """True if the back end closes the connection within ``timeout`` (any bytes it
        sends meanwhile are kept as replies)."""
        try:
            await self.recv_reply(timeout)
        except ChannelClosed:
            return True
        except ReplyTimeout:
            return False
        return self._closed

    # -- plans ---------------------------------------------------------------------------

    async def transact(self, step: Step) -> Reply | None:
        await self.send(step.message)
        if step.expect is Expect.NONE:
            return None
        return await self.recv_reply()

    async def run(self, plan: Plan[T]) -> T:
        reply: Reply | None = None
        try:
            step = plan.send(None)
            while True:
                reply = await self.transact(step)
                step = plan.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fd_array(fds: tuple[int, ...]) -> bytes:
    return array.array("i", fds).tobytes()
