"""Running guests: one QEMU process per :class:`Guest`, under TCG, its serial console captured.

Owns the QEMU command line (``-accel tcg -nodefaults -display none -no-reboot -serial stdio
-kernel -initrd -append``; callers add netdevs and devices), the console capture, the timeout,
and the clean-up. Invariants:

* every QEMU started here is stopped by PID (SIGTERM, then SIGKILL after a grace period) when
  its :class:`Guest` finishes, times out, is cancelled or leaves its ``async with`` block;
  its temporary directory (the per-run initrd) is removed then too;
* the console text has ``\\r`` removed and is decoded as UTF-8 with replacement;
* guests share no state, so any number may run at once in one event loop.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .host import find_qemu
from .image import EXIT_MARKER, READY_MARKER, GuestImage, build, overlay

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_MB = 256
_TERM_GRACE = 2.0
_EXIT_RX = re.compile(re.escape(EXIT_MARKER) + r" (\d+)")


class GuestError(RuntimeError):
    """A guest failed: QEMU did not start, the script failed, or a wait timed out."""


def shared_memory_args(memory_mb: int = DEFAULT_MEMORY_MB, mem_id: str = "mem") -> list[str]:
    """QEMU arguments that make guest RAM a shareable memfd, as vhost-user back ends need.
    ``memory_mb`` must equal the guest's memory size."""
    return [
        "-object",
        f"memory-backend-memfd,id={mem_id},size={memory_mb}M,share=on",
        "-machine",
        f"memory-backend={mem_id}",
    ]


def virtio_nic_args(netdev: str, mac: str, *, msix: bool = True, extra: str = "") -> list[str]:
    """``-device virtio-net-pci`` for ``netdev``. ``msix=False`` adds ``vectors=0``, which QEMU
    7.2 needs under TCG with vhost-user (it otherwise crashes in msix_set_vector_notifiers)."""
    opts = f"virtio-net-pci,netdev={netdev},mac={mac}"
    if not msix:
        opts += ",vectors=0"
    if extra:
        opts += "," + extra
    return ["-device", opts]


@dataclass(frozen=True)
class GuestResult:
    """What one guest run produced."""

    name: str
    argv: tuple[str, ...]
    console: str
    stderr: str
    exit_status: int | None
    """The status of ``/test.sh`` from the ``NETSTACK-GUEST-EXIT`` marker; None without one."""
    returncode: int | None
    """QEMU's own exit code (negative: killed by that signal); None if it could not start."""
    timed_out: bool
    boot_seconds: float | None
    """Seconds from QEMU's start to the ``NETSTACK-GUEST-READY`` marker."""
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out

    @property
    def output(self) -> str:
        """The console between the READY and the EXIT markers (the script's output, plus any
        kernel messages printed meanwhile)."""
        text = self.console
        start = text.find(READY_MARKER + "\n")
        text = text[start + len(READY_MARKER) + 1 :] if start >= 0 else text
        end = text.rfind(EXIT_MARKER)
        return text[:end] if end >= 0 else text

    def check(self) -> GuestResult:
        """Return self if the script exited 0; otherwise raise :class:`GuestError`."""
        if self.ok:
            return self
        if self.timed_out:
            why = "timed out"
        elif self.exit_status is None:
            why = f"ended without an exit marker (qemu returncode {self.returncode})"
        else:
            why = f"script exited {self.exit_status}"
        raise GuestError(
            f"guest {self.name} {why} after {self.elapsed:.1f}s\n"
            f"--- console (tail) ---\n{self.console[-4000:]}\n"
            f"--- qemu stderr ---\n{self.stderr[-2000:]}"
        )


