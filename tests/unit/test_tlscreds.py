"""``tls-creds-x509`` objects (netstack.tlscreds) and ``tls-creds`` on socket chardevs:
loading QEMU's files, QEMU's error texts, the sanity check, option rules."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from netstack.chardev import ChardevTable
from netstack.errors import GenericError
from netstack.qapi import chardev_from_qmp, object_from_qmp, parse_object_cli
from netstack.qapi.qom import AuthZSimpleProperties, TlsCredsX509Properties
from netstack.tlscreds import AuthzSimple, TlsCredsX509, x509_dname
from tests.interop.tls_pki import Pki, make_pki

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("certtool") is None,
    reason="openssl and certtool make the test certificates",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_cli_and_qmp_forms_parse() -> None:
    spec = parse_object_cli("tls-creds-x509,id=tls0,dir=/d,endpoint=server,verify-peer=off")
    assert spec.qom_type == "tls-creds-x509" and spec.id == "tls0"
    assert isinstance(spec.props, TlsCredsX509Properties)
    assert spec.props.endpoint == "server" and spec.props.verify_peer is False
    spec = object_from_qmp({"qom-type": "tls-creds-x509", "id": "t", "dir": "/d",
                            "sanity-check": False})  # fmt: skip
    assert isinstance(spec.props, TlsCredsX509Properties) and spec.props.sanity_check is False
    with pytest.raises(GenericError) as err:
        parse_object_cli("tls-creds-x509,id=t,endpoint=middle")
    assert "QCryptoTLSCredsEndpoint" in err.value.desc or "middle" in err.value.desc


def test_load_server_and_client(pki: Pki) -> None:
    server = TlsCredsX509("s", dir=str(pki.server), endpoint="server")
    assert server.context.verify_mode.name == "CERT_REQUIRED"
    client = TlsCredsX509("c", dir=str(pki.client))
    assert client.context.check_hostname
    server.check_endpoint("server")
    with pytest.raises(GenericError) as err:
        server.check_endpoint("client")
    assert err.value.desc == "Expected TLS credentials for a client endpoint"


def test_load_errors_have_qemus_texts(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=None)
    assert err.value.desc == "Missing 'dir' property value"
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=str(tmp_path), endpoint="server")
    assert err.value.desc == (
        f"Unable to access credentials {tmp_path}/ca-cert.pem: No such file or directory"
    )
    shutil.copy(pki.server / "ca-cert.pem", tmp_path / "ca-cert.pem")
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=str(tmp_path), endpoint="server")
    assert err.value.desc == (
        f"Unable to access credentials {tmp_path}/server-cert.pem: No such file or directory"
    )
    # a client without a certificate is fine; a certificate without its key is not
    TlsCredsX509("t", dir=str(tmp_path))
    shutil.copy(pki.client / "client-cert.pem", tmp_path / "client-cert.pem")
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=str(tmp_path))
    assert err.value.desc == (
        f"Cert '{tmp_path}/client-cert.pem' without corresponding key '{tmp_path}/client-key.pem'"
    )
    (tmp_path / "client-key.pem").write_text("not a key\n")
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=str(tmp_path))
    assert err.value.desc.startswith(
        f"Cannot load certificate '{tmp_path}/client-cert.pem' & key '{tmp_path}/client-key.pem': "
    )
    (tmp_path / "ca-cert.pem").write_text("garbage\n")
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=str(tmp_path))
    assert err.value.desc.startswith(f"Cannot load CA certificate '{tmp_path}/ca-cert.pem': ")


def test_sanity_check_refuses_an_expired_server_certificate(pki: Pki) -> None:
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=str(pki.expired_server), endpoint="server")
    assert err.value.desc == (
        f"The certificate '{pki.expired_server}/server-cert.pem' failed the sanity check: "
        "certificate has expired"
    )
    TlsCredsX509("t", dir=str(pki.expired_server), endpoint="server", sanity_check=False)


def test_unsupported_properties(pki: Pki) -> None:
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=str(pki.client), passwordid="sec0")
    assert err.value.desc == "No secret with id 'sec0'"
    with pytest.raises(GenericError) as err:
        TlsCredsX509("t", dir=str(pki.client), priority="NORMAL:-VERS-ALL:+VERS-TLS1.3")
    assert "not supported" in err.value.desc
    TlsCredsX509("t", dir=str(pki.client), priority="@SYSTEM")


def sock(addr: dict[str, Any], **extra: Any) -> Any:
    return {"type": "socket", "data": {"addr": addr, "wait": False, **extra}}


INET = {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}


async def test_chardev_tls_option_rules(table: ChardevTable, pki: Pki, tmp_path: Path) -> None:
    objects: dict[str, Any] = {
        "srv": TlsCredsX509("srv", dir=str(pki.server), endpoint="server"),
        "cli": TlsCredsX509("cli", dir=str(pki.client)),
        "notcreds": object(),
    }
    table.objects = objects.get
    cases = [
        (sock(INET, **{"tls-creds": "nope"}), "No TLS credentials with id 'nope'"),
        (sock(INET, **{"tls-creds": "notcreds"}),
         "Object with id 'notcreds' is not TLS credentials"),
        (sock(INET, **{"tls-creds": "cli"}), "Expected TLS credentials for a server endpoint"),
        (sock({"type": "unix", "data": {"path": str(tmp_path / "u")}}, **{"tls-creds": "srv"}),
         "'tls_creds' option is incompatible with 'unix' address type"),
        (sock({"type": "fd", "data": {"str": "3"}}, **{"tls-creds": "srv"}),
         "'tls_creds' option is incompatible with 'fd' address type as client"),
    ]  # fmt: skip
    for backend, text in cases:
        with pytest.raises(GenericError) as err:
            await table.add(chardev_from_qmp("c", backend))
        assert err.value.desc == f"Failed to add chardev 'c': {text}"
    await table.add(chardev_from_qmp("ok", sock(INET, **{"tls-creds": "srv"})))
    assert "ok" in table


def test_authz_simple_and_dname() -> None:
    spec = parse_object_cli("authz-simple,id=a0,identity=O=example,,CN=client")
    assert spec.qom_type == "authz-simple"
    assert isinstance(spec.props, AuthZSimpleProperties)
    assert spec.props.identity == "O=example,CN=client"
    authz = AuthzSimple("a0", spec.props.identity)
    subject = ((("organizationName", "example"),), (("commonName", "client"),))
    assert x509_dname(subject) == "O=example,CN=client"
    assert authz.is_allowed(x509_dname(subject) or "")
    assert not authz.is_allowed("CN=client,O=example")
    assert x509_dname(((("commonName", "a,b"), ("userId", " x")),)) == "CN=a\\,b+UID=\\ x"
    assert x509_dname(()) is None and x509_dname(None) is None


async def test_object_add_and_del_in_the_daemon(pki: Pki, tmp_path: Path) -> None:
    import drivers
    from netstack.daemon import Netstack

    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    try:
        props = {"qom-type": "tls-creds-x509", "id": "tls0", "dir": str(pki.server),
                 "endpoint": "server"}  # fmt: skip
        await ns.object_add(object_from_qmp(props))
        assert isinstance(ns.objects["tls0"], TlsCredsX509)
        with pytest.raises(GenericError) as err:
            await ns.object_add(object_from_qmp(props))
        assert err.value.desc == (
            "attempt to add duplicate property 'tls0' to object (type 'container')"
        )
        await ns.chardev_add(chardev_from_qmp("c0", sock(INET, **{"tls-creds": "tls0"})))
        # deleting the object leaves the chardev that holds it working, as in QEMU
        ns.object_del("tls0")
        assert "tls0" not in ns.objects and "c0" in ns.chardevs
        bad = {"qom-type": "tls-creds-x509", "id": "tls1", "dir": str(tmp_path)}
        with pytest.raises(GenericError) as err:
            await ns.object_add(object_from_qmp(bad))
        assert err.value.desc.startswith("Unable to access credentials ")
        assert "tls1" not in ns.objects
        await ns.object_add(object_from_qmp({"qom-type": "authz-simple", "id": "a0",
                                             "identity": "O=x,CN=y"}))  # fmt: skip
        ns.object_del("a0")
    finally:
        await ns.close()
