"""featstore.chunks.ClipReader: featstore-layout chunks decoded directly give exactly what zarr
reads; unwritten and damaged chunks behave as through zarr; any other layout goes through zarr."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

import featstore
from featstore.chunks import ClipReader, coalesce
from featstore.errors import DamagedFile
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest

from conftest import CLIP_S


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_root) -> featstore.Store:
    s = featstore.init_store(str(tmp_path_factory.mktemp("chunks") / "s.zarr"), clip_duration_s=CLIP_S, shard_mb=0)  # sharded: test_sharding
    ingest(s, demo_root)
    extract_audio(s, workers=0, features=("mel",), progress=False)  # float16
    extract_audio(s, workers=0, features=("gam",), progress=False, dtype="float32")
    extract_frames(s, workers=0, size=32, progress=False)  # uint8 frames, float32 times
    return s


def test_direct_reads_equal_zarr_for_every_array(store):
    """Blosc-compressed floats and zstd-compressed frames, as written now, and zstd floats as written
    by stores made before (``old/mel``)."""
    old = zarr.create_array(store.group.store, name="old/mel", shape=store.array("audio/mel").shape, dtype="float16",
                            chunks=(1, *store.array("audio/mel").shape[1:]), fill_value=np.nan,
                            compressors=[ZstdCodec(level=3), Crc32cCodec()])
    old[:] = store.array("audio/mel")[:]
    paths = store.array_paths() + ["old/mel"]
    assert {"audio/mel", "audio/gam", "frames/rgb", "frames/time_s"} <= set(paths)
    kinds = {path: type(store.group[path].metadata.codecs[1]).__name__ for path in paths}
    assert kinds["audio/mel"] == "BloscCodec" and kinds["frames/rgb"] == kinds["old/mel"] == "ZstdCodec"
    for path in paths:
        array = store.group[path]
        reader = ClipReader(array)
        assert reader.direct, f"{path} is in featstore's layout on a local disk"
        buffer = np.empty(reader.shape, reader.dtype)
        for row in range(store.n_clips):
            expected = array[row]
            np.testing.assert_array_equal(reader.read(row), expected)
            assert reader.read(row, out=buffer) is buffer
            np.testing.assert_array_equal(buffer, expected)


def test_an_unwritten_clip_reads_as_the_fill_value(flat_demo_store):
    s = flat_demo_store
    array = s.create_array("test/x", per_clip_shape=(3, 4), dtype="float32", dims=("a", "b"), stage="test", params={})
    array[0] = np.arange(12, dtype=np.float32).reshape(3, 4)
    reader = ClipReader(s.array("test/x"))
    assert reader.direct
    np.testing.assert_array_equal(reader.read(0), array[0])
    assert np.isnan(reader.read(1)).all() and np.isnan(array[1]).all()
    stale = np.zeros((3, 4), np.float32)
    assert np.isnan(reader.read(1, out=stale)).all(), "a reused buffer is overwritten with the fill value"


def test_a_damaged_chunk_is_named(flat_demo_store):
    s = flat_demo_store
    array = s.create_array("test/x", per_clip_shape=(64,), dtype="float32", dims=("a",), stage="test", params={})
    array[2] = np.linspace(0, 1, 64, dtype=np.float32)
    chunk = os.path.join(s.url.removeprefix("file://"), "test", "x", "c", "2", "0")
    data = bytearray(open(chunk, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(chunk, "wb").write(bytes(data))
    with pytest.raises(DamagedFile, match=r"row 2 of 'test/x' fails its crc32c"):
        ClipReader(s.array("test/x")).read(2)
    with pytest.raises(ValueError, match="checksum"):
        s.array("test/x")[2]  # zarr refuses it too


@pytest.mark.parametrize("layout", ["blosc without a checksum", "sharded", "memory", "two clips per chunk"])
def test_other_layouts_go_through_zarr(tmp_path, layout):
    """Other layouts read through zarr; featstore's layout on a store that is not a local disk is
    read directly with the store's (ranged) requests."""
    values = np.random.default_rng(0).normal(size=(4, 6, 8)).astype(np.float32)
    options = dict(shape=values.shape, dtype="float32", chunks=(1, 6, 8), compressors=[ZstdCodec(level=3), Crc32cCodec()])
    where = str(tmp_path / "a.zarr")
    if layout == "blosc without a checksum":
        options["compressors"] = [BloscCodec(cname="lz4")]
    elif layout == "sharded":
        options.update(chunks=(1, 3, 8), shards=(1, 6, 8))
    elif layout == "memory":
        where = zarr.storage.MemoryStore()
    else:
        options["chunks"] = (2, 6, 8)
    array = zarr.create_array(where, **options)
    array[:] = values
    reader = ClipReader(array)
    assert reader.direct == (layout == "memory") and reader.local == (layout != "memory")
    assert np.stack(reader.read_clips([3, 0])).tobytes() == values[[3, 0]].tobytes()
    for row in range(4):
        np.testing.assert_array_equal(reader.read(row), values[row])


def test_remote_sharded_reads_join_neighbouring_clips_and_equal_zarr():
    """A sharded array on a store that is not a local disk (memory): clips read together come in
    one ranged request per run of neighbouring inner chunks of a shard, and equal zarr's values,
    an unwritten inner chunk and an unwritten shard included."""
    values = np.random.default_rng(1).normal(size=(40, 6, 8)).astype(np.float32)
    values[9] = np.nan  # the fill value: zarr leaves this inner chunk unwritten
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=values.shape, dtype="float32", chunks=(1, 6, 8), shards=(8, 6, 8),
                              fill_value=np.nan, compressors=[ZstdCodec(level=3), Crc32cCodec()])
    array[:32] = values[:32]  # the last shard never written
    values[32:] = np.nan
    reader = ClipReader(array)
    assert reader.direct and not reader.local and reader.clips_per_shard == 8
    rows = [int(r) for r in np.random.default_rng(2).permutation(40)] + [3, 3]
    np.testing.assert_array_equal(np.stack(reader.read_clips(rows)), values[rows])
    spans = {row: (int(o), int(o + n)) for row, (o, n) in ((r, reader._index[1][1][r % 8]) for r in (8, 11, 12, 15))}
    runs = coalesce(spans, 8)
    assert [run for run, _ in runs] == [[8, 11, 12, 15]], "one shard's clips, gaps under 1 MiB: one request"
    assert runs[0][1] == (spans[8][0], spans[15][1])
    assert [run for run, _ in coalesce(spans, 8, gap=0)] == [[8], [11, 12], [15]]  # only touching chunks join
    assert [run for run, _ in coalesce({7: (0, 10), 8: (10, 20)}, 8)] == [[7], [8]]  # never across shards