class Guest:
    """One QEMU guest. Use as ``async with Guest(...) as g: ... await g.wait()``.

    ``script`` becomes ``/test.sh``; ``files`` maps further guest paths to contents;
    ``qemu_args`` are appended to the command line (netdevs, devices, ...). ``wait_ifaces``
    are the interfaces ``/init`` waits for (at most ``ifwait`` seconds) before the script.
    ``timeout`` bounds the whole run from :meth:`start`. ``echo`` receives console text as
    it arrives; ``log_path`` receives the whole console when the guest ends. ``accel`` is
    the ``-accel`` option (e.g. ``tcg,thread=single``).
    """

    def __init__(
        self,
        image: GuestImage,
        script: str | bytes = "",
        qemu_args: Sequence[str] = (),
        *,
        name: str = "guest",
        files: Mapping[str, str | bytes] | None = None,
        memory_mb: int = DEFAULT_MEMORY_MB,
        timeout: float = DEFAULT_TIMEOUT,
        wait_ifaces: Sequence[str] = ("eth0",),
        ifwait: int = 15,
        append: str = "",
        qemu: str | None = None,
        echo: TextIO | None = None,
        log_path: Path | None = None,
        accel: str = "tcg",
    ) -> None:
        self.image = image
        self._accel = accel
        self.name = name
        self.timeout = timeout
        self._script = script
        self._files = dict(files or {})
        self._qemu_args = list(qemu_args)
        self._memory_mb = memory_mb
        self._cmdline = " ".join(
            part
            for part in (
                "console=ttyS0 panic=-1 quiet",
                f"netstack.ifaces={','.join(wait_ifaces) or 'none'}",
                f"netstack.ifwait={ifwait}",
                append,
            )
            if part
        )
        self._qemu = qemu
        self._echo = echo
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._tmp: Path | None = None
        self._argv: tuple[str, ...] = ()
        self._text = ""
        self._stderr = bytearray()
        self._eof = False
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self._t0 = 0.0
        self._boot: float | None = None
        self._result: GuestResult | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def console(self) -> str:
        """The console so far."""
        return self._text

    def argv(self, initrd: Path) -> list[str]:
        """The QEMU command line for this guest with ``initrd`` as its initramfs."""
        qemu = self._qemu or find_qemu()
        if qemu is None:
            raise GuestError("qemu-system-x86_64 not found (run tools/setup-deps.sh)")
        return [
            qemu,
            "-name", self.name,
            "-accel", self._accel,
            "-m", str(self._memory_mb),
            "-smp", "1",
            "-nodefaults", "-no-user-config",
            "-display", "none",
            "-no-reboot",
            "-serial", "stdio",
            "-kernel", str(self.image.kernel),
            "-initrd", str(initrd),
            "-append", self._cmdline,
            *self._qemu_args,
        ]  # fmt: skip

    async def start(self) -> None:
        """Write the per-run initrd and start QEMU."""
        if self._proc is not None:
            raise GuestError(f"guest {self.name} already started")
        loop = asyncio.get_running_loop()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"netstack-guest-{self.name}-"))
        try:
            initrd = self._tmp / "initrd.cpio.gz"
            base = await asyncio.to_thread(self.image.initrd.read_bytes)
            initrd.write_bytes(base + overlay(self._script, self._files))
            self._argv = tuple(self.argv(initrd))
            self._t0 = loop.time()
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except BaseException:
            self._remove_tmp()
            raise
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_console(self._proc.stdout)),
            asyncio.create_task(self._read_stderr(self._proc.stderr)),
        ]

    async def _read_console(self, stream: asyncio.StreamReader) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        loop = asyncio.get_running_loop()
        while True:
            chunk = await stream.read(65536)
            text = decoder.decode(chunk, final=not chunk).replace("\r", "")
            if text:
                self._text += text
                if self._echo is not None:
                    self._echo.write(text)
                    self._echo.flush()
                if self._boot is None and READY_MARKER + "\n" in self._text:
                    self._boot = loop.time() - self._t0
            if not chunk:
                self._eof = True
            self._changed.set()
            self._changed = asyncio.Event()
            if not chunk:
                return

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._stderr.extend(chunk)

    async def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float, since: int = 0
    ) -> re.Match[str]:
        """Wait until the console (from offset ``since``) matches ``pattern``; return the match
        (its ``end()`` is a good ``since`` for the next wait). Raises :class:`GuestError` if
        the guest ends first or ``timeout`` seconds pass."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            match = rx.search(self._text, since)
            if match is not None:
                return match
            if self._eof:
                raise GuestError(f"guest {self.name} ended before printing {rx.pattern!r}")
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise GuestError(f"guest {self.name}: no {rx.pattern!r} within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait(self) -> GuestResult:
        """Wait for QEMU to end (at most until the run's timeout), stop it, and return the
        result. Calling it again returns the same result."""
        if self._result is not None:
            return self._result
        if self._proc is None:
            raise GuestError(f"guest {self.name} was not started")
        loop = asyncio.get_running_loop()
        timed_out = False
        try:
            remaining = self._t0 + self.timeout - loop.time()
            try:
                await asyncio.wait_for(self._proc.wait(), max(remaining, 0.0))
            except TimeoutError:
                timed_out = True
        finally:
            await self.stop()
        statuses = _EXIT_RX.findall(self._text)
        self._result = GuestResult(
            name=self.name,
            argv=self._argv,
            console=self._text,
            stderr=self._stderr.decode(errors="replace"),
            exit_status=int(statuses[-1]) if statuses else None,
            returncode=self._proc.returncode,
            timed_out=timed_out,
            boot_seconds=self._boot,
            elapsed=loop.time() - self._t0,
        )
        return self._result

    async def stop(self) -> None:
        """Stop QEMU if it still runs (SIGTERM, then SIGKILL), collect its output and remove
        the temporary files. Idempotent."""
        proc = self._proc
        try:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), _TERM_GRACE)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            if self._readers:
                _, pending = await asyncio.wait(self._readers, timeout=_TERM_GRACE)
                for task in pending:
                    task.cancel()
                self._readers = []
        finally:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            self._remove_tmp()
            if self._log_path is not None and self._text:
                self._log_path.write_text(self._text)

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def __aenter__(self) -> Guest:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_guest(
    script: str | bytes,
    qemu_args: Sequence[str] = (),
    *,
    image: GuestImage | None = None,
    name: str = "guest",
    files: Mapping[str, str | bytes] | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    timeout: float = DEFAULT_TIMEOUT,
    wait_ifaces: Sequence[str] = ("eth0",),
    append: str = "",
    echo: TextIO | None = None,
    log_path: Path | None = None,
) -> GuestResult:
    """Boot a guest that runs ``script``, wait for it to end and return the result (see
    :class:`Guest` for the arguments). ``image`` defaults to :func:`~tools.guest.build`."""
    if image is None:
        image = await asyncio.to_thread(build)
    guest = Guest(
        image,
        script,
        qemu_args,
        name=name,
        files=files,
        memory_mb=memory_mb,
        timeout=timeout,
        wait_ifaces=wait_ifaces,
        append=append,
        echo=echo,
        log_path=log_path,
    )
    async with guest:
        return await guest.wait()


def run_guest_sync(
    script: str | bytes,
    qemu_args: Sequence[str] = (),
    *,
    image: GuestImage | None = None,
    name: str = "guest",
    files: Mapping[str, str | bytes] | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    timeout: float = DEFAULT_TIMEOUT,
    wait_ifaces: Sequence[str] = ("eth0",),
    append: str = "",
    echo: TextIO | None = None,
    log_path: Path | None = None,
) -> GuestResult:
    """:func:`run_guest` for synchronous callers (not from inside a running event loop)."""
    return asyncio.run(
        run_guest(
            script,
            qemu_args,
            image=image,
            name=name,
            files=files,
            memory_mb=memory_mb,
            timeout=timeout,
            wait_ifaces=wait_ifaces,
            append=append,
            echo=echo,
            log_path=log_path,
        )
    )
