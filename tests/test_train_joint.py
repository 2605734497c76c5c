"""`train-joint`: an audio encoder trained against cached visual embeddings. The visual encoder never
runs (its calls and the frame reads are counted: zero), validation is location-disjoint, the model is
registered like a backbone and really uses its visual input; the cached path equals running the frozen
encoder on the frames."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import featstore
from featstore.models.applications import build_application, embedding_model
from featstore.pipelines import embed as embed_mod
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest
from featstore.registry import load_keras, model_file
from tests.conftest import CLIP_S, run_cli
from tests.test_applications import write_embeddings

SIZE = 32
VISUAL = "MobileNetV2"
TINY = {"widths": (8, 16), "head_units": 16, "epochs": 2, "batch_size": 16}


class CountingEncoder:
    """A frozen visual encoder that counts its calls: random-init MobileNetV2 on 32 px frames, its
    first convolution's output pooled (32-d; deeper layers of a random-init MobileNetV2 shrink by
    about 40x per few blocks, to 1e-13 at the last one, so they carry no usable signal)."""

    def __init__(self):
        with pytest.warns(UserWarning, match="random weights"):
            application = build_application(VISUAL, input_shape=(SIZE, SIZE, 3))
        self.layer = "Conv1_relu"
        self.model = embedding_model(application, self.layer)
        self.calls = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.asarray(self.model(frames, training=False))


@pytest.fixture(scope="module")
def joint_store(tmp_path_factory, demo_root):
    """The demo dataset with mel spectrograms, 32 px frames and the encoder's cached frame embeddings."""
    store = featstore.init_store(str(tmp_path_factory.mktemp("joint") / "store.zarr"), clip_duration_s=CLIP_S)
    ingest(store, demo_root)
    assert extract_audio(store, workers=0, features=("mel",)).done == 20
    assert extract_frames(store, workers=0, size=SIZE).done == 20
    encoder = CountingEncoder()
    write_embeddings(store, VISUAL, encoder.layer, "frames/rgb", {c: encoder(store.frames(c)[0]) for c in store.clips["clip_id"]})
    return store, encoder


def test_train_joint_never_runs_the_visual_encoder(joint_store):
    from featstore.pipelines.train_joint import JointConfig, train_joint, visual_inputs

    store, encoder = joint_store
    encoder_calls = encoder.calls
    frame_reads = []
    store.frames = lambda *a, _read=store.frames, **k: frame_reads.append(a) or _read(*a, **k)  # count on this instance only
    try:
        entry = train_joint(store, JointConfig(name="joint-mel", visual_model=VISUAL, visual_layer=encoder.layer, **TINY))
    finally:
        del store.frames
    assert encoder.calls == encoder_calls, "the visual encoder never ran"
    assert frame_reads == [], "no frame was read"

    cfg = entry["config"]
    assert entry["input"] == "audio/mel" and entry["input_shape"] == [128, 72, 2] and entry["fc1024_units"] == 16
    assert cfg["visual_input"] == {"array": f"embeddings/{VISUAL}/{encoder.layer}", "fingerprint": store.provenance(f"embeddings/{VISUAL}/{encoder.layer}")["fingerprint"]}
    assert 1 <= cfg["metrics"]["best_epoch"] <= 2 and cfg["metrics"]["evaluate"]["clip"]["n"] == 10

    # validation: whole recording locations, none of them in training, all from the train split
    clips = store.clips.set_index("clip_id")
    trained_on = json.loads(store.side.read("models/joint-mel.train_clips.json"))
    train_locations = set(clips.loc[trained_on, "identifier"])
    val_locations = set(cfg["val_locations"])
    assert val_locations and not (val_locations & train_locations)
    assert set(clips.loc[clips["identifier"].isin(val_locations), "split"]) == {"train"}
    assert cfg["n_val_clips"] == int(clips["identifier"].isin(val_locations).sum()) and cfg["n_train_clips"] == len(trained_on)

    # registered: loads in safe mode, takes [audio, visual], and the visual input changes its output
    model = load_keras(model_file(store, "joint-mel", entry["fingerprint"]))
    clip_id = store.clips["clip_id"][0]
    visual = visual_inputs(store, entry, clip_id)
    frames_emb = store.array(f"embeddings/{VISUAL}/{encoder.layer}")[0]
    np.testing.assert_allclose(visual, frames_emb.reshape(3, 2, -1).mean(axis=1), rtol=1e-6), "each segment's frames averaged"
    audio = embed_mod.model_inputs(store, "audio/mel", clip_id, deltas=False)  # the model derives them
    with_visual = np.asarray(model([audio, visual], training=False))
    assert with_visual.shape == (3, 10)
    assert not np.allclose(with_visual, np.asarray(model([audio, np.zeros_like(visual)], training=False)), atol=1e-4)


