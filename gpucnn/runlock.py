"""The run-directory lock: one training run per output folder, checked before any work starts.

:class:`RunLock` creates the folder if needed, proves it writable by creating the lock file
``.gpucnn.lock`` in it (holding the PID, host and start time of the run), and holds it until
the run ends.  Where ``fcntl.flock`` exists (Linux, macOS) the lock is the kernel's: it
disappears with the process, so a crashed or killed run never leaves a folder locked; the
file left behind only says who held it last.  Elsewhere the file itself is the lock
(``O_CREAT | O_EXCL``) and one whose process is gone from this host is stale and taken over.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["RunLock", "RunDirError", "RunDirInUse", "LOCK_NAME"]

LOCK_NAME = ".gpucnn.lock"


class RunDirError(RuntimeError):
    """The output folder cannot be created or written."""


class RunDirInUse(RunDirError):
    """Another run holds the output folder's lock."""


def _process_start(pid):
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, start=None):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        pass  # exists, owned by someone else
    now = _process_start(pid)
    return not (start is not None and now is not None and now != start)


def _describe(holder, path):
    if not holder:
        return f"its lock file {path} is being written"
    when = f", started {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{when}"


class RunLock:
    """``with RunLock(folder):`` -- or :meth:`acquire` / :meth:`release`."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.created_dir = False
        self._fd = None

    # ------------------------------------------------------------------ public
    def acquire(self):
        self._make_dir()
        for _ in range(5):
            if self._try_acquire():
                return self
        raise RunDirInUse(f"the output folder {self.run_dir} is in use by another gpucnn run "
                          f"({_describe(self._read(), self.path)})")

    def release(self):
        if self._fd is None:
            return
        try:
            os.unlink(self.path)   # unlink first, then unlock: see the inode check in _try_acquire
        except OSError:
            pass
        try:
            os.close(self._fd)
        finally:
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    # ------------------------------------------------------------------ details
    def _fail(self, exc, doing):
        reason = exc.strerror or str(exc)
        raise RunDirError(f"cannot {doing} the output folder {self.run_dir} ({reason}); choose "
                          f"another --out") from None

    def _make_dir(self):
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"the output folder {self.run_dir} exists and is not a folder")
        if not self.run_dir.exists():
            try:
                self.run_dir.mkdir(parents=True)
                self.created_dir = True
            except FileExistsError:
                pass
            except OSError as exc:
                self._fail(exc, "create")
        if not os.access(self.run_dir, os.W_OK | os.X_OK):
            raise RunDirError(f"cannot write to the output folder {self.run_dir} (permission "
                              f"denied); choose another --out")

    def _record(self):
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                           "process_start": _process_start(os.getpid())})

    def _read(self):
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    def _try_acquire(self):
        if fcntl is not None:
            return self._try_flock()
        return self._try_exclusive()

    def _try_flock(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._fail(exc, "write to")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirInUse(f"the output folder {self.run_dir} is in use by another gpucnn run "
                                  f"({_describe(self._read(), self.path)}); wait for it to finish "
                                  f"or choose another --out") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no locks here (some NFS)
                return self._try_exclusive()
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and our lock: try again
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.write(fd, self._record().encode())
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            self._fail(exc, "write to")
        self._fd = fd
        return True

    def _try_exclusive(self):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = self._read()
            if holder is None:
                try:  # an empty or garbled file: stale once it is old enough not to be mid-write
                    stale = time.time() - self.path.stat().st_mtime > 10
                except FileNotFoundError:
                    return False
            else:
                stale = holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                    and not _alive(holder["pid"], holder.get("process_start"))
            if not stale:
                raise RunDirInUse(f"the output folder {self.run_dir} is in use by another gpucnn run "
                                  f"({_describe(holder, self.path)}); wait for it to finish or choose "
                                  f"another --out (if that run is gone, delete {self.path})") from None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return False
        except OSError as exc:
            self._fail(exc, "write to")
        try:
            os.write(fd, self._record().encode())
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            self._fail(exc, "write to")
        self._fd = fd
        return True
