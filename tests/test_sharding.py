"""Sharded arrays: the same values through every reader as unsharded ones; no shard written by two
tasks; a resumed or repaired shard keeps its other clips' bytes; verify names one damaged inner
chunk."""

from __future__ import annotations

import os

import numpy as np
import pytest
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest
from featstore.pipelines.config import IN_PROCESS_CLIP_S
from featstore.pipelines.runner import local_workers, plan_tasks, split_task
from featstore.pipelines.verify import repair

import featstore
from featstore.chunks import ClipReader
from featstore.hdf5 import export_h5, import_h5
from featstore.loader import training_batches
from featstore.shards import clips_per_shard, group_rows
from featstore.verify import verify_store
from tests.conftest import CLIP_S, run_cli

PATHS = ("audio/mel", "frames/rgb", "frames/time_s")


def _made(root: str, url: str, shard_mb: float) -> featstore.Store:
    store = featstore.init_store(url, clip_duration_s=CLIP_S, shard_mb=shard_mb)
    ingest(store, root)
    extract_audio(store, workers=0, features=("mel",), progress=False)
    extract_frames(store, workers=0, size=32, progress=False)
    return store


@pytest.fixture(scope="module")
def pair(tmp_path_factory, demo_root):
    """(unsharded, sharded) stores of the demo: 0.25 MiB shards make several shards per array."""
    work = tmp_path_factory.mktemp("sharding")
    return _made(demo_root, str(work / "flat.zarr"), 0), _made(demo_root, str(work / "sharded.zarr"), 0.25)


def test_clips_per_shard_follows_the_byte_target():
    assert clips_per_shard(360 * 2**10, 128) == 256
    assert clips_per_shard(3 * 2**20, 128) == 32
    assert clips_per_shard(400, 128) == 4096  # the cap
    assert clips_per_shard(10 * 2**20, 1) == 1 and clips_per_shard(100, 0) is None


def test_every_reader_gives_the_same_values_from_both_layouts(pair, tmp_path):
    flat, sharded = pair
    for path in PATHS:
        assert flat.array(path).shards is None and sharded.array(path).shards is not None
        assert sharded.provenance(path)["clips_per_shard"] == sharded.array(path).shards[0] < 20
        expected = flat.array(path)[:]
        assert sharded.array(path)[:].tobytes() == expected.tobytes(), path  # through zarr
        reader = ClipReader(sharded.array(path))
        assert reader.direct and reader.clips_per_shard
        assert np.stack([reader.read(i) for i in range(20)]).tobytes() == expected.tobytes()
        assert np.stack(reader.read_clips([7, 2, 19])).tobytes() == expected[[7, 2, 19]].tobytes()
    clip = flat.clips.clip_id.iloc[5]
    assert np.array_equal(flat.audio("mel", clip, deltas=True), sharded.audio("mel", clip, deltas=True))
    assert all(np.array_equal(a, b) for a, b in zip(flat.frames(clip), sharded.frames(clip)))
    options = {"split": None, "batch_size": 8, "block_clips": 3, "seed": 2}
    for path in ("audio/mel", "frames/rgb"):
        for (xa, ya), (xb, yb) in zip(training_batches(flat, path, **options), training_batches(sharded, path, **options)):
            assert xa.tobytes() == xb.tobytes() and ya.tobytes() == yb.tobytes()
    # HDF5 out of a sharded store, into a sharded store
    export_h5(sharded, str(tmp_path / "x.h5"), ["audio/mel"])
    target = featstore.init_store(str(tmp_path / "in.zarr"), clip_duration_s=CLIP_S, shard_mb=0.25)
    target.set_dataset_root(sharded.dataset_root)
    import_h5(target, str(tmp_path / "x.h5"))
    assert target.array("audio/mel").shards is not None
    assert target.array("audio/mel")[:].tobytes() == flat.array("audio/mel")[:].tobytes()


def test_no_shard_is_written_by_two_tasks(pair):
    _, sharded = pair
    unit = sharded.array("frames/rgb").shards[0]
    rows = [0, 1, 2, 5, 9, 10, 11, 17, 18, 19]
    for per_task in (1, 3, 8):
        plan = plan_tasks(rows, unit, per_task)
        assert sorted(r for task in plan for r in task) == rows
        owner = {}
        for k, task in enumerate(plan):
            for shard, _ in group_rows(task, unit):
                assert owner.setdefault(shard, k) == k, f"shard {shard} in tasks {owner[shard]} and {k}"
            # a task larger than a worker's share is computed in parts, still written by one writer
            for share in (1, 2, 3, len(task)):
                parts = split_task(task, share)
                assert [r for part in parts for r in part] == task and all(0 < len(p) <= share for p in parts)
                assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_small_work_runs_in_process_by_default(monkeypatch):
    monkeypatch.delenv("FEATSTORE_SCHEDULER", raising=False)
    assert local_workers(None, None, IN_PROCESS_CLIP_S) == 0
    assert local_workers(None, None, IN_PROCESS_CLIP_S + 1) is None  # a local cluster, one worker per core
    assert local_workers(2, None, 1.0) == 2 and local_workers(None, "tcp://127.0.0.1:8786", 1.0) is None
    monkeypatch.setenv("FEATSTORE_SCHEDULER", "tcp://127.0.0.1:8786")
    assert local_workers(None, None, 1.0) is None


