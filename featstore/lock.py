"""One writer per array, one changer of the clips table: lock files naming their holder
(host, pid, the process's start time, stage).

A second writer of an array is refused at once with the holder's name, the lock file and how to
break it (``featstore unlock``). A lock whose holder process is gone (same host, pid no longer
alive, or alive but started at another time than the holder: the pid was reused by another
program) is stale: it is taken over with a warning; so is a lock file that cannot be parsed
(truncated by a crash or a full disk), which names no live holder.

Every command that changes the clips table (ingest, import, predict's own clips) holds
:func:`clips_lock` while it reads, merges and writes the table; a second one waits for it (up to
:data:`CLIPS_LOCK_WAIT_S`), so two ingests at once never lose each other's clips.

Readers never look at locks, so they are never blocked. On a local disk the lock file is created
with ``O_EXCL`` so two writers starting together cannot both win; on object stores the
check-then-write is best effort.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from featstore import names
from featstore.errors import DamagedFile, FeatstoreWarning, LockHeld
from featstore.sidefiles import SideFiles


#: The lock file of the clips table, beside it.
CLIPS_LOCK = "clips.lock.json"
#: Seconds a command waits for another one's clips lock before it is refused (env FEATSTORE_CLIPS_LOCK_WAIT_S).
CLIPS_LOCK_WAIT_S = float(os.environ.get("FEATSTORE_CLIPS_LOCK_WAIT_S", "120"))


def _lock_name(array_path: str) -> str:
    return "locks/" + array_path.replace("/", "--") + ".json"


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ("" where /proc does not say)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(side: SideFiles, name: str) -> dict | None:
    """The lock file's holder record; ``{"damaged": why}`` when it cannot be parsed; None when absent."""
    try:
        holder = side.read_json(name)
    except DamagedFile as exc:
        return {"damaged": str(exc)}
    if holder is not None and not (isinstance(holder, dict) and isinstance(holder.get("pid"), int)):
        return {"damaged": f"{side.path(name)}: damaged, not a holder record"}
    return holder


def _holder_alive(holder: dict, host: str) -> bool:
    """Whether the process a lock names still runs: on another host it is assumed to; here, its pid
    must be alive and (when the lock recorded it) have started when the holder did."""
    if holder.get("host") != host:
        return True
    pid = int(holder.get("pid", -1))
    if not _alive(pid):
        return False
    recorded = holder.get("process_start")
    return not recorded or _process_start(pid) in ("", recorded)


def _me(stage: str) -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stage": stage}


def take_lock(side: SideFiles, name: str, what: str, me: dict, *, kind: str = "array ") -> None:
    """Create lock file ``name`` for ``me``, taking over a stale one; :class:`LockHeld` when a live
    process holds it (the message names ``kind`` + ``what``, the holder, the file and how to break it)."""
    holder = _holder(side, name)
    if holder is not None:
        if "damaged" in holder:
            warnings.warn(f"taking over the stale lock of {what}: {holder['damaged']}", FeatstoreWarning, stacklevel=3)
        elif not _holder_alive(holder, me["host"]):
            warnings.warn(
                f"taking over the stale lock of {what} left by pid {holder.get('pid')} on {holder.get('host')}, which no longer runs",
                FeatstoreWarning, stacklevel=3,
            )
        else:
            raise LockHeld(
                f"{kind}{what} is being written by {holder.get('stage')} on host {holder.get('host')}, "
                f"pid {holder.get('pid')}, since {holder.get('started')} (lock file {side.path(name)}; "
                f"if that process is not featstore, break the lock with `featstore unlock {side.store_root}`)"
            )
        side.delete(name)
    data = json.dumps(me).encode()
    if side.is_local:
        target = side.path(name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # minus the umask
        except FileExistsError:
            raise LockHeld(f"{kind}{what} was locked by another writer a moment ago (lock file {target})") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    else:
        side.write(name, data)


@contextlib.contextmanager
def clips_lock(side: SideFiles, command: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold the clips table's lock for ``command``, waiting up to ``wait_s`` seconds
    (default :data:`CLIPS_LOCK_WAIT_S`) for another holder to finish."""
    deadline = time.monotonic() + (CLIPS_LOCK_WAIT_S if wait_s is None else wait_s)
    me = _me(command)
    while True:
        try:
            take_lock(side, CLIPS_LOCK, "the clips table", me, kind="")
            break
        except LockHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield
    finally:
        side.delete(CLIPS_LOCK)


def break_locks(side: SideFiles, arrays: list[str] | None = None) -> list[str]:
    """Delete the lock files of ``arrays`` (default: every lock, the clips table's included); return
    the files deleted. For a lock left by a process that is not featstore's (``featstore unlock``)."""
    if arrays is None:
        names_ = [CLIPS_LOCK] + [f"locks/{n}" for n in side.listdir("locks") if n.endswith(".json")]
    else:
        names_ = [_lock_name(names.array_path(a)) for a in arrays]
    removed = [n for n in names_ if side.exists(n)]
    for n in removed:
        side.delete(n)
    return [side.path(n) for n in removed]


@dataclass
class WriterLock:
    """Held locks on a set of arrays; release with :meth:`release` (or use as a context manager)."""

    side: SideFiles
    array_paths: list[str]
    stage: str

    def acquire(self) -> "WriterLock":
        for path in self.array_paths:  # before any lock file is named after it
            names.array_path(path)
        me = _me(self.stage)
        taken: list[str] = []
        try:
            for path in self.array_paths:
                take_lock(self.side, _lock_name(path), repr(path), me)
                taken.append(path)
        except BaseException:
            for path in taken:
                self.side.delete(_lock_name(path))
            raise
        return self

    def release(self) -> None:
        for path in self.array_paths:
            self.side.delete(_lock_name(path))

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
