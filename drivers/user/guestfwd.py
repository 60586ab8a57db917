"""Guest forwarding (``guestfwd``) of the user netdev: guest TCP connections to a virtual
``server:port`` end in a chardev or in a command run per connection.

Follows QEMU's ``net/slirp.c`` (``slirp_guestfwd``, ``guestfwd_can_read``/``guestfwd_read``) and
libslirp (``check_guestfwd``, ``tcp_ctl``, ``fork_exec``, ``slirp_find_ctl_socket``). Owns, per
rule, the virtual address (the gateway answers ARP for it with ``52:55:`` + the address, and ICMP
echo: :meth:`~.v4.router.Gateway.add_local`, released when no rule names it any more), and the
connection targets:

* ``cmd:COMMAND``: each guest connection gets a child ``/bin/sh -c COMMAND`` in its own
  session (``setsid``, as libslirp) whose stdin, stdout and stderr are one end of a unix
  socketpair; the other end goes to the TCP splicer as an already-connected host socket.
  Children are watched with a pidfd on the loop and reaped as they exit (polled every
  :data:`POLL_INTERVAL` s, as one entry of the netdev's deadlines, only when the pidfd
  could not be opened); at most :data:`MAX_CHILDREN`
  live at once per netdev (beyond: RST); :meth:`GuestForwarder.close` (netdev_del)
  terminates the rest (SIGTERM to the session, :data:`KILL_GRACE` s, then SIGKILL) and
  reaps them, so none is left behind and no zombie remains.
* exec forwards (:meth:`GuestForwarder.add_exec`, libslirp's ``slirp_add_exec``, used by
  ``smb=``: :mod:`.smb`): the same children, running an argument list without a shell,
  on a loopback TCP pair (:func:`loopback_pair`, as libslirp's) instead of a socketpair;
* a chardev (QEMU's shorthand: ``tcp:HOST:PORT``, ``unix:PATH``, ``udp:...``,
  ``file:PATH``, ``null``, ... as ``-serial`` takes it, opened as ``guestfwd.tcp.PORT``),
  or ``chardev:ID``, an existing chardev of the daemon: one stream shared by every guest
  connection of the rule (:class:`.guestfwd_chardev.ChardevBridge` has the sharing rules).

:meth:`GuestForwarder.resolve` is the first step of the client's NAT policy, ahead of
``restrict=on`` (libslirp lets guestfwd targets through an isolated netdev). Errors use
QEMU's texts: ``Conflicting/invalid host:port in guest forwarding rule 'R'`` (a second
rule for the same ``server:port``), ``Could not open guest forwarding device
'guestfwd.tcp.PORT'`` (the chardev spec does not parse, names no chardev, or does not
open; the reason is logged), and the chardev's own ``Device 'ID' is in use``.

Deviations from QEMU/libslirp (decided):

* the command runs through ``/bin/sh -c`` (libslirp splits it at single spaces and
  searches PATH: such command lines mean the same to the shell, and quoting and pipes
  work); stderr goes into the connection too, as in libslirp;
* the socketpair is AF_UNIX, not a loopback TCP pair (no port used; urgent data is
  inline anyway); a child that cannot be spawned, or one beyond the limit, gets the
  guest an RST (libslirp completes the handshake, then closes);
* a second rule for the same ``server:port`` is a conflict (libslirp means to refuse it,
  but compares a host-order port with a network-order one, so QEMU accepts a duplicate
  ``cmd:`` rule and fails a duplicate chardev rule on the chardev id instead);
* chardevs a rule opens are private to the netdev (not in ``query-chardev``), so two
  rules on one port and different servers do not collide on ``guestfwd.tcp.PORT``;
  ``chardev:ID`` is detached, not deleted, when the rule goes;
* the checks run in phases - every rule's syntax (:mod:`.options`), then hostfwd binds,
  then conflicts, then chardev opens - where QEMU takes the rules one by one (guestfwd
  first), so with several bad rules the first error reported can differ;
* ICMP echo to a guestfwd address is answered by the gateway (libslirp relays it to the
  host's network, where the virtual address means nothing);
* rules can be added and removed at run time (:meth:`GuestForwarder.add` with ``start``,
  :meth:`GuestForwarder.remove`); connections of a removed ``cmd:`` rule live on, as
  hostfwd connections do. A chardev spec added at run time is parsed at once (one that
  does not parse is the add's error); only its opening runs in the background;
* a target holding a NUL character (possible over QMP) is ``Invalid guest forwarding rule
  'R'`` (QEMU's C string would end there; no command line or path can hold one).

Invariants: every fd and child this module creates is closed/reaped by
:meth:`GuestForwarder.remove` / :meth:`GuestForwarder.close`; nothing a guest does raises
out of :meth:`GuestForwarder.resolve` (failures become an errno, i.e. an RST).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from netstack.chardev import Chardev, create_backend
from netstack.errors import GenericError
from netstack.qapi import Chardev as ChardevSpec
from netstack.qapi import parse_qmp_shorthand

from .endpoint import Deadlines, NetdevTimer
from .guestfwd_chardev import ChardevBridge
from .options import GuestFwdRule, inet_aton
from .tcp import Segment
from .v4.router import Gateway

SHELL: Final = "/bin/sh"
MAX_CHILDREN: Final = 64
KILL_GRACE: Final = 0.2
POLL_INTERVAL: Final = 0.5
CMD_PREFIX: Final = "cmd:"
CHARDEV_PREFIX: Final = "chardev:"
PAIR_TRIES: Final = 4
#: A child that cannot be started is logged at most once per this many seconds.
SPAWN_LOG_INTERVAL: Final = 30.0
PAIR_TIMEOUT: Final = 2.0

Lookup = Callable[[str], Any]
"""The daemon's chardev lookup (``DriverHost.chardev``): id -> Chardev or None."""


