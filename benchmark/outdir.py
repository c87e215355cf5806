"""The output directory of a run: checked before any work, and held by one run at a time.

:func:`check_out_dir` refuses, with one line naming the path, what is wrong and the fix, an ``--out``
that is (or lies under) a regular file, sits on a kernel/special filesystem (``/proc``, ``/sys``,
``/dev``, ...), or cannot be written (read-only filesystem, immutable directory, no permission, full
disk). It proves writability by creating and removing a probe file, as ``os.access`` cannot see
read-only mounts or immutable attributes.

:class:`RunLock` is the lock file ``OUT/.cambench.lock``: an exclusive ``fcntl.flock`` where available
(released by the kernel when the process dies), with the holder's pid recorded in the file. A second run
into the same directory fails at once naming that pid and the lock file; a lock file left by a process that
is no longer running is taken over with a note. The lock file is opened with ``O_NOFOLLOW`` (a symbolic
link there is refused, never followed) and removed when the run ends without an error.

:func:`safe_name` turns a suite name into one path component (the default ``results/<name>``).
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CambenchError

LOCK_NAME = ".cambench.lock"

#: Filesystems no result belongs on (Linux ``/proc/mounts`` types).
SPECIAL_FILESYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "pstore",
        "bpf",
        "configfs",
        "fusectl",
        "mqueue",
        "hugetlbfs",
        "efivarfs",
        "binfmt_misc",
        "autofs",
        "rpc_pipefs",
        "selinuxfs",
        "nsfs",
    }
)
_SPECIAL_PREFIXES = ("/proc", "/sys", "/dev")
_ORDINARY_UNDER_SPECIAL = ("/dev/shm",)  # a tmpfs: an ordinary (if volatile) place for files


class OutputDirError(CambenchError):
    """The output directory cannot hold a run's results."""


def _fix(flag: str) -> str:
    return f"pass {flag} a directory on a writable disk (e.g. {flag} results/NAME)"


