"""``-sandbox on[,obsolete=][,elevateprivileges=][,spawn=][,resourcecontrol=]``: a seccomp
filter that allows only the system calls the daemon uses.

Owns the option (QEMU 7.2's syntax and error texts, ``softmmu/qemu-seccomp.c``: ``enable``
is the implied boolean; ``obsolete=allow|deny``, ``elevateprivileges=allow|deny|children``,
``spawn=allow|deny``, ``resourcecontrol=allow|deny``; any other value is "invalid argument
for NAME", any other key "Invalid parameter 'NAME'") and the filter.

The filter, unlike QEMU's: QEMU loads a deny-list (everything allowed but a few sets) whose
action kills the process. netstackd loads an **allow-list** (:data:`BASE`: what CPython,
asyncio and the drivers call - memory, files, sockets, epoll, timers, signals, threads,
netlink, tap and vhost-user ``ioctl``/``mmap``, ``setns``) and a forbidden call **fails
with EPERM** (never a kill): a ``netdev_add`` or a guest connection that needs one fails
with a clear error and the daemon keeps serving. ``clone3`` fails with ENOSYS so that the
C library falls back to ``clone``, whose flags a filter can see. The option sets follow
QEMU's meaning on top of that list:

* ``spawn=deny`` forbids new processes (``fork``, ``vfork``, ``execve``, ``execveat``,
  ``clone`` without ``CLONE_THREAD``): tap ``script=``/``downscript=``/``helper=`` and
  guestfwd ``cmd:`` then fail; threads still start. Default ``allow``, as in QEMU;
* ``elevateprivileges=deny`` forbids the ``set*id`` family, ``setgroups``, ``setpgid`` and
  ``setsid`` (guestfwd ``cmd:`` children, which start a session, fail with it);
  ``children`` also sets ``PR_SET_NO_NEW_PRIVS`` (which libseccomp sets anyway); default
  ``allow``;
* ``resourcecontrol=deny`` forbids ``setpriority`` and the ``sched_set*`` calls (QEMU's
  set; EPERM in QEMU too); default ``allow``;
* ``obsolete=allow`` adds QEMU's obsolete set (``sysfs``, ``ustat``, ``uselib``...) to the
  allow-list; default ``deny`` (they are simply not in it).

Calls outside every set (``mount``, ``ptrace``, ``bpf``, ``kexec_load``, ``init_module``,
``reboot``, ``chroot``, ``keyctl``, ``io_uring_*``...) always fail with EPERM. The filter
applies to every thread (``TSYNC``) and to children the daemon spawns.

Binding: libseccomp's own Python API. ``import seccomp`` (Debian's python3-seccomp, built
for the system Python) is used when the interpreter can import it; otherwise
``pyseccomp`` from PyPI, a ctypes binding on ``libseccomp.so.2`` with the same API, which
works with any CPython (our virtualenvs are not the system Python). Either way the work is
libseccomp's; only the list of calls is ours.

The daemon installs the filter last, after the command line's netdevs are open and
privileges are dropped (QEMU installs it before creating devices; everything a later
``netdev_add`` needs is in the allow-list either way).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import importlib
from dataclasses import dataclass
from typing import Any, Final

from netstack.errors import GenericError
from netstack.qapi import qemuopts
from netstack.qapi.scalars import parse_bool

_CLONE_THREAD: Final = 0x00010000


def _calls(text: str) -> frozenset[str]:
    """A set of system call names written as words."""
    return frozenset(text.split())


_PR_SET_NO_NEW_PRIVS: Final = 38

#: System calls the daemon makes (CPython, asyncio, the drivers), always allowed.
BASE: Final = _calls(
    """
    read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2 close
    close_range lseek mmap munmap mremap mprotect madvise brk msync mincore membarrier rseq
    set_robust_list get_robust_list futex futex_waitv sched_yield sched_getaffinity
    sched_getparam sched_getscheduler getpriority getrandom exit exit_group
    rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigqueueinfo
    rt_sigsuspend sigaltstack restart_syscall pause alarm getitimer setitimer
    clock_gettime clock_getres clock_nanosleep nanosleep gettimeofday time
    getpid getppid gettid getuid geteuid getgid getegid getgroups getresuid getresgid
    getpgrp getpgid getsid getrlimit setrlimit prlimit64 getrusage times uname sysinfo
    arch_prctl prctl capget umask getcwd chdir fchdir
    open openat openat2 creat stat fstat lstat newfstatat statx statfs fstatfs access
    faccessat faccessat2 readlink readlinkat getdents getdents64 fcntl ioctl flock
    dup dup2 dup3 pipe pipe2 unlink unlinkat rename renameat renameat2 mkdir mkdirat rmdir
    chmod fchmod fchmodat chown fchown fchownat lchown ftruncate truncate fsync fdatasync
    fadvise64 utimensat futimesat utime utimes symlink symlinkat link linkat
    sendfile copy_file_range splice tee memfd_create
    eventfd eventfd2 epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait
    epoll_pwait2 poll ppoll select pselect6 signalfd signalfd4
    timerfd_create timerfd_settime timerfd_gettime
    socket socketpair bind listen accept accept4 connect getsockname getpeername
    setsockopt getsockopt sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown
    set_tid_address tgkill tkill kill wait4 waitid pidfd_open pidfd_send_signal setns mbind
    """
)
#: New processes (``spawn=deny`` forbids them; ``clone`` is split on CLONE_THREAD).
SPAWN: Final = frozenset({"fork", "vfork", "execve", "execveat"})
#: QEMU's "privileged" set, plus ``setgroups`` (``elevateprivileges=deny``).
PRIVILEGED: Final = _calls(
    """setuid setgid setpgid setsid setreuid setregid setresuid setresgid setfsuid
    setfsgid setgroups"""
)
#: QEMU's "resource control" set (``resourcecontrol=deny``).
RESOURCECTL: Final = frozenset(
    {"setpriority", "sched_setparam", "sched_setscheduler", "sched_setaffinity"}
)
#: QEMU's "obsolete" set (``obsolete=allow`` adds the ones this architecture has).
OBSOLETE: Final = _calls(
    """readdir _sysctl bdflush create_module get_kernel_syms query_module sgetmask
    ssetmask sysfs uselib ustat"""
)

_SANDBOX_OPTS: Final = {
    "enable": qemuopts.OptType.BOOL,
    "obsolete": qemuopts.OptType.STRING,
    "elevateprivileges": qemuopts.OptType.STRING,
    "spawn": qemuopts.OptType.STRING,
    "resourcecontrol": qemuopts.OptType.STRING,
}
_CHOICES: Final = {
    "obsolete": ("allow", "deny"),
    "elevateprivileges": ("allow", "deny", "children"),
    "spawn": ("allow", "deny"),
    "resourcecontrol": ("allow", "deny"),
}


@dataclass(frozen=True)
class SandboxSpec:
    """What ``-sandbox`` asked for (QEMU's defaults)."""

    enable: bool = False
    obsolete: str = "deny"
    elevateprivileges: str = "allow"
    spawn: str = "allow"
    resourcecontrol: str = "allow"

    def allowed(self) -> frozenset[str]:
        """The system calls allowed outright (``clone`` is handled apart)."""
        names = set(BASE)
        if self.spawn == "allow":
            names |= SPAWN
        if self.elevateprivileges == "allow":
            names |= PRIVILEGED
        if self.resourcecontrol == "allow":
            names |= RESOURCECTL
        if self.obsolete == "allow":
            names |= OBSOLETE
        return frozenset(names)


def parse(text: str) -> SandboxSpec:
    """``-sandbox TEXT``; GenericError with QEMU's texts."""
    opts = qemuopts.parse(text, "enable", _SANDBOX_OPTS)  # checks enable's boolean
    enable = opts.get("enable")
    if enable is None or not parse_bool(enable):
        return SandboxSpec()  # QEMU looks at the sets only when the sandbox is on
    values: dict[str, str] = {}
    for name, choices in _CHOICES.items():
        value = opts.get(name)
        if value is None:
            continue
        if value not in choices:
            raise GenericError(f"invalid argument for {name}")
        values[name] = value
    return SandboxSpec(enable=True, **values)


def binding() -> Any:
    """libseccomp's Python API: the official ``seccomp`` module, else ``pyseccomp``."""
    for name in ("seccomp", "pyseccomp"):
        try:
            return importlib.import_module(name)
        except (ImportError, OSError, RuntimeError):  # no binding, or no libseccomp.so.2
            continue
    raise GenericError(
        "-sandbox needs libseccomp's Python binding (pip install pyseccomp, or Debian's "
        "python3-seccomp for the system Python) and libseccomp2"
    )


def _add(sc: Any, f: Any, action: int, name: str, *args: Any) -> bool:
    """Add one rule; False for a call this architecture does not have."""
    try:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
            return False
        f.add_rule(action, name, *args)
    except (OSError, ValueError, RuntimeError):
        return False
    return True


def build(spec: SandboxSpec) -> Any:
    """The filter for ``spec`` (a libseccomp ``SyscallFilter``, not loaded)."""
    sc = binding()
    f = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    f.set_attr(sc.Attr.CTL_TSYNC, 1)
    with contextlib.suppress(Exception):  # libseccomp >= 2.5: a binary tree, not a list
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    for name in sorted(spec.allowed()):
        _add(sc, f, sc.ALLOW, name)
    _add(sc, f, sc.ERRNO(errno.ENOSYS), "clone3")
    if spec.spawn == "allow":
        _add(sc, f, sc.ALLOW, "clone")
    else:
        _add(sc, f, sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, _CLONE_THREAD))
    return f


def install(spec: SandboxSpec) -> None:
    """Load the filter into this process (all threads); GenericError on failure."""
    if not spec.enable:
        return
    if spec.elevateprivileges == "children":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise GenericError("failed to set no_new_privs aborting")
    try:
        f = build(spec)
    except GenericError:
        raise
    except Exception as exc:
        raise GenericError(f"failed to initialize seccomp context: {exc}") from exc
    try:
        f.load()
    except Exception as exc:
        raise GenericError(f"failed to load seccomp syscall filter in kernel: {exc}") from exc


def seccomp_mode(pid: int | str = "self") -> int:
    """The ``Seccomp:`` field of ``/proc/PID/status`` (0 none, 1 strict, 2 filter)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return 0