#: The names this module counts under (``query-netdev`` counters).
GuestfwdCounter = Literal[
    "guestfwd-children",
    "guestfwd-children-killed",
    "guestfwd-children-limit",
    "guestfwd-children-reaped",
    "guestfwd-connections",
    "guestfwd-open-failed",
    "guestfwd-socketpair-failed",
    "guestfwd-spawn-failed",
]


def conflict_error(rule: GuestFwdRule) -> GenericError:
    return GenericError(f"Conflicting/invalid host:port in guest forwarding rule '{rule.text}'")


class GuestFwd:
    """One rule: its address, and its command or chardev bridge."""

    __slots__ = ("addr", "bridge", "chardev", "command", "exec", "opening", "owned", "rule")

    def __init__(self, rule: GuestFwdRule, addr: bytes, bridge: ChardevBridge | None) -> None:
        self.rule = rule
        self.addr = addr
        target = rule.target
        self.command = target[len(CMD_PREFIX) :] if target.startswith(CMD_PREFIX) else None
        #: An exec forward's program (:meth:`GuestForwarder.add_exec`), run in place of
        #: ``command``.
        self.exec: ExecTarget | None = None
        self.bridge = bridge
        self.chardev: Chardev | None = None
        self.owned = False  # the chardev was opened for this rule (closed with it)
        self.opening: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        """QEMU's chardev id for the rule."""
        return f"guestfwd.tcp.{self.rule.port}"


@dataclass(frozen=True)
class ExecTarget:
    """What an exec forward runs per connection: ``argv`` (no shell) on a loopback TCP
    pair with ``inet``, else a unix socketpair; stderr to ``stderr`` (an fd) if given, else
    into the connection; in ``cwd`` if given."""

    argv: tuple[str, ...]
    inet: bool = True
    stderr: int | None = None
    cwd: str | None = None


