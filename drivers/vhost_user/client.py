"""The vhost-user netdev on the event loop: the chardev front end that serves front-end
connections, the kick eventfds, and the net clients (one per queue pair) the core sees.

Follows QEMU's ``net/vhost-user.c`` for what the netdev looks like from the daemon (one
client per queue pair named after the netdev, ``info network`` text ``vhost-user<i> to
<chardev>``, link down while nothing is connected and up when a front end connects) and
libvhost-user's back-end conventions for the rings (a ring starts when its kick eventfd
arrives or is first signalled, stops at ``GET_VRING_BASE``).

What it owns
    * :class:`VhostUserNetdev`: the chardev front end (``raw_socket``: it reads the unix
      socket itself with ``recvmsg`` to get SCM_RIGHTS descriptors), one
      :class:`~.protocol.Session` per connection, the :class:`~.device.NetDevice`, an
      :class:`~netstack.net.fdio.FdWatch` for the socket and one per kick eventfd, the
      transmit passes, their scheduling and their :class:`~netstack.net.fdio.PeerFlow`,
      MAC learning and the QMP events ``NETDEV_VHOST_USER_CONNECTED`` ``{netdev-id,
      chardev-id}`` / ``NETDEV_VHOST_USER_DISCONNECTED`` ``{netdev-id}``.
    * :class:`VhostUserClient`: the NetClient of queue pair *i*. Queue 0 carries the rx
      filter (the port is NIC-class: ``query-rx-filter`` reports it, ``set-rx-filter``
      programs it; no guest control queue reaches a vhost-user back end).

Data path
    Transmit (guest -> daemon): a kick runs one pass over the transmit ring (at most
    :data:`~.device.TX_BUDGET` chains, one batch, or :data:`TX_QUANTUM` while other ports
    on the loop have work, see :mod:`netstack.net.fairshare`); while passes find work, kicks are
    suppressed and the next pass is scheduled with ``call_soon`` (other fds get their
    turn between passes); an empty pass :data:`TX_LINGER` after the last work re-enables
    kicks and re-checks. A batch goes to the pair's client, or to queue 0's client when
    the pair's client has no peer (a hub port joins queue 0 only). When that peer queues
    part of a batch, passes stop until the queue's completion callback (backpressure
    reaches the guest through its full ring; a callback from an earlier connection is
    ignored). With no peer or the link down, buffers are
    returned without copying frames out. A disabled ring waits for ``SET_VRING_ENABLE``.
    Receive (daemon -> guest): ``receive`` copies a batch into the pair's receive ring (the
    first ready pair if that one is not); frames that do not fit now are left to the core's
    queue, kicks on the receive ring are enabled, and the kick flushes the queue (QEMU's
    ``virtio_net_handle_rx``). Without a connection or a ready ring frames are dropped
    and counted (``rx-not-ready``).
    A kick fd that is not usable as an eventfd (not pollable, EOF, short reads) and
    ``SET_VRING_KICK`` without an fd make the ring polled every :data:`POLL_INTERVAL`.

Deviations from QEMU (on purpose): the MAC comes from the ``mac=`` option when the schema
has it, else from ``SEND_RARP``, else from the source address of the first frame the guest
sends; ``SEND_RARP`` also broadcasts the RARP to the peer (DPDK's vhost library does this,
QEMU leaves it to the back end). Filters may be attached (frames pass through the daemon).

Invariants: a kick eventfd is unregistered from the loop before it is closed; nothing of a
connection (readers, scheduled passes, mappings, descriptors) outlives it; an exception in a
handler ends that connection only (logged), never the loop.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

from netstack.chardev.base import Chardev, Connection
from netstack.counters import by_name
from netstack.errors import RemoteInputError
from netstack.net import fairshare
from netstack.net.client import NetClient
from netstack.net.fdio import FdWatch, PeerFlow
from netstack.net.rxfilter import RxFilter
from netstack.ratelog import RateLog

from .device import TX_BUDGET, NetDevice, rarp_frame
from .protocol import MAX_FDS, Message, MessageReader, Session, SessionHooks
from .virtqueue import RingError, SplitQueue

#: Messages handled per wake-up of the socket reader.
MESSAGES_PER_WAKE = 64
#: Seconds between polls of rings whose front end gave no kick eventfd.
POLL_INTERVAL = 0.001
#: Seconds a transmit ring keeps being polled (kicks suppressed) after its last work: a
#: wake-up through the kick eventfd costs more than a few polls while traffic flows.
TX_LINGER = 50e-6
#: Chains per transmit pass while other ports on the loop have work. A pass costs more than
#: a tap read (a ring walk, a hub hop, a reschedule): with the taps' 8, two switched rings
#: (bench_vhost_user switch-64) fell to 0.09 Mpps from 0.95; 64 keeps the pass amortised.
TX_QUANTUM = 64
#: Seconds between two log lines of the same kind.
LOG_INTERVAL = 30.0
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)

EmitFn = Callable[[str, Mapping[str, Any] | None], None]
#: The netdev's own counters (``query-netdev``), besides the device's and the dirty log's.
NetdevCounter = Literal["rx-not-ready", "rx-dropped-no-room", "protocol-errors"]


class VhostUserClient(NetClient):
    """Queue pair ``queue_index`` of a vhost-user netdev."""

    type = "vhost-user"

    def __init__(self, netdev: VhostUserNetdev, name: str, queue_index: int) -> None:
        super().__init__(name, queue_index=queue_index)
        self.netdev = netdev
        self.info_str = f"vhost-user{queue_index} to {netdev.chardev.id}"
        self.link_down = True  # until a front end connects

    @property
    def accepts_vnet(self) -> bool:  # type: ignore[override]
        """Frames with offload headers are welcome once the guest takes partial checksums."""
        return self.netdev.device.guest_offloads

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        return self.netdev.rx(self, frames, vnet)

    def can_receive(self) -> bool:
        return self.netdev.rx_can(self)

    def cleanup(self) -> None:
        if self.queue_index == 0:
            self.netdev.close()

    def counters(self) -> dict[str, int]:
        return self.netdev.counters()


class VhostUserNetdev(SessionHooks):
    """One ``-netdev vhost-user``: chardev front end, device, loop registrations, clients."""

    multi_connection = False
    raw_socket = True

    def __init__(
        self,
        name: str,
        chardev: Chardev,
        pairs: int,
        *,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
        emit: EmitFn,
        mac: bytes | None = None,
    ) -> None:
        self.name = name
        self.chardev = chardev
        self.loop = loop
        self.log = log
        self._emit = emit
        self._throttle = RateLog(log, interval=LOG_INTERVAL)
        self.device = NetDevice(pairs, on_broken=self._broken)
        self.device.on_memory_fault = self._memory_fault
        self.clients = [VhostUserClient(self, name, i) for i in range(pairs)]
        self.mac_fixed = mac is not None
        self.rx_filter = RxFilter(mac if mac is not None else bytes(6))
        self.clients[0].rx_filter = self.rx_filter
        self.session: Session | None = None
        self.connections = 0
        self._sock: socket.socket | None = None
        self._watch: FdWatch | None = None
        self._reader = MessageReader()
        self._out = bytearray()
        self._done: asyncio.Future[None] | None = None
        self._closed = False
        self._learn = not self.mac_fixed
        self._kicks: dict[int, FdWatch] = {}  # vring index -> its kick eventfd's watch
        self._polled: set[int] = set()
        self._poll_handle: asyncio.TimerHandle | None = None
        self._tx_handles: list[asyncio.Handle | None] = [None] * pairs
        self._tx_last_work = [0.0] * pairs
        self._share = fairshare.for_loop(loop)
        self._share_ports = [self._share.port() for _ in range(pairs)]
        self._flows = [PeerFlow(functools.partial(self._tx_hold, p)) for p in range(pairs)]
        self._extra: dict[NetdevCounter, int] = dict.fromkeys(get_args(NetdevCounter), 0)

    # -- chardev front end ---------------------------------------------------------------

    async def serve(self, conn: Connection) -> None:
        """Serve one front-end connection until it ends or the netdev goes away."""
        sock = conn.sock
        if sock is None or self._closed:
            return
        done = self.loop.create_future()
        self._begin(sock, done)
        try:
            await done
        finally:
            self._end()

    def _begin(self, sock: socket.socket, done: asyncio.Future[None]) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._done = done
        self._reader = MessageReader()
        self._out.clear()
        self.session = Session(self.device, self)
        self.connections += 1
        self._learn = not self.mac_fixed
        self._watch = FdWatch(self.loop, sock.fileno(), self._on_readable, self._on_writable)
        self._watch.set_reading(True)
        for client in self.clients:
            client.link_down = False
        self.log.info("vhost-user %s: front end connected on %s", self.name, self.chardev.id)
        self._emit(
            "NETDEV_VHOST_USER_CONNECTED", {"netdev-id": self.name, "chardev-id": self.chardev.id}
        )

    def _end(self) -> None:
        """Tear the connection down (idempotent)."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        if self._watch is not None:
            with contextlib.suppress(ValueError, OSError):
                self._watch.close()
            self._watch = None
        self._out.clear()
        for q in self.device.queues:
            self.kick_detach(q)
        self._polled.clear()
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        for pair, handle in enumerate(self._tx_handles):
            if handle is not None:
                handle.cancel()
            self._tx_handles[pair] = None
            self._flows[pair].reset()
        self.device.close()
        self._reader.close()
        self.session = None
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        self._done = None
        for client in self.clients:
            client.link_down = True
        self.log.info("vhost-user %s: front end disconnected", self.name)
        self._emit("NETDEV_VHOST_USER_DISCONNECTED", {"netdev-id": self.name})
        for client in self.clients:  # what waited for the guest is dropped now (link down)
            if len(client.incoming) or client.receive_disabled:
                client.flush_queued()

    def close(self) -> None:
        """The netdev is deleted: end the connection and give the chardev back."""
        if self._closed:
            return
        self._closed = True
        self._end()
        self.device.close()
        if self.chardev.frontend is self:
            self.chardev.detach()

    # -- socket --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            self._read_messages()
        except Exception:
            self.log.exception("vhost-user %s: connection failed", self.name)
            self._end()

    def _read_messages(self) -> None:
        for _ in range(MESSAGES_PER_WAKE):
            sock, session = self._sock, self.session
            if sock is None or session is None:
                return
            try:
                data, ancdata, flags, _addr = sock.recvmsg(self._reader.wanted(), _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.info("vhost-user %s: socket error: %s", self.name, exc)
                self._end()
                return
            fds = _fds_of(ancdata)
            if not data:
                _close_all(fds)
                self._end()
                return
            if flags & socket.MSG_CTRUNC:
                _close_all(fds)
                self._protocol_error("descriptors were truncated")
                return
            try:
                messages = self._reader.feed(data, fds)
            except RemoteInputError as exc:  # garbage from the front end: counted here
                self._protocol_error(str(exc))
                return
            for msg in messages:
                self._handle(session, msg)

    def _handle(self, session: Session, msg: Message) -> None:
        self.log.debug("vhost-user %s: %s flags=%#x", self.name, msg.name, msg.flags)
        reply = session.handle(msg)
        if reply is not None:
            self._write(reply)

    def _protocol_error(self, text: str) -> None:
        self._extra["protocol-errors"] += 1
        self._throttle.warning("protocol", "vhost-user %s: %s; closing", self.name, text)
        self._end()

    def _write(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        if not self._out:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._end()
                return
            if sent == len(data):
                return
            data = data[sent:]
            if self._watch is not None:
                self._watch.wait_writable()
        self._out += data

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._end()
            return
        del self._out[:sent]
        if self._out and self._watch is not None:
            self._watch.wait_writable()

    # -- session hooks -------------------------------------------------------------------

    def kick_attach(self, q: SplitQueue) -> None:
        if q.kick_fd >= 0:
            watch = FdWatch(self.loop, q.kick_fd, functools.partial(self._on_kick, q.index))
            try:
                watch.set_reading(True)
            except (OSError, ValueError) as exc:  # not pollable (e.g. /dev/null): poll
                self._kick_unusable(q, f"kick fd cannot be watched ({exc})")
                return
            self._kicks[q.index] = watch
        elif q.poll:
            self._start_polling(q)

    def _start_polling(self, q: SplitQueue) -> None:
        self._polled.add(q.index)
        if self._poll_handle is None:
            self._poll_handle = self.loop.call_later(POLL_INTERVAL, self._poll)

    def _kick_unusable(self, q: SplitQueue, why: str) -> None:
        """A kick fd that is not an eventfd: stop watching it, poll the ring instead."""
        self._throttle.warning(
            "kickfd", "vhost-user %s: vring %d: %s; polling", self.name, q.index, why
        )
        self.kick_detach(q)
        self._start_polling(q)

    def kick_detach(self, q: SplitQueue) -> None:
        watch = self._kicks.pop(q.index, None)
        if watch is not None:
            with contextlib.suppress(ValueError, OSError):
                watch.close()
        self._polled.discard(q.index)

    def queue_started(self, q: SplitQueue) -> None:
        self._service(q)

    def queue_stopped(self, q: SplitQueue) -> None:
        if q.index % 2:
            pair = q.index // 2
            handle = self._tx_handles[pair]
            if handle is not None:
                handle.cancel()
                self._tx_handles[pair] = None

    def enable_changed(self, q: SplitQueue) -> None:
        if q.enabled and q.started:
            self._service(q)

    def kicked(self, q: SplitQueue) -> None:
        self._kicked(q)

    def features_changed(self) -> None:
        dev = self.device
        self.log.info(
            "vhost-user %s: features %#x (header %d bytes%s%s%s)",
            self.name,
            dev.features,
            dev.hdr_len,
            ", mergeable" if dev.mergeable else "",
            ", host offloads" if dev.host_offloads else "",
            ", guest offloads" if dev.guest_offloads else "",
        )

    def rarp(self, mac: bytes) -> None:
        if not self.mac_fixed:
            self._set_mac(mac)
        self._learn = False
        self.clients[0].send((rarp_frame(mac),))

    def error(self, text: str) -> None:
        self._throttle.warning("request", "vhost-user %s: %s", self.name, text)

    def _broken(self, q: SplitQueue, reason: str) -> None:
        self.clients[min(q.index // 2, len(self.clients) - 1)].stats.malformed += 1
        self._throttle.warning(
            f"ring{q.index}",
            "vhost-user %s: vring %d stopped, the device needs a reset: %s",
            self.name,
            q.index,
            reason,
        )

    def _memory_fault(self, reason: str) -> None:
        self.clients[0].stats.malformed += 1
        self._throttle.warning(
            "memory",
            "vhost-user %s: every vring stopped until a new memory table or a reconnect: %s",
            self.name,
            reason,
        )

    # -- kicks ---------------------------------------------------------------------------

    def _on_kick(self, index: int) -> None:
        q = self.device.queues[index]  # by index: SET_FEATURES may change the ring layout
        try:
            os.eventfd_read(q.kick_fd)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # EOF or a short read: not an eventfd; do not spin on it
            self._kick_unusable(q, f"kick fd is not an eventfd ({exc.strerror or exc})")
        self._kicked(q)

    def _poll(self) -> None:
        self._poll_handle = None
        for index in list(self._polled):
            self._kicked(self.device.queues[index])
        if self._polled and self._sock is not None:
            self._poll_handle = self.loop.call_later(POLL_INTERVAL, self._poll)

    def _kicked(self, q: SplitQueue) -> None:
        if self.session is None:
            return
        if not q.started and not self.device.start_queue(q):
            return
        self._service(q)

    def _service(self, q: SplitQueue) -> None:
        pair = q.index // 2
        if q.index % 2:
            if self._tx_handles[pair] is None:
                self._tx_pass(pair)
            return
        if not q.ready:
            return
        q.set_notification(False)
        # QEMU's virtio_net_handle_rx: new buffers, so flush whatever waits for them (here or
        # at a hub port in front of us).
        for client in self.clients:
            client.flush_queued()

    # -- transmit ------------------------------------------------------------------------

    def _schedule_tx(self, pair: int) -> None:
        if self._tx_handles[pair] is None and self._sock is not None:
            self._tx_handles[pair] = self.loop.call_soon(self._tx_pass, pair)

    def _tx_client(self, pair: int) -> VhostUserClient:
        client = self.clients[pair]
        return client if client.peer is not None else self.clients[0]

    def _tx_pass(self, pair: int) -> None:
        self._tx_handles[pair] = None
        if self._flows[pair].paused:
            return
        q = self.device.tx_queue(pair)
        if not q.ready or not q.enabled:
            return  # enable_changed() runs a pass once the ring is enabled
        client = self._tx_client(pair)
        sink = client.peer is None or client.link_down
        share, share_port = self._share, self._share_ports[pair]
        budget = share.budget(share_port, self.loop.time(), TX_BUDGET, TX_QUANTUM)
        try:
            frames, vnet, chains = self.device.transmit(q, budget, want_frames=not sink, quiet=True)
            now = self.loop.time()
            if not chains:
                if now - self._tx_last_work[pair] < TX_LINGER:
                    self._schedule_tx(pair)  # traffic just stopped: poll a little longer
                    return
                q.set_notification(True)
                if q.avail_count():
                    self._schedule_tx(pair)
                return
            self._tx_last_work[pair] = now
            share.active(share_port, now)
        except RingError as exc:
            self.device.break_queue(q, str(exc))
            return
        if sink:
            client.stats.tx_dropped += chains
        elif frames:
            if self._learn:
                self._learn_mac(frames[0], vnet)
            self._flows[pair].send(client, frames, vnet)
        if not self._flows[pair].paused:
            self._schedule_tx(pair)

    def _tx_hold(self, pair: int, on: bool) -> None:
        """The peer queued part of a batch (True) or delivered it (False): resume passes."""
        if not on:
            self._schedule_tx(pair)

    # -- receive -------------------------------------------------------------------------

    def _rx_queue(self, client: VhostUserClient) -> SplitQueue | None:
        device = self.device
        if device.rx_ready(client.queue_index):
            return device.rx_queue(client.queue_index)
        for pair in range(device.max_pairs):
            if device.rx_ready(pair):
                return device.rx_queue(pair)
        return None

    def rx_can(self, client: VhostUserClient) -> bool:
        if self.session is None:
            return True  # dropped in rx()
        q = self._rx_queue(client)
        if q is None:
            return True
        try:
            if q.has_avail():
                return True
            q.set_notification(True)
            return q.has_avail()
        except RingError as exc:
            self.device.break_queue(q, str(exc))
            return True

    def rx(self, client: VhostUserClient, frames: Sequence[bytes], vnet: bool) -> int:
        count = len(frames)
        q = self._rx_queue(client) if self.session is not None else None
        if q is None:
            self._extra["rx-not-ready"] += count
            return count
        device = self.device
        try:
            ready, ready_vnet = device.prepare_rx(frames, vnet)
            if ready is not frames:
                # Offloads completed in software: best effort, the rest is dropped.
                taken = device.receive(q, ready, ready_vnet)
                self._extra["rx-dropped-no-room"] += len(ready) - taken
                return count
            taken = device.receive(q, frames, vnet)
            if taken < count:
                q.set_notification(True)
                if q.avail_count():
                    self.loop.call_soon(self._service, q)
        except RingError as exc:
            device.break_queue(q, str(exc))
            return count
        return taken

    # -- MAC -----------------------------------------------------------------------------

    def _learn_mac(self, frame: bytes, vnet: bool) -> None:
        at = 12 + 6 if vnet else 6
        mac = frame[at : at + 6]
        if len(mac) == 6 and not mac[0] & 1 and mac != bytes(6):
            self._learn = False
            self._set_mac(bytes(mac))

    def _set_mac(self, mac: bytes) -> None:
        if self.rx_filter.mac != mac:
            self.log.info("vhost-user %s: guest MAC %s", self.name, mac.hex(":"))
            self.rx_filter.program(mac=mac)

    # -- introspection -------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        out = by_name(self.device.counters)
        out.update(by_name(self.device.dirty.counters))
        out.update(by_name(self._extra))
        session = self.session
        out["connections"] = self.connections
        out["requests"] = session.handled if session is not None else 0
        out["requests-refused"] = session.refused if session is not None else 0
        out["rings-running"] = sum(q.ready for q in self.device.queues)
        return out


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
