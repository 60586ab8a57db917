"""The user netdev's TFTP server, sans-IO with a manual clock: transfers, options (blksize,
tsize, timeout, windowsize), ACK handling, retransmission, block number roll-over, errors,
many sessions, and confinement to the root (traversal, absolute paths, symlinks)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from drivers.user import tftp
from drivers.user.tftp import TftpServer
from drivers.user.tftproot import Denied, NotFound, TftpRoot, check_name

CLIENT = (b"\x0a\x00\x02\x0f", 40000)


def rrq(name: bytes, *opts: tuple[bytes, bytes], mode: bytes = b"octet") -> bytes:
    return (
        b"\x00\x01" + name + b"\0" + mode + b"\0" + b"".join(k + b"\0" + v + b"\0" for k, v in opts)
    )


def ack(block: int) -> bytes:
    return struct.pack("!HH", tftp.ACK, block & 0xFFFF)


def parse(packet: bytes) -> tuple[int, int, bytes]:
    op, num = struct.unpack_from("!HH", packet)
    return op, num, packet[4:]


def oack_options(packet: bytes) -> dict[bytes, bytes]:
    assert packet[:2] == b"\x00\x06"
    fields = packet[2:].split(b"\0")[:-1]
    return dict(zip(fields[::2], fields[1::2], strict=True))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def server_for(root: Path, **kw: int) -> TftpServer:
    return TftpServer(TftpRoot(str(root)), **kw)


def fetch(
    server: TftpServer, name: bytes, *opts: tuple[bytes, bytes], client: tuple[bytes, int] = CLIENT
) -> bytes:
    """Run a whole transfer, ACKing every window's last block; returns the file."""
    out = server.handle(client, rrq(name, *opts), 0.0)
    data = bytearray()
    blksize = 512
    if out and out[0][:2] == b"\x00\x06":
        blksize = int(oack_options(out[0]).get(b"blksize", b"512"))
        out = server.handle(client, ack(0), 0.0)
    while out:
        last = 0
        for packet in out:
            op, num, chunk = parse(packet)
            assert op == tftp.DATA, packet[:40]
            data += chunk
            last = num
        if len(chunk) < blksize:
            assert server.handle(client, ack(last), 0.0) == []
            break
        out = server.handle(client, ack(last), 0.0)
    return bytes(data)


def test_plain_transfer_like_libslirp(root: Path) -> None:
    content = os.urandom(1300)
    (root / "f").write_bytes(content)
    s = server_for(root)
    (first,) = s.handle(CLIENT, rrq(b"f"), 0.0)
    assert parse(first)[:2] == (tftp.DATA, 1) and len(first) == 4 + 512
    assert fetch(s, b"f") == content
    assert s.counters["tftp-completed"] == 1 and not s.sessions


def test_exact_multiple_ends_with_empty_block(root: Path) -> None:
    (root / "f").write_bytes(b"x" * 1024)
    s = server_for(root)
    s.handle(CLIENT, rrq(b"f"), 0.0)
    (second,) = s.handle(CLIENT, ack(1), 0.0)
    assert parse(second)[:2] == (tftp.DATA, 2) and len(second) == 4 + 512
    (third,) = s.handle(CLIENT, ack(2), 0.0)
    assert parse(third) == (tftp.DATA, 3, b"")
    assert s.handle(CLIENT, ack(3), 0.0) == [] and not s.sessions
    (root / "empty").write_bytes(b"")
    assert fetch(s, b"empty") == b""


def test_options_negotiated(root: Path) -> None:
    content = os.urandom(200_000)
    (root / "f").write_bytes(content)
    s = server_for(root)
    (oack,) = s.handle(
        CLIENT,
        rrq(b"f", (b"BLKSIZE", b"1468"), (b"tsize", b"0"), (b"timeout", b"3"), (b"unknown", b"1")),
        0.0,
    )
    assert oack_options(oack) == {b"blksize": b"1468", b"tsize": b"200000", b"timeout": b"3"}
    (d1,) = s.handle(CLIENT, ack(0), 0.0)
    assert len(d1) == 4 + 1468
    assert s.next_deadline() == 3.0  # the negotiated timeout
    assert fetch(s, b"f", (b"blksize", b"99999")) == content  # capped at 65464
    (oack,) = s.handle(CLIENT, rrq(b"f", (b"blksize", b"99999")), 0.0)
    assert oack_options(oack) == {b"blksize": b"65464"}
    s.handle(CLIENT, rrq(b"f", (b"blksize", b"4")), 0.0)  # below 8: ignored, no OACK
    assert s.sessions[CLIENT].blksize == 512


