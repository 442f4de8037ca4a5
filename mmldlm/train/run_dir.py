"""The run directory ``{save_dir}/{run_name}``: one run at a time, created only when the run starts.

- :func:`probe_writable` fails before any work when ``save_dir`` cannot be written.
- :class:`RunDirLock`: rank 0 holds an exclusive ``filelock`` on ``run_dir/.run.lock`` for the
  whole run (the OS drops it when the holder dies, even by SIGKILL); a second run on the same
  directory fails at once, naming the holder's host and pid (a SLURM requeue that starts while
  the old job still runs included).
- :func:`set_aside`: files of an abandoned timeline (checkpoints newer than the one resumed, logs
  of a run that never reached a checkpoint) move to ``run_dir/set_aside/<UTC time>-<why>/``:
  renamed, never deleted.
"""
from __future__ import annotations

import os
import shutil
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

LOCK = ".run.lock"
OWNER = ".run.owner"
SET_ASIDE = "set_aside"


class RunDirError(RuntimeError):
    """The run directory cannot be used; the message says why and what to do."""


def probe_writable(save_dir: Path) -> None:
    """Create ``save_dir`` if needed and write a probe file there (``os.access`` says yes to root
    on a read-only mount; only a real write tells)."""
    probe = save_dir / f".write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"logging.save_dir {save_dir} is not writable ({e.strerror or e}): choose a "
                          "writable directory with logging.save_dir=DIR") from None


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


class RunDirLock:
    """Rank 0's exclusive hold on a run directory. Creates the directory on ``acquire``;
    ``abandon`` removes it again when the run fails before writing anything."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.created = not run_dir.exists()
        self._lock: FileLock | None = None

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.run_dir / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            try:
                who = (self.run_dir / OWNER).read_text().strip()
            except OSError:
                who = "another process"
            raise RunDirError(f"run directory {self.run_dir} is in use by a running job ({who}); wait for it "
                              "to end or stop it, or choose another logging.run_name") from None
        self._lock = lock
        (self.run_dir / OWNER).write_text(f"host {socket.gethostname()} pid {os.getpid()} since "
                                          f"{datetime.now(UTC).isoformat(timespec='seconds')}\n")

    def release(self) -> None:
        if self._lock is not None:
            (self.run_dir / OWNER).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def abandon(self) -> None:
        """Release; if this run created the directory and wrote nothing else, remove it."""
        self.release()
        if self.created and self.run_dir.is_dir():
            left = [p for p in self.run_dir.iterdir() if p.name not in (LOCK, OWNER)]
            if not left:
                shutil.rmtree(self.run_dir, ignore_errors=True)


def set_aside(run_dir: Path, paths: list[Path], why: str, copy: bool = False) -> Path | None:
    """Move ``paths`` (those that exist) into ``run_dir/set_aside/<stamp>-<why>/`` and return that
    folder. ``copy=True`` copies instead (logs about to be cut back keep their full history)."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return None
    dest = run_dir / SET_ASIDE / f"{_utc_stamp()}-{why}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if copy:
            shutil.copy2(p, dest / p.name)
        else:
            os.replace(p, dest / p.name)
    return dest
