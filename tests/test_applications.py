"""Any layer of any keras.applications model as an embedding: preprocessing equal to Keras' own
``preprocess_input``, the embedding equal to ``keras.Model(inputs, model.get_layer(name).output)``
computed directly, local weights files (never a download), safe-mode loading, and the visual-embedding
MLP of Pham et al. 2021 end to end on a frozen random-init application over the demo's frames."""

from __future__ import annotations

import json
import zlib

import keras
import numpy as np
import pytest

import featstore
from featstore.errors import ConfigError
from featstore.models.applications import application_fingerprint, build_application, embedding_model, is_pooled, preprocessing_layer
from featstore.pipelines.extract_frames import extract_frames
from featstore.registry import load_keras
from tests.conftest import run_cli

SHAPE = (32, 32, 3)  # MobileNetV2's smallest input: cheap on CI


@pytest.mark.parametrize("name, mode", [("ResNet50", "caffe"), ("MobileNetV2", "tf"), ("DenseNet121", "torch"), ("EfficientNetB0", "identity")])
def test_preprocessing_layer_equals_keras_preprocess_input(name, mode):
    import importlib

    from featstore.models.applications import application_function

    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3)).astype(np.uint8)
    expected = importlib.import_module(application_function(name).__module__).preprocess_input(frames.astype(np.float32))
    got = np.asarray(preprocessing_layer(name)(frames.astype(np.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    if mode == "caffe":  # BGR, mean-subtracted: blue first
        np.testing.assert_allclose(got[..., 0], frames[..., 2] - 103.939, atol=1e-3)
    if mode == "identity":
        np.testing.assert_allclose(got, frames, atol=1e-4)


@pytest.fixture(scope="module")
def mobilenet():
    with pytest.warns(UserWarning, match="random weights"):
        return build_application("MobileNetV2", input_shape=SHAPE)


@pytest.mark.parametrize("layer, pooled", [("block_6_expand_relu", True), (None, False)])
def test_embedding_equals_direct_layer_output(mobilenet, layer, pooled):
    """A spatial layer (global average pooling) and the second-to-last layer (the paper's embedding)."""
    layer = layer or mobilenet.layers[-2].name
    frames = np.random.default_rng(1).integers(0, 256, (3, *SHAPE)).astype(np.uint8)
    direct = np.asarray(keras.Model(mobilenet.input, mobilenet.get_layer(layer).output)(frames, training=False))
    if pooled:
        assert direct.ndim == 4
        direct = direct.mean(axis=(1, 2))
    assert is_pooled(mobilenet, layer) == pooled
    got = np.asarray(embedding_model(mobilenet, layer)(frames, training=False))
    assert got.shape == (3, direct.shape[-1])
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)


def test_embedding_model_saves_and_loads_in_safe_mode(mobilenet, tmp_path):
    embedder = embedding_model(mobilenet, "block_3_project")
    embedder.save(tmp_path / "e.keras")
    frames = np.random.default_rng(2).integers(0, 256, (2, *SHAPE)).astype(np.uint8)
    np.testing.assert_allclose(np.asarray(load_keras(str(tmp_path / "e.keras"))(frames)), np.asarray(embedder(frames)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a full embed or a server: over the fast tier's budget
def test_weights_come_from_the_local_file(tmp_path):
    """A legacy .h5 (the format Keras publishes) and a Keras 3 .weights.h5 of the bare application."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from featstore.models.applications import application_function

    keras.utils.set_random_seed(7)
    bare = application_function("MobileNetV2")(include_top=True, weights=None, input_shape=SHAPE)
    legacy, modern = str(tmp_path / "mobilenet_v2.h5"), str(tmp_path / "mobilenet_v2.weights.h5")
    with h5py.File(legacy, "w") as f:
        save_weights_to_hdf5_group(f, bare)
    bare.save_weights(modern)
    frames = np.random.default_rng(3).integers(0, 256, (2, *SHAPE)).astype(np.uint8)
    expected = np.asarray(bare(keras.applications.mobilenet_v2.preprocess_input(frames.astype(np.float32)), training=False))
    for path in (legacy, modern):
        model = build_application("MobileNetV2", input_shape=SHAPE, weights_file=path)
        np.testing.assert_allclose(np.asarray(model(frames, training=False)), expected, rtol=1e-4, atol=1e-6)
        assert not model.trainable_weights, "frozen"
    assert application_fingerprint("MobileNetV2", input_shape=SHAPE, weights_file=legacy) != application_fingerprint("MobileNetV2", input_shape=SHAPE, weights_file=None)
    with pytest.raises(ConfigError, match="not weights of MobileNetV2"):
        build_application("MobileNetV2", input_shape=SHAPE, weights_file=legacy, include_top=False)


def test_random_weights_are_reproducible_by_seed(mobilenet):
    with pytest.warns(UserWarning):
        again = build_application("MobileNetV2", input_shape=SHAPE)
    frames = np.random.default_rng(4).integers(0, 256, (1, *SHAPE)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(again(frames)), np.asarray(mobilenet(frames)))


def test_bad_names_are_config_errors(mobilenet):
    with pytest.raises(ConfigError, match="no model 'ResNet51'"):
        build_application("ResNet51", input_shape=SHAPE)
    with pytest.raises(ConfigError, match="no layer 'avg_pool'"):
        embedding_model(mobilenet, "avg_pool")
    with pytest.raises(ConfigError, match="cannot be built"):
        build_application("InceptionV3", input_shape=SHAPE, weights_file=None)  # InceptionV3 needs >= 75 px


# -- end to end: frames -> frozen application -> cached embedding -> mlp head (Pham et al. 2021) ----


def write_embeddings(store: featstore.Store, model: str, layer: str, input_array: str, per_clip: dict[str, np.ndarray]) -> None:
    """Store (unit, dim) float32 embeddings per clip id as ``embeddings/{model}/{layer}`` the way
    ``embed`` lays them out (one chunk per clip, a ledger mark with its checksum)."""
    units, dim = next(iter(per_clip.values())).shape
    path = f"embeddings/{model}/{layer}"
    params = {"input": input_array, "layer": layer, "frames_per_segment": int(store.provenance(input_array)["params"]["frames_per_segment"])}
    array = store.create_array(path, per_clip_shape=(units, dim), dtype="float32", dims=("frame", "dim"), stage="embed", params=params, overwrite=True)
    ledger = store.ledger(path)
    rows = {c: i for i, c in enumerate(store.clips["clip_id"])}
    for clip_id, values in per_clip.items():
        array[rows[clip_id]] = values
        ledger.mark_done(clip_id, "embed", zlib.crc32(values.astype(np.float32).tobytes()))
    ledger.flush(store.side)


def test_visual_embedding_mlp_end_to_end(demo_store, mobilenet):
    store = demo_store
    assert extract_frames(store, workers=0, size=SHAPE[0]).done == 20
    layer = mobilenet.layers[-2].name  # the second-to-last layer: 1280-d after global pooling
    embedder = embedding_model(mobilenet, layer)
    per_clip = {c: np.asarray(embedder(store.frames(c)[0], training=False)) for c in store.clips["clip_id"]}
    write_embeddings(store, "MobileNetV2", layer, "frames/rgb", per_clip)
    proc = run_cli(
        "fuse", store.url, "--method", "mlp", "--models", "MobileNetV2", "--layer", layer, "--widths", "32,16",
        "--epochs", "2", "--batch-size", "16", "--json", check=True,
    )
    record = json.loads(proc.stdout)
    assert record["name"] == "fuse-mlp-MobileNetV2" and record["layer"] == layer
    assert record["trainable_params"] == (1280 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    assert record["metrics"]["clip"]["n"] == int((store.clips["split"] == "evaluate").sum())
