"""The featstore store: one Zarr v3 group with the clips table, per-clip arrays and their provenance.

Layout of a store at ``<url>``::

    zarr.json                       group attributes: {"featstore": {segment grid, classes, dataset root}}
    audio/mel, audio/gam, ...       per-clip arrays, first axis = clip index, one inner chunk per
                                    clip, many clips per shard (featstore.shards; stores made before
                                    sharding: one chunk object per clip)
    frames/rgb, embeddings/...      (same rule)
    _featstore/clips.parquet        the clips table (see featstore.clips)
    _featstore/failures/*.parquet   the failures record, one file per array (see featstore.ledger)
    _featstore/ledger/*.json        one completion ledger per array

How a per-clip array is made (codecs, fingerprint check, growth) is :mod:`featstore.arrays`; how a
URL becomes a zarr store and a writing handle, :mod:`featstore.handles`.

Example:

>>> import featstore, tempfile
>>> store = featstore.init_store(tempfile.mkdtemp() + "/s.zarr", clip_duration_s=3.0)
>>> store.segment_s, store.n_segments
(1.0, 3)
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from featstore import arrays, names
from featstore import clips as clips_mod
from featstore.constants import CLASSES, CLIP_DURATION_S, MAX_CLIP_DURATION_S, MIN_SEGMENT_S, SEGMENT_S, SHARD_MB
from featstore.coords import is_coordinate
from featstore.errors import ConfigError, DamagedFile, NotFoundError, StoreError
from featstore.handles import ATTRS_KEY, WRITE_CONFIG, normalise_url, zarr_store
from featstore.ledger import Failures, Ledger
from featstore.provenance import Provenance
from featstore.sidefiles import SideFiles
from featstore.upgrade import FORMAT_VERSION, check_format_version, clips_checksum_recorded

if TYPE_CHECKING:
    import pandas as pd

#: The clips table's side file (under ``_featstore/``).
CLIPS_NAME = "clips.parquet"


class Store:
    """A featstore store. Open with :func:`open_store`, create with :func:`init_store`."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = normalise_url(url)
        #: fsspec options of a remote store (credentials, endpoint), passed to every handle and worker.
        self.storage_options = dict(storage_options or {})
        self.side = SideFiles(self.url, self.storage_options)
        missing = StoreError(f"no featstore store at {self.url} (create one with `featstore init`)")
        if self.side.is_local and not os.path.isfile(os.path.join(self.url.removeprefix("file://"), "zarr.json")):
            raise missing  # before zarr, which would create the directory of a mistyped path
        try:
            with self._naming_damaged_metadata():
                self.group = zarr.open_group(zarr_store(self.url, self.storage_options), mode="r+")
        except FileNotFoundError:
            raise missing from None
        if ATTRS_KEY not in self.group.attrs:
            raise StoreError(f"{self.url} is a Zarr group but not a featstore store")
        check_format_version(self.settings, self.url)
        self._clips: pd.DataFrame | None = None
        self._clips_lock_depth = 0

    @contextlib.contextmanager
    def changing_clips(self, command: str) -> Iterator[None]:
        """Hold the clips table's lock (:func:`featstore.lock.clips_lock`) and read the table and the
        root metadata afresh: what another process added meanwhile is merged, not overwritten.
        Re-entrant within this object (ingest holds it around the dataset root and the new rows)."""
        if self._clips_lock_depth:
            self._clips_lock_depth += 1
            try:
                yield
            finally:
                self._clips_lock_depth -= 1
            return
        from featstore.lock import clips_lock

        with clips_lock(self.side, command):
            self._clips_lock_depth = 1
            try:
                self.refresh()
                yield
            finally:
                self._clips_lock_depth = 0

    def refresh(self) -> None:
        """Read the root metadata and the clips table again (another process may have changed them)."""
        self.group = zarr.open_group(zarr_store(self.url, self.storage_options), mode="r+")
        self._clips = None

    # ---------------------------------------------------------------- settings
    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.group.attrs[ATTRS_KEY])

    def _update_settings(self, **changes: Any) -> None:
        self.group.attrs[ATTRS_KEY] = {**self.settings, **changes}

    @property
    def segment_s(self) -> float:
        """Segment grid step in seconds."""
        return float(self.settings["segment_s"])

    @property
    def clip_duration_s(self) -> float:
        """Nominal clip duration in seconds: per-clip arrays are sized for it."""
        return float(self.settings["clip_duration_s"])

    @property
    def n_segments(self) -> int:
        """Segments per clip on the grid."""
        return clips_mod.segments_per_clip(self.clip_duration_s, self.segment_s)

    @property
    def shard_mb(self) -> float:
        """Uncompressed MiB per shard of the store's new arrays (0: one object per clip, as in
        stores made before sharding)."""
        return float(self.settings.get("shard_mb", 0.0))

    @property
    def classes(self) -> list[str]:
        """The label map: class index i is ``classes[i]``."""
        return list(self.settings["classes"])

    @property
    def dataset_root(self) -> str | None:
        """Directory that the clips' paths are relative to (set at the first ingest)."""
        return self.settings.get("dataset_root")

    def adopt_classes(self, labels: list[str]) -> bool:
        """Take the label map from the data: when ``init`` was given no classes, the store has no
        clips yet and ``labels`` name one outside the default map, the classes become ``labels``'
        distinct values, sorted. Returns whether it did (call under :meth:`changing_clips`)."""
        distinct = sorted({str(x) for x in labels if str(x)})
        if self.settings.get("classes_given", True) or self.n_clips or not distinct or set(distinct) <= set(self.classes):
            return False
        self._update_settings(classes=distinct, classes_given=True)
        return True

    def set_dataset_root(self, root: str | os.PathLike) -> None:
        """Point the store at a (moved) dataset; paths in the clips table stay relative.

        Every clip's files must resolve inside the new root (:class:`~featstore.errors.UnsafePath`).
        """
        root = os.path.abspath(root)
        with self.changing_clips("set-dataset-root"):
            clips_mod.checked_clips(self.clips, root)
            self._update_settings(dataset_root=root)

    def source_path(self, relative: str) -> str:
        """Real absolute path of a source file named in the clips table, checked to be inside the root."""
        if not relative:
            return ""
        return clips_mod.resolve_source(self.dataset_root, relative, f"{self.url}: clips table")

    # ---------------------------------------------------------------- clips
    @property
    def clips(self) -> pd.DataFrame:
        """The clips table (a copy is cheap to take; do not mutate in place)."""
        if self._clips is None:
            raw = self.side.read(CLIPS_NAME)
            self._check_clips_identity(raw)
            table = self.side.read_parquet(CLIPS_NAME, raw)
            self._clips = clips_mod.normalise_clips(table) if table is not None else clips_mod.empty_clips()
        return self._clips

    def _check_clips_identity(self, raw: bytes | None) -> None:
        """Refuse a clips table that is not the one this store last wrote (:class:`DamagedFile`).

        The root metadata records the checksum of the table as written (and the one before, so that
        a crash between the two writes of :meth:`add_clips` leaves a table that still opens). A table
        copied in from another store, edited by hand or damaged matches neither: every command
        refuses it before it writes anything, since rows and arrays would no longer line up.
        """
        settings = self.settings
        if not clips_checksum_recorded(settings):
            return  # a store made before the checksum was recorded (featstore.upgrade)
        digest = clips_mod.table_checksum(raw)
        if digest not in (settings["clips_checksum"], settings.get("clips_checksum_previous")):
            raise DamagedFile(
                f"{self.side.path(CLIPS_NAME)}: not this store's clips table (its checksum differs from the one the "
                "store recorded when it wrote it: replaced, edited or damaged); restore it from a backup of this store"
            )

    @property
    def n_clips(self) -> int:
        """Rows of the clips table (removed clips included: they keep their rows)."""
        return len(self.clips)

    @property
    def removed(self) -> np.ndarray:
        """(clip,) bool: which rows of the clips table ``featstore remove-clips`` removed."""
        return self.clips["removed"].to_numpy(dtype=bool)

    def done_in(self, path: str) -> np.ndarray:
        """(clip,) bool: the clips ``path``'s ledger marks done, removed clips left out (what every
        reader of ``path`` may read)."""
        done = self.clips["clip_id"].isin(list(self.ledger(path).entries)).to_numpy()
        return done & ~self.removed

    def add_clips(self, new: pd.DataFrame) -> int:
        """Append clips the store does not have yet; return how many were added (0 = no-op).

        Done under the clips table's lock (:meth:`changing_clips`), on the table as it is on disk, so
        that two processes adding clips at once never lose each other's rows.
        """
        with self.changing_clips("add-clips"):
            merged = clips_mod.merge_clips(self.clips, clips_mod.checked_clips(new, self.dataset_root))
            if merged.added:
                self.write_clips(merged.table)
        return merged.added

    def write_clips(self, table: pd.DataFrame) -> None:
        """Replace the clips table with ``table`` and record its checksum (call under :meth:`changing_clips`)."""
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        data = buf.getvalue()
        current = self.settings.get("clips_checksum")
        # the new checksum is recorded first, the old one kept: a crash between the writes leaves a table that opens
        self._update_settings(clips_checksum=clips_mod.table_checksum(data), clips_checksum_previous=current,
                              format_version=FORMAT_VERSION)
        self.side.write(CLIPS_NAME, data)
        self._clips = table

    def clip_index(self, clip_id: str) -> int:
        """Row of ``clip_id`` in the clips table (= its index along every array's first axis)."""
        hits = np.flatnonzero(self.clips["clip_id"].to_numpy() == clip_id)
        if len(hits) == 0:
            raise NotFoundError(f"no clip {clip_id!r} in the store")
        return int(hits[0])

    @property
    def segments(self) -> pd.DataFrame:
        """The segment grid: clip_index, clip_id, segment, start_s, end_s, label, split."""
        return clips_mod.segment_table(self.clips, self.clip_duration_s, self.segment_s)

    def label_indices(self, labels: Any) -> np.ndarray:
        """Class indices of ``labels`` (-1 for an empty or unknown label)."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup.get(str(label), -1) for label in labels], dtype=np.int64)

    # ---------------------------------------------------------------- arrays
    @contextlib.contextmanager
    def _naming_damaged_metadata(self) -> Iterator[None]:
        """A context in which zarr's bare error for an unparsable ``zarr.json`` becomes :class:`DamagedFile` naming it."""
        try:
            yield
        except (ValueError, TypeError) as exc:
            _, damaged = self.side.scan_zarr_metadata()
            if damaged:
                raise DamagedFile("; ".join(damaged)) from exc
            raise

    def has_array(self, path: str) -> bool:
        try:
            with self._naming_damaged_metadata():
                return isinstance(self.group[path], zarr.Array)
        except KeyError:
            return False

    def array(self, path: str) -> zarr.Array:
        """The per-clip Zarr array at ``path`` (e.g. ``"audio/mel"``)."""
        try:
            with self._naming_damaged_metadata():
                node = self.group[path]
        except KeyError:
            raise NotFoundError(names.unknown("array", path, self.array_paths(), "run the stage that makes it")) from None
        if not isinstance(node, zarr.Array):
            raise NotFoundError(f"{path!r} is a group, not an array")
        return node.with_config(WRITE_CONFIG)

    def array_paths(self) -> list[str]:
        """Paths of every per-clip array in the store, sorted."""
        with warnings.catch_warnings():  # zarr warns about the non-Zarr folder _featstore/
            warnings.filterwarnings("ignore", message="Object at _featstore")
            with self._naming_damaged_metadata():
                members = list(self.group.members(max_depth=None))
        return sorted(p for p, node in members if isinstance(node, zarr.Array) and not is_coordinate(node.attrs))

    def provenance(self, path: str) -> Provenance:
        """How the array was made: stage, params, config, fingerprint, modality, library_versions,
        dims, created; a typed view (:class:`~featstore.provenance.Provenance`) that reads as a dict."""
        return Provenance(path, dict(self.array(path).attrs[ATTRS_KEY]))

    def create_array(self, path: str, **spec: Any) -> zarr.Array:
        """Create (or reuse) the per-clip array ``path`` of shape ``(n_clips, *per_clip_shape)``, from
        the driver only; ``spec`` (shape, dtype, dims, stage, parameters...) and the rules of reuse
        are those of :func:`featstore.arrays.create_array`."""
        return arrays.create_array(self, path, **spec)

    def grow_array(self, path: str) -> zarr.Array:
        """Array ``path`` grown to the store's clips (new rows read as its fill value), its group's
        coordinates following."""
        return arrays.grow_array(self, path)

    # ---------------------------------------------------------------- done-marks and failures
    def ledger(self, path: str) -> Ledger:
        """The completion ledger of array ``path`` (for its current fingerprint)."""
        return Ledger.load(self.side, path, self.provenance(path)["fingerprint"])

    def is_done(self, path: str, clip_id: str, input_fingerprint: str) -> bool:
        """Whether ``clip_id`` is written whole in ``path`` from inputs with ``input_fingerprint``."""
        return self.ledger(path).is_done(clip_id, input_fingerprint)

    def failures_record(self, arrays: list[str] | None = None) -> Failures:
        """The failures record of ``arrays`` (default: all), for updating (call ``flush()`` after)."""
        return Failures(self.side, arrays)

    @property
    def failures(self) -> pd.DataFrame:
        """Failed clips, one row per (stage, array, clip_id): stage, array, clip_id, error_type, message, time."""
        return self.failures_record().table

    # ---------------------------------------------------------------- readers (featstore.readers)
    def audio(self, feature: str, clip_id: str, *, deltas: bool = False, group: str = "audio") -> np.ndarray:
        """Log spectrogram of one clip, (channel=2, bin, frame) float32; (6, bin, frame) with deltas."""
        from featstore.readers import read_audio

        return read_audio(self, feature, clip_id, deltas=deltas, group=group)

    def audio_segments(self, feature: str, **kwargs: Any):
        """Segment windows with labels and clip index; see :func:`featstore.readers.audio_segments`."""
        from featstore.readers import audio_segments

        return audio_segments(self, feature, **kwargs)

    def frames(self, clip_id: str, *, group: str = "frames") -> tuple[np.ndarray, np.ndarray]:
        """(frames (frame, H, W, 3) uint8, times (frame,) float32 seconds) of one clip."""
        from featstore.readers import read_frames

        return read_frames(self, clip_id, group=group)

    def frame_segments(self, **kwargs: Any):
        """Frames grouped by segment of the grid; see :func:`featstore.readers.frame_segments`."""
        from featstore.readers import frame_segments

        return frame_segments(self, **kwargs)

    def embeddings(self, model: str, layer: str = "fc1024", **kwargs: Any):
        """Cached embeddings aligned to the segment grid; see :func:`featstore.readers.embeddings`."""
        from featstore.readers import embeddings

        return embeddings(self, model, layer, **kwargs)

    def __repr__(self) -> str:
        return f"<featstore.Store {self.url} clips={self.n_clips} arrays={len(self.array_paths())}>"


