"""Test support: a throw-away PKI made with Debian's ``openssl`` command, laid out in
QEMU's ``tls-creds-x509`` directories.

``make_pki(root)`` returns a :class:`Pki` with ``server`` (ca-cert, server-cert/key for
127.0.0.1 and localhost), ``client`` (ca-cert, client-cert/key), ``rogue`` (a client
certificate from another CA) and ``expired_server`` directories.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _ssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(dirpath: Path, name: str) -> tuple[Path, Path]:
    key, cert = dirpath / f"{name}-key.pem", dirpath / f"{name}-cert.pem"
    _ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "30", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=dirpath)  # fmt: skip
    return key, cert


def _leaf(dirpath: Path, ca: tuple[Path, Path], name: str, usage: str,
          days: str = "30", start: str | None = None) -> tuple[Path, Path]:  # fmt: skip
    key, csr, cert = (dirpath / f"{name}-key.pem", dirpath / f"{name}.csr",
                      dirpath / f"{name}-cert.pem")  # fmt: skip
    ext = dirpath / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _ssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/O=netstack tests/CN={name}", cwd=dirpath)  # fmt: skip
    if start is not None:
        # openssl 3.0's x509 cannot back-date: certtool (gnutls-bin) can
        tmpl = dirpath / f"{name}.tmpl"
        tmpl.write_text(
            f'cn = "{name}"\norganization = "netstack tests"\n'
            f'activation_date = "{start}"\nexpiration_date = "{days}"\n'
            "tls_www_server\nsigning_key\nencryption_key\nip_address = 127.0.0.1\n"
        )
        subprocess.run(
            ["certtool", "--generate-certificate", "--load-privkey", str(key),
             "--load-ca-certificate", str(ca[1]), "--load-ca-privkey", str(ca[0]),
             "--template", str(tmpl), "--outfile", str(cert)],
            cwd=dirpath, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return key, cert
    _ssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
         "-CAcreateserial", "-out", str(cert), "-extfile", str(ext), "-days", days,
         cwd=dirpath)  # fmt: skip
    return key, cert


@dataclass
class Pki:
    server: Path
    client: Path
    rogue: Path
    expired_server: Path
    ca_cert: Path


def _layout(target: Path, ca_cert: Path, role: str, key: Path, cert: Path) -> Path:
    target.mkdir()
    (target / "ca-cert.pem").write_bytes(ca_cert.read_bytes())
    (target / f"{role}-cert.pem").write_bytes(cert.read_bytes())
    (target / f"{role}-key.pem").write_bytes(key.read_bytes())
    return target


def make_pki(root: Path) -> Pki:
    work = root / "pki-work"
    work.mkdir()
    ca = _ca(work, "ca")
    rogue_ca = _ca(work, "rogue-ca")
    server = _leaf(work, ca, "server", "serverAuth")
    client = _leaf(work, ca, "client", "clientAuth")
    rogue = _leaf(work, rogue_ca, "rogue", "clientAuth")
    expired = _leaf(work, ca, "expired", "serverAuth",
                    start="2020-01-01 00:00:00 UTC", days="2020-02-01 00:00:00 UTC")  # fmt: skip
    return Pki(
        server=_layout(root / "server", ca[1], "server", *server),
        client=_layout(root / "client", ca[1], "client", *client),
        rogue=_layout(root / "rogue", ca[1], "client", *rogue),
        expired_server=_layout(root / "expired", ca[1], "server", *expired),
        ca_cert=ca[1],
    )
