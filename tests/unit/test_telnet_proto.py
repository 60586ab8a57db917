"""The sans-IO telnet/tn3270 server (netstack.proto.telnet): QEMU's negotiation bytes,
IAC handling both ways, and hostile IAC sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.proto.telnet import (
    BREAK,
    DO,
    DONT,
    EOR,
    IAC,
    NOP,
    SB,
    SE,
    TELNET_INIT,
    TN3270_INIT,
    WILL,
    WONT,
    TelnetServer,
)

# What QEMU 7.2 sends on connect (captured from qemu-system-x86_64 7.2 here).
QEMU_TELNET = bytes.fromhex("fffb01fffb03fffb00fffd00")
QEMU_TN3270 = bytes.fromhex("fffd19fffb19fffd00fffb00fffd18fffa1801fff0")


def test_negotiation_bytes_are_qemus() -> None:
    assert TELNET_INIT == QEMU_TELNET
    assert TN3270_INIT == QEMU_TN3270
    t = TelnetServer()
    assert t.begin() == QEMU_TELNET and t.opened
    assert TelnetServer(tn3270=True).begin() == QEMU_TN3270


def test_plain_data_and_escaped_iac() -> None:
    t = TelnetServer()
    t.begin()
    assert t.feed(b"hello").data == b"hello"
    assert t.feed(b"a\xff\xffb").data == b"a\xffb"
    # split anywhere: the IAC IAC pair still yields one 0xFF
    assert t.feed(b"c\xff").data == b"c"
    assert t.feed(b"\xffd").data == b"\xffd"


def test_client_acks_are_swallowed_without_answer() -> None:
    t = TelnetServer()
    t.begin()
    acks = bytes((IAC, DO, 1, IAC, DO, 3, IAC, DO, 0, IAC, WILL, 0))
    step = t.feed(acks + b"x")
    assert step.data == b"x" and step.reply == b""


def test_unwanted_options_are_refused_once() -> None:
    t = TelnetServer()
    t.begin()
    step = t.feed(bytes((IAC, DO, 31, IAC, WILL, 24, IAC, DO, 31, IAC, WILL, 24)))
    assert step.reply == bytes((IAC, WONT, 31, IAC, DONT, 24))
    assert t.feed(bytes((IAC, DO, 31)) * 1000).reply == b""  # no amplification


def test_dont_of_an_offered_option_is_acknowledged() -> None:
    t = TelnetServer()
    t.begin()
    assert t.feed(bytes((IAC, DONT, 1))).reply == bytes((IAC, WONT, 1))
    assert t.feed(bytes((IAC, DONT, 1))).reply == b""


def test_two_byte_commands_are_two_bytes() -> None:
    # QEMU 7.2 eats the byte after IAC NOP in telnet mode; this machine does not.
    t = TelnetServer()
    t.begin()
    assert t.feed(bytes((IAC, NOP)) + b"X{}").data == b"X{}"


def test_break_reaches_the_front_end() -> None:
    seen: list[int] = []
    t = TelnetServer(on_break=lambda: seen.append(1))
    t.begin()
    assert t.feed(bytes((IAC, BREAK)) + b"after").data == b"after"
    assert seen == [1] and t.breaks == 1


def test_subnegotiation_is_removed_in_telnet_mode() -> None:
    t = TelnetServer()
    t.begin()
    naws = bytes((IAC, SB, 31, 0, 80, 0, 24, IAC, SE))
    assert t.feed(b"a" + naws + b"b").data == b"ab"
    # an escaped IAC inside, and a split subnegotiation
    assert t.feed(bytes((IAC, SB, 24, 0, IAC))).data == b""
    assert t.feed(bytes((IAC, 65, IAC, SE)) + b"c").data == b"c"


def test_tn3270_passes_records_and_subnegotiation() -> None:
    t = TelnetServer(tn3270=True)
    t.begin()
    ttype = bytes((IAC, SB, 24, 0)) + b"IBM-3278-2-E" + bytes((IAC, SE))
    step = t.feed(ttype + b"\x7d\x40" + bytes((IAC, EOR)))
    assert step.data == ttype + b"\x7d\x40" + bytes((IAC, EOR))
    assert t.feed(bytes((IAC, NOP)) + b"X").data == b"X"
    assert t.feed(bytes((IAC, WILL, 24, IAC, DO, 25, IAC, WILL, 0))).reply == b""


def test_output_doubles_iac_in_telnet_mode_only() -> None:
    t = TelnetServer()
    assert t.encode(b"a\xffb\xff") == b"a\xff\xffb\xff\xff"
    assert t.encode(b"plain") == b"plain"
    assert TelnetServer(tn3270=True).encode(b"\xff\xef") == b"\xff\xef"


def test_hostile_sequences() -> None:
    t = TelnetServer()
    t.begin()
    # an unterminated subnegotiation swallows input but holds nothing
    t.feed(bytes((IAC, SB, 1)) + b"z" * 100000)
    assert t.feed(bytes((IAC, SE)) + b"ok").data == b"ok"
    # IAC at the very end, then unknown command bytes, then every verb with option 255
    assert t.feed(b"\xff").data == b""
    assert t.feed(bytes((7,)) + b"q").data == b"q"
    for verb in (WILL, WONT, DO, DONT):
        assert t.feed(bytes((IAC, verb, 255)) + b"r").data == b"r"
    # SB followed by a bare command inside it
    assert t.feed(bytes((IAC, SB, 5, IAC, NOP)) + b"s").data == b"s"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 40), st.booleans())
def test_any_input_never_raises_and_is_chunk_invariant(
    data: bytes, chunk: int, tn3270: bool
) -> None:
    whole = TelnetServer(tn3270=tn3270)
    whole.begin()
    one = whole.feed(data)
    parts = TelnetServer(tn3270=tn3270)
    parts.begin()
    steps = [parts.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    assert b"".join(s.data for s in steps) == one.data
    assert b"".join(s.reply for s in steps) == one.reply


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_output_roundtrips_through_input(data: bytes) -> None:
    t = TelnetServer()
    t.begin()
    assert TelnetServer().feed(t.encode(data)).data == data