def _inner_chunks(store: featstore.Store, path: str, shard: int) -> tuple[str, list[bytes]]:
    """(shard file, each inner chunk's stored bytes), from the shard index at the file's end."""
    array = store.array(path)
    s = array.shards[0]
    file = os.path.join(store.url, path, array.metadata.chunk_key_encoding.encode_chunk_key((shard,) + (0,) * (array.ndim - 1)))
    with open(file, "rb") as f:
        data = f.read()
    index = np.frombuffer(data[-4 - 16 * s : -4], "<u8").reshape(s, 2)
    return file, [data[int(o) : int(o + n)] if o != 2**64 - 1 else b"" for o, n in index]


def test_verify_names_one_damaged_inner_chunk_and_repair_restores_it_alone(pair, tmp_path, demo_root):
    store = _made(demo_root, str(tmp_path / "damaged.zarr"), 0.25)
    path = "audio/mel"
    s = store.array(path).shards[0]
    before = store.array(path)[:]
    file, chunks = _inner_chunks(store, path, 1)
    victim = s + 1  # the second clip of the second shard
    with open(file, "rb") as f:
        data = bytearray(f.read())
    offset = data.find(chunks[1])
    data[offset + len(chunks[1]) // 2] ^= 0xFF
    with open(file, "wb") as f:
        f.write(bytes(data))
    report = verify_store(store, [path])
    assert [(d.array, d.clip_id) for d in report.damaged] == [(path, store.clips.clip_id.iloc[victim])]
    assert "inner chunk 1" in report.damaged[0].reason
    repair(store, report)
    assert verify_store(store, [path]).ok
    assert store.array(path)[:].tobytes() == before.tobytes()
    _, repaired = _inner_chunks(store, path, 1)
    assert repaired == chunks, "every inner chunk, the neighbours' too, holds the bytes of the clean run"


@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_a_shard_whose_index_is_lost_is_reported_clip_by_clip_and_repaired_whole(pair, tmp_path, demo_root, damage):
    """A shard object overwritten or cut short (a failed upload, a full disk) loses its index: every
    clip of it is damaged, and repair, which must write the shard without reading it, restores
    the bytes of the clean run; the other shards are untouched."""
    flat, _ = pair
    store = _made(demo_root, str(tmp_path / "lost.zarr"), 0.25)
    path = "audio/mel"
    s = store.array(path).shards[0]
    file, _ = _inner_chunks(store, path, 1)
    with open(file, "r+b") as f:
        if damage == "overwritten":
            f.write(b"garbage\n")
            f.truncate()
        else:
            f.truncate(os.path.getsize(file) // 2)
    report = verify_store(store, [path])
    assert sorted(d.clip_id for d in report.damaged) == sorted(store.clips.clip_id.iloc[s : 2 * s])
    expected = "shorter than its index" if damage == "overwritten" else "the shard index fails its crc32c"
    assert all(expected in d.reason for d in report.damaged), report.damaged[0].reason
    repair(store, report)
    assert verify_store(store, [path]).ok
    assert store.array(path)[:].tobytes() == flat.array(path)[:].tobytes()


def test_resume_rewrites_a_shard_keeping_its_done_clips(pair, tmp_path, demo_root):
    """A run that stopped part-way through a shard (only some clips done, as a kill leaves it)
    resumes to the bytes of a clean run."""
    flat, _ = pair
    store = featstore.init_store(str(tmp_path / "resumed.zarr"), clip_duration_s=CLIP_S, shard_mb=0.25)
    ingest(store, demo_root)
    first = [str(c) for c in store.clips.clip_id.iloc[[0, 1, 2, 9]]]
    assert extract_audio(store, workers=0, features=("mel",), clips=first, progress=False).done == 4
    report = extract_audio(store, workers=0, features=("mel",), progress=False)
    assert report.done == 16 and report.skipped == 4
    assert store.array("audio/mel")[:].tobytes() == flat.array("audio/mel")[:].tobytes()


def test_init_shards_by_default_and_dimension_names_are_unique(tmp_path):
    url = str(tmp_path / "cli.zarr")
    run_cli("init", url, "--clip-duration-s", str(CLIP_S), check=True)
    store = featstore.open_store(url)
    assert store.shard_mb == 128.0
    store.add_clips(store.clips.iloc[:0])
    array = store.create_array("embeddings/m/fc10", per_clip_shape=(3, 10), dtype="float32", dims=("segment", "dim"), stage="t", params={})
    assert array.shards is not None and array.metadata.dimension_names == ("clip", "segment", "fc10_dim")
    from featstore.info import format_info, store_info

    assert [a["clips_per_shard"] for a in store_info(store)["arrays"]] == [4096]
    assert "chunks (1, 3, 10) in shards of 4096 clips" in format_info(store_info(store)), "info shows the layout"
    assert featstore.init_store(str(tmp_path / "api.zarr")).shard_mb == 128.0, "the Python API: the same default"
    clip_level = store.create_array("predictions/r", per_clip_shape=(1, 10), dtype="float32", dims=("clip", "class"), stage="t", params={})
    assert clip_level.metadata.dimension_names == ("clip", "clip_unit", "class")
    array[:] = np.ones((0, 3, 10), np.float32)
    import xarray as xr

    dataset = xr.open_zarr(store.url, group="embeddings/m", consolidated=False)
    assert dataset["fc10"].dims == ("clip", "segment", "fc10_dim")
