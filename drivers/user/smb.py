"""The user netdev's SMB share (``smb=DIR[,smbserver=ADDR]``): a private Samba ``smbd`` that
the guest reaches at 10.0.2.4 (or ``smbserver``), ports 139 and 445, share ``qemu``.

Follows QEMU's ``net/slirp.c`` (``slirp_smb``, ``slirp_smb_cleanup``) and libslirp's exec
forwards (``slirp_add_exec``, ``fork_exec``): per netdev a private directory holding an
``smb.conf`` that exports DIR as ``[qemu]`` (guest access, read-write, ``force user`` =
the daemon's user; private, pid, lock, state, cache, ncalrpc and log directories inside the
private directory; ``interfaces=127.0.0.1``, ``bind interfaces only``, no printing), and two
exec forwards, ``ADDR:139`` and ``ADDR:445``, each running ``smbd -l PRIV -s PRIV/smb.conf``
per guest connection, inetd style: the connection is smbd's stdin and stdout. The forwards
are :meth:`.guestfwd.GuestForwarder.add_exec` rules, so the ``cmd:`` machinery (a child per
connection in its own session, pidfd reaping, the per-netdev child limit, termination on
``netdev_del``) runs them, and they are listed by ``query-user-forwards`` as ``guestfwd``
rows (rule ``smb=DIR``, target ``cmd:`` + the smbd command line); their connections show
in ``info usernet`` / ``query-user-connections`` as guestfwd connections. No listening
socket is opened anywhere: smbd is bound to nothing but the connection it is handed.

Use: ``netstackd -netdev user,id=nat0,smb=/srv/share ...``; a Linux guest mounts it with
``mount -t cifs //10.0.2.4/qemu /mnt -o username=guest,password=,vers=3.0`` (the kernel
client wants its crypto modules: sha512, cmac, gcm/ccm), smbclient lists it with
``smbclient -N -L //10.0.2.4``, a Windows guest opens share ``qemu`` on ``10.0.2.4``. Each guest
connection starts an smbd (about a quarter of a second here), so at most the netdev's
guestfwd child limit (64) run at once.

The smbd binary: ``x-smbd=PATH`` (netstack extension; a bare name is looked up on PATH),
else QEMU's ``CONFIG_SMBD_COMMAND`` default ``/usr/sbin/smbd``, else ``smbd`` on PATH.

Checks, in QEMU's order and with its texts: "Failed to retrieve user name", "Could not find
'SMBD', please install it", "Error accessing shared directory 'DIR': REASON", "Could not
create samba server dir", "Could not create samba server configuration file 'F': REASON",
"Conflicting/invalid smbserver address" (the address outside the network, the host or DNS
address, or - beyond QEMU - a guestfwd rule already on ADDR:139/445).

Life cycle: made when the netdev is created (after its guestfwd rules, as in QEMU), gone
with it (:meth:`SmbServer.close`, from the client's cleanup after the guestfwd children are
reaped: ``netdev_del``, daemon shutdown, a netdev whose creation fails). If the daemon dies
without cleaning up (SIGKILL):

* every smbd dies with it: smbd runs under ``setpriv --pdeathsig KILL`` (util-linux) so
  the kernel kills it when the daemon goes (its connection is closed then anyway, which
  ends an inetd-mode smbd, but a busy one would otherwise finish its request first);
* smbd 4.17 forks helpers that outlive it - ``cleanupd``, and on the first RPC (a share
  listing) ``samba-dcerpcd`` with its ``rpcd_*`` workers, a daemon in its own session -
  and all of them name ``PRIV/smb.conf`` on their command line: :func:`kill_marked` kills
  every process of our user whose command line holds it (at :meth:`SmbServer.close`,
  through pidfds);
* a guard, ``python3 -I -S`` in a session of its own, blocks reading a pipe only the
  daemon holds the write end of; at end-of-file (the daemon died: a normal close kills
  the guard first) it kills the processes naming ``PRIV/smb.conf`` as above and removes
  the private directory (up to 10 rounds, while the dying let go);
* as a last resort (the guard killed too, e.g. a whole cgroup killed at once), each
  private directory holds ``netstackd.lock``, ``flock``-ed by its daemon while it lives
  (put in place already locked, by a rename): a later netdev with ``smb=`` removes every
  ``netstack-smb.*`` directory of its user whose lock it can take, and kills what still
  names it.

Deviations from QEMU (decided):

* smbd is exec'ed directly with the argument list (libslirp splits the command line at
  spaces, so QEMU breaks on a DIR holding a space; here any path works); it runs in the
  private directory, with stderr to ``PRIV/smbd.stderr`` (libslirp puts stderr into the
  connection, where a word from smbd would corrupt the SMB stream);
* the connection is a loopback TCP pair as in libslirp, unlike ``cmd:`` rules (a unix
  socketpair): smbd 4.17 in inetd mode needs an inet peer ("get_remote_hostname failed"
  otherwise); a connection another local process slips in ahead of ours is refused;
* DIR is made absolute (relative to the daemon's working directory), and must be a
  directory (QEMU takes any path it can read and search, e.g. an executable file, and
  smbd fails at the first connection), and a path smb.conf cannot hold (a line break, a
  ``%``, which smbd expands, or a trailing blank or backslash) is refused;
* a guestfwd rule on ADDR:139 or ADDR:445 is a conflict (libslirp's conflict check
  compares ports in different byte orders, so QEMU accepts both and the first added
  wins);
* QEMU's private directory is ``qemu-smb.XXXXXX`` and is left behind when QEMU is killed,
  as are the smbds of open connections until those end; QEMU's cleanup
  (``slirp_smb_cleanup``) only removes the directory (``rm -rf``) and signals no process,
  so nothing there stops a helper smbd forked into a session of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Final

from netstack.errors import GenericError

from .guestfwd import ExecTarget, GuestForwarder
from .options import GuestFwdRule, UserConfig, ip_text

#: QEMU's ``CONFIG_SMBD_COMMAND`` (meson option ``smbd``, default for POSIX hosts).
SMBD_COMMAND: Final = "/usr/sbin/smbd"
#: NetBIOS session service and SMB over TCP, in QEMU's order.
SMB_PORTS: Final = (139, 445)
DIR_PREFIX: Final = "netstack-smb."
LOCK_NAME: Final = "netstackd.lock"
STDERR_NAME: Final = "smbd.stderr"
#: A private directory without its lock file is taken for one being made until this old.
STALE_AGE: Final = 60.0
#: At most this many ``netstack-smb.*`` entries are looked at per sweep.
SWEEP_LIMIT: Final = 256
#: The guard (``python3 -I -S -c GUARD_CODE PRIV``): wait for end-of-file on stdin, then
#: kill what still runs with ``PRIV/smb.conf`` (smbd, samba-dcerpcd and its rpcd workers)
#: and remove PRIV, up to 10 rounds.
GUARD_CODE: Final = r"""
import os, shutil, signal, sys, time
private = sys.argv[1]
marker = os.fsencode(os.path.join(private, "smb.conf"))
try:
    while os.read(0, 512):
        pass