def test_audio_only_baseline_is_the_same_encoder_without_visual_input(joint_store):
    from featstore.pipelines.train_joint import JointConfig, train_joint, visual_inputs

    store, _ = joint_store
    entry = train_joint(store, JointConfig(name="audio-mel", **TINY))
    model = load_keras(model_file(store, "audio-mel", entry["fingerprint"]))
    assert len(model.inputs) == 1 and entry["config"]["visual_input"] is None
    assert visual_inputs(store, entry, store.clips["clip_id"][0]) is None


def test_cached_visual_equals_running_the_frozen_encoder_on_frames(joint_store):
    """The two visual paths of the joint model, same weights: cached embeddings vs encoder on frames."""
    from featstore.models.joint import build_joint_model
    from featstore.pipelines.train_joint import AudioWindows
    from featstore.pipelines.train_joint import CachedVisual, FrameVisual

    store, encoder = joint_store
    reader = AudioWindows(store, "audio/mel", store.segment_s)
    cached, frames = CachedVisual(store, VISUAL, encoder.layer, 1, reader.units), FrameVisual(store, "frames/rgb", 1)
    common = {"audio_shape": (128, 72, 2), "frames_per_segment": 72, "encoder": "cnn1d", "widths": (8,), "head_units": 8}
    keras.utils.set_random_seed(0)
    on_cache = build_joint_model(visual_dim=cached.dim, **common)
    on_frames = build_joint_model(visual_encoder=encoder.model, frames_shape=frames.shape, **common)
    for layer in on_cache.layers:
        if layer.weights:
            on_frames.get_layer(layer.name).set_weights(layer.get_weights())
    pairs = reader.index(np.array([3, 11]))
    audio, _ = reader.read(pairs)
    np.testing.assert_allclose(
        np.asarray(on_frames([audio, frames.read(pairs).astype(np.float32)], training=False)),
        np.asarray(on_cache([audio, cached.read(pairs)], training=False)), rtol=1e-4, atol=1e-6,
    )


def test_train_joint_command(joint_store):
    store, encoder = joint_store
    args = ("--widths", "8", "--head-units", "8", "--epochs", "1", "--units-per-clip", "1")
    proc = run_cli("train-joint", store.url, "--name", "j-cli", "--visual-model", VISUAL, "--visual-layer", encoder.layer, *args, check=True)
    assert "j-cli: best epoch 1" in proc.stdout and "evaluate clip accuracy" in proc.stdout
    proc = run_cli("train-joint", store.url, "--name", "j-bad", "--visual-model", "nope", *args)
    assert proc.returncode == 1 and "no fc1024 embeddings of nope" in proc.stderr


def test_embed_feeds_a_joint_model_its_cached_visual_input(joint_store):
    """A joint model embeds like a backbone: `embed` feeds [audio windows, cached visual embedding
    of each window], so fuse, ensemble, report and predict take it."""
    from featstore.pipelines.train_joint import JointConfig, train_joint, visual_inputs

    store, encoder = joint_store
    entry = train_joint(store, JointConfig(name="joint-embed", visual_model=VISUAL, visual_layer=encoder.layer, **TINY))
    report, _ = embed_mod.embed(store, "joint-embed")
    assert report.done == 20
    model = load_keras(model_file(store, "joint-embed", entry["fingerprint"]))
    clip = store.clips["clip_id"][3]
    x = [embed_mod.model_inputs(store, "audio/mel", clip, deltas=False), visual_inputs(store, entry, clip)]
    np.testing.assert_allclose(store.array("predictions/joint-embed")[3], np.asarray(model(x, training=False)), atol=1e-5)
    assert store.provenance("embeddings/joint-embed/fc10").params["visual_input"] == entry["config"]["visual_input"]


def test_the_same_seed_trains_the_same_joint_weights_with_mixup(joint_store):
    """The joint batches come from the training loader: each a function of the seed, the epoch and
    its number, with loader threads (mixup draws included), so two runs end with equal weights."""
    from featstore.pipelines.train_joint import JointConfig, train_joint

    store, _ = joint_store
    weights = []
    for name in ("joint-seed-a", "joint-seed-b"):
        entry = train_joint(store, JointConfig(name=name, visual_model=VISUAL, visual_layer="Conv1_relu", mixup_alpha=0.4,
                                               loader_workers=2, **TINY), progress=False)
        weights.append(load_keras(model_file(store, name, entry["fingerprint"])).get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
