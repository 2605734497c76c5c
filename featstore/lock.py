"""One writer per array: a lock file naming its holder (host, pid, start time, stage).

A second writer is refused at once with the holder's name. A lock whose holder process is gone
(same host, pid no longer alive) is stale: it is taken over with a warning; so is a lock file that
cannot be parsed (truncated by a crash or a full disk), which names no live holder. Readers never look at
locks, so they are never blocked. On a local disk the lock file is created with ``O_EXCL`` so two
writers starting together cannot both win; on object stores the check-then-write is best effort.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from dataclasses import dataclass

from featstore import names
from featstore.errors import DamagedFile, FeatstoreWarning, LockHeld
from featstore.sidefiles import SideFiles


def _lock_name(array_path: str) -> str:
    return "locks/" + array_path.replace("/", "--") + ".json"


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


@dataclass
class WriterLock:
    """Held locks on a set of arrays; release with :meth:`release` (or use as a context manager)."""

    side: SideFiles
    array_paths: list[str]
    stage: str

    def acquire(self) -> "WriterLock":
        for path in self.array_paths:  # before any lock file is named after it
            names.array_path(path)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stage": self.stage}
        taken: list[str] = []
        try:
            for path in self.array_paths:
                self._take(path, me)
                taken.append(path)
        except BaseException:
            for path in taken:
                self.side.delete(_lock_name(path))
            raise
        return self

    def _take(self, path: str, me: dict) -> None:
        name = _lock_name(path)
        holder = _holder(self.side, name)
        if holder is not None:
            if "damaged" in holder:
                warnings.warn(f"taking over the stale lock of {path!r}: {holder['damaged']}", FeatstoreWarning, stacklevel=2)
            elif holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                warnings.warn(
                    f"taking over the stale lock of {path!r} left by dead pid {holder.get('pid')} on {holder.get('host')}",
                    FeatstoreWarning, stacklevel=2,
                )
            else:
                raise LockHeld(
                    f"array {path!r} is being written by {holder.get('stage')} on host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, since {holder.get('started')}"
                )
            self.side.delete(name)
        data = json.dumps(me).encode()
        if self.side.is_local:
            target = self.side.path(name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # minus the umask
            except FileExistsError:
                raise LockHeld(f"array {path!r} was locked by another writer a moment ago") from None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            self.side.write(name, data)

    def release(self) -> None:
        for path in self.array_paths:
            self.side.delete(_lock_name(path))

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
