"""The audio feature registry: one config per feature, fingerprints of arrays made before it kept."""

from __future__ import annotations

import dataclasses
from functools import partial

import click
import numpy as np

from featstore.cli.main import main
from featstore.pipelines.audio_features import FEATURES
from featstore.pipelines.extract_audio import AudioConfig, compute_audio, extract_audio
from featstore.pipelines.stage import OutputSpec, Stage
from featstore.pipelines.runner import run_stage
from featstore.pipelines.stages import config_for_array


def _old_params(store, **audio) -> dict:
    """The parameters every audio array recorded before per-feature configs: one shared set."""
    shared = {"sr": 32000, "n_bins": 128, "win_ms": 80.0, "hop_ms": 14.0, "segment_s": store.segment_s, "n_segments": store.n_segments,
              "channels": 2, "mel_fmin_hz": 0.0, "gam_fmin_hz": 50.0, "cqt_fmin_hz": 50.0, "cqt_bins_per_octave": 16, "delta_width": 9, **audio}
    return {"audio": shared, "dtype": "float16", "store_deltas": False, "frames_per_segment": 1 + 32000 // int(round(shared["hop_ms"] * 32))}


def _extract_as_before(store, feature: str) -> None:
    """Write ``audio/{feature}`` with the old layout's provenance: the shared parameter set as the
    stage's params, ``{"feature": ...}`` as the array's, the config of the old options only (at
    today's code version: only the parameters' layout is old here)."""
    old_config = {"features": [feature], "sr": 32000, "n_bins": 128, "win_ms": 80.0, "hop_ms": 14.0, "dtype": "float16", "store_deltas": False, "name": "audio"}
    params = _old_params(store)
    plan = {"grid": params["audio"], "dtype": "float16", "store_deltas": False, "features": {feature: FEATURES[feature]().to_dict()}}
    output = OutputSpec(name=feature, path=f"audio/{feature}", per_clip_shape=(2, 128, 3 * 72), dtype="float16", dims=("channel", "bin", "frame"),
                        params={"feature": feature}, config=old_config)
    stage = Stage("extract-audio", params, (output,), partial(compute_audio, plan=plan), input_fingerprint=lambda row: row["audio_fingerprint"], modality="audio",
                  code_version=AudioConfig.code_version)
    assert run_stage(store, stage, workers=0).done == 20


def test_arrays_made_before_keep_their_fingerprints_and_mfcc_is_added_beside_them(demo_store):
    store = demo_store
    _extract_as_before(store, "mel")
    fingerprint = store.array("audio/mel").attrs["featstore"]["fingerprint"]
    ledger = store.ledger("audio/mel").info_table()
    report = extract_audio(store, features=("mel",), workers=0)
    assert (report.done, report.skipped) == (0, 20)  # recognised: no mismatch, no recompute
    assert extract_audio(store, features=("mfcc",), workers=0).done == 20
    assert store.array("audio/mel").attrs["featstore"]["fingerprint"] == fingerprint
    assert store.ledger("audio/mel").info_table().equals(ledger)
    assert store.array("audio/mfcc").shape == (20, 2, 40, 3 * 72)
    # repair / predict rebuild the old array's config from its provenance: the same stage
    rebuilt = config_for_array(store, "audio/mel")
    assert rebuilt == AudioConfig(features=("mel",))
    assert rebuilt.build(store).outputs[0].params == store.provenance("audio/mel").params
    assert extract_audio(store, rebuilt, workers=0).skipped == 20
    assert config_for_array(store, "audio/mfcc") == AudioConfig(features=("mfcc",))


def test_the_old_shared_parameters_are_kept_for_every_feature_they_could_express(demo_store):
    grid = AudioConfig().audio_params(demo_store)
    for feature in ("mel", "gam", "cqt"):
        assert AudioConfig().output_params(feature, grid) == {**_old_params(demo_store), "feature": feature}
    config = AudioConfig(n_bins=64, hop_ms=20.0, win_ms=60.0)
    for feature in ("mel", "gam", "cqt"):
        assert config.output_params(feature, config.audio_params(demo_store)) == {**_old_params(demo_store, n_bins=64, hop_ms=20.0, win_ms=60.0), "feature": feature}


def test_one_features_option_changes_only_that_features_fingerprint(demo_store):
    base, changed = AudioConfig(), AudioConfig(mel_hop_ms=10.0, gam_fmin_hz=30.0, cqt_bins_per_octave=12)
    grid = base.audio_params(demo_store)
    for feature in ("gam", "cqt"):  # neither is in the old shape now: front end and own config only
        params = changed.output_params(feature, grid)
        assert set(params) == {"audio", "dtype", "store_deltas", "feature", "frames_per_segment", feature}
        assert params["audio"] == {"sr": 32000, "segment_s": 1.0, "n_segments": 3, "channels": 2, "delta_width": 9}
    assert changed.output_params("gam", grid)["gam"] == {"hop_ms": 14.0, "n_bins": 128, "win_ms": 80.0, "fmin_hz": 30.0}
    assert changed.output_params("cqt", grid)["cqt"]["bins_per_octave"] == 12
    # a MEL-only hop: MEL's fingerprint changes, GAM's and CQT's follow their own options only
    assert changed.output_params("mel", grid)["audio"]["hop_ms"] == 10.0
    assert AudioConfig(mel_hop_ms=10.0).output_params("gam", grid) == base.output_params("gam", grid)
    assert AudioConfig(mfcc_n_mfcc=20).output_params("mel", grid) == base.output_params("mel", grid)


def test_cli_features_and_per_feature_options_come_from_the_registry():
    params = {p.name: p for p in main.get_command(None, "extract-audio").params}
    assert params["features"].help.endswith(f"Any of {','.join(FEATURES)}.")
    for name, cls in FEATURES.items():
        for f in dataclasses.fields(cls):
            option = params[f"{name}_{f.name}"]
            assert option.opts == [f"--{name}-{f.name.replace('_', '-')}"] and option.default is None
            assert isinstance(option.type, click.types.ParamType)
    result = main.get_command(None, "extract-audio").make_context("extract-audio", ["s.zarr", "--mel-hop-ms", "10", "--cqt-n-bins", "96"])
    config = AudioConfig(**{k: v for k, v in result.params.items() if k in {f.name for f in dataclasses.fields(AudioConfig)}})
    assert config.feature_config("mel").hop_ms == 10.0 and config.feature_config("cqt").n_bins == 96


def test_a_feature_with_its_own_hop_round_trips_through_provenance(demo_store):
    config = AudioConfig(features=("mel",), mel_hop_ms=20.0, dtype="float32", name="m20")
    assert extract_audio(demo_store, config, workers=0).done == 20
    assert demo_store.array("m20/mel").shape == (20, 2, 128, 3 * (1 + 32000 // 640))
    assert config_for_array(demo_store, "m20/mel") == config
    clip = demo_store.clips.clip_id[0]
    assert demo_store.audio("mel", clip, deltas=True, group="m20").shape == (6, 128, 3 * 51)  # read-time deltas per 51-frame segment
    assert extract_audio(demo_store, config_for_array(demo_store, "m20/mel"), workers=0).skipped == 20
    plain = extract_audio(demo_store, features=("mel",), hop_ms=20.0, dtype="float32", name="h20", workers=0)
    assert plain.done == 20
    np.testing.assert_array_equal(demo_store.array("m20/mel")[:], demo_store.array("h20/mel")[:])
