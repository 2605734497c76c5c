"""Whole-clip chunk reads: the store's hot read path.

zarr-python 3 sends every read through its asyncio event loop, which runs in another thread. For
one chunk that round trip costs more than the decompression itself. Measured here
(``benchmarks/bench_loader.py``, "chunk reads"): 0.78 ms per MEL clip through ``array[row]``
against 0.30 ms decoding the same file directly, and 1.84 ms against 1.22 ms for a clip of
twenty 224x224 frames. Training reads thousands of clips per epoch, one at a time.

So for arrays laid out the way featstore writes them, :class:`ClipReader` reads the chunk file and
decodes it in the calling thread. That layout is one chunk per clip, codecs bytes -> zstd or Blosc
-> crc32c (DESIGN 7.5, :func:`featstore.store.compressors_for`), on a local disk.
- The crc32c is checked with google-crc32c, as zarr does.
- zstd and Blosc are decompressed by numcodecs (what zarr's own codecs call), outside the GIL.

Any other layout goes through zarr unchanged: another codec chain, sharding, a remote store.
The Zarr v3 spec fixes the chunk key and the codecs' byte formats, so both ways give the same
values. ``tests/test_chunks.py`` compares them for every dtype the store holds.

>>> reader = ClipReader(store.array("audio/mel"))   # doctest: +SKIP
>>> reader.read(0).shape                              # doctest: +SKIP
(2, 128, 720)
"""

from __future__ import annotations

import os

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

from featstore.errors import DamagedFile


class ClipReader:
    """Reads row ``row`` (one clip) of a per-clip ``array`` whole, as numpy.

    ``direct`` says whether chunk files are read and decoded here (the featstore layout on a local
    disk) or through zarr. A clip never written reads as the fill value, as through zarr.
    """

    def __init__(self, array: zarr.Array):
        self.array = array
        self.shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.directory = _local_directory(array)
        self._decompressor = _decompressor(array) if self.directory is not None else None
        self.direct = self._decompressor is not None
        if self.direct:
            self._fill = np.asarray(array.metadata.fill_value, dtype=self.dtype)
            self._key = array.metadata.chunk_key_encoding.encode_chunk_key

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
        if out is None:
            out = np.empty(self.shape, self.dtype)
        path = os.path.join(self.directory, self._key((row,) + (0,) * len(self.shape)))
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            out.fill(self._fill)
            return out
        body, stored = data[:-4], data[-4:]
        if np.uint32(google_crc32c.value(body)).tobytes() != stored:
            raise DamagedFile(f"{path}: chunk of row {row} of {self.array.path!r} fails its crc32c checksum (damaged; featstore verify --repair)")
        # the checksum proves these are the bytes zarr wrote for this chunk shape, so they decode to
        # exactly ``out``'s size
        try:
            self._decompressor.decode(body, out=out)
        except (RuntimeError, ValueError) as exc:
            raise DamagedFile(f"{path}: chunk of row {row} of {self.array.path!r} does not decode: {exc}") from None
        return out


def _local_directory(array: zarr.Array) -> str | None:
    """The folder of ``array`` on the local disk, or None when its store is not a local one."""
    store = array.store
    if not isinstance(store, zarr.storage.LocalStore):
        return None
    return os.path.join(str(store.root), array.path)


def _decompressor(array: zarr.Array):
    """The numcodecs decompressor of ``array`` when it is in featstore's layout, else None.

    The layout: one chunk per row and codecs exactly bytes (little-endian or single-byte), then zstd
    or Blosc, then crc32c. Blosc buffers carry their own type size and shuffle in their header.
    """
    metadata = array.metadata
    if getattr(metadata, "zarr_format", None) != 3 or array.shards is not None:
        return None
    if tuple(array.chunks) != (1, *array.shape[1:]):
        return None
    codecs = tuple(metadata.codecs)
    kinds = [type(c) for c in codecs]
    if len(kinds) != 3 or kinds[0] is not BytesCodec or kinds[2] is not Crc32cCodec or kinds[1] not in (ZstdCodec, BloscCodec):
        return None
    endian, dtype = codecs[0].endian, np.dtype(array.dtype)
    little = endian is None and dtype.itemsize == 1 or endian is not None and endian.value == "little"
    if not (little and dtype.kind in "fiub" and np.little_endian):
        return None
    from numcodecs import Blosc, Zstd

    return Zstd() if kinds[1] is ZstdCodec else Blosc()
