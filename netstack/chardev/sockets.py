"""The ``socket`` chardev: a stream socket server or client (``chardev/char-socket.c``).

Owns the life of a socket chardev: option defaults and validation
(``qmp_chardev_validate_socket``, QEMU's texts), the listener and its accept loop, the
client's connect and reconnect timer, the connections handed to the front end, and the
``query-chardev`` filename in every state (``chardev/char-socket.c``).

Defaults are QMP's, which the CLI parser already resolved explicitly: ``server`` absent
means *server*, ``wait`` absent means no wait, ``nodelay``/``telnet``/... absent mean off.

Server: the listener is opened in :meth:`start`; with ``wait=on`` :meth:`start` returns
only once the first client has connected (the start coroutine waits, the loop runs on).
A connection is accepted whether or not a front end is attached, as in QEMU, and is held
until one attaches. A single-connection front end gets one client at a time (the next
waits in the listen backlog until the current one leaves); a ``multi_connection`` front
end (QMP monitor) is served every client at once.

Socket activation: a server first looks for a listening socket the daemon inherited
(named after the chardev, or bound to its address: :mod:`netstack.service.activation`)
and uses it instead of binding; such a socket file is never removed by the daemon.

Client: without ``reconnect``/``reconnect-ms`` the connect happens in :meth:`start` and
failures fail the chardev (``Failed to connect to 'PATH': No such file or directory``);
with it the chardev starts disconnected and connects in the background, retrying every
``reconnect-ms`` after a failure or a disconnect. Without it a client that lost its peer
stays disconnected.

Filename: ``disconnected:`` + :func:`~.sockaddr.address_text` while nothing is connected
(for a server, the address the listener really has: numeric host and port), otherwise
:func:`~.sockaddr.connected_text` of the oldest live connection.

Protocol layers, in QEMU's order (``tcp_chr_new_client``): ``tls-creds`` (server or
client; :mod:`netstack.tlscreds`), then ``websocket`` (server only), then ``telnet`` /
``tn3270`` (server only: a telnet client negotiates nothing, as in QEMU), driven by
:class:`~.layers.LayeredConnection`; the front end gets the connection once every
handshake is done. A failed handshake, a handshake not done within
:data:`HANDSHAKE_TIMEOUT` (QEMU has no limit) or a protocol error drops that connection
only; it is counted in :attr:`SocketChardev.errors` and logged, rate-limited. A
raw-socket front end (vhost-user) is refused on a chardev with layers, with QEMU's
``'telnet' option is incompatible with waiting for connection completion``. The
``query-chardev`` scheme is ``telnet``, ``websocket`` or ``tcp`` (also for tn3270 and
TLS), as in QEMU.

Deviation: QEMU 7.2's TLS chardev hands received data to the front end only when the
next TLS record arrives (a QMP reply lags one request behind); here data is delivered
as soon as it is decrypted. ``tls-authz`` names an ``authz-simple`` object (the only
authorization type netstack has), checked against the client certificate's
distinguished name after the handshake, as QEMU does.

Invariants: the listening socket and every accepted/connected socket are closed by
:meth:`close`; a unix socket file the listener created is removed then; every task is
owned by the chardev.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from netstack.errors import GenericError, RemoteInputError
from netstack.proto.layer import Layer
from netstack.proto.telnet import TelnetServer
from netstack.proto.websocket import WebSocketServer
from netstack.qapi.chardev import ChardevSocket
from netstack.qapi.sockets import (
    FdSocketAddress,
    InetSocketAddress,
    SocketAddressData,
    UnixSocketAddress,
    VsockSocketAddress,
)
from netstack.ratelog import RateLog
from netstack.tlscreds import x509_dname

from . import sockaddr
from .base import Chardev, Connection, Frontend
from .layers import LayeredConnection
from .sockaddr import FdLookup

if TYPE_CHECKING:
    from netstack.service.activation import ListenFds

log = logging.getLogger("netstack.chardev")

#: Listen backlog. QEMU uses 1; a little more lets several monitor clients queue up.
BACKLOG = 16
#: Seconds a client has to complete the TLS, WebSocket and telnet handshakes (QEMU: no
#: limit; a client that never completes them would hold a single-connection chardev).
HANDSHAKE_TIMEOUT = 10.0

ObjectLookup = Callable[[str], Any]


@runtime_checkable
class TlsCreds(Protocol):
    """What a socket chardev needs of a ``tls-creds-*`` object (``netstack.tlscreds``)."""

    def check_endpoint(self, endpoint: str) -> None: ...

    async def wrap(
        self, sock: socket.socket, *, server: bool, host: str | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


class _Refused(RemoteInputError):
    """A completed TLS handshake whose client is not authorized (``tls-authz``)."""


def validate(opts: ChardevSocket) -> None:
    """``qmp_chardev_validate_socket`` plus netstack's refusals, in QEMU's order."""
    addr = opts.addr.data
    if isinstance(addr, FdSocketAddress):
        if opts.reconnect is not None:
            raise GenericError("'reconnect' option is incompatible with 'fd' address type")
        if opts.tls_creds is not None and not opts.server:
            raise GenericError(
                "'tls_creds' option is incompatible with 'fd' address type as client"
            )
    elif isinstance(addr, UnixSocketAddress) and opts.tls_creds is not None:
        raise GenericError("'tls_creds' option is incompatible with 'unix' address type")
    elif isinstance(addr, VsockSocketAddress) and opts.tls_creds is not None:
        raise GenericError("'tls_creds' option is incompatible with 'vsock' address type")
    if opts.tls_authz is not None and opts.tls_creds is None:
        raise GenericError("'tls_authz' option requires 'tls_creds' option")
    if opts.server is None or opts.server:
        if opts.reconnect is not None:
            raise GenericError(
                "'reconnect' option is incompatible with socket in server listen mode"
            )
    else:
        if opts.websocket:
            raise GenericError("Websocket client is not implemented")
        if opts.wait is not None:
            raise GenericError("'wait' option is incompatible with socket in client connect mode")
    if opts.reconnect_ms is not None and opts.reconnect is not None:
        raise GenericError("'reconnect' and 'reconnect-ms' are mutually exclusive")


class SocketChardev(Chardev):
    """A socket server (``server=on``) or client."""

    backend = "socket"
    reconnectable = True

    def __init__(
        self,
        chardev_id: str,
        options: ChardevSocket,
        *,
        mode: int | None = None,
        fd_lookup: FdLookup | None = None,
        listen_fds: ListenFds | None = None,
        objects: ObjectLookup | None = None,
    ) -> None:
        super().__init__(chardev_id)
        self.options = options
        self._objects = objects
        self._tls: TlsCreds | None = None
        #: Connections dropped for protocol errors (TLS, WebSocket, handshake timeouts).
        self.errors = 0
        self.last_error: str | None = None
        #: Remote errors: at most 10 log lines a minute, the rest counted.
        self._error_log = RateLog(log, interval=60.0, burst=10)
        self.is_listen = options.server is None or options.server
        self.is_wait = bool(options.wait)
        self.nodelay = bool(options.nodelay)
        if options.reconnect is not None:
            self.reconnect_ms = options.reconnect * 1000
        else:
            self.reconnect_ms = options.reconnect_ms or 0
        self.addr: SocketAddressData = options.addr.data
        # For an fd address, whether it is AF_UNIX (fd passing) is known only once opened.
        self.fd_pass = isinstance(self.addr, UnixSocketAddress)
        self._mode = mode
        self._fd_lookup = fd_lookup
        self._listen_fds = listen_fds
        #: For ``websocket=on``: which handshake ``Origin`` headers are accepted (None: any,
        #: as QEMU). The web view sets it on the chardev it serves the page for.
        self.websocket_origin_ok: Callable[[str], bool] | None = None
        self._listener: socket.socket | None = None
        self._live: dict[socket.socket, str] = {}  # connected sockets -> filename
        self._fe_ready = asyncio.Event()
        self._accept_ok = asyncio.Event()
        self._first = asyncio.Event()
        self._connect_err_reported = False

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tls = self._lookup_creds()
        validate(self.options)
        if self.is_listen:
            sock, created = self._inherited(), None
            if sock is None:
                sock, created = await sockaddr.listen(
                    self.addr, backlog=BACKLOG, mode=self._mode, fd_lookup=self._fd_lookup
                )
            self._listener = sock
            if created is not None:
                self.claim_path(created)
            self.fd_pass = sock.family == socket.AF_UNIX
            self.addr = sockaddr.local_address(sock)
            self._update_gate()
            self.spawn(self._accept_loop())
            if self.is_wait:
                log.info("QEMU waiting for connection on: %s", self.filename())
                await self._first.wait()
        elif self.reconnect_ms > 0:
            self.spawn(self._client_loop())
        else:
            sock = await sockaddr.connect(self.addr, fd_lookup=self._fd_lookup)
            self.fd_pass = sock.family == socket.AF_UNIX
            self._begin(sock)

    def _inherited(self) -> socket.socket | None:
        """A listening socket from socket activation named after this chardev or bound
        to its address (:mod:`netstack.service.activation`); never unlinked by us."""
        if self._listen_fds is None:
            return None
        addr = self.addr
        unix = addr.path if isinstance(addr, UnixSocketAddress) and not addr.abstract else None
        inet = (addr.host, addr.port) if isinstance(addr, InetSocketAddress) else None
        return self._listen_fds.take(self.id, unix_path=unix, inet=inet)

    def _lookup_creds(self) -> TlsCreds | None:
        """``qmp_chardev_open_socket``'s ``tls-creds`` checks, with QEMU's texts."""
        name = self.options.tls_creds
        if name is None:
            return None
        obj = self._objects(name) if self._objects is not None else None
        if obj is None:
            raise GenericError(f"No TLS credentials with id '{name}'")
        if not isinstance(obj, TlsCreds):
            raise GenericError(f"Object with id '{name}' is not TLS credentials")
        obj.check_endpoint("server" if self.is_listen else "client")
        return obj

    @property
    def protocol(self) -> str:
        """``qemu_chr_socket_protocol``: the scheme in ``query-chardev`` filenames."""
        if self.options.telnet:
            return "telnet"
        return "websocket" if self.options.websocket else "tcp"

    async def close(self) -> None:
        await super().close()  # cancels the accept loop and the sessions first
        for sock in list(self._live):
            with contextlib.suppress(OSError):
                sock.close()
        self._live.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None

    def filename(self) -> str:
        for name in self._live.values():
            return name
        return sockaddr.address_text(
            self.addr, listen=self.is_listen, protocol=self.protocol, prefix="disconnected:"
        )

    @property
    def connected(self) -> bool:
        """QOM property ``connected``."""
        return bool(self._live)

    # -- front ends ------------------------------------------------------------------------

    def attach(self, frontend: Frontend) -> None:
        if getattr(frontend, "raw_socket", False):
            # A raw-socket front end (vhost-user) waits for the connection and does its
            # own I/O: QEMU's tcp_chr_wait_connected refuses these options.
            for name, on in (("telnet", self.options.telnet), ("tn3270", self.options.tn3270),
                             ("websock", self.options.websocket),
                             ("tls-creds", self.options.tls_creds is not None)):  # fmt: skip
                if on:
                    raise GenericError(
                        f"'{name}' option is incompatible with waiting for connection completion"
                    )
        super().attach(frontend)

    def on_attach(self) -> None:
        self._fe_ready.set()
        self._update_gate()

    def detach(self) -> None:
        self._fe_ready.clear()
        super().detach()
        self._update_gate()

    def _multi(self) -> bool:
        fe = self.frontend
        return fe is not None and bool(getattr(fe, "multi_connection", False))

    def _update_gate(self) -> None:
        if not self._live or self._multi():
            self._accept_ok.set()
        else:
            self._accept_ok.clear()

    # -- connections -----------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            await self._accept_ok.wait()
            try:
                sock, _peer = await loop.sock_accept(self._listener)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:  # EMFILE and friends: back off, keep listening
                log.warning("chardev %s: accept failed: %s", self.id, exc)
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            self._begin(sock)

    def _begin(self, sock: socket.socket) -> asyncio.Task[None]:
        """A connection is established: it is live from now on, served when possible."""
        if self.nodelay and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._live[sock] = sockaddr.connected_text(
            sock, listen=self.is_listen, protocol=self.protocol
        )
        self._first.set()
        self._update_gate()
        return self.spawn(self._session(sock))

    async def _session(self, sock: socket.socket) -> None:
        handed_over = False
        try:
            while True:
                await self._fe_ready.wait()
                fe = self.frontend
                if fe is None:
                    continue
                conn = await self._connection(sock, fe)
                handed_over = True
                if conn is None:
                    return
                task = self.serve_connection(conn)
                if task is None:
                    conn.close()
                    return
                try:
                    await task
                except Exception:
                    log.exception("chardev %s: front end failed", self.id)
                return
        finally:
            if not handed_over:
                with contextlib.suppress(OSError):
                    sock.close()
            self._live.pop(sock, None)
            self._update_gate()

    async def _connection(self, sock: socket.socket, fe: Frontend) -> Connection | None:
        """The connection the front end gets, once TLS and the layers' handshakes are
        done (None: they failed, the socket is closed)."""
        peer = self._live.get(sock, "")
        if getattr(fe, "raw_socket", False):
            return Connection(None, None, sock=sock, peer=peer, on_write=self.log_hook)
        layers = self._make_layers()
        conn: Connection | None = None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                if self._tls is not None:
                    reader, writer = await self._tls.wrap(sock, server=self.is_listen,
                                                          host=self._tls_host())  # fmt: skip
                    try:
                        self._authorize(writer)
                    except _Refused:
                        writer.close()
                        raise
                else:
                    reader, writer = await asyncio.open_connection(sock=sock)
                log_hook = None if layers else self.log_hook
                conn = Connection(reader, writer, sock=sock, peer=peer, on_write=log_hook)
                if not layers:
                    return conn
                lconn = LayeredConnection(
                    conn, layers, on_error=self._remote_error, on_write=self.log_hook
                )
                conn = lconn
                if await lconn.open():
                    return lconn
        except TimeoutError:
            self._remote_error("handshake timed out")
        except _Refused as exc:
            self._remote_error(str(exc))
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._remote_error(f"TLS handshake failed: {exc.args[-1] if exc.args else exc}")
        except (ConnectionError, OSError) as exc:
            self._remote_error(f"connection failed during handshake: {exc}")
        if conn is not None:
            conn.close()
        with contextlib.suppress(OSError):
            sock.close()
        return None

    def _make_layers(self) -> list[Layer]:
        """QEMU's stack above TLS: WebSocket (server only), then telnet (server only,
        as in QEMU: a telnet client negotiates nothing)."""
        layers: list[Layer] = []
        if self.options.websocket:
            layers.append(WebSocketServer(origin_ok=self.websocket_origin_ok))
        if self.is_listen and (self.options.telnet or self.options.tn3270):
            layers.append(TelnetServer(tn3270=bool(self.options.tn3270),
                                       on_break=self.send_break))  # fmt: skip
        return layers

    def _authorize(self, writer: asyncio.StreamWriter) -> None:
        """``tls-authz`` of a TLS server (``qcrypto_tls_session_check_certificate``):
        raises :class:`_Refused` with why the client is refused."""
        name = self.options.tls_authz
        if name is None or not self.is_listen:
            return
        authz = self._objects(name) if self._objects is not None else None
        if authz is None:
            raise _Refused(f"Cannot find QAuthZ object ID {name}")
        if not callable(getattr(authz, "is_allowed", None)):
            raise _Refused(f"Object '{name}' is not a QAuthZ subclass")
        cert = writer.get_extra_info("peercert") or {}
        dname = x509_dname(cert.get("subject"))
        if dname is None:
            raise _Refused("TLS x509 authz check: the client presented no certificate")
        if not authz.is_allowed(dname):
            raise _Refused(f"TLS x509 authz check for {dname} is denied")

    def _tls_host(self) -> str | None:
        return self.addr.host if isinstance(self.addr, InetSocketAddress) else None

    def _remote_error(self, message: str) -> None:
        """A peer broke a protocol: count it, log it (rate-limited), drop the connection."""
        self.errors += 1
        self.last_error = message
        self._error_log.warning("remote", "chardev %s: %s", self.id, message)

    async def _client_loop(self) -> None:
        """``reconnect-ms``: connect now, and again ``reconnect_ms`` after each failure or
        disconnect."""
        while True:
            try:
                sock = await sockaddr.connect(self.addr, fd_lookup=self._fd_lookup)
            except GenericError as exc:
                if not self._connect_err_reported:
                    log.error("Unable to connect character device %s: %s", self.id, exc.desc)
                    self._connect_err_reported = True
            else:
                self._connect_err_reported = False
                self.fd_pass = sock.family == socket.AF_UNIX
                await self._begin(sock)
            await asyncio.sleep(self.reconnect_ms / 1000)
