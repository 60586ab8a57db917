"""A guest driven by hand for unit tests of :class:`drivers.user.tcp.TcpEndpoint`: it
builds segments, feeds them with a manual clock and decodes what the machine sends."""

from __future__ import annotations

from drivers.user.tcp import (
    Event,
    FrameBuilder,
    Segment,
    State,
    TcpConfig,
    TcpEndpoint,
    ethernet_header,
    parse_frame,
)
from netstack.proto.tcp import ACK, FIN, SYN, syn_options

M = 0xFFFFFFFF
US4, GUEST4 = bytes([93, 184, 216, 34]), bytes([10, 0, 2, 15])
US6, GUEST6 = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("fec0" + "00" * 13 + "15")
MAC_US, MAC_GUEST = bytes.fromhex("52550a000202"), bytes.fromhex("525400123456")
GUEST_OPTS = syn_options(1460, 7, True)


class Guest:
    """The guest side, by hand: builds its segments, reads what the machine sent."""

    def __init__(self, v6: bool = False, **config: object) -> None:
        self.cfg = TcpConfig(**config)  # type: ignore[arg-type]
        self.v6 = v6
        self.now = 0.0
        self.out: list[bytes] = []
        us, guest = (US6, GUEST6) if v6 else (US4, GUEST4)
        self.g = FrameBuilder(guest, us, 40000, 80, l2=ethernet_header(MAC_US, MAC_GUEST, v6))
        self.l2 = ethernet_header(MAC_GUEST, MAC_US, v6)
        self.us, self.guest = us, guest
        self._m: TcpEndpoint | None = None
        self.seq = 1000  # the guest's next sequence number
        self.ack = 0  # what the guest acknowledges

    @property
    def m(self) -> TcpEndpoint:
        assert self._m is not None
        return self._m

    def seg(
        self, flags: int, seq: int | None = None, ack: int | None = None, data: bytes = b"",
        wnd: int = 4096, opts: bytes = b"",
    ) -> Segment:  # fmt: skip
        seq = self.seq if seq is None else seq
        ack = self.ack if ack is None else ack
        s = parse_frame(self.g.frame(seq & M, ack & M, flags, wnd, data, opts))
        assert isinstance(s, Segment), s
        return s

    def send(self, flags: int, data: bytes = b"", **kw: object) -> None:
        s = self.seg(flags, data=data, **kw)  # type: ignore[arg-type]
        if "seq" not in kw:
            self.seq += len(data) + (1 if flags & (SYN | FIN) else 0)
        self.m.segment_from_guest(s, self.now)

    def take(self) -> list[Segment]:
        segs = []
        for f in self.out:
            s = parse_frame(f, self.cfg.vnet)
            assert isinstance(s, Segment), s
            segs.append(s)
        self.out.clear()
        return segs

    def tick(self, dt: float) -> None:
        self.now += dt
        self.m.timer(self.now)

    def until_deadline(self) -> None:
        d = self.m.next_deadline
        assert d is not None
        self.now = max(self.now, d)
        self.m.timer(self.now)

    # -- openings -------------------------------------------------------------------------

    def syn(self, opts: bytes = GUEST_OPTS, wnd: int = 64240) -> None:
        s = self.seg(SYN, wnd=wnd, opts=opts)
        self.seq += 1
        self._m = TcpEndpoint.accept(s, self.now, config=self.cfg, l2=self.l2, out=self.out,
                                     iss=5000)  # fmt: skip

    def open_passive(self, opts: bytes = GUEST_OPTS, wnd: int = 4096) -> Segment:
        self.syn(opts)
        self.m.host_connected(self.now)
        (synack,) = self.take()
        self.ack = synack.seq + 1
        self.send(ACK, wnd=wnd)
        assert self.m.state is State.ESTABLISHED
        return synack

    def open_active(self, opts: bytes = GUEST_OPTS, iss: int = 5000) -> Segment:
        self._m = TcpEndpoint.connect(self.us, self.guest, 80, 40000, self.now, config=self.cfg,
                                      l2=self.l2, out=self.out, iss=iss)  # fmt: skip
        (syn,) = self.take()
        self.ack = syn.seq + 1
        self.send(SYN | ACK, opts=opts)
        return syn

    def host_bytes(self) -> bytes:
        chunks = self.m.host_chunks(10_000)
        data = b"".join(bytes(c) for c in chunks)
        self.m.host_written(len(data), self.now)
        return data


def events(g: Guest) -> list[Event]:
    return [e for e, _ in g.m.events]