def test_windowsize(root: Path) -> None:
    content = os.urandom(512 * 10 + 100)
    (root / "f").write_bytes(content)
    s = server_for(root)
    (oack,) = s.handle(CLIENT, rrq(b"f", (b"windowsize", b"4")), 0.0)
    assert oack_options(oack) == {b"windowsize": b"4"}
    window = s.handle(CLIENT, ack(0), 0.0)
    assert [parse(p)[1] for p in window] == [1, 2, 3, 4]
    assert [parse(p)[1] for p in s.handle(CLIENT, ack(4), 0.0)] == [5, 6, 7, 8]
    # block 6 lost: the client ACKs 5, the window restarts after it (RFC 7440)
    assert [parse(p)[1] for p in s.handle(CLIENT, ack(5), 0.0)] == [6, 7, 8, 9]
    # a duplicate ACK with a window resends it
    assert [parse(p)[1] for p in s.handle(CLIENT, ack(5), 0.0)] == [6, 7, 8, 9]
    last = s.handle(CLIENT, ack(9), 0.0)
    assert [parse(p)[1] for p in last] == [10, 11] and len(last[-1]) == 4 + 100
    assert s.handle(CLIENT, ack(11), 0.0) == [] and not s.sessions
    assert fetch(s, b"f", (b"windowsize", b"8"), (b"blksize", b"1024")) == content
    # capped so that at most 1 MiB is in flight
    (oack,) = s.handle(CLIENT, rrq(b"f", (b"windowsize", b"500"), (b"blksize", b"65464")), 0.0)
    assert oack_options(oack)[b"windowsize"] == b"16"


def test_ack_checks(root: Path) -> None:
    (root / "f").write_bytes(os.urandom(512 * 5))
    s = server_for(root)
    s.handle(CLIENT, rrq(b"f"), 0.0)
    assert s.handle(CLIENT, ack(1), 0.0)
    assert s.handle(CLIENT, ack(1), 0.0) == []  # duplicate: no Sorcerer's Apprentice
    assert s.handle(CLIENT, ack(7), 0.0) == []  # a block never sent
    assert s.counters["tftp-duplicate-ack"] == 1 and s.counters["tftp-stale-ack"] == 1
    assert parse(s.handle(CLIENT, ack(2), 0.0)[0])[1] == 3
    assert s.handle((b"\x0a\x00\x02\x10", 1), ack(1), 0.0) == []  # no such session
    assert s.counters["tftp-unknown-session"] == 1


def test_retransmission_on_timeout(root: Path) -> None:
    (root / "f").write_bytes(b"y" * 2000)
    s = server_for(root)
    (d1,) = s.handle(CLIENT, rrq(b"f"), 0.0)
    assert s.tick(0.99) == []
    assert s.tick(1.0) == [(CLIENT[0], CLIENT[1], d1)]
    (d2,) = s.handle(CLIENT, ack(1), 1.5)
    for n in range(tftp.MAX_RETRIES):
        assert s.tick(2.5 + n) == [(CLIENT[0], CLIENT[1], d2)]
    assert s.tick(2.5 + tftp.MAX_RETRIES) == [] and not s.sessions
    assert s.counters["tftp-timeout"] == 1 and s.counters["tftp-retransmit"] == 1 + tftp.MAX_RETRIES
    # the OACK is retransmitted too, and a window as a whole
    (oack,) = s.handle(CLIENT, rrq(b"f", (b"windowsize", b"2")), 10.0)
    assert s.tick(11.0) == [(CLIENT[0], CLIENT[1], oack)]
    window = s.handle(CLIENT, ack(0), 11.5)
    assert [p for _, _, p in s.tick(12.5)] == window


def test_block_numbers_roll_over(root: Path) -> None:
    content = os.urandom(8 * 65540 + 3)
    (root / "f").write_bytes(content)
    assert fetch(server_for(root), b"f", (b"blksize", b"8")) == content


def test_errors(root: Path) -> None:
    (root / "f").write_bytes(b"x")
    s = server_for(root)
    assert s.handle(CLIENT, b"\x00\x02f\x00octet\x00", 0.0) == [
        b"\x00\x05\x00\x02Access violation\x00"
    ]
    assert s.handle(CLIENT, rrq(b"f", mode=b"netascii"), 0.0) == [
        b"\x00\x05\x00\x04Unsupported transfer mode\x00"
    ]
    assert s.handle(CLIENT, rrq(b"nope"), 0.0) == [b"\x00\x05\x00\x01File not found\x00"]
    assert TftpServer(None).handle(CLIENT, rrq(b"f"), 0.0) == [
        b"\x00\x05\x00\x02Access violation\x00"
    ]
    # malformed: counted and dropped (or refused, for a broken request)
    for junk in (b"", b"\x00", b"\x00\x09xx", b"\x00\x03\x00\x01data", b"\x00\x06"):
        assert s.handle(CLIENT, junk, 0.0) == []
    assert s.handle(CLIENT, b"\x00\x01f\x00octet", 0.0) == [b"\x00\x05\x00\x02Access violation\x00"]
    assert s.counters["tftp-malformed"] == 6
    # an ERROR from the client ends its session; a new RRQ replaces the old session
    s.handle(CLIENT, rrq(b"f"), 0.0)
    s.handle(CLIENT, b"\x00\x05\x00\x00bye\x00", 0.0)
    assert not s.sessions
    s.handle(CLIENT, rrq(b"f"), 0.0)
    s.handle(CLIENT, rrq(b"f"), 0.0)
    assert len(s.sessions) == 1 and s.counters["tftp-replaced"] == 1