except OSError:
    pass
me, uid = os.getpid(), os.geteuid()
for _ in range(10):
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                with open("/proc/" + name + "/cmdline", "rb") as f:
                    hit = marker in f.read()
                if hit and os.stat("/proc/" + name).st_uid == uid:
                    os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
    shutil.rmtree(private, ignore_errors=True)
    if not os.path.lexists(private):
        break
    time.sleep(0.2)
"""
_CONF_BAD: Final = ("\n", "\r", "%", "\0")


def find_smbd(option: str | None) -> str:
    """The smbd to run: ``option`` (``x-smbd``), QEMU's default path, or ``smbd`` on
    PATH; GenericError with QEMU's text when it does not exist."""
    if option is not None:
        path = option if "/" in option else (shutil.which(option) or option)
    elif os.path.exists(SMBD_COMMAND):
        path = SMBD_COMMAND
    else:
        path = shutil.which("smbd") or SMBD_COMMAND
    if "\0" in path or not os.path.exists(path):
        raise GenericError(f"Could not find '{path}', please install it")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise GenericError(f"Could not run '{path}': not an executable file")
    return os.path.abspath(path)  # smbd runs in the private directory


def check_share(path: str) -> str:
    """DIR made absolute, or GenericError: QEMU's "Error accessing shared directory"
    (with ``strerror``; also for a path that is not a directory), or a path smb.conf
    cannot hold."""

    def fail(code: int) -> GenericError:
        return GenericError(f"Error accessing shared directory '{path}': {os.strerror(code)}")

    if "\0" in path:
        raise fail(errno.EINVAL)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise fail(exc.errno or errno.EINVAL) from None
    if not os.access(path, os.R_OK | os.X_OK):
        raise fail(errno.EACCES)
    if not stat.S_ISDIR(st.st_mode):
        raise fail(errno.ENOTDIR)
    full = os.path.abspath(path)
    if any(c in full for c in _CONF_BAD) or full != full.rstrip(" \t\\"):
        raise GenericError(
            f"Shared directory '{path}' cannot be written to smb.conf "
            "(it holds a line break or '%', or ends in a blank or backslash)"
        )
    return full