def init_store(
    url: str | os.PathLike,
    *,
    segment_s: float = SEGMENT_S,
    clip_duration_s: float = CLIP_DURATION_S,
    classes: list[str] | tuple[str, ...] | None = None,
    storage_options: dict[str, Any] | None = None,
    shard_mb: float = SHARD_MB,
) -> Store:
    """Create a store (or open an existing one with the same settings).

    ``segment_s`` is the segment grid step and ``clip_duration_s`` the nominal clip length, both in
    seconds; ``classes`` is the label map (default: TAU's ten scenes, replaced by the labels of the
    first CSV manifest ingested when it names a label outside them, see :meth:`Store.adopt_classes`);
    ``storage_options`` go to fsspec for a remote URL.
    ``shard_mb``: uncompressed MiB of clips per shard (stored object) of the store's arrays
    (default :data:`featstore.constants.SHARD_MB`, as ``featstore init``; 0: one object per clip);
    it applies to arrays created later and is not compared when the store exists.
    Reopening with other settings raises :class:`StoreError`.
    """
    url = normalise_url(url)
    wanted = {"segment_s": float(segment_s), "clip_duration_s": float(clip_duration_s), "classes": list(classes or CLASSES)}
    if classes is not None and (not classes or len(set(classes)) != len(classes) or not all(str(c).strip() for c in classes)):
        raise ConfigError(f"--classes must be distinct, non-empty names, got {list(classes)}")
    if not (math.isfinite(segment_s) and math.isfinite(clip_duration_s) and MIN_SEGMENT_S <= segment_s <= clip_duration_s <= MAX_CLIP_DURATION_S):
        raise ConfigError(f"--segment-s and --clip-duration-s must be finite with {MIN_SEGMENT_S} <= segment_s <= clip_duration_s <= {MAX_CLIP_DURATION_S} (seconds), got {segment_s} and {clip_duration_s}")
    if not (math.isfinite(shard_mb) and shard_mb >= 0):
        raise ConfigError(f"--shard-mb must be >= 0 (0: one object per clip), got {shard_mb}")
    try:
        group = zarr.open_group(zarr_store(url, storage_options), mode="r+")
    except FileNotFoundError:
        group = zarr.create_group(zarr_store(url, storage_options))
    current = group.attrs.get(ATTRS_KEY)
    if current is None:
        group.attrs[ATTRS_KEY] = {**wanted, "format_version": FORMAT_VERSION, "dataset_root": None, "clips_checksum": "",
                                  "classes_given": classes is not None, "shard_mb": float(shard_mb)}
    else:
        if classes is None:
            wanted.pop("classes")
        differing = {k: (current.get(k), v) for k, v in wanted.items() if current.get(k) != v}
        if differing:
            raise StoreError(f"store {url} exists with other settings: {differing}")
    return Store(url, storage_options)


def open_store(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Store:
    """Open an existing store at a local path or fsspec URL (``storage_options`` go to fsspec)."""
    return Store(normalise_url(url), storage_options)