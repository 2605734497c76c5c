"""Phase II heads beyond f1..f6: the visual-embedding `mlp` (Pham et al. 2021) and the joint-modeling
`concat` head (Wang et al. 2022): parameter count against the paper's formula, the forward pass
against numpy, training end to end on a small store, runs that `ensemble` takes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featstore
from tests.conftest import run_cli
from tests.test_fuse import make_embedding_store


@pytest.fixture(scope="module")
def embedding_store(tmp_path_factory):
    return make_embedding_store(tmp_path_factory.mktemp("heads") / "emb.zarr", clips_per_class=8)


def _trainable(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_mlp_has_the_papers_parameter_count():
    from featstore.models.fusion import MLP_WIDTHS, build_mlp_model

    # FC 8192 - 8192 - 1024 - Softmax(10) on ResNet50's 2048-wide avg_pool output, written out by hand
    expected = (2048 * 8192 + 8192) + (8192 * 8192 + 8192) + (8192 * 1024 + 1024) + (1024 * 10 + 10)
    assert MLP_WIDTHS == (8192, 8192, 1024)
    assert _trainable(build_mlp_model(dim=2048)) == expected == 92_302_346


def test_mlp_widths_are_configurable():
    from featstore.models.fusion import build_head, mlp_param_count

    model = build_head("mlp", modalities=("visual",), embedding_widths=(24,), widths=(16, 8))
    assert [layer.name for layer in model.layers if "fc" in layer.name and "dropout" not in layer.name] == ["fc1", "fc2", "fc10"]
    assert _trainable(model) == mlp_param_count(24, (16, 8)) == (24 * 16 + 16) + (16 * 8 + 8) + (8 * 10 + 10)
    with pytest.raises(ValueError, match="one model"):
        build_head("mlp", modalities=("visual", "audio"), embedding_widths=(24, 24))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_concat_forward_equals_numpy():
    """Two audio models (widths 6 and 4, the narrower zero-padded) and one visual model (width 5)."""
    from featstore.models.fusion import build_concat_model

    rng = np.random.default_rng(3)
    modalities, widths = ("audio", "visual", "audio"), (6, 5, 4)
    model = build_concat_model(modalities=modalities, embedding_widths=widths, widths=(7, 3))
    weights = {}
    for layer in ("proj_audio1", "proj_visual1", "fc1", "fc10"):
        kernel_shape = model.get_layer(layer).kernel.shape
        weights[layer] = (rng.standard_normal(kernel_shape), rng.standard_normal(kernel_shape[1]))
        model.get_layer(layer).set_weights([w.astype(np.float32) for w in weights[layer]])
    x = np.zeros((9, 3, 6), np.float32)
    for i, w in enumerate(widths):
        x[:, i, :w] = rng.standard_normal((9, w))
    x64 = x.astype(np.float64)

    def dense(v, layer, relu=True):
        out = v @ weights[layer][0] + weights[layer][1]
        return np.maximum(out, 0) if relu else out

    audio = dense(np.concatenate([x64[:, 0, :6], x64[:, 2, :4]], axis=1), "proj_audio1")
    visual = dense(x64[:, 1, :5], "proj_visual1")
    expected = _softmax(dense(dense(np.concatenate([audio, visual], axis=1), "fc1"), "fc10", relu=False))
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, rtol=1e-4, atol=1e-6)
    # the padding is never read: changing it changes nothing
    x[:, 2, 4:] = 100.0
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, rtol=1e-4, atol=1e-6)


def test_heads_save_and_load_in_safe_mode(tmp_path):
    from featstore.models.fusion import build_head
    from featstore.registry import load_keras

    x = np.random.default_rng(0).standard_normal((3, 2, 5)).astype(np.float32)
    for method, modalities in (("concat", ("audio", "visual")), ("mlp", ("visual",))):
        model = build_head(method, modalities=modalities, embedding_widths=(5, 3)[: len(modalities)], widths=(4, 2))
        model.save(tmp_path / f"{method}.keras")
        xin = x[:, : len(modalities)]
        np.testing.assert_allclose(np.asarray(load_keras(str(tmp_path / f"{method}.keras"))(xin)), np.asarray(model(xin)), rtol=1e-6)


def test_mlp_and_concat_train_and_feed_ensemble(embedding_store):
    """`fuse --method mlp` (one run per model) and `--method concat`, then `ensemble` of both runs."""
    url = embedding_store.url
    common = ("--epochs", "40", "--batch-size", "32", "--lr", "0.01", "--widths", "16,16")
    proc = run_cli("fuse", url, "--method", "mlp", "--models", "vis-v1", *common, "--json", check=True)
    mlp = json.loads(proc.stdout)
    # the visual model's fc10 (10-d) beside the audio model's fc1024 (16-d): different widths, zero-padded
    proc = run_cli("fuse", url, "--method", "concat", "--models", "aud-a1,vis-v1/fc10", "--joint-mixup", "0.5", *common, "--json", check=True)
    concat = json.loads(proc.stdout)
    assert mlp["name"] == "fuse-mlp-vis-v1" and mlp["layer"] == "fc1024" and mlp["models"] == ["vis-v1"]
    assert mlp["trainable_params"] == (16 * 16 + 16) + (16 * 16 + 16) + (16 * 10 + 10)
    assert concat["name"] == "fuse-concat-av" and concat["modalities"] == ["audio", "visual"] and concat["models"] == ["aud-a1", "vis-v1/fc10"]
    assert concat["trainable_params"] == (16 * 16 + 16) + (10 * 16 + 16) + (32 * 16 + 16) + (16 * 10 + 10)
    # one modality confuses each class with one other (the store's design): about half right;
    # concat sees both and separates them
    assert mlp["metrics"]["clip"]["accuracy"] < 0.75, mlp["metrics"]["clip"]
    assert concat["metrics"]["clip"]["accuracy"] > 0.85 > mlp["metrics"]["clip"]["accuracy"] + 0.1, (concat["metrics"]["clip"], mlp["metrics"]["clip"])
    store = featstore.open_store(url)
    for record in (mlp, concat):
        assert store.side.exists(f"runs/{record['name']}.keras")
        assert store.array(f"predictions/{record['name']}").shape == (store.n_clips, 3, 10)
    proc = run_cli("ensemble", url, "--rule", "mean", "--inputs", "fuse-mlp-vis-v1,fuse-concat-av", "--name", "mc", "--json", check=True)
    assert json.loads(proc.stdout)["metrics"]["clip"]["n"] == concat["metrics"]["clip"]["n"]


def test_mlp_needs_exactly_one_model(embedding_store):
    proc = run_cli("fuse", embedding_store.url, "--method", "mlp", "--epochs", "1")
    assert proc.returncode == 1 and "--models NAME" in proc.stderr
    proc = run_cli("fuse", embedding_store.url, "--method", "mlp", "--models", "vis-v1", "--layer", "avg_pool", "--epochs", "1")
    assert proc.returncode == 1 and "no avg_pool embeddings of vis-v1" in proc.stderr
