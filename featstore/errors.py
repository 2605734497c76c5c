"""The one error tree of featstore: every error a user can cause derives from :class:`FeatstoreError`.

The CLI catches :class:`FeatstoreError` (and click's usage errors) and prints its message on one
line, exit status 1; any other exception is a bug and shows its traceback. Where callers rely on a
builtin base, an error keeps it beside the root, as zarr's ``NodeNotFoundError(BaseZarrError,
FileNotFoundError)`` does: an :class:`IngestError` is still a ``ValueError``.

>>> from featstore.errors import FeatstoreError, IngestError
>>> issubclass(IngestError, FeatstoreError) and issubclass(IngestError, ValueError)
True
"""

from __future__ import annotations

from typing import Any


class FeatstoreError(Exception):
    """Root of every error featstore raises on purpose (bad input, a refused operation)."""


class StoreError(FeatstoreError, RuntimeError):
    """A store cannot be opened or used as asked."""


class ParamsMismatch(StoreError):
    """An array exists with a different fingerprint than the one a stage would write.

    ``diffs`` maps each differing parameter to ``(stored, asked)``.
    """

    def __init__(self, path: str, diffs: dict[str, tuple[Any, Any]]):
        self.path, self.diffs = path, diffs
        listed = "; ".join(f"{k}: stored {a!r}, asked {b!r}" for k, a, b in ((k, *v) for k, v in diffs.items()))
        super().__init__(
            f"array {path!r} exists with other parameters ({listed}). "
            "Use --overwrite to recompute it, or --name NEW to write a new array."
        )


class LockHeld(FeatstoreError, RuntimeError):
    """Another live process is writing the array."""


class ClusterLost(FeatstoreError, RuntimeError):
    """The dask cluster a run was given lost its scheduler, or every worker for too long."""


class IngestError(FeatstoreError, ValueError):
    """Metadata that cannot be ingested; the message names file and line."""


class ClipConflict(FeatstoreError, ValueError):
    """A clip_id already in the store is given again with different metadata."""


class MediaError(FeatstoreError, ValueError):
    """A media file cannot be decoded; the message says why."""


class ConfigError(FeatstoreError, ValueError):
    """A stage, model or run was asked for with invalid options (an unknown name, a bad value)."""


class NotFoundError(FeatstoreError, KeyError):
    """A named thing (an array, a clip, a model, a run) is not in the store."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class UnsafePath(FeatstoreError, ValueError):
    """A media path that is not inside the store's dataset root (absolute elsewhere, ``..``, a symlink out)."""


class DamagedFile(StoreError):
    """A file of the store (a side file or a Zarr ``zarr.json``) cannot be parsed; the message names it."""


class FeatstoreWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. a stale lock taken over)."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), for a one-line
    error that quotes a library's multi-line one."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
