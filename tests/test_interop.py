"""Interoperability: HDF5 export / import, plain zarr, dask.array and xarray views of a store."""

from __future__ import annotations

import json

import dask.array
import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

import featstore
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from tests.conftest import CLIP_S, run_cli


@pytest.fixture
def full_store(demo_store):
    extract_audio(demo_store, workers=0, features=("mel", "cqt"))
    extract_frames(demo_store, workers=0, size=32)
    return demo_store


def test_hdf5_export_import_round_trip(full_store, tmp_path):
    h5 = str(tmp_path / "f.h5")
    run_cli("export", full_store.url, "--to", h5, "--arrays", "audio/mel,frames/rgb", check=True)
    with h5py.File(h5, "r") as f:
        assert set(f["audio"]) == {"mel"} and f["audio/mel"].chunks == (1, 2, 128, 216)
        assert f["audio/mel"].compression == "gzip"
        np.testing.assert_array_equal(f["audio/mel"][5], full_store.array("audio/mel")[5])
        prov = json.loads(f["audio/mel"].attrs["featstore"])
        assert prov == full_store.provenance("audio/mel")
        assert [v.decode() for v in f["clips/clip_id"][()]] == full_store.clips.clip_id.tolist()

    other = featstore.init_store(str(tmp_path / "other.zarr"), clip_duration_s=CLIP_S)
    run_cli("import-h5", other.url, h5, check=True)
    other = featstore.open_store(other.url)
    assert other.clips.clip_id.tolist() == full_store.clips.clip_id.tolist()
    for path in ("audio/mel", "frames/rgb"):
        assert other.array(path)[:].tobytes() == full_store.array(path)[:].tobytes()
        prov = other.provenance(path)
        assert prov["stage"] == "import-h5" and prov["params"]["external"] is True
        assert prov["params"]["original_provenance"]["fingerprint"] == full_store.provenance(path)["fingerprint"]
    assert len(other.ledger("audio/mel").entries) == 20
    assert run_cli("verify", other.url).returncode == 0
    # the imported features read like native ones
    np.testing.assert_array_equal(other.audio("mel", other.clips.clip_id[2]), full_store.audio("mel", full_store.clips.clip_id[2]))
    # a store whose audio/mel was made otherwise: refused before any change (no clip added)
    third = featstore.init_store(str(tmp_path / "third.zarr"), clip_duration_s=CLIP_S)
    third.create_array("audio/mel", per_clip_shape=(2, 128, 216), dtype="float16", dims=("mel_channel", "mel_bin", "mel_frame"), stage="other", params={})
    refused = run_cli("import-h5", third.url, h5)
    assert refused.returncode == 1 and "already has, made by other" in refused.stderr and "Traceback" not in refused.stderr
    assert len(featstore.open_store(third.url).clips) == 0
    assert run_cli("import-h5", other.url, h5).returncode == 0, "the same file again: nothing to refuse"


def test_plain_zarr_dask_and_xarray(full_store):
    group = zarr.open_group(full_store.url, mode="r")
    assert group["audio/mel"].shape == (20, 2, 128, 216)
    lazy = dask.array.from_zarr(full_store.url, component="audio/cqt")
    assert lazy.chunks[0] == (1,) * 20
    np.testing.assert_allclose(lazy.astype("float64").mean(axis=(1, 2, 3)).compute(), full_store.array("audio/cqt")[:].astype(np.float64).mean(axis=(1, 2, 3)), rtol=1e-3)
    audio = xr.open_zarr(full_store.url, group="audio", consolidated=False)
    assert audio["mel"].dims == ("clip", "mel_channel", "mel_bin", "mel_frame")
    frames = xr.open_zarr(full_store.url, group="frames", consolidated=False)
    assert frames["rgb"].dims == ("clip", "frame", "height", "width", "channel")
    assert frames["time_s"].dims == ("clip", "frame")
