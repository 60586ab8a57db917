"""TLS credentials objects: ``-object tls-creds-x509`` (QEMU's ``crypto/tlscredsx509.c``)
and the ``authz-simple`` authorization object (``authz/simple.c``) of ``tls-authz``.

Owns :class:`TlsCredsX509`: it loads QEMU's files from ``dir`` into Python ``ssl``
contexts (OpenSSL; no hand-written crypto) and wraps the sockets of TLS chardevs
(:meth:`TlsCredsX509.wrap`, used by :mod:`netstack.chardev.sockets`).

Files, as QEMU names them (``crypto/tlscredsx509.h``): ``ca-cert.pem`` (always
required), ``ca-crl.pem`` (server, optional), ``server-cert.pem`` + ``server-key.pem``
(server, required), ``client-cert.pem`` + ``client-key.pem`` (client, optional: without
them the client presents no certificate), ``dh-params.pem`` (server, optional). Error
texts are QEMU's: ``Missing 'dir' property value``, ``Unable to access credentials
PATH: No such file or directory``, ``Cannot load CA certificate 'P': ...``, ``Cannot
load certificate 'C' & key 'K': ...``, ``Cannot load CRL 'P': ...``, ``Cert 'C' without
corresponding key 'K'``; and for a chardev of the wrong role ``Expected TLS credentials
for a server endpoint``.

Properties: ``endpoint`` (``client`` default | ``server``), ``verify-peer`` (default on:
a server demands a client certificate signed by the CA, a client checks the server's
certificate against the CA and the host name it connects to), ``sanity-check`` (default
on), ``priority``, ``passwordid``, ``loaded`` (deprecated, ignored).

Deviations, because OpenSSL is not GnuTLS: ``priority`` takes only ``NORMAL``,
``@SYSTEM`` and ``PERFORMANCE`` (each means the ``ssl`` module's defaults: TLS 1.2 and
1.3 with its cipher list), anything else is refused; ``passwordid`` needs a ``secret``
object, which netstack does not have (``No secret with id 'X'``). The sanity check is
done for a server's certificate by verifying it the way a client will: an in-memory TLS
handshake with a client that trusts only ``ca-cert.pem`` (catches an expired or not yet
valid certificate, one not signed by the CA, or one without the server key purpose),
with the text ``The certificate 'P' failed the sanity check: REASON``
instead of QEMU's per-check texts; a client's own certificate is not pre-checked (the
server's verification reports it at connection time).

:class:`AuthzSimple` allows one identity; for a TLS server chardev with ``tls-authz``
the identity is the client certificate's distinguished name exactly as QEMU 7.2 gets it
from GnuTLS's ``gnutls_x509_crt_get_dn``: RDNs in certificate order, not RFC 4514's
reversed order (``O=example,CN=client``; checked against QEMU), :func:`x509_dname`.
Deviation: with ``verify-peer=off`` QEMU skips the ``tls-authz`` check altogether;
netstack then refuses every client (there is no verified certificate to authorize).
Texts: ``Cannot find QAuthZ object ID X``, ``Object 'X' is not a QAuthZ subclass``,
``TLS x509 authz check for DN is denied``.

Invariants: an object is fully loaded when constructed (a failure raises
:class:`~netstack.errors.GenericError` and leaves nothing); the contexts never change
afterwards, so a chardev that holds the object keeps working after ``object-del``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import TYPE_CHECKING, Final

from netstack.errors import GenericError, NetstackError

if TYPE_CHECKING:
    from netstack.qapi.qom import ObjectSpec

CA_CERT: Final = "ca-cert.pem"
CA_CRL: Final = "ca-crl.pem"
SERVER_CERT: Final = "server-cert.pem"
SERVER_KEY: Final = "server-key.pem"
CLIENT_CERT: Final = "client-cert.pem"
CLIENT_KEY: Final = "client-key.pem"
DH_PARAMS: Final = "dh-params.pem"

PRIORITIES: Final = ("NORMAL", "@SYSTEM", "PERFORMANCE")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class TlsCredsX509:
    """One ``tls-creds-x509`` object."""

    qom_type = "tls-creds-x509"
    #: The options it was created with (``-writeconfig`` writes them back).
    spec: ObjectSpec | None = None

    def __init__(
        self,
        object_id: str,
        *,
        dir: str | None,
        endpoint: str = "client",
        verify_peer: bool = True,
        sanity_check: bool = True,
        priority: str | None = None,
        passwordid: str | None = None,
    ) -> None:
        self.id = object_id
        self.dir = dir
        self.endpoint = endpoint
        self.verify_peer = verify_peer
        self.sanity_check = sanity_check
        self.priority = priority
        if priority is not None and priority not in PRIORITIES:
            raise GenericError(
                f"TLS priority '{priority}' is not supported: netstack uses OpenSSL, which "
                f"takes no GnuTLS priority strings (use one of {', '.join(PRIORITIES)})"
            )
        if passwordid is not None:
            raise GenericError(f"No secret with id '{passwordid}'")
        self.context = self._load()

    # -- loading ---------------------------------------------------------------------------

    def _path(self, name: str, *, required: bool) -> str | None:
        """``qcrypto_tls_creds_get_path``."""
        assert self.dir is not None
        path = f"{self.dir}/{name}"
        if os.access(path, os.R_OK):
            return path
        err = OSError(0, "")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            err = exc
        if err.errno == 2 and not required:
            return None
        raise GenericError(f"Unable to access credentials {path}: {os.strerror(err.errno or 13)}")

    def _load(self) -> ssl.SSLContext:
        if not self.dir:
            raise GenericError("Missing 'dir' property value")
        server = self.endpoint == "server"
        cacert = self._path(CA_CERT, required=True)
        assert cacert is not None
        cacrl = dhparams = None
        if server:
            cacrl = self._path(CA_CRL, required=False)
            cert = self._path(SERVER_CERT, required=True)
            key = self._path(SERVER_KEY, required=True)
            dhparams = self._path(DH_PARAMS, required=False)
        else:
            cert = self._path(CLIENT_CERT, required=False)
            key = self._path(CLIENT_KEY, required=False)
            if cert is not None and key is None:
                raise GenericError(
                    f"Cert '{cert}' without corresponding key '{self.dir}/{CLIENT_KEY}'"
                )
            if key is not None and cert is None:
                raise GenericError(
                    f"Key '{key}' without corresponding cert '{self.dir}/{CLIENT_CERT}'"
                )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=cacert)
        except (ssl.SSLError, OSError) as exc:
            raise GenericError(f"Cannot load CA certificate '{cacert}': {_reason(exc)}") from exc
        if cert is not None and key is not None:
            try:
                ctx.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                raise GenericError(
                    f"Cannot load certificate '{cert}' & key '{key}': {_reason(exc)}"
                ) from exc
        if cacrl is not None:
            try:
                ctx.load_verify_locations(cafile=cacrl)
            except (ssl.SSLError, OSError) as exc:
                raise GenericError(f"Cannot load CRL '{cacrl}': {_reason(exc)}") from exc
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        if dhparams is not None:
            try:
                ctx.load_dh_params(dhparams)
            except (ssl.SSLError, OSError) as exc:
                raise GenericError(
                    f"Unable to load DH parameters from {dhparams}: {_reason(exc)}"
                ) from exc
        if self.verify_peer:
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.sanity_check and server and cert is not None and key is not None:
            self._sanity(cacert, cert, key)
        return ctx

    @staticmethod
    def _sanity(cacert: str, cert: str, key: str) -> None:
        """Handshake in memory against a client that trusts only the CA (module doc)."""
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert, key)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.load_verify_locations(cafile=cacert)
        try:
            _memory_handshake(client, server)
        except _HandshakeFailed as exc:
            raise GenericError(
                f"The certificate '{cert}' failed the sanity check: {exc.desc}"
            ) from None

    # -- use -------------------------------------------------------------------------------

    def check_endpoint(self, endpoint: str) -> None:
        """``qcrypto_tls_creds_check_endpoint``."""
        if endpoint != self.endpoint:
            raise GenericError(f"Expected TLS credentials for a {endpoint} endpoint")

    async def wrap(
        self, sock: socket.socket, *, server: bool, host: str | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Run the TLS handshake on a connected socket; the streams of the session.
        Raises ``ssl.SSLError`` (or ``OSError``) when the handshake fails."""
        if not server:
            return await asyncio.open_connection(
                sock=sock, ssl=self.context, server_hostname=host or ""
            )
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, ssl=self.context)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class _HandshakeFailed(NetstackError):
    """The in-memory sanity handshake failed (the text says why)."""


