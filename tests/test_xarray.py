"""xarray views of a store: every group opens as a Dataset, the whole store as a DataTree, each axis
with its coordinate, checked against independent computations (librosa's and the gammatone
package's frequencies, the clips table, the segment grid)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gammatone.filters
import librosa
import numpy as np
import pytest
import xarray as xr

import featstore
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.runs import write_predictions
from featstore.verify import verify_store
from tests.conftest import CLIP_S

SR, HOP = 32000, 448  # extract-audio's defaults: 32 kHz, 14 ms hop
FEATURES = ("mel", "gam", "cqt", "mfcc")


def open_group(url: str, group: str) -> xr.Dataset:
    with warnings.catch_warnings():  # zarr names the non-Zarr folder _featstore/ it skips
        warnings.filterwarnings("ignore", message="Object at _featstore")
        return xr.open_zarr(url, group=group, consolidated=False)


def open_tree(url: str) -> xr.DataTree:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at _featstore")
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated metadata")
        return xr.open_datatree(url, engine="zarr")


@pytest.fixture(scope="module", params=[0.0, 1.0], ids=["one-object-per-clip", "sharded"])
def growing_store(request, tmp_path_factory, demo_root):
    """A store that got 12 clips, features and frames of a few of them and two runs' predictions,
    then 8 clips more, then the MEL of one of those (read only by the tests)."""
    tmp_path = tmp_path_factory.mktemp("growing")
    scratch = featstore.init_store(str(tmp_path / "scratch.zarr"), clip_duration_s=CLIP_S)
    from featstore.pipelines.ingest import ingest

    ingest(scratch, demo_root)
    everything = scratch.clips
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S, shard_mb=request.param)
    store.set_dataset_root(scratch.dataset_root)
    store.add_clips(everything.iloc[:12])
    first = list(everything.clip_id[:2])
    assert extract_audio(store, workers=0, features=FEATURES, clips=first, progress=False).done == 2
    assert extract_frames(store, workers=0, size=16, clips=first, progress=False).done == 2
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=(12, 3)).astype(np.float32)
    write_predictions(store, "f4-run", np.arange(12), probs, stage="fuse", params={}, unit="segment")
    write_predictions(store, "late", np.arange(12), probs.mean(axis=1, keepdims=True), stage="ensemble", params={}, unit="clip")
    store.add_clips(everything.iloc[12:])
    assert extract_audio(store, workers=0, features=("mel",), clips=[everything.clip_id[15]], progress=False).done == 1
    return store


def test_every_group_opens_with_its_coordinates(growing_store):
    store = growing_store
    ids = store.clips.clip_id.to_numpy()

    audio = open_group(store.url, "audio")
    # the MEL grew to the 20 clips: its group's other arrays and clip ids follow
    assert audio.sizes["clip"] == 20 and audio["clip"].values.tolist() == ids.tolist()
    assert audio["mel"].dims == ("clip", "mel_channel", "mel_bin", "mel_frame")
    assert audio["mel_bin"].attrs["units"] == "Hz" and audio["mel_frame"].attrs["units"] == "s"
    np.testing.assert_allclose(audio["mel_bin"], librosa.mel_frequencies(130, fmin=0.0, fmax=SR / 2)[1:-1])
    # independently of that formula: each mel filter peaks at its centre (within an FFT bin, 12.5 Hz)
    filters = librosa.filters.mel(sr=SR, n_fft=2560, n_mels=128, fmin=0.0, fmax=SR / 2)
    peaks = librosa.fft_frequencies(sr=SR, n_fft=2560)[filters.argmax(axis=1)]
    assert np.abs(peaks - audio["mel_bin"].values).max() <= SR / 2560
    np.testing.assert_allclose(audio["cqt_bin"], librosa.cqt_frequencies(128, fmin=50.0, bins_per_octave=16))
    np.testing.assert_allclose(audio["gam_bin"], gammatone.filters.centre_freqs(SR, 128, 50.0)[::-1])
    assert audio["mfcc_bin"].values.tolist() == list(range(40))
    per_segment = librosa.frames_to_time(np.arange(1 + SR // HOP), sr=SR, hop_length=HOP)
    for feature in FEATURES:
        expected = (np.arange(store.n_segments)[:, None] * store.segment_s + per_segment[None, :]).ravel()
        np.testing.assert_allclose(audio[f"{feature}_frame"], expected)
        assert audio[feature].shape[3] == len(expected)
    # the values are the store's, found by coordinate
    clip = ids[15]
    np.testing.assert_array_equal(audio["mel"].sel(clip=clip).values, store.array("audio/mel")[15])
    low = audio["mel"].sel(clip=ids[0], mel_bin=slice(None, 1000.0))
    assert low.sizes["mel_bin"] == int((audio["mel_bin"] <= 1000.0).sum()) and 0 < low.sizes["mel_bin"] < 128

    frames = open_group(store.url, "frames")
    assert frames.sizes["clip"] == 12 and frames["clip"].values.tolist() == ids[:12].tolist()
    assert frames["rgb"].dims == ("clip", "frame", "height", "width", "channel") and "rgb" in frames.data_vars
    np.testing.assert_allclose(frames["frame"], np.arange(6) / 2.0)
    # the frame kept for each target time is the nearest one decoded (25 fps: within half a frame)
    assert np.abs(frames["time_s"].sel(clip=ids[:2]).values - frames["frame"].values).max() <= 0.5 / 25 + 1e-6

    predictions = open_group(store.url, "predictions")
    assert predictions["clip"].values.tolist() == ids[:12].tolist()
    assert predictions["class"].values.tolist() == store.classes
    np.testing.assert_array_equal(predictions["segment"], store.segment_s * np.arange(store.n_segments))
    assert predictions["f4-run"].dims == ("clip", "segment", "class")
    assert predictions["late"].dims == ("clip", "clip_unit", "class")
    np.testing.assert_array_equal(predictions["late"].sel(clip=ids[3], **{"class": "metro"}).values, store.array("predictions/late")[3, :, store.classes.index("metro")])


def test_the_whole_store_opens_as_a_tree_and_coordinates_stay_out_of_listings(growing_store):
    store = growing_store
    tree = open_tree(store.url)
    assert set(tree.children) == {"audio", "frames", "predictions"}
    for name, node in tree.children.items():
        assert node["clip"].values.tolist() == store.clips.clip_id[: node.sizes["clip"]].tolist(), name
        assert set(open_group(store.url, name).data_vars) == set(node.data_vars) == {p.split("/")[1] for p in store.array_paths() if p.startswith(f"{name}/")}
    # featstore's own listings hold the per-clip arrays only
    assert store.array_paths() == sorted(
        [f"audio/{f}" for f in FEATURES] + ["frames/rgb", "frames/time_s", "predictions/f4-run", "predictions/late"]
    )
    report = verify_store(store)  # which finds arrays by scanning the files
    assert report.ok and report.arrays == store.array_paths()
    with pytest.raises(featstore.ConfigError, match="coordinate"):
        store.create_array("audio/mel_bin", per_clip_shape=(1,), dtype="float32", dims=("x",), stage="t", params={})


@pytest.mark.slow  # a full embed of two tiny models: over the fast tier's budget
def test_embeddings_and_model_predictions_open_with_coordinates(demo_store, tmp_path):
    import keras

    from featstore.models import build_model
    from featstore.pipelines.embed import embed

    store = demo_store
    first = list(store.clips.clip_id[:2])
    extract_audio(store, workers=0, features=("mel",), clips=first, progress=False)
    extract_frames(store, workers=0, size=32, clips=first, progress=False)
    keras.utils.set_random_seed(1)
    build_model("aud-mel", input_shape=(128, 72, 6), widths=(4, 8), head_units=16).save(audio_file := str(tmp_path / "a.keras"))
    build_model("vis-conv", input_shape=(32, 32, 3), head_units=16).save(visual_file := str(tmp_path / "v.keras"))
    assert embed(store, "aud-mel", model_file_path=audio_file, clips=first)[0].done == 2
    assert embed(store, "vis-conv", model_file_path=visual_file, input_array="frames/rgb", clips=first)[0].done == 2

    tree = open_tree(store.url)
    for node in tree.subtree:  # every group, each on its own
        assert set(open_group(store.url, node.path.lstrip("/") or None).data_vars) == set(node.data_vars), node.path
    audio_model = tree["embeddings/aud-mel"].to_dataset()
    assert audio_model["fc1024"].dims == ("clip", "segment", "fc1024_dim") and audio_model["fc10"].dims == ("clip", "segment", "class")
    assert audio_model["class"].values.tolist() == store.classes
    np.testing.assert_array_equal(audio_model["segment"], np.arange(3) * store.segment_s)
    visual_model = open_group(store.url, "embeddings/vis-conv")
    np.testing.assert_allclose(visual_model["frame"], np.arange(6) / 2.0)
    predictions = tree["predictions"].to_dataset()
    assert predictions["aud-mel"].dims == ("clip", "segment", "class")
    assert predictions["vis-conv"].dims == ("clip", "vis-conv_frame", "class")
    np.testing.assert_allclose(predictions["vis-conv_frame"], np.arange(6) / 2.0)
    np.testing.assert_array_equal(predictions["aud-mel"].sel(clip=first[1]).values, store.array("predictions/aud-mel")[1])
    assert predictions["clip"].values.tolist() == store.clips.clip_id.tolist()


def test_an_array_made_with_the_older_axis_names_gets_the_current_ones_when_reused(demo_store):
    store = demo_store
    first = [store.clips.clip_id[0]]
    extract_audio(store, workers=0, features=("mel", "mfcc"), clips=first, progress=False)
    for feature in ("mel", "mfcc"):  # as an older featstore wrote them: bin and frame shared by every feature
        meta = Path(store.url, "audio", feature, "zarr.json")
        doc = json.loads(meta.read_text())
        doc["dimension_names"] = doc["attributes"]["featstore"]["dims"] = ["clip", "channel", "bin", "frame"]
        meta.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="conflicting sizes for dimension 'bin'"):
        open_group(store.url, "audio")
    before = store.array("audio/mel")[0]
    assert extract_audio(store, workers=0, features=("mel", "mfcc"), clips=first, progress=False).skipped == 1
    audio = open_group(store.url, "audio")
    assert audio["mel"].dims == ("clip", "mel_channel", "mel_bin", "mel_frame") and audio["mfcc"].dims[2] == "mfcc_bin"
    assert store.provenance("audio/mel")["dims"] == ["clip", "mel_channel", "mel_bin", "mel_frame"]
    np.testing.assert_array_equal(audio["mel"].sel(clip=first[0]).values, before)


def test_a_coordinate_of_another_dtype_is_overwritten_and_one_of_the_same_kind_resized(tmp_path):
    """write_coordinate keeps the values exactly: a float coordinate replacing an int one is
    rewritten as floats (not truncated), a longer one of the same dtype is resized in place."""
    import zarr

    from featstore.coords import Coordinate, write_coordinate

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    write_coordinate(group, "mfcc_bin", Coordinate(np.arange(3), "", "coefficient"))
    write_coordinate(group, "mfcc_bin", Coordinate(np.array([100.5, 200.25, 300.75]), "Hz", "centre"))
    np.testing.assert_array_equal(group["mfcc_bin"][:], [100.5, 200.25, 300.75])
    write_coordinate(group, "clip", Coordinate(np.array(["a", "b"]), "", "clip id"))
    write_coordinate(group, "clip", Coordinate(np.array(["a", "b", "c"]), "", "clip id"))
    assert list(group["clip"][:]) == ["a", "b", "c"]


def test_a_coordinate_already_recorded_is_not_written_again(tmp_path):
    """A stage run again finds its group's coordinates as they are: no chunk is rewritten."""
    import zarr

    from featstore.coords import Coordinate, write_coordinate

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    write_coordinate(group, "clip", Coordinate(np.array(["a", "b"]), "", "clip id"))
    chunk = tmp_path / "g.zarr" / "clip" / "c" / "0"
    recorded = chunk.stat().st_ino  # a chunk write lands as a new file (written aside, then renamed)
    write_coordinate(group, "clip", Coordinate(np.array(["a", "b"]), "", "clip id"))
    assert chunk.stat().st_ino == recorded
    write_coordinate(group, "clip", Coordinate(np.array(["a", "c"]), "", "clip id"))
    assert list(group["clip"][:]) == ["a", "c"] and chunk.stat().st_ino != recorded