class Children:
    """The children of ``cmd:`` rules: spawned per connection, reaped as they exit."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, log: logging.Logger, limit: int = MAX_CHILDREN,
        shell: str = SHELL, deadlines: Deadlines | None = None,
    ) -> None:  # fmt: skip
        self._loop = loop
        self._log = log
        self.limit = limit
        self.shell = shell
        self.live: dict[int, tuple[subprocess.Popen[bytes], int]] = {}  # pid -> (proc, pidfd)
        self.stats: Counter[GuestfwdCounter] = Counter()
        #: Children are reaped through a pidfd on the loop; only a child whose pidfd could
        #: not be opened (descriptors exhausted) is polled, as an entry of the netdev's
        #: deadlines (or of our own timer when used alone).
        self._timer: NetdevTimer | None = None
        if deadlines is None:
            self._timer = NetdevTimer(loop, self._on_own_timer)
            deadlines = self._timer.deadlines
        self._deadlines = deadlines
        self._poll_at: float | None = None
        self._warned_at = -SPAWN_LOG_INTERVAL

    def spawn(self, command: str) -> socket.socket | int:
        """Start ``/bin/sh -c command`` on a fresh socketpair: our end, or an errno."""
        return self.spawn_exec((self.shell, "-c", command))

    def spawn_exec(
        self, argv: Sequence[str], *, inet: bool = False, stderr: int | None = None,
        cwd: str | None = None,
    ) -> socket.socket | int:  # fmt: skip
        """Start ``argv`` with stdin and stdout (and stderr, unless ``stderr`` is another
        fd) one end of a fresh connection - a unix socketpair, or with ``inet`` a loopback
        TCP pair (:func:`loopback_pair`, for programs that want an inet peer): our end, or
        an errno."""
        if len(self.live) >= self.limit:
            self.stats["guestfwd-children-limit"] += 1
            return errno.EAGAIN
        try:
            if inet:
                ours, theirs = loopback_pair()
            else:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            self.stats["guestfwd-spawn-failed"] += 1
            return exc.errno or errno.EMFILE
        try:
            fd = theirs.fileno()
            proc = subprocess.Popen(
                argv, stdin=fd, stdout=fd, stderr=fd if stderr is None else stderr,
                close_fds=True, start_new_session=True, cwd=cwd,
            )  # fmt: skip
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            ours.close()
            self.stats["guestfwd-spawn-failed"] += 1
            now = time.monotonic()
            if now - self._warned_at >= SPAWN_LOG_INTERVAL:  # a guest can retry at will
                self._warned_at = now
                failures = self.stats["guestfwd-spawn-failed"]
                self._log.warning("guestfwd: cannot run %r: %s (%d failures so far)",
                                  shlex.join(argv), exc, failures)  # fmt: skip
            return getattr(exc, "errno", None) or errno.EIO
        finally:
            theirs.close()
        self.stats["guestfwd-children"] += 1
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (OSError, AttributeError):
            pidfd = -1
        self.live[proc.pid] = (proc, pidfd)
        if pidfd >= 0:
            self._loop.add_reader(pidfd, self._reap, proc.pid)
        elif self._poll_at is None:
            self._poll_at = self._loop.time() + POLL_INTERVAL
            self._deadlines.changed(self)
        return ours

    def _reap(self, pid: int) -> None:
        entry = self.live.get(pid)
        if entry is not None and entry[0].poll() is not None:
            self._forget(pid)

    def next_deadline(self) -> float | None:
        return self._poll_at

    def on_deadline(self, now: float) -> None:
        """Poll the children without a pidfd."""
        if self._poll_at is None or now < self._poll_at:
            return
        self._poll_at = None
        for pid in list(self.live):
            self._reap(pid)
        if any(pidfd < 0 for _proc, pidfd in self.live.values()):
            self._poll_at = now + POLL_INTERVAL

    def _on_own_timer(self) -> None:
        assert self._timer is not None
        self._timer.deadlines.run(self._loop.time())
        self._timer.rearm()

    def _forget(self, pid: int) -> None:
        proc, pidfd = self.live.pop(pid)
        if pidfd >= 0:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        self.stats["guestfwd-children-reaped"] += 1
        self._log.debug("guestfwd: child %d exited with %s", pid, proc.returncode)

    def close(self) -> None:
        """Terminate every live child's session, wait :data:`KILL_GRACE` s, kill the rest,
        reap all (blocking at most that long plus the kills)."""
        self._poll_at = None
        self._deadlines.drop(self)
        if self._timer is not None:
            self._timer.close()
        for pid in self.live:
            _signal_session(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        while self.live:
            for pid, (proc, _pidfd) in list(self.live.items()):
                if proc.poll() is not None:
                    self._forget(pid)
            if not self.live or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        for pid, (proc, _pidfd) in list(self.live.items()):
            _signal_session(pid, signal.SIGKILL)
            proc.wait()
            self._forget(pid)
            self.stats["guestfwd-children-killed"] += 1


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1 (libslirp's ``slirp_socketpair_with_oob``): ours
    and theirs. A connection some other local process slips in ahead of ours is closed and
    skipped (the accepted peer must be our own socket), at most :data:`PAIR_TRIES` times."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(PAIR_TRIES)
        listener.settimeout(PAIR_TIMEOUT)
        ours = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            ours.settimeout(PAIR_TIMEOUT)
            ours.connect(listener.getsockname())
            name = ours.getsockname()
            for _ in range(PAIR_TRIES):
                theirs, peer = listener.accept()
                if peer == name:
                    theirs.settimeout(None)
                    ours.settimeout(None)
                    return ours, theirs
                theirs.close()
        except BaseException:
            ours.close()
            raise
        ours.close()
        raise OSError(errno.ECONNABORTED, "loopback pair: foreign connections in the way")


def _signal_session(pid: int, sig: int) -> None:
    """Signal the child's process group (its session: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class GuestForwarder:
    """Every guestfwd rule of one user netdev."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, gw: Gateway, log: logging.Logger, *,
        max_children: int = MAX_CHILDREN, shell: str = SHELL,
        deadlines: Deadlines | None = None,
    ) -> None:  # fmt: skip
        self._loop = loop
        self._gw = gw
        self._log = log
        self.forwards: list[GuestFwd] = []
        self.children = Children(loop, log, max_children, shell, deadlines=deadlines)
        self.lookup: Lookup | None = None
        self.stats: Counter[GuestfwdCounter] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()  # openings: cancelled by close()
        self._closing: set[asyncio.Task[None]] = set()  # chardev closes: left to finish
        self.closed = False

    # -- rules -----------------------------------------------------------------------------

    def find(self, server: str, port: int) -> GuestFwd | None:
        addr = inet_aton(server)
        for fwd in self.forwards:
            if fwd.rule.port == port and addr is not None and fwd.addr == addr.to_bytes(4, "big"):
                return fwd
        return None

    def add(self, rule: GuestFwdRule, *, start: bool = False) -> GuestFwd:
        """Take ``rule`` (parsed by :func:`.options.parse_guestfwd`); raises GenericError
        with QEMU's text. A chardev rule's chardev opens in :meth:`open`, or, with
        ``start``, now (``chardev:ID``) or in the background (a spec: one that does not
        parse fails now; a failure to open removes the rule and is logged). A target with
        a NUL is invalid (QEMU's C strings would end there; no command or path holds one)."""
        if "\0" in rule.target:
            raise GenericError(f"Invalid guest forwarding rule '{rule.text}'")
        if self.find(rule.server, rule.port) is not None:
            raise conflict_error(rule)
        cmd = rule.target.startswith(CMD_PREFIX)
        addr = socket.inet_aton(rule.server)
        fwd = GuestFwd(rule, addr, None if cmd else ChardevBridge(self._loop, self._log))
        backend = None
        if start and fwd.bridge is not None:  # raises before anything is registered
            if rule.target.startswith(CHARDEV_PREFIX):
                self._attach_existing(fwd)
            else:
                backend = self._backend(fwd)
        self.forwards.append(fwd)
        self._gw.add_local(addr)
        if backend is not None:
            fwd.opening = self._spawn(self._open_in_background(fwd, backend))
        return fwd

    def add_exec(self, rule: GuestFwdRule, target: ExecTarget) -> GuestFwd:
        """An exec forward (libslirp's ``slirp_add_exec``, behind QEMU's ``smb=``): each
        guest connection to ``rule.server:rule.port`` runs ``target``; ``rule.target`` is
        only shown (``cmd:`` and the command line). Conflicts as :meth:`add`."""
        if self.find(rule.server, rule.port) is not None:
            raise conflict_error(rule)
        addr = socket.inet_aton(rule.server)
        fwd = GuestFwd(rule, addr, None)
        fwd.exec = target
        self.forwards.append(fwd)
        self._gw.add_local(addr)
        return fwd

    async def open(self, lookup: Lookup | None = None) -> None:
        """Open the chardev of every rule that has none yet, in rule order (netdev
        creation); raises GenericError with QEMU's text for the first that fails."""
        if lookup is not None:
            self.lookup = lookup
        for fwd in list(self.forwards):
            if fwd.bridge is not None and fwd.chardev is None and fwd.opening is None:
                await self._open(fwd)

    def remove(self, fwd: GuestFwd) -> None:
        """Forget ``fwd``: its chardev is closed (owned) or detached, its guest connections
        end; connections of a ``cmd:`` rule and their children live on."""
        if fwd not in self.forwards:
            return
        self.forwards.remove(fwd)
        if not any(f.addr == fwd.addr for f in self.forwards):
            self._gw.remove_local(fwd.addr)
        self._release(fwd)

    def close(self) -> None:
        """Release every rule, end every chardev-backed connection, terminate and reap
        every child (netdev_del)."""
        self.closed = True
        for fwd in list(self.forwards):
            self.remove(fwd)
        for task in list(self._tasks):
            task.cancel()
        self.children.close()

    def counters(self) -> dict[str, int]:
        total: Counter[str] = Counter(self.stats)
        total.update(self.children.stats)
        for fwd in self.forwards:
            if fwd.bridge is not None:
                total.update(fwd.bridge.stats)
        total["guestfwd-children-live"] = len(self.children.live)
        return dict(total)

    # -- guest connections -----------------------------------------------------------------

    def resolve(self, seg: Segment) -> socket.socket | int | None:
        """The host end for a guest SYN to a guestfwd target (a connected socket, or an
        errno to refuse it with); None when no rule names the destination."""
        if len(seg.dst) != 4:
            return None
        for fwd in self.forwards:
            if fwd.rule.port == seg.dport and fwd.addr == seg.dst:
                break
        else:
            return None
        self.stats["guestfwd-connections"] += 1
        if fwd.exec is not None:
            run = fwd.exec
            return self.children.spawn_exec(run.argv, inet=run.inet, stderr=run.stderr, cwd=run.cwd)
        if fwd.command is not None:
            return self.children.spawn(fwd.command)
        assert fwd.bridge is not None
        try:
            return fwd.bridge.open_pipe()
        except OSError as exc:
            self.stats["guestfwd-socketpair-failed"] += 1
            return exc.errno or errno.EMFILE

    # -- chardevs --------------------------------------------------------------------------

    def _attach_existing(self, fwd: GuestFwd) -> None:
        """``chardev:ID``: attach the bridge to the daemon's chardev ``ID``."""
        assert fwd.bridge is not None
        name = fwd.rule.target[len(CHARDEV_PREFIX) :]
        dev = self.lookup(name) if self.lookup is not None else None
        if not isinstance(dev, Chardev):
            self._log.warning("guestfwd %r: no chardev %r", fwd.rule.text, name)
            raise GenericError(f"Could not open guest forwarding device '{fwd.label}'")
        dev.attach(fwd.bridge)  # "Device 'ID' is in use", as qemu_chr_fe_init says
        fwd.chardev, fwd.owned = dev, False

    def _backend(self, fwd: GuestFwd) -> tuple[Chardev, ChardevSpec]:
        """The rule's chardev spec parsed and its back end made (nothing opened yet);
        GenericError with QEMU's text when the spec names no chardev this rule can use."""
        try:
            spec = parse_qmp_shorthand(fwd.rule.target, fwd.label)
            if spec.mux:
                raise GenericError("a muxed monitor ('mon:') cannot serve a guest forward")
            return create_backend(spec), spec
        except Exception as exc:  # any text can come here (QMP): every failure is the rule's
            self._log.warning("guestfwd %r: %s", fwd.rule.text, getattr(exc, "desc", exc),
                              exc_info=not isinstance(exc, GenericError))  # fmt: skip
            raise GenericError(f"Could not open guest forwarding device '{fwd.label}'") from exc

    async def _open(
        self, fwd: GuestFwd, backend: tuple[Chardev, ChardevSpec] | None = None
    ) -> None:
        if fwd.rule.target.startswith(CHARDEV_PREFIX):
            self._attach_existing(fwd)
            return
        assert fwd.bridge is not None
        dev, spec = backend if backend is not None else self._backend(fwd)
        try:
            dev.open_log(spec.options.logfile, spec.options.logappend)
            await dev.start()
        except BaseException as exc:
            await dev.close()
            if isinstance(exc, Exception):  # OSError, GenericError, ValueError (bad path)...
                self._log.warning("guestfwd %r: %s", fwd.rule.text, exc)
                raise GenericError(f"Could not open guest forwarding device '{fwd.label}'") from exc
            raise
        if fwd not in self.forwards:  # removed while it opened
            await dev.close()
            return
        dev.attach(fwd.bridge)
        fwd.chardev, fwd.owned = dev, True

    async def _open_in_background(
        self, fwd: GuestFwd, backend: tuple[Chardev, ChardevSpec]
    ) -> None:
        try:
            await self._open(fwd, backend)
        except GenericError as exc:
            self.stats["guestfwd-open-failed"] += 1
            self._log.warning("guestfwd %r removed: %s", fwd.rule.text, exc.desc)
            self.remove(fwd)
        finally:
            fwd.opening = None

    def _release(self, fwd: GuestFwd) -> None:
        if fwd.opening is not None:
            fwd.opening.cancel()
            fwd.opening = None
        if fwd.bridge is not None:
            fwd.bridge.close()
        dev, fwd.chardev = fwd.chardev, None
        if dev is not None:
            if dev.frontend is fwd.bridge:
                dev.detach()
            if fwd.owned:
                self._spawn(dev.close(), cancel_on_close=False)

    def _spawn(self, coro: Any, *, cancel_on_close: bool = True) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._loop.create_task(coro)
        if cancel_on_close:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return task
