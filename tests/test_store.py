"""The store core: round trips, provenance, done-marks, failures, settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

import featstore
from featstore.ledger import Ledger


def _some_clips(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "clip_id": [f"c{i}" for i in range(n)],
            "label": ["bus"] * n,
            "split": ["train"] * n,
            "audio_path": [f"audio/c{i}.wav" for i in range(n)],
            "audio_fingerprint": [f"fp{i}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("where", ["local", "memory"])
def test_round_trip(tmp_path, where):
    url = str(tmp_path / "s.zarr") if where == "local" else f"memory://rt-{id(tmp_path)}"
    store = featstore.init_store(url, segment_s=0.5, clip_duration_s=2.0)
    assert store.add_clips(_some_clips(3)) == 3
    array = store.create_array(
        "audio/mel", per_clip_shape=(2, 4, 5), dtype="float16", dims=("channel", "bin", "frame"),
        stage="test", params={"a": 1},
    )
    value = np.arange(40, dtype=np.float16).reshape(2, 4, 5)
    array[1] = value

    again = featstore.open_store(url)
    assert again.segment_s == 0.5 and again.n_segments == 4 and again.classes == list(featstore.CLASSES)
    assert list(again.clips["clip_id"]) == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(again.array("audio/mel")[1], value)
    assert np.isnan(again.array("audio/mel")[0]).all(), "an unwritten clip must read as NaN, never zeros"
    assert again.array_paths() == ["audio/mel"]
    segments = again.segments
    assert len(segments) == 3 * 4
    assert segments.iloc[5][["clip_id", "segment", "start_s", "end_s"]].tolist() == ["c1", 1, 0.5, 1.0]


def test_array_layout_and_provenance(tmp_path):
    store = featstore.init_store(str(tmp_path / "s.zarr"), shard_mb=0)  # the codecs of each clip's object (sharded: test_sharding)
    store.add_clips(_some_clips(2))
    array = store.create_array("x/y", per_clip_shape=(3,), dtype="float32", dims=("d",), stage="st", params={"p": 2})
    assert array.chunks == (1, 3), "one chunk per clip"
    codecs = [type(c).__name__ for c in array.metadata.codecs]
    assert codecs == ["BytesCodec", "BloscCodec", "Crc32cCodec"], "floats: Blosc lz4 + bit-shuffle, then a checksum"
    assert array.metadata.codecs[1].shuffle.value == "bitshuffle" and array.metadata.codecs[1].cname.value == "lz4"
    frames = store.create_array("x/u8", per_clip_shape=(4, 4), dtype="uint8", dims=("h", "w"), stage="st", params={})
    assert [type(c).__name__ for c in frames.metadata.codecs] == ["BytesCodec", "ZstdCodec", "Crc32cCodec"]
    assert array.metadata.dimension_names == ("clip", "d")
    prov = store.provenance("x/y")
    assert prov["stage"] == "st" and prov["params"] == {"p": 2}
    assert set(prov["library_versions"]) >= {"numpy", "zarr", "librosa"}
    assert len(prov["fingerprint"]) == 32
    # plain zarr sees the same thing
    assert zarr.open_group(store.url, mode="r")["x/y"].shape == (2, 3)


def test_params_mismatch_names_the_parameter(tmp_path):
    store = featstore.init_store(str(tmp_path / "s.zarr"))
    store.add_clips(_some_clips(1))
    kw = dict(per_clip_shape=(3,), dtype="float32", dims=("d",), stage="st")
    store.create_array("x", params={"hop": 1, "sr": 8}, **kw)
    with pytest.raises(featstore.ParamsMismatch, match="hop: stored 1, asked 2"):
        store.create_array("x", params={"hop": 2, "sr": 8}, **kw)
    store.create_array("x", params={"hop": 1, "sr": 8}, **kw)  # same params: reused
    store.create_array("x", params={"hop": 2, "sr": 8}, overwrite=True, **kw)
    assert store.provenance("x")["params"]["hop"] == 2


def test_array_grows_when_clips_are_added(tmp_path):
    store = featstore.init_store(str(tmp_path / "s.zarr"))
    store.add_clips(_some_clips(2))
    kw = dict(per_clip_shape=(3,), dtype="float32", dims=("d",), stage="st", params={})
    store.create_array("x", **kw)[0] = np.ones(3)
    store.add_clips(_some_clips(5))
    grown = store.create_array("x", **kw)
    assert grown.shape == (5, 3)
    np.testing.assert_array_equal(grown[0], np.ones(3))


def test_done_marks(tmp_path):
    store = featstore.init_store(str(tmp_path / "s.zarr"))
    store.add_clips(_some_clips(2))
    store.create_array("x", per_clip_shape=(1,), dtype="float32", dims=("d",), stage="st", params={})
    ledger = store.ledger("x")
    assert not store.is_done("x", "c0", "fp0")
    ledger.mark_done("c0", "fp0", crc32=123, info={"n": 1})
    assert not store.is_done("x", "c0", "fp0"), "not persisted before flush"
    ledger.flush(store.side)
    assert store.is_done("x", "c0", "fp0")
    assert not store.is_done("x", "c0", "other-input"), "a changed input is not done"
    assert not store.is_done("x", "c1", "fp1")
    # a ledger written for another fingerprint does not count
    assert Ledger.load(store.side, "x", "another-fingerprint").entries == {}
    assert store.ledger("x").info_table().loc["c0", "n"] == 1


def test_failures_record(tmp_path):
    store = featstore.init_store(str(tmp_path / "s.zarr"))
    record = store.failures_record()
    record.record("extract-audio", "audio/mel", "c1", "MediaError", "cannot decode")
    record.record("extract-audio", "audio/mel", "c2", "ValueError", "NaN")
    record.record("extract-audio", "audio/mel", "c1", "MediaError", "still broken")
    record.flush()
    table = featstore.open_store(store.url).failures
    assert sorted(table["clip_id"]) == ["c1", "c2"]
    assert table.set_index("clip_id").loc["c1", "message"] == "still broken"
    record = store.failures_record()
    record.clear("extract-audio", "c1")
    record.flush()
    assert list(store.failures["clip_id"]) == ["c2"]


def test_init_refuses_other_settings(tmp_path):
    featstore.init_store(str(tmp_path / "s.zarr"), segment_s=1.0)
    with pytest.raises(featstore.StoreError, match="other settings"):
        featstore.init_store(str(tmp_path / "s.zarr"), segment_s=0.5)
    with pytest.raises(featstore.StoreError, match="no featstore store"):
        featstore.open_store(str(tmp_path / "nothing.zarr"))


def test_import_does_not_load_tensorflow():
    import subprocess
    import sys

    code = "import featstore, sys; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
