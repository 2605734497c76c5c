"""Backbone definitions and `featstore embed` (CPU, tiny widths, small images)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from featstore.models import build_model
from featstore.models.head import add_head
from featstore.pipelines import embed as embed_mod
from featstore.pipelines.embed import embed
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from tests.conftest import run_cli


@pytest.mark.parametrize(
    "name, shape, options",
    [
        ("aud-mel", (128, 72, 6), {"widths": (4, 8)}),
        ("aud-gam", (128, 72, 6), {"widths": (4, 8, 16)}),
        ("aud-cqt", (64, 72, 6), {"arch": "vgg14"}),
        ("vis-inc", (75, 75, 3), {}),
        ("vis-conv", (32, 32, 3), {}),
    ],
)
def test_models_have_the_head_contract(name, shape, options):
    model = build_model(name, input_shape=shape, head_units=24, **options)
    assert model.get_layer("fc1024").output.shape == (None, 24)
    assert model.get_layer("fc10").output.shape == (None, 10)
    assert model.get_layer("softmax").output.shape == (None, 10)
    out = np.asarray(model(np.zeros((2, *shape), np.float32), training=False))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    if name == "aud-cqt":
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert [c.filters for c in convs] == [64, 64, 128, 128] + [256] * 4 + [512] * 4, "VGG14: 12 conv layers"


def _tiny_audio_model(path: str, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_model("aud-mel", input_shape=(128, 72, 6), widths=(4, 8), head_units=16)
    model.save(path)
    return model


@pytest.fixture
def mel_store(demo_store):
    assert extract_audio(demo_store, workers=0, features=("mel",)).done == 20
    return demo_store


@pytest.mark.slow  # a full embed or a server: over the fast tier's budget
def test_embed_equals_direct_layer_output_and_caches(mel_store, tmp_path, monkeypatch):
    store = mel_store
    path = str(tmp_path / "aud-mel.keras")
    model = _tiny_audio_model(path, seed=1)
    report, note = embed(store, "aud-mel", model_file_path=path)
    assert report.done == 20 and report.failed == 0 and note is None
    fc1024 = store.array("embeddings/aud-mel/fc1024")[:]
    fc10 = store.array("embeddings/aud-mel/fc10")[:]
    probs = store.array("predictions/aud-mel")[:]
    assert fc1024.shape == (20, 3, 16) and fc10.shape == (20, 3, 10) and probs.shape == (20, 3, 10)
    (batch,) = list(store.audio_segments("mel", deltas=True))
    x = batch.x.transpose(0, 2, 3, 1)  # (window, bin, frame, 6)
    direct = np.asarray(keras.Model(model.inputs, model.get_layer("fc1024").output)(x, training=False))
    np.testing.assert_allclose(fc1024.reshape(-1, 16), direct, atol=1e-5)
    direct10 = np.asarray(keras.Model(model.inputs, model.get_layer("fc10").output)(x, training=False))
    np.testing.assert_allclose(fc10.reshape(-1, 10), direct10, atol=1e-5)
    np.testing.assert_allclose(probs, np.exp(fc10) / np.exp(fc10).sum(-1, keepdims=True), atol=1e-5)
    seg = store.embeddings("aud-mel", "fc10")
    np.testing.assert_array_equal(seg.x, fc10.reshape(-1, 10))
    np.testing.assert_array_equal(seg.clip_index, np.repeat(np.arange(20), 3))

    calls = []
    with monkeypatch.context() as m:  # any forward pass would have to load the model first
        m.setattr(embed_mod, "_embedder", lambda *a: calls.append(a))
        again, note = embed(store, "aud-mel", model_file_path=path)
    assert again.done == 0 and again.skipped == 20 and note is None
    assert calls == [], "a cache hit does no inference"

    _tiny_audio_model(path, seed=2)  # retrained: new weights, new fingerprint
    retrained, note = embed(store, "aud-mel", model_file_path=path)
    assert retrained.done == 20 and "recomputing" in note and "model" in note
    assert not np.allclose(store.array("embeddings/aud-mel/fc1024")[:], fc1024)


def test_unsafe_model_file_is_refused(mel_store, tmp_path):
    inputs = keras.Input((128, 72, 6))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="unsafe")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, add_head(x, units=8))
    path = str(tmp_path / "unsafe.keras")
    model.save(path)
    proc = run_cli("embed", mel_store.url, "--model", "aud-mel", "--model-file", path)
    assert proc.returncode == 1
    assert "safe" in proc.stderr.lower() or "lambda" in proc.stderr.lower()
    assert not mel_store.has_array("embeddings/aud-mel/fc1024")


def test_visual_model_file_embeds_frames(demo_store, tmp_path):
    store = demo_store
    assert extract_frames(store, workers=0, size=32).done == 20
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, add_head(x, units=12))
    path = str(tmp_path / "tiny-vis.keras")
    model.save(path)
    proc = run_cli("embed", store.url, "--model", "tiny-vis", "--model-file", path, "--input", "frames/rgb", "--layer", "fc1024", "--json", check=True)
    assert '"done": 20' in proc.stdout
    emb = store.array("embeddings/tiny-vis/fc1024")[:]
    assert emb.shape == (20, 6, 12)
    frames, _ = store.frames(store.clips.clip_id[4])
    direct = np.asarray(keras.Model(model.inputs, model.get_layer("fc1024").output)(frames, training=False))
    np.testing.assert_allclose(emb[4], direct, atol=1e-5)
    assert not store.has_array("embeddings/tiny-vis/fc10"), "--layer fc1024 writes only that layer"
    # aligned to the segment grid: the 2 frames of each 1 s segment averaged
    seg = store.embeddings("tiny-vis", "fc1024", per="segment")
    assert seg.x.shape == (20 * 3, 12)
    np.testing.assert_allclose(seg.x[4 * 3 + 1], emb[4, 2:4].mean(axis=0), atol=1e-6)
    assert seg.clip_index[4 * 3 + 1] == 4 and seg.segment[4 * 3 + 1] == 1
    assert seg.labels[4 * 3] == store.classes.index(store.clips.label[4])
    per_clip = store.embeddings("tiny-vis", "fc1024", per="clip", split="train")
    assert per_clip.x.shape == (10, 12)
    np.testing.assert_allclose(per_clip.x[0], emb[per_clip.clip_index[0]].mean(axis=0), atol=1e-6)
    assert store.array("predictions/tiny-vis").shape == (20, 6, 10)
