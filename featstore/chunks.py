"""Whole-clip chunk reads: the store's hot read path.

zarr-python 3 sends every read through its asyncio event loop, which runs in another thread. For
one chunk that round trip costs more than the decompression itself. Measured here
(``benchmarks/bench_loader.py``, "chunk reads"): 0.78 ms per MEL clip through ``array[row]``
against 0.30 ms decoding the same file directly, and 1.84 ms against 1.22 ms for a clip of
twenty 224x224 frames. Training reads thousands of clips per epoch, one at a time.

So for arrays laid out the way featstore writes them, :class:`ClipReader` fetches a clip's bytes
and decodes them in the calling thread. That layout is one clip per chunk, codecs bytes -> zstd or
Blosc -> crc32c (:func:`featstore.arrays.compressors_for`), either one object per clip or clips
inside shards (Zarr v3's sharding codec, one inner chunk per clip, the shard index at the end,
:mod:`featstore.shards`).

- Sharded: the shard's index (16 bytes a clip, with its own crc32c) is read once per shard and
  kept (on a local disk it is read again when the file changed), then a clip costs one ranged read.
- On a local disk reads are plain file reads; on any other store (S3, GCS, memory...) they are the
  store's ranged requests (never a whole-object GET, for which s3fs sends a HEAD first), and
  :meth:`ClipReader.fetch` sends those of many clips at once, one request for the neighbouring
  clips of a shard.
- The crc32c is checked with google-crc32c, as zarr does; zstd and Blosc are decompressed by
  numcodecs (what zarr's own codecs call), outside the GIL.

Any other layout goes through zarr unchanged. The Zarr v3 spec fixes the chunk keys, the shard
index and the codecs' byte formats, so both ways give the same values. ``tests/test_chunks.py``
compares them for every dtype the store holds, in both layouts.

>>> reader = ClipReader(store.array("audio/mel"))   # doctest: +SKIP
>>> reader.read(0).shape                              # doctest: +SKIP
(2, 128, 720)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

from featstore.errors import DamagedFile

#: An inner chunk never written: its index entry holds this offset and length.
_EMPTY = np.uint64(2**64 - 1)

#: Inner chunks of one shard this close (bytes) are fetched in one ranged request: an object
#: store's request costs about its latency (10-50 ms on S3), which buys about 1 MiB of transfer
#: on one connection, so fetching a gap this size is cheaper than a second request.
COALESCE_GAP_BYTES = 2**20


class ClipReader:
    """Reads row ``row`` (one clip) of a per-clip ``array`` whole, as numpy.

    ``direct`` says whether clips are fetched and decoded here (featstore's layout, sharded or not)
    or through zarr; ``local`` whether the store is a local directory. A clip never written reads
    as the fill value, as through zarr.
    """

    def __init__(self, array: zarr.Array):
        self.array = array
        self.shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.directory = _local_directory(array)
        self.local = self.directory is not None
        layout = _layout(array)
        self.direct = layout is not None
        self._decompressor, self.clips_per_shard = layout if layout else (None, None)
        self._index: dict[int, tuple[object, np.ndarray]] = {}  # shard -> (file stamp, (clips, 2) offset, nbytes)
        if self.direct:
            self._fill = np.asarray(array.metadata.fill_value, dtype=self.dtype)
            self._key = array.metadata.chunk_key_encoding.encode_chunk_key

    # ------------------------------------------------------------------ public
    def read(self, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """(per-clip shape) values of clip ``row`` in the stored dtype, written into ``out`` when given.

        Decoding into a reused ``out`` avoids the page faults of fresh memory: for a 3 MB clip of
        frames they cost about as much as the decompression (1.1 ms into a reused buffer, 2.0 ms
        into a new one).
        """
        if not self.direct:
            if out is None:
                return self.array[row]
            out[...] = self.array[row]
            return out
        out = np.empty(self.shape, self.dtype) if out is None else out
        data = self._read_local(row) if self.local else self.fetch([row])[0]
        return self.decode(row, data, out)

    def read_clips(self, rows: Sequence[int], outs: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """The values of each of ``rows`` (into ``outs`` when given), as :meth:`read` gives them.

        On a remote store the bytes come from :meth:`fetch` (all requests at once), so reading a
        block of clips costs about one request's latency rather than one per clip.
        """
        rows = [int(r) for r in rows]
        outs = list(outs) if outs is not None else [np.empty(self.shape, self.dtype) for _ in rows]
        if not self.direct:
            values = self.array.oindex[rows] if rows else []
            for out, value in zip(outs, values):
                out[...] = value
            return outs
        if self.local:
            return [self.read(row, out) for row, out in zip(rows, outs)]
        return [self.decode(row, data, out) for row, data, out in zip(rows, self.fetch(rows), outs)]

    def fetch(self, rows: Sequence[int]) -> list[bytes | np.ndarray | None]:
        """The stored bytes of each of ``rows`` (None: never written), for :meth:`decode`: bytes, or
        a uint8 view into the bytes of one request that fetched several clips.

        Only for featstore's layout (``direct``). On a remote store every request goes out at once:
        one GET per clip without a sharding codec (ranged, so that no client sends a HEAD first to
        learn the size); with one, the shard indices not cached yet (one suffix request each), then
        one ranged request per run of the wanted clips of a shard that lie within
        :data:`COALESCE_GAP_BYTES` of each other (sorted rows of a shard: one request).
        """
        rows = [int(r) for r in rows]
        if self.local:
            return [self._read_local(row) for row in rows]
        from zarr.core.sync import sync

        return sync(self._fetch(rows))

    def decode(self, row: int, data: bytes | None, out: np.ndarray) -> np.ndarray:
        """``out`` holding the values of clip ``row`` from its stored ``data`` (:meth:`fetch`), checked
        by its crc32c; the fill value when ``data`` is None. Runs outside the GIL (numcodecs)."""
        if data is None:
            out.fill(self._fill)
            return out
        data = np.frombuffer(data, np.uint8)  # views from here on: the chunk's bytes are not copied
        body, stored = data[:-4], data[-4:].tobytes()
        if np.uint32(google_crc32c.value(body)).tobytes() != stored:
            raise DamagedFile(f"{self.location(row)}: chunk of row {row} of {self.array.path!r} fails its crc32c checksum (damaged; featstore verify --repair)")
        # the checksum proves these are the bytes zarr wrote for this chunk shape, so they decode to
        # exactly ``out``'s size
        try:
            self._decompressor.decode(body, out=out)
        except (RuntimeError, ValueError) as exc:
            raise DamagedFile(f"{self.location(row)}: chunk of row {row} of {self.array.path!r} does not decode: {exc}") from None
        return out

    def location(self, row: int) -> str:
        """Where clip ``row`` is stored: its object's key, and its inner chunk within a shard."""
        key = self._object_key(row)
        if not self.clips_per_shard:
            return f"{self.array.path}/{key}"
        return f"{self.array.path}/{key} inner chunk {row % self.clips_per_shard}"

    # ------------------------------------------------------------------ fetching
    def _object_key(self, row: int) -> str:
        s = self.clips_per_shard or 1
        return self._key((row // s,) + (0,) * len(self.shape))

    def _read_local(self, row: int) -> bytes | None:
        path = os.path.join(self.directory, self._object_key(row))
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed below, after the missing-file case
        except FileNotFoundError:
            return None
        with file:
            if not self.clips_per_shard:
                return file.read()
            st = os.fstat(file.fileno())
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            shard = row // self.clips_per_shard
            cached = self._index.get(shard)
            if cached is None or cached[0] != stamp:
                size = 16 * self.clips_per_shard + 4
                if st.st_size < size:
                    raise DamagedFile(f"{self.array.path}/{self._object_key(row)}: the shard object is {st.st_size} bytes, shorter than "
                                      f"its index ({size} bytes): cut short or overwritten (featstore verify --repair)")
                cached = self._index[shard] = (stamp, self._parse_index(row, os.pread(file.fileno(), size, st.st_size - size)))
            offset, nbytes = cached[1][row % self.clips_per_shard]
            if offset == _EMPTY:
                return None
            return os.pread(file.fileno(), int(nbytes), int(offset))

    async def _fetch(self, rows: list[int]) -> list[np.ndarray | None]:
        from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype

        store, prototype = self.array.store, default_buffer_prototype()

        def key(row: int) -> str:
            return f"{self.array.path}/{self._object_key(row)}" if self.array.path else self._object_key(row)

        async def get(k: str, byte_range) -> np.ndarray | None:
            buffer = await store.get(k, prototype, byte_range=byte_range)
            return None if buffer is None else buffer.as_numpy_array()  # the response's bytes, not a copy

        if not self.clips_per_shard:
            return list(await asyncio.gather(*(get(key(row), OffsetByteRequest(0)) for row in rows)))
        s = self.clips_per_shard
        missing = sorted({row // s for row in rows} - set(self._index))
        raw = await asyncio.gather(*(get(key(shard * s), SuffixByteRequest(16 * s + 4)) for shard in missing))
        for shard, index in zip(missing, raw):
            self._index[shard] = (None, None if index is None else self._parse_index(shard * s, index))
        spans: dict[int, tuple[int, int]] = {}  # row -> (offset, end) of its inner chunk
        for row in rows:
            entries = self._index[row // s][1]
            if entries is not None and entries[row % s][0] != _EMPTY:
                offset, nbytes = (int(v) for v in entries[row % s])
                spans[row] = (offset, offset + nbytes)
        runs = coalesce(spans, s)
        fetched = await asyncio.gather(*(get(key(run[0]), RangeByteRequest(start, end)) for run, (start, end) in runs))
        data: dict[int, np.ndarray | None] = {}
        for (run, (start, _)), chunk in zip(runs, fetched):
            for row in run:
                offset, end = spans[row]
                data[row] = None if chunk is None else chunk[offset - start : end - start]
        return [data.get(row) for row in rows]

    def _parse_index(self, row: int, data: bytes | np.ndarray) -> np.ndarray:
        """(clips, 2) uint64 offsets and lengths from a shard index's bytes, checked by its crc32c."""
        data = np.frombuffer(data, np.uint8)
        body, stored = data[:-4], data[-4:].tobytes()
        if len(body) != 16 * self.clips_per_shard or np.uint32(google_crc32c.value(body)).tobytes() != stored:
            raise DamagedFile(f"{self.array.path}/{self._object_key(row)}: the shard index fails its crc32c checksum (damaged; featstore verify --repair)")
        return body.view("<u8").reshape(-1, 2)


def coalesce(spans: dict[int, tuple[int, int]], clips_per_shard: int, gap: int | None = None) -> list[tuple[list[int], tuple[int, int]]]:
    """Ranged requests for the byte ``spans`` {row: (offset, end)} of inner chunks: (rows, (start,
    end)) per request, joining chunks of one shard whose gap is at most ``gap`` bytes (default
    :data:`COALESCE_GAP_BYTES`). A run's rows are in offset order; every row is in one run."""
    gap = COALESCE_GAP_BYTES if gap is None else gap
    runs: list[tuple[list[int], tuple[int, int]]] = []
    for row in sorted(spans, key=lambda r: (r // clips_per_shard, spans[r])):
        offset, end = spans[row]
        if runs and runs[-1][0][0] // clips_per_shard == row // clips_per_shard and offset - runs[-1][1][1] <= gap:
            rows, (start, last) = runs[-1]
            rows.append(row)
            runs[-1] = (rows, (start, max(last, end)))
        else:
            runs.append(([row], (offset, end)))
    return runs


def _local_directory(array: zarr.Array) -> str | None:
    """The folder of ``array`` on the local disk, or None when its store is not a local one."""
    store = array.store
    if not isinstance(store, zarr.storage.LocalStore):
        return None
    return os.path.join(str(store.root), array.path)


def _layout(array: zarr.Array):
    """(numcodecs decompressor, clips per shard or None) when ``array`` is in featstore's layout, else None.

    The layout: one chunk per row, codecs exactly bytes (little-endian or single-byte), then zstd
    or Blosc, then crc32c; either as the array's codecs, or inside a sharding codec whose shards
    span whole rows, with its index (bytes, crc32c) at the end. Blosc buffers carry their own type
    size and shuffle in their header.
    """
    metadata = array.metadata
    if getattr(metadata, "zarr_format", None) != 3 or tuple(array.chunks) != (1, *array.shape[1:]):
        return None
    codecs, per_shard = tuple(metadata.codecs), None
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sharding = codecs[0]
        index = [type(c) for c in sharding.index_codecs]
        if sharding.index_location.value != "end" or index != [BytesCodec, Crc32cCodec] or tuple(array.shards[1:]) != tuple(array.shape[1:]):
            return None
        codecs, per_shard = tuple(sharding.codecs), int(array.shards[0])
    kinds = [type(c) for c in codecs]
    if len(kinds) != 3 or kinds[0] is not BytesCodec or kinds[2] is not Crc32cCodec or kinds[1] not in (ZstdCodec, BloscCodec):
        return None
    endian, dtype = codecs[0].endian, np.dtype(array.dtype)
    little = endian is None and dtype.itemsize == 1 or endian is not None and endian.value == "little"
    if not (little and dtype.kind in "fiub" and np.little_endian):
        return None
    from numcodecs import Blosc, Zstd

    return (Zstd() if kinds[1] is ZstdCodec else Blosc()), per_shard