def _memory_handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> None:
    """A TLS handshake between two contexts over memory BIOs; raises
    :class:`_HandshakeFailed` with the failure reason."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_side=False, server_hostname=None)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", cli), ("s", srv)):
            if done[name]:
                continue
            try:
                obj.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                raise _HandshakeFailed(str(exc.verify_message)) from None
            except ssl.SSLError as exc:
                raise _HandshakeFailed(_reason(exc)) from None
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done["c"] and done["s"]:
            return
    raise _HandshakeFailed("handshake did not complete")


class AuthzSimple:
    """One ``authz-simple`` object: ``identity`` is the only one allowed."""

    qom_type = "authz-simple"
    #: The options it was created with (``-writeconfig`` writes them back).
    spec: ObjectSpec | None = None

    def __init__(self, object_id: str, identity: str) -> None:
        self.id = object_id
        self.identity = identity

    def is_allowed(self, identity: str) -> bool:
        return identity == self.identity


_RDN_NAMES: Final = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
    "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
    "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID",
    "emailAddress": "EMAIL", "serialNumber": "serialNumber", "title": "title",
}  # fmt: skip


def _escape(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def x509_dname(subject: object) -> str | None:
    """The distinguished name QEMU authorizes, from a subject as ``ssl``'s
    ``getpeercert()`` returns it (``((("organizationName", "O"),), (("commonName",
    "CN"),))`` -> ``O=O,CN=CN``): RDNs in certificate order, multi-valued RDNs joined with
    ``+``, RFC 4514 escaping. None for no subject."""
    if not isinstance(subject, tuple) or not subject:
        return None
    parts = []
    for rdn in subject:
        parts.append("+".join(f"{_RDN_NAMES.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(parts)
