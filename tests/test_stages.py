"""Stage configs: one default per option, recorded whole in provenance and rebuilt from it; the
STAGES registry lets `verify --repair` re-run any stage-made array; the CLI mirrors the configs;
one error root."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import click
import keras
import numpy as np
import pytest

import featstore
from featstore.cli.main import main
from featstore.models import MODELS, build_model
from featstore.pipelines.audio_features import FEATURES
from featstore.pipelines.embed import LAYERS, EmbedConfig, embed
from featstore.pipelines.extract_audio import AudioConfig, extract_audio
from featstore.pipelines.extract_frames import FramesConfig, extract_frames
from featstore.pipelines.fuse import FuseConfig
from featstore.pipelines.train_backbone import TrainConfig
from featstore.pipelines.stages import STAGES, config_for_array
from tests.conftest import run_cli


def _command_params(name: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in main.get_command(None, name).params}


def _training_configs():
    from featstore.pipelines.fuse import FuseConfig
    from featstore.pipelines.train_backbone import TrainConfig
    from featstore.pipelines.train_joint import JointConfig

    return [("train-backbone", TrainConfig), ("train-joint", JointConfig), ("fuse", FuseConfig)]


@pytest.mark.parametrize("command, config_class", [("extract-audio", AudioConfig), ("extract-frames", FramesConfig), *_training_configs()])
def test_every_cli_default_equals_its_config_default(command, config_class):
    """Every option of a config with a default is a CLI option with that default (one home), and the
    shared optimisation options have one help text in every training command; a range is shown."""
    from featstore.pipelines.config import TRAINING_OPTIONS, describe_range

    params = _command_params(command)
    for f in dataclasses.fields(config_class):
        if f.default is dataclasses.MISSING or not f.metadata.get("cli", True):
            continue  # derived or checked by the command itself (model, name, window_s...)
        option = params[f.name]
        default = option.default
        if isinstance(f.default, tuple):
            default = option.process_value(click.Context(main.get_command(None, command)), default)
        assert default == f.default, f"{command} --{f.name}: CLI default {option.default!r}, config {f.default!r}"
        if f.metadata["choices"] and not isinstance(f.default, tuple):
            assert list(option.type.choices) == list(f.metadata["choices"])
        if f.name in TRAINING_OPTIONS:
            assert option.help.startswith(TRAINING_OPTIONS[f.name][1])
        if f.metadata["range"]:
            assert option.help.endswith(f"Allowed: {describe_range(f.metadata['range'])}.")


def test_fuse_trains_longer_on_bigger_batches_than_the_backbones():
    from featstore.pipelines.fuse import FuseConfig
    from featstore.pipelines.train_backbone import TrainConfig

    fuse, backbone = FuseConfig(method="f4"), TrainConfig("aud-mel", "audio/mel", 1.0)
    assert (fuse.epochs, fuse.batch_size) == (30, 256) and (backbone.epochs, backbone.batch_size) == (10, 32)
    assert _command_params("fuse")["widths"].process_value(click.Context(main.get_command(None, "fuse")), "512,64") == (512, 64)
    assert _command_params("train-backbone")["augment"].secondary_opts == ["--no-augment"]
    assert _command_params("train-backbone")["weights_file"].opts == ["--weights"]


def test_cli_choices_come_from_the_registries():
    from featstore.models.fusion import HEADS, METHODS
    from featstore.pipelines.ensemble import RULES

    assert list(_command_params("train-backbone")["model"].type.choices) == list(MODELS)
    # embed's --layer "all" is EmbedConfig's default layers
    assert _command_params("embed")["layer"].default == "all"
    assert {f.name: f.default for f in dataclasses.fields(EmbedConfig)}["layers"] == LAYERS
    assert list(_command_params("ensemble")["rule"].type.choices) == list(RULES)
    assert set(_command_params("fuse")["method"].type.choices) == {*METHODS, *HEADS, "all"}
    assert FuseConfig(method="all").methods() == METHODS and FuseConfig(method="f5").methods() == ("f5",)
    import featstore.models as registries
    import featstore.pipelines.demo as demo

    assert METHODS is registries.METHODS and not hasattr(demo, "FUSE_METHODS")  # one registry, no copies
    assert set(STAGES) == {"extract-audio", "extract-frames", "embed"}
    assert all(name in main.list_commands(None) for name in STAGES)


def test_configs_round_trip_through_provenance(demo_store):
    audio = AudioConfig(features=("mel", "cqt"), n_bins=64, dtype="float32", name="a64")
    frames = FramesConfig(fps=1.0, size=40, resize="crop")
    assert extract_audio(demo_store, audio, workers=0).done == 20
    assert extract_frames(demo_store, frames, workers=0).done == 20
    assert config_for_array(demo_store, "a64/mel") == dataclasses.replace(audio, features=("mel",))
    assert config_for_array(demo_store, "a64/cqt") == dataclasses.replace(audio, features=("cqt",))
    assert config_for_array(demo_store, "frames/rgb") == frames
    assert config_for_array(demo_store, "frames/time_s") == frames
    prov = demo_store.provenance("a64/mel")
    assert prov.modality == "audio" and prov.frames_per_segment == 72 and prov.input_array is None
    assert demo_store.provenance("frames/rgb").modality == "visual"
    # the rebuilt stage is the same stage: same fingerprint, so nothing is recomputed
    rebuilt = config_for_array(demo_store, "a64/mel").build(demo_store)
    assert {**rebuilt.params, **rebuilt.outputs[0].params} == demo_store.provenance("a64/mel").params
    assert extract_audio(demo_store, config_for_array(demo_store, "a64/cqt"), workers=0).skipped == 20


def test_legacy_provenance_without_config_is_rebuilt_from_params(demo_store):
    assert extract_audio(demo_store, AudioConfig(features=("gam",), hop_ms=20.0), workers=0).done == 20
    array = demo_store.array("audio/gam")
    attrs = dict(array.attrs["featstore"])
    del attrs["config"], attrs["modality"]  # as written by featstore 0.1
    array.attrs["featstore"] = attrs
    assert config_for_array(demo_store, "audio/gam") == AudioConfig(features=("gam",), hop_ms=20.0)
    assert demo_store.provenance("audio/gam").modality == "audio"


def test_invalid_options_are_config_errors_that_name_the_option():
    with pytest.raises(featstore.ConfigError, match=f"--features must be a subset of {', '.join(FEATURES)}, got xyz"):
        AudioConfig(features=("xyz",))
    with pytest.raises(featstore.ConfigError, match="--resize must be one of squash, crop"):
        FramesConfig(resize="stretch")
    with pytest.raises(featstore.ConfigError, match="registered model"):
        EmbedConfig()


@pytest.mark.parametrize("make, message", [
    (lambda: FuseConfig(method="f4", batch_size=0), "--batch-size must be >= 1, got 0"),
    (lambda: FuseConfig(method="f4", lr=float("nan")), "--lr must be a finite number > 0"),
    (lambda: FuseConfig(method="f4", modalities=()), "--modalities must name at least one"),
    (lambda: TrainConfig("aud-mle"), "did you mean 'aud-mel'"),
    (lambda: AudioConfig(sr=0), "--sr must be >= 1000, got 0"),
    (lambda: AudioConfig(win_ms=float("inf")), "--win-ms must be a finite number > 0"),
    (lambda: FramesConfig(size=-5), "--size must be >= 1, got -5"),
    (lambda: featstore.init_store("memory://never", segment_s=float("nan")), "--segment-s"),
])
def test_the_python_api_refuses_what_the_cli_refuses(make, message):
    with pytest.raises(featstore.ConfigError, match=message.replace("(", r"\(")):
        make()


def test_an_unknown_backbone_is_an_error_not_a_fallback():
    from featstore.models.visual import visual_backbone

    with pytest.raises(featstore.ConfigError, match="did you mean 'aud-mel'"):
        build_model("aud-mle", input_shape=(8, 8, 2))
    with pytest.raises(featstore.ConfigError, match="no visual backbone 'vis-convnext'.*did you mean 'vis-conv'"):
        visual_backbone("vis-convnext", keras.Input((16, 16, 3)), arch="tiny")


def test_errors_share_one_root_and_keep_builtin_bases():
    for error in (featstore.StoreError, featstore.ParamsMismatch, featstore.LockHeld, featstore.IngestError,
                  featstore.ClipConflict, featstore.MediaError, featstore.ConfigError, featstore.NotFoundError):
        assert issubclass(error, featstore.FeatstoreError)
    assert issubclass(featstore.IngestError, ValueError) and issubclass(featstore.NotFoundError, KeyError)
    assert str(featstore.NotFoundError("no clip 'x' in the store")) == "no clip 'x' in the store"


def test_cli_prints_user_errors_in_one_line_and_bugs_with_a_traceback(demo_store):
    proc = run_cli("extract-audio", demo_store.url, "--clips", "nonexistent-split", "--workers", "0")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "featstore: error: --clips 'nonexistent-split' is neither a split name nor a file of clip_ids"
    proc = run_cli("info", demo_store.url + "-missing")
    assert proc.returncode == 1 and "no featstore store at" in proc.stderr and "Traceback" not in proc.stderr


def _chunk_file(store: featstore.Store, path: str, clip_index: int) -> str:
    array = store.array(path)
    return os.path.join(store.url, path, "c", str(clip_index), *(["0"] * (array.ndim - 1)))


def test_repair_restores_a_flipped_byte_in_an_embedding_chunk_bitwise(flat_demo_store, tmp_path):
    demo_store = flat_demo_store  # a clip's own chunk file is damaged
    assert extract_audio(demo_store, AudioConfig(features=("mel",)), workers=0).done == 20
    keras.utils.set_random_seed(0)
    model_path = str(tmp_path / "m.keras")
    build_model("aud-mel", input_shape=(128, 72, 6), widths=(4, 8), head_units=16).save(model_path)
    report, _ = embed(demo_store, "aud-mel", model_file_path=model_path)
    assert report.done == 20
    paths = ["embeddings/aud-mel/fc1024", "embeddings/aud-mel/fc10", "predictions/aud-mel"]
    before = {p: demo_store.array(p)[:] for p in paths}
    assert config_for_array(demo_store, "embeddings/aud-mel/fc10") == EmbedConfig(model="aud-mel", layers=("fc10",))
    assert config_for_array(demo_store, "predictions/aud-mel") == EmbedConfig(model="aud-mel", layers=())
    for path, clip in (("embeddings/aud-mel/fc10", 4), ("predictions/aud-mel", 9)):
        chunk = _chunk_file(demo_store, path, clip)
        raw = bytearray(open(chunk, "rb").read())
        raw[len(raw) // 2] ^= 0x01
        open(chunk, "wb").write(bytes(raw))
    proc = run_cli("verify", demo_store.url, "--json")
    assert proc.returncode == 4
    assert {(d["array"], d["clip_id"]) for d in json.loads(proc.stdout)["damaged"]} == {
        ("embeddings/aud-mel/fc10", demo_store.clips.clip_id[4]), ("predictions/aud-mel", demo_store.clips.clip_id[9])}
    proc = run_cli("verify", demo_store.url, "--repair", "--json")
    assert proc.returncode == 0, proc.stderr
    for path, values in before.items():
        assert demo_store.array(path)[:].tobytes() == values.tobytes(), f"{path} not restored bitwise"


def test_killed_repair_leaves_the_unrepaired_clips_reported_as_damage(flat_demo_store):
    """SIGKILL `verify --repair` after its first repaired chunk lands: `verify` must still report
    every clip whose chunk is not back (the done-marks are not forgotten before recomputing)."""
    store = flat_demo_store
    assert extract_audio(store, AudioConfig(features=("mel", "gam", "cqt")), workers=0).done == 20
    lost = list(range(2, 20))
    for i in lost:
        for feature in ("mel", "gam", "cqt"):
            os.remove(_chunk_file(store, f"audio/{feature}", i))
    first = _chunk_file(store, "audio/mel", lost[0])
    proc = subprocess.Popen([sys.executable, "-m", "featstore.cli.main", "verify", store.url, "--repair"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "FEATSTORE_FLUSH_S": "0.05"})
    deadline = time.monotonic() + 180
    while not os.path.exists(first) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "repair must still be running when it is killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    missing = {(f"audio/{f}", str(store.clips.clip_id[i])) for i in lost for f in ("mel", "gam", "cqt")
               if not os.path.exists(_chunk_file(store, f"audio/{f}", i))}
    assert missing, "killed before the repair finished"
    after = run_cli("verify", store.url, "--json")
    assert after.returncode == 4
    damaged = {(d["array"], d["clip_id"]) for d in json.loads(after.stdout)["damaged"]}
    assert missing <= damaged, f"unrepaired clips not reported: {sorted(missing - damaged)[:3]}"
    assert run_cli("verify", store.url, "--repair").returncode == 0
    assert np.isfinite(store.array("audio/cqt")[:].astype(np.float32)).all()
