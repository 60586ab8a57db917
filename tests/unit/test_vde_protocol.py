"""The vde_plug protocol machine (:mod:`drivers.vde.protocol`) without sockets."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from drivers.vde.protocol import (
    FALLBACK_DIRS,
    REQ_NEW_PORT0,
    SOCKADDR_UN_LEN,
    Backoff,
    PlugError,
    ReplyReader,
    Target,
    control_paths,
    decode_reply,
    decode_request,
    description,
    encode_request,
    request_type,
    resolve_gid,
    sockaddr_un,
    socket_mode,
    target,
)


def test_request_layout_matches_what_qemu_sends() -> None:
    # The head of QEMU 7.2's request for port=100 (seen with strace against vde_switch).
    req = encode_request(request_type(100, True), b"/tmp/vdeexp/sw/.14798-00000", b"QEMU")
    assert req.startswith(b"\xce\xfa\xed\xfe\x03\x00\x00\x00\x00\x64\x00\x00\x01\x00/tmp/vde")
    assert len(req) == 12 + SOCKADDR_UN_LEN + 4
    assert decode_request(req) == (100 << 8, b"/tmp/vdeexp/sw/.14798-00000", b"QEMU")


def test_request_type_rules() -> None:
    assert request_type(0, True) == 0
    assert request_type(5, True) == 5 << 8
    assert request_type(-1, True) == REQ_NEW_PORT0
    assert request_type(5, False) == 0  # a port group socket carries no port


def test_description_is_bounded_and_has_no_nul() -> None:
    d = description("netstackd:" + "x" * 200, "root", 42)
    assert len(d) == 127
    req = encode_request(0, b"/p", b"abc\0def")
    assert req.endswith(b"/p" + bytes(106) + b"abc")


def test_sockaddr_too_long() -> None:
    with pytest.raises(PlugError) as err:
        sockaddr_un(b"/" + b"a" * 107)
    assert err.value.errno == errno.ENAMETOOLONG


def test_reply_decoding() -> None:
    assert decode_reply(sockaddr_un(b"/tmp/sw/001.6")) == b"/tmp/sw/001.6"
    bad = {
        b"\x02\x00" + bytes(108): "address family 2",
        b"\x01\x00" + b"/" * 108: "unterminated",
        sockaddr_un(b"rel/001.6"): "path b'rel/001.6'",
        sockaddr_un(b""): "path b''",
        b"\x01\x00/x": "short reply",
    }
    for reply, text in bad.items():
        with pytest.raises(PlugError) as err:
            decode_reply(reply)
        assert text in err.value.reason and err.value.errno == errno.EPROTO


def test_reply_reader_pieces_eof_and_excess() -> None:
    whole = sockaddr_un(b"/s/003.9")
    r = ReplyReader()
    assert r.feed(whole[:1]) is None and r.feed(whole[1:50]) is None
    assert r.feed(whole[50:]) == b"/s/003.9"
    with pytest.raises(PlugError, match="without a reply"):
        ReplyReader().feed(b"")
    with pytest.raises(PlugError, match="112 bytes"):
        ReplyReader().feed(whole + b"xx")


def test_target_spellings(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert target(d, None, None, None) == Target((d,), 0, None, None, 0o700)
    assert target(d, 3, "kvm", 0o770) == Target((d,), 3, None, "kvm", 0o770)
    assert target(f"vde://{d}", 2, None, None).dirs == (d,)
    assert target(f"{d}[4]", 2, None, None).port == 4  # the URL overrides the option
    assert target(f"{d}[0]", None, None, None).port == -1  # management port
    t = target(f"vde://{d}[po=6/gr=users/mo=0770]", None, None, None)
    assert (t.port, t.group, t.mode) == (6, "users", 0o770)
    t = target(f"{d}[blue]", None, None, None)
    assert t.portgroup == "blue" and control_paths(d, t) == [f"{d}/blue", f"{d}/ctl"]
    with pytest.raises(PlugError) as err:
        target(f"{d}[colour=red]", None, None, None)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(PlugError, match="port 99999999999 out of range"):
        target(f"{d}[port=99999999999]", None, None, None)
    with pytest.raises(PlugError) as err:
        target("vxvde://239.0.0.1", None, None, None)
    assert err.value.reason == "Protocol not supported"


def test_target_fallbacks_and_indirection(tmp_path: Path) -> None:
    assert target(None, None, None, None, home=None).dirs == FALLBACK_DIRS
    assert target("", None, None, None, home=str(tmp_path)).dirs == FALLBACK_DIRS
    (tmp_path / ".vdeplug").mkdir()
    (tmp_path / ".vdeplug" / "default").symlink_to("/srv/sw")
    assert target(None, None, None, None, home=str(tmp_path)).dirs == (
        f"{tmp_path}/.vdeplug/default",
    )
    pointer = tmp_path / "switch.url"
    pointer.write_text("vde:///run/sw[7]\n")
    t = target(str(pointer), None, None, None)
    assert t.dirs == ("/run/sw",) and t.port == 7


def test_socket_mode_rule() -> None:
    # Asked-for group/other bits, a given group, or a switch of ours/root's: as asked.
    assert socket_mode(0o700, False, 1000, 1000, False) == 0o700
    assert socket_mode(0o700, False, 0, 1000, False) == 0o700
    assert socket_mode(0o700, True, 2000, 1000, False) == 0o700
    assert socket_mode(0o750, False, 2000, 1000, False) == 0o750
    # Another user's switch: its group if we could hand the socket over, else everyone.
    assert socket_mode(0o700, False, 2000, 1000, True) == 0o770
    assert socket_mode(0o700, False, 2000, 1000, False) == 0o777


def test_resolve_gid() -> None:
    assert resolve_gid("42") == 42
    assert resolve_gid("kvm", [("kvm", 108)]) == 108
    assert resolve_gid("root") == 0
    with pytest.raises(PlugError, match="unknown group 'nosuch-group-x'"):
        resolve_gid("nosuch-group-x")


def test_backoff_doubles_to_cap_and_resets() -> None:
    b = Backoff(0.1, 1.0)
    assert [b.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.1
