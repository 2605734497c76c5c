"""The sharded layout: many clips per stored object, one clip per inner chunk.

A per-clip array of a sharded store is cut along the clip axis into shards of ``S`` clips (Zarr v3's
sharding codec); inside a shard each clip is its own inner chunk, compressed and checksummed as in
the one-object-per-clip layout, so a reader still decodes exactly one clip. ``S`` follows from a
byte target (the store's ``shard_mb``, default :data:`featstore.constants.SHARD_MB`): the largest
power of two whose clips hold at most that many uncompressed bytes, at most
:data:`MAX_CLIPS_PER_SHARD`. Powers of two nest, so shards of several arrays always align.

Writers own whole shards: a write covering part of a shard is a read-modify-write of the whole
object, which loses data when two writers do it at once. :func:`write_clips` is the one way to
write rows of an array that keeps that rule for a single writer (the rows it is not given are read
back and rewritten with their own values); the stage runner hands each task whole shards.

    mel of a 10 s clip, (2, 128, 720) float16: 360 KiB  -> 256 clips per 128 MiB shard
    frames of a 10 s clip, (20, 224, 224, 3) uint8: 2.9 MiB -> 32 clips per shard
    fc10 embeddings of a 10 s clip, (10, 10) float32: 400 B -> 4096 clips per shard (the cap)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import zarr

#: Clips per shard at most, whatever their size: keeps the shard index (16 bytes a clip) small and
#: the clip axis cut into enough shards for several writers.
MAX_CLIPS_PER_SHARD = 4096


def clips_per_shard(per_clip_bytes: int, shard_mb: float) -> int | None:
    """Clips per shard for clips of ``per_clip_bytes`` uncompressed bytes and a ``shard_mb`` MiB
    target: a power of two, 1 to :data:`MAX_CLIPS_PER_SHARD`; None when ``shard_mb`` is 0 (one
    object per clip)."""
    if not shard_mb:
        return None
    fit = int(shard_mb * 2**20) // max(1, int(per_clip_bytes))
    return min(MAX_CLIPS_PER_SHARD, 2 ** int(math.log2(fit)) if fit >= 1 else 1)


def shard_clips(array: zarr.Array) -> int:
    """Clips per stored object of ``array``: its shard's first axis, 1 when it is not sharded."""
    return int(array.shards[0]) if array.shards is not None else 1


def unit_clips(arrays: Sequence[zarr.Array]) -> int:
    """The smallest number of clips made of whole shards of every one of ``arrays`` (their lcm)."""
    return math.lcm(1, *(shard_clips(a) for a in arrays))


def group_rows(rows: Sequence[int], unit: int) -> Iterator[tuple[int, list[int]]]:
    """(unit number, its rows in order) for ``rows`` grouped by ``row // unit``."""
    current, group = None, []
    for row in sorted(int(r) for r in rows):
        if row // unit != current:
            if group:
                yield current, group
            current, group = row // unit, []
        group.append(row)
    if group:
        yield current, group


def read_back(array: zarr.Array, rows: list[int]) -> dict[int, np.ndarray]:
    """The stored values of ``rows`` of ``array`` (concurrent inner chunk reads); a row that cannot
    be read (damaged) is left out, so that a rewrite gives it the fill value rather than fail."""
    if not rows:
        return {}
    try:
        return dict(zip(rows, array.oindex[rows]))
    except Exception:  # noqa: BLE001 - a damaged row among them: read one by one
        kept = {}
        for row in rows:
            try:
                kept[row] = array[row]
            except Exception:  # noqa: BLE001, S112 - left out: the rewrite gives it the fill value
                continue
        return kept


def write_clips(array: zarr.Array, rows: Sequence[int], values: Sequence[np.ndarray] | np.ndarray) -> None:
    """Write ``values[k]`` (one clip each) to row ``rows[k]`` of ``array``, whole shards at a time.

    Every shard touched is written once: rows of it that are not given keep their stored values
    (read back first), so no write covers part of a shard. For an unsharded array each clip is one
    whole-chunk write. The caller must be the shard's only writer.
    """
    value_of = {int(r): v for r, v in zip(rows, values)}
    unit = shard_clips(array)
    n = array.shape[0]
    if unit == 1:  # one object per clip: every write is whole
        # one integer row at a time: zarr sees each chunk as wholly covered and never reads it
        # (an orthogonal selection is read-modify-write, which fails on a damaged chunk that
        # ``verify --repair`` is about to replace)
        for row in sorted(value_of):
            array[row] = value_of[row]
        return
    for shard, group in group_rows(list(value_of), unit):
        start, stop = shard * unit, min(n, (shard + 1) * unit)
        block = np.full((stop - start, *array.shape[1:]), array.metadata.fill_value, dtype=array.dtype)
        given = set(group)
        for row, value in read_back(array, [r for r in range(start, stop) if r not in given]).items():
            block[row - start] = value
        for row in group:
            block[row - start] = value_of[row]
        try:
            array[start:stop] = block
        except Exception:
            if read_back(array, list(range(start, stop))):
                raise  # the shard reads: not the damage handled here
            # no row of the shard reads: its index is lost (the object cut short or overwritten),
            # so zarr cannot merge this write into it. ``block`` holds every row that could be
            # read, so the object is replaced by ``block`` alone (``verify --repair`` gives all).
            (array.store_path / array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))).delete_sync()
            array[start:stop] = block