def smb_conf(private: str, share: str, user: str) -> str:
    """QEMU's smb.conf for a private directory, the shared directory and ``force user``."""
    return (
        "[global]\n"
        f"private dir={private}\n"
        "interfaces=127.0.0.1\n"
        "bind interfaces only=yes\n"
        f"pid directory={private}\n"
        f"lock directory={private}\n"
        f"state directory={private}\n"
        f"cache directory={private}\n"
        f"ncalrpc dir={private}/ncalrpc\n"
        f"log file={private}/log.smbd\n"
        f"smb passwd file={private}/smbpasswd\n"
        "security = user\n"
        "map to guest = Bad User\n"
        "load printers = no\n"
        "printing = bsd\n"
        "disable spoolss = yes\n"
        "usershare max shares = 0\n"
        "[qemu]\n"
        f"path={share}\n"
        "read only=no\n"
        "guest ok=yes\n"
        f"force user={user}\n"
    )


def kill_marked(marker: bytes) -> int:
    """SIGKILL every process of our user (but us) whose command line holds ``marker``
    (through a pidfd, so a recycled pid is never signalled); how many."""
    me, uid, killed = os.getpid(), os.geteuid(), 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            pidfd = os.pidfd_open(int(name))
        except OSError:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                hit = marker in f.read()
            if hit and os.stat(f"/proc/{name}").st_uid == uid:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed += 1
        except OSError:
            pass
        finally:
            os.close(pidfd)
    return killed


def sweep_stale(tmpdir: str, log: logging.Logger) -> list[str]:
    """Remove the private directories of dead daemons in ``tmpdir`` (ours: our uid, the
    prefix, a lock file nobody holds); the paths removed."""
    removed: list[str] = []
    uid = os.geteuid()
    try:
        entries = [e for e in os.scandir(tmpdir) if e.name.startswith(DIR_PREFIX)]
    except OSError:
        return removed
    for entry in entries[:SWEEP_LIMIT]:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        if _abandoned(entry.path, st.st_mtime):
            kill_marked(os.fsencode(os.path.join(entry.path, "smb.conf")))
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
            log.info("smb: removed %s, left by a daemon that is gone", entry.path)
    return removed


def _abandoned(path: str, mtime: float) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return time.time() - mtime > STALE_AGE
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its daemon holds it
    finally:
        os.close(fd)
    return True


def _hold_lock(private: str) -> int:
    """Create ``PRIV/netstackd.lock`` already locked (made under another name, locked,
    renamed), so a sweeper never sees it unlocked while we live; the fd to keep."""
    tmp = os.path.join(private, LOCK_NAME + ".new")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, os.path.join(private, LOCK_NAME))
    except BaseException:
        os.close(fd)
        raise
    return fd