def test_many_concurrent_sessions(root: Path) -> None:
    files = {f"f{i}".encode(): os.urandom(3000 + i * 97) for i in range(30)}
    for name, content in files.items():
        (root / name.decode()).write_bytes(content)
    s = server_for(root)
    clients = [(b"\x0a\x00\x02\x0f", 1000 + i) for i in range(30)]
    got: dict[tuple[bytes, int], bytearray] = {c: bytearray() for c in clients}
    pending = {c: s.handle(c, rrq(f"f{i}".encode()), 0.0) for i, c in enumerate(clients)}
    assert len(s.sessions) == 30
    while pending:  # interleave: one block per client per round
        for c in list(pending):
            (packet,) = pending[c]
            _, num, chunk = parse(packet)
            got[c] += chunk
            pending[c] = s.handle(c, ack(num), 0.0)
            if not pending[c]:
                del pending[c]
    for i, c in enumerate(clients):
        assert bytes(got[c]) == files[f"f{i}".encode()]
    small = server_for(root, max_sessions=2)
    small.handle(clients[0], rrq(b"f0"), 0.0)
    small.handle(clients[1], rrq(b"f0"), 0.0)
    assert small.handle(clients[2], rrq(b"f0"), 0.0) == [b"\x00\x05\x00\x00Too many sessions\x00"]


# -- confinement ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [b"../secret", b"a/../../secret", b"..", b"sub/..", b"dir/", b"", b"x" * 513, b"a\0b"],
)
def test_lexical_refusals(name: bytes) -> None:
    with pytest.raises(Denied):
        check_name(name)


def test_absolute_names_are_root_relative() -> None:
    assert check_name(b"/pxelinux.0") == b"pxelinux.0"
    assert check_name(b"//a/./b") == b"a/b"


@pytest.fixture(params=[True, False], ids=["openat2", "realpath"])
def jail(request: pytest.FixtureRequest, tmp_path: Path) -> TftpRoot:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_bytes(b"inside")
    (root / "sub" / "deep.txt").write_bytes(b"deep")
    (tmp_path / "secret").write_bytes(b"outside")
    (root / "abs-out").symlink_to(tmp_path / "secret")
    (root / "rel-out").symlink_to("../secret")
    (root / "sub" / "up-out").symlink_to("../../secret")
    (root / "dir-out").symlink_to(tmp_path)
    (root / "in-link").symlink_to("sub/deep.txt")
    (root / "abs-in").symlink_to(root / "ok.txt")  # absolute, but inside the root
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to("nothing-here")
    os.mkfifo(root / "fifo")
    return TftpRoot(str(root), use_openat2=request.param)


def read(jail: TftpRoot, name: bytes) -> bytes:
    fd, size = jail.open(name)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def test_confinement(jail: TftpRoot) -> None:
    assert read(jail, b"ok.txt") == b"inside"
    assert read(jail, b"/ok.txt") == b"inside"
    assert read(jail, b"sub/deep.txt") == b"deep"
    assert read(jail, b"in-link") == b"deep"
    for escape in (b"rel-out", b"sub/up-out", b"dir-out/secret", b"loop", b"fifo"):
        with pytest.raises(Denied):
            jail.open(escape)
    for missing in (b"nothing", b"dangling", b"sub", b"/etc/passwd", b"ok.txt/x"):
        with pytest.raises((NotFound, Denied)):
            jail.open(missing)
    with pytest.raises(NotFound):
        jail.open(b"/etc/passwd")  # ROOT/etc/passwd, which does not exist


def test_absolute_symlinks(jail: TftpRoot) -> None:
    with pytest.raises(Denied):
        jail.open(b"abs-out")
    if jail.confinement == "realpath":
        assert read(jail, b"abs-in") == b"inside"  # resolves inside the root
    else:
        # openat2 RESOLVE_BENEATH refuses every absolute symlink, even one pointing inside
        with pytest.raises(Denied):
            jail.open(b"abs-in")


def test_traversal_through_the_server(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"outside")
    (root / "link").symlink_to("../secret")
    s = server_for(root)
    denied = b"\x00\x05\x00\x02Access violation\x00"
    for name in (b"../secret", b"link", b"a/../../secret"):
        assert s.handle(CLIENT, rrq(name), 0.0) == [denied]
    assert s.counters["tftp-denied"] == 3
