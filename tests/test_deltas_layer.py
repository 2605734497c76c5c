"""Deltas inside the audio models (featstore.models.deltas): the layer equals librosa's deltas, a
model with it fed static channels gives the numbers of the same model fed host deltas, and embed
feeds every model, old (6 input channels) or new (2, with the layer), the input it takes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from featstore.audio import add_deltas
from featstore.loader import training_batches
from featstore.models import build_model
from featstore.models.deltas import SpectrogramDeltas
from featstore.pipelines import embed as embed_mod
from featstore.pipelines.extract_audio import extract_audio
from featstore.registry import register_model

TINY = dict(widths=(4, 8), head_units=8)


def test_the_layer_equals_librosa_deltas_per_segment():
    static = np.random.default_rng(0).normal(-30, 20, size=(3, 2, 16, 2 * 72)).astype(np.float32)
    inputs = keras.Input((16, 2 * 72, 2))
    layer = SpectrogramDeltas(72)
    out = np.asarray(keras.Model(inputs, layer(inputs))(static.transpose(0, 2, 3, 1)))
    for i in range(3):
        np.testing.assert_allclose(out[i], add_deltas(static[i], 72, 9).transpose(1, 2, 0), rtol=1e-5, atol=1e-4)
    assert not layer.trainable and not layer.weights, "a fixed filter: nothing to train"


def _twins(seed: int = 0):
    """(with the layer, 2 channels in; without, 6 in): the same weights."""
    keras.utils.set_random_seed(seed)
    new = build_model("aud-mel", input_shape=(128, 72, 2), frames_per_segment=72, **TINY)
    old = build_model("aud-mel", input_shape=(128, 72, 6), **TINY)
    for layer in old.layers:
        if layer.weights:
            layer.set_weights(new.get_layer(layer.name).get_weights())
    return new, old


def test_a_model_with_the_layer_gives_the_numbers_of_the_model_fed_host_deltas():
    new, old = _twins()
    assert new.get_layer("deltas").output.shape[-1] == 6
    static = np.random.default_rng(1).normal(-30, 20, size=(4, 2, 128, 72)).astype(np.float32)
    host = np.stack([add_deltas(s, 72, 9) for s in static]).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(new(static.transpose(0, 2, 3, 1))), np.asarray(old(host)), rtol=1e-4, atol=1e-6)


@pytest.fixture
def mel_store(demo_store):
    assert extract_audio(demo_store, workers=0, features=("mel",), progress=False).done == 20
    return demo_store


@pytest.mark.slow  # a full embed or a server: over the fast tier's budget
def test_embed_feeds_old_and_new_models_the_input_each_takes(mel_store, tmp_path):
    store = mel_store
    new, old = _twins()
    for name, model in (("mel-new", new), ("mel-old", old)):
        model.save(tmp_path / f"{name}.keras")
        register_model(store, name, str(tmp_path / f"{name}.keras"), input_array="audio/mel")
        report, _ = embed_mod.embed(store, name)
        assert report.done == 20
    clip = store.clips.clip_id[4]
    static = embed_mod.model_inputs(store, "audio/mel", clip, deltas=False)
    six = embed_mod.model_inputs(store, "audio/mel", clip)
    assert static.shape == (3, 128, 72, 2) and six.shape == (3, 128, 72, 6)
    # an existing (6-channel) model gives exactly what it gave before: host deltas, as stored arrays read
    np.testing.assert_allclose(store.array("predictions/mel-old")[4], np.asarray(old(six)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(store.array("predictions/mel-new")[4], np.asarray(new(static)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(store.array("embeddings/mel-new/fc1024"), store.array("embeddings/mel-old/fc1024"), rtol=1e-4, atol=1e-5)


def test_loader_static_windows_through_the_layer_equal_loader_deltas(mel_store):
    common = dict(split=None, batch_size=6, block_clips=4, seed=2, mixup_alpha=0.4)
    static = training_batches(mel_store, "audio/mel", deltas=False, **common)
    host = training_batches(mel_store, "audio/mel", **common)
    assert static.units.example_shape == (128, 72, 2) and host.units.example_shape == (128, 72, 6)
    inputs = keras.Input(static.units.example_shape)
    layer = keras.Model(inputs, SpectrogramDeltas(72)(inputs))
    for (xs, ys), (xh, yh) in zip(static.epoch(0), host.epoch(0), strict=True):
        np.testing.assert_array_equal(ys, yh)
        np.testing.assert_array_equal(xs, xh[..., :2])
        np.testing.assert_allclose(np.asarray(layer(xs)), xh, rtol=1e-5, atol=1e-4)