class SmbServer:
    """One user netdev's smbd: its private directory, guard and exec forwards."""

    def __init__(self, private: str, share: str, smbd: str, log: logging.Logger) -> None:
        self.private = private
        self.share = share
        self.smbd = smbd
        self.conf = os.path.join(private, "smb.conf")
        self._log = log
        self._lock = -1
        self._stderr = -1
        self._guard: subprocess.Popen[bytes] | None = None
        self._guard_pipe = -1
        self.closed = False

    @classmethod
    def open(
        cls, cfg: UserConfig, guestfwd: GuestForwarder, log: logging.Logger, *,
        tmpdir: str | None = None,
    ) -> SmbServer:  # fmt: skip
        """Check, write the configuration and add the exec forwards (QEMU's ``slirp_smb``
        order and texts); GenericError with nothing left behind."""
        assert cfg.smb is not None
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            raise GenericError("Failed to retrieve user name") from None
        smbd = find_smbd(cfg.smbd)
        share = check_share(cfg.smb)
        tmpdir = tmpdir or tempfile.gettempdir()
        sweep_stale(tmpdir, log)
        try:
            private = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=tmpdir)
        except OSError as exc:
            log.warning("smb: cannot create a directory in %s: %s", tmpdir, exc)
            raise GenericError("Could not create samba server dir") from None
        server = cls(private, share, smbd, log)
        try:
            try:
                server._lock = _hold_lock(private)
            except OSError as exc:
                log.warning("smb: cannot lock %s: %s", private, exc)
                raise GenericError("Could not create samba server dir") from None
            try:
                with open(server.conf, "x", encoding="utf-8") as f:
                    f.write(smb_conf(private, share, user))
                server._stderr = os.open(
                    os.path.join(private, STDERR_NAME),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600,
                )  # fmt: skip
            except OSError as exc:
                raise GenericError(
                    f"Could not create samba server configuration file '{server.conf}': "
                    f"{os.strerror(exc.errno or errno.EIO)}"
                ) from None
            server._start_guard()
            server._add_forwards(cfg, guestfwd)
        except BaseException:
            server.close()
            raise
        log.info("smb: sharing %s as \\\\%s\\qemu (%s)", share,
                 ip_text(server_address(cfg)), private)  # fmt: skip
        return server

    def argv(self) -> tuple[str, ...]:
        """The command each guest connection runs (under ``setpriv --pdeathsig KILL``
        when util-linux's setpriv is there)."""
        cmd = (self.smbd, "-l", self.private, "-s", self.conf)
        setpriv = shutil.which("setpriv")
        return cmd if setpriv is None else (setpriv, "--pdeathsig", "KILL", "--", *cmd)

    def _add_forwards(self, cfg: UserConfig, guestfwd: GuestForwarder) -> None:
        addr = server_address(cfg)
        if not cfg.in_net(addr) or addr in (cfg.host, cfg.dns):
            raise GenericError("Conflicting/invalid smbserver address")
        argv = self.argv()
        target = ExecTarget(argv, inet=True, stderr=self._stderr, cwd=self.private)
        text = f"smb={cfg.smb}" + (f",smbserver={ip_text(addr)}" if cfg.smbserver else "")
        added = []
        try:
            for port in SMB_PORTS:
                rule = GuestFwdRule(text, ip_text(addr), port, "cmd:" + shlex.join(argv))
                added.append(guestfwd.add_exec(rule, target))
        except GenericError:
            for fwd in added:
                guestfwd.remove(fwd)
            raise GenericError("Conflicting/invalid smbserver address") from None

    def _start_guard(self) -> None:
        """The guard that removes the private directory once the daemon is gone."""
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            self._guard = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", GUARD_CODE, self.private],
                stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True, cwd="/",
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(w)
            self._log.warning("smb: no guard for %s: %s", self.private, exc)
        else:
            self._guard_pipe = w
        finally:
            os.close(r)

    def close(self) -> None:
        """Remove the private directory and stop the guard (call once the smbd children
        are gone: :meth:`.guestfwd.GuestForwarder.close`). Idempotent."""
        if self.closed:
            return
        self.closed = True
        guard, self._guard = self._guard, None
        if guard is not None:
            with contextlib.suppress(ProcessLookupError):
                guard.kill()
            guard.wait()
        killed = kill_marked(os.fsencode(self.conf))  # samba-dcerpcd and its workers
        if killed:
            self._log.debug("smb: killed %d samba helper(s) of %s", killed, self.private)
        shutil.rmtree(self.private, ignore_errors=True)
        for fd in (self._stderr, self._lock, self._guard_pipe):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._stderr = self._lock = self._guard_pipe = -1

    @property
    def guard_pid(self) -> int | None:
        return None if self._guard is None else self._guard.pid


def server_address(cfg: UserConfig) -> int:
    """``smbserver``, or QEMU's default net + .4 (libslirp's for an exec forward)."""
    return cfg.smbserver or (cfg.net | 4)
