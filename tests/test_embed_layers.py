"""`embed --layer NAME` on any model: a keras.applications model with local (here: no) weights, a
model file without the backbone head, and a joint model fed its cached visual input."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from featstore.pipelines.embed import embed
from featstore.pipelines.extract_frames import FramesConfig, extract_frames
from featstore.registry import load_keras, model_entry, model_file
from tests.conftest import run_cli

SIZE = 32


@pytest.fixture
def frames_store(demo_store):
    assert extract_frames(demo_store, FramesConfig(size=SIZE), workers=0).done == 20
    return demo_store


def _direct(model, layer: str, x: np.ndarray) -> np.ndarray:
    """``keras.Model(inputs, get_layer(layer).output)`` computed directly, averaged over space."""
    out = np.asarray(keras.Model(model.inputs, model.get_layer(layer).output)(x, training=False))
    return out.mean(axis=(1, 2)) if out.ndim == 4 else out


def test_application_layer_equals_the_layer_computed_directly_and_caches(frames_store):
    store = frames_store
    proc = run_cli("embed", store.url, "--model", "keras:MobileNetV2", "--layer", "Conv1_relu", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["done"] == 20
    entry = model_entry(store, "MobileNetV2")
    assert entry["head"] is False and entry["config"]["application"] == "MobileNetV2" and entry["config"]["weights_file"] is None
    emb = store.array("embeddings/MobileNetV2/Conv1_relu")[:]
    assert emb.shape == (20, 6, 32) and not store.has_array("predictions/MobileNetV2")
    model = load_keras(model_file(store, "MobileNetV2", entry["fingerprint"]))
    clip = store.clips.clip_id[7]
    np.testing.assert_allclose(emb[7], _direct(model, "Conv1_relu", store.frames(clip)[0]), rtol=1e-4, atol=1e-5)
    assert store.provenance("embeddings/MobileNetV2/Conv1_relu").params["pooled"] is True

    # a second run is a cache hit, answered from the store: no model built or loaded, no TensorFlow imported
    rerun = ("import sys, featstore; from featstore.pipelines.embed import embed; "
             f"report, _ = embed(featstore.open_store({store.url!r}), 'keras:MobileNetV2', layers=('Conv1_relu',)); "
             "print(report.done, report.skipped, 'tensorflow' in sys.modules)")
    again = subprocess.run([sys.executable, "-c", rerun], capture_output=True, text=True, check=True)
    assert again.stdout.split() == ["0", "20", "False"], again.stderr
    assert model_entry(store, "MobileNetV2")["fingerprint"] == entry["fingerprint"], "not re-registered"

    other = json.loads(run_cli("embed", store.url, "--model", "keras:MobileNetV2", "--layer", "expanded_conv_project_BN", "--json", check=True).stdout)
    assert other["done"] == 20 and other["array"] == ["embeddings/MobileNetV2/expanded_conv_project_BN"]
    assert store.array("embeddings/MobileNetV2/Conv1_relu")[:].tobytes() == emb.tobytes(), "the first layer's array is kept"


def test_model_file_without_the_head_embeds_a_named_layer(frames_store, tmp_path):
    store = frames_store
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    path = str(tmp_path / "plain.keras")
    model.save(path)
    proc = run_cli("embed", store.url, "--model", "plain", "--model-file", path, "--input", "frames/rgb", "--layer", "conv,out")
    assert proc.returncode == 0, proc.stderr
    frames = store.frames(store.clips.clip_id[2])[0]
    np.testing.assert_allclose(store.array("embeddings/plain/conv")[2], _direct(model, "conv", frames), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(store.array("embeddings/plain/out")[2], _direct(model, "out", frames), rtol=1e-4, atol=1e-6)
    proc = run_cli("embed", store.url, "--model", "plain", "--layer", "no_such_layer")
    assert proc.returncode == 1 and "no layer 'no_such_layer'" in proc.stderr
    with pytest.raises(Exception, match="the embedding contract"):
        embed(store, "plain2", model_file_path=path, input_array="frames/rgb")  # the default layers need the head