def _mount_type(path: Path) -> str | None:
    """The filesystem type of the mount holding ``path`` (Linux ``/proc/self/mounts``), else None."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    p = str(path)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, parts[2]
    return kind


def _reason(exc: OSError) -> str:
    code = exc.errno
    if code == errno.EROFS:
        return "is on a read-only filesystem"
    if code == errno.EACCES:
        return "is not writable (permission denied)"
    if code == errno.EPERM:
        return "cannot be written (operation not permitted: an immutable or protected directory, see lsattr)"
    if code == errno.ENOSPC:
        return "is on a full disk (no space left on device)"
    if code == errno.EDQUOT:
        return "is over its disk quota"
    if code == errno.ENOTDIR:
        return "lies under a regular file"
    return f"cannot be written ({exc.strerror or exc})"


#: errno values of a write that the user can fix (space, permissions, a read-only or immutable folder)
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ENOTDIR}
)


def write_error_line(exc: OSError) -> str:
    """One line for an ``OSError`` of :data:`WRITE_ERRNOS` met while writing outside the store (the report's
    tables and plots): which file, why, and that nothing finished is lost."""
    where = exc.filename or "a file of the output folder"
    return (
        f"cannot write {where}: it {_reason(exc)}. Finished units are kept; fix that and rerun the same command "
        "(or `run_bench.py report DIR` for the report alone)."
    )


def check_out_dir(out: str | os.PathLike, flag: str = "--out", create: bool = True) -> Path:
    """Make sure ``out`` can hold a run (creating it when ``create``); raise :class:`OutputDirError`.

    Returns the path. Nothing is written besides the directory itself and a removed probe file.
    """
    path = Path(out).expanduser()
    absolute = Path(os.path.abspath(path))
    try:
        real = absolute.resolve()
    except (OSError, RuntimeError):
        real = absolute
    where = f"{flag} {path}"
    special = _mount_type(real) if sys.platform.startswith("linux") else None

    def under(prefixes: tuple[str, ...]) -> bool:
        return any(str(real) == p or str(real).startswith(p + "/") for p in prefixes)

    if special in SPECIAL_FILESYSTEMS or (
        os.name == "posix" and under(_SPECIAL_PREFIXES) and not under(_ORDINARY_UNDER_SPECIAL)
    ):
        raise OutputDirError(
            f"{where}: is on a special system filesystem ({special or str(real).split('/')[1]}), which cannot "
            f"hold files; {_fix(flag)}."
        )
    # the path itself, or a parent of it, exists as something other than a directory
    for p in (absolute, *absolute.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "an existing file" if p.is_file() else "not a directory"
                if p == absolute:
                    raise OutputDirError(f"{where}: is {what}, not a directory; {_fix(flag)}, or remove {p}.")
                raise OutputDirError(f"{where}: its parent {p} is {what}, not a directory; {_fix(flag)}.")
            break
    for sub in ("parts", "curves", "gallery", "plots"):
        s = absolute / sub
        if s.exists() and not s.is_dir():
            raise OutputDirError(
                f"{where}: {s} is a file, but cambench keeps its {sub} there; remove it or {_fix(flag)}."
            )
    if not create and not absolute.is_dir():
        raise OutputDirError(f"{where}: does not exist; pass the directory of a run.")
    try:
        absolute.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cambench-probe.", dir=absolute)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputDirError(f"{where}: {_reason(exc)}; {_fix(flag)}.") from None
    return path


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


class RunLock:
    """Exclusive lock of one run on ``out`` (a context manager); see the module docstring."""

    def __init__(self, out: str | os.PathLike, log: Callable[[str], None] | None = None) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._fd: int | None = None

    def _busy(self, pid: int | None) -> OutputDirError:
        who = f"pid {pid}" if pid else "another process"
        return OutputDirError(
            f"another cambench run ({who}) is writing into {self.out} (lock file {self.path}); wait for it to "
            f"finish, or pass --out a different directory."
        )

    @staticmethod
    def _read_pid(fd: int) -> int | None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text.split()[0]) if text else None
        except (OSError, ValueError, IndexError):
            return None

    def _open(self) -> int:
        """Open (or create) the lock file without following a symbolic link (``O_NOFOLLOW``): a link
        planted at the lock's name can never make a run truncate the file it points to."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags, 0o666)
        except OSError as exc:
            if self.path.is_symlink() or exc.errno == errno.ELOOP:
                raise OutputDirError(
                    f"the lock file {self.path} is a symbolic link, which cambench never follows; remove the "
                    f"link (rm {self.path}) or pass --out a different directory."
                ) from None
            if self.path.is_dir() or exc.errno == errno.EISDIR:
                raise OutputDirError(
                    f"the lock file {self.path} is a directory; remove it (rmdir {self.path}) or pass --out a "
                    f"different directory."
                ) from None
            raise OutputDirError(f"cannot open the lock file {self.path}: {_reason(exc)}; {_fix('--out')}.") from None

    def acquire(self) -> RunLock:
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: a pid file created exclusively
            fcntl = None  # type: ignore[assignment]
        for _ in range(8):  # the file may be removed by the run that held it between our open and flock
            fd = self._open()
            try:
                self._lock(fd, fcntl)
                st, now = os.fstat(fd), None
                try:
                    now = os.lstat(self.path)
                except FileNotFoundError:
                    pass
                if now is not None and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # we locked a file another run just removed: take the new one
        else:  # pragma: no cover - a lock file replaced eight times in a row
            raise self._busy(None)
        try:
            old = self._read_pid(fd)
            if old and old != os.getpid():
                state = "no longer running" if not _alive(old) else "it no longer holds the lock"
                self.log(f"cambench: took over the lock file {self.path} left by pid {old} ({state}).")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise OutputDirError(f"cannot write the lock file {self.path}: {_reason(exc)}; {_fix('--out')}.") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _lock(self, fd: int, fcntl: Any) -> None:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(self._read_pid(fd)) from None
            except OSError as exc:  # a filesystem without flock (some NFS): fall back to the pid
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                old = self._read_pid(fd)
                if old and old != os.getpid() and _alive(old):
                    raise self._busy(old) from None
        else:  # pragma: no cover
            old = self._read_pid(fd)
            if old and old != os.getpid() and _alive(old):
                raise self._busy(old)

    def release(self, remove: bool = False) -> None:
        """Release the lock; ``remove``: delete the lock file first (after a successful run), while still
        holding it (a run that opened the old file meanwhile notices and takes a new one)."""
        if self._fd is None:
            return
        try:
            if remove:
                st = os.fstat(self._fd)
                now = os.lstat(self.path)
                if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                    os.unlink(self.path)
            else:
                os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.release(remove=exc_type is None)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
#: The longest default output folder name (a file name's limit is 255 bytes on most filesystems).
MAX_NAME = 100


def safe_name(name: str) -> str:
    """``name`` as a single, harmless path component: every run of characters outside ``[A-Za-z0-9._+-]``
    becomes ``_``, leading dots are dropped (no ``..``, no hidden folder), at most :data:`MAX_NAME` characters;
    ``"suite"`` when nothing is left. ``results/<safe_name(suite.name)>`` can never leave ``results/``."""
    out = _UNSAFE.sub("_", str(name)).strip("._-")[:MAX_NAME].rstrip("._-")
    return out or "suite"
