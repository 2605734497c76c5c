"""Phase II: the fusion layer against numpy, parameter counts, training on synthetic embeddings where
only audio+visual together separate the classes, `featstore fuse` end to end, the packed read cache."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, log_loss

import featstore
from featstore.packed import packed_segment_embeddings
from tests.conftest import run_cli

AUDIO, VISUAL = ("aud-a1", "aud-a2"), ("vis-v1",)
N_SEG = 3


def _partner(c: int, modality: str) -> int:
    """The class each modality confuses ``c`` with: audio pairs (0,1) (2,3)...; visual pairs (1,2) (3,4)... (9,0)."""
    return c ^ 1 if modality == "audio" else ((c + 1) % 10 if c % 2 else (c - 1) % 10)


def _embedding(rng, c: int, modality: str, n_units: int, dim: int, projection: np.ndarray | None, noise: float) -> np.ndarray:
    """Each unit: equal evidence for ``c`` and its partner class, plus noise (a modality alone cannot tell them apart)."""
    base = np.zeros(10)
    base[[c, _partner(c, modality)]] = 2.0
    units = base + noise * rng.standard_normal((n_units, 10))
    return (units @ projection if projection is not None else units).astype(np.float32)[:, :dim]


def make_embedding_store(path, *, clips_per_class=16, noise=0.6, seed=0, shard_mb=0.0):
    """A store with labelled clips (train 2/3, evaluate 1/3, 4 locations per class) and synthetic
    fc10 (10-d) and fc1024 (16-d) embeddings of two audio models and one visual model (2 frames per segment)."""
    rng = np.random.default_rng(seed)
    store = featstore.init_store(str(path), clip_duration_s=float(N_SEG), shard_mb=shard_mb)
    rows = []
    for c, label in enumerate(featstore.CLASSES):
        for k in range(clips_per_class):
            split = "evaluate" if k % 3 == 2 else "train"
            rows.append({"clip_id": f"{label}-{k}", "label": label, "split": split, "identifier": f"{label}-{split}-loc{k % 4}", "_c": c})
    clips = pd.DataFrame(rows)
    store.add_clips(clips.drop(columns="_c"))
    projection = rng.standard_normal((10, 16)) / 3
    for layer, dim, proj in (("fc10", 10, None), ("fc1024", 16, projection)):
        for model in (*AUDIO, *VISUAL):
            visual = model in VISUAL
            units = N_SEG * (2 if visual else 1)
            path_ = f"embeddings/{model}/{layer}"
            array = store.create_array(
                path_, per_clip_shape=(units, dim), dtype="float32", dims=("frame" if visual else "segment", "dim"), stage="embed",
                params={"input": "frames/rgb" if visual else "audio/mel", "frames_per_segment": 2 if visual else 1, "layer": layer},
            )
            ledger = store.ledger(path_)
            for i, c in enumerate(clips["_c"]):
                values = _embedding(rng, int(c), "visual" if visual else "audio", units, dim, proj, noise)
                array[i] = values
                ledger.mark_done(clips["clip_id"][i], "synthetic", zlib.crc32(values.tobytes()))
            ledger.flush(store.side)
    return store


@pytest.fixture(scope="module")
def embedding_store(tmp_path_factory):
    return make_embedding_store(tmp_path_factory.mktemp("fuse") / "emb.zarr")


# -- the layer ------------------------------------------------------------------------------------


def _numpy_fusion(method: str, x: np.ndarray, modalities: tuple[str, ...], weights: dict) -> np.ndarray:
    weighted = x * weights["w"]
    audio = weighted[:, [i for i, m in enumerate(modalities) if m == "audio"]].sum(axis=1)
    visual = weighted[:, [i for i, m in enumerate(modalities) if m == "visual"]].sum(axis=1)
    form = {"f1": 1, "f4": 1, "f2": 2, "f5": 2, "f3": 3, "f6": 3}[method]
    if form == 1:
        return weighted.sum(axis=1) + weights["b"]
    if form == 2:
        return audio * weights["w_a"] + visual * weights["w_v"] + weights["b"]
    return np.concatenate([audio, visual], axis=1)


@pytest.mark.parametrize("method", ["f1", "f2", "f3", "f4", "f5", "f6"])
def test_fusion_forward_equals_numpy(method):
    from featstore.models.fusion import build_fusion_model

    rng = np.random.default_rng(1)
    modalities = ("audio", "audio", "audio", "visual", "visual")
    dim = 10 if method in ("f4", "f5", "f6") else 32
    model = build_fusion_model(method, modalities=modalities, dim=dim)
    fusion = model.get_layer("fusion")
    weights = {"w": rng.standard_normal((5, dim)), "b": rng.standard_normal(dim), "w_a": rng.standard_normal(dim), "w_v": rng.standard_normal(dim)}
    for variable in fusion.weights:
        variable.assign(weights[variable.name].astype(np.float32))
    kernel, bias = rng.standard_normal((dim * (2 if method in ("f3", "f6") else 1), 10)), rng.standard_normal(10)
    model.get_layer("fc10").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    x = rng.standard_normal((7, 5, dim)).astype(np.float32)
    fused = _numpy_fusion(method, x.astype(np.float64), modalities, weights)
    logits = fused @ kernel + bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "method, modalities, expected",
    [
        # f1: w_i (n*d) + b (d); dense d*10+10
        ("f1", ("audio",) * 3 + ("visual",) * 2, 5 * 1024 + 1024 + 1024 * 10 + 10),
        # f2: w_i + w_a + w_v + b
        ("f2", ("audio",) * 3 + ("visual",) * 2, 5 * 1024 + 3 * 1024 + 1024 * 10 + 10),
        # f3: w_i only, the dense layer sees 2d
        ("f3", ("audio",) * 3 + ("visual",) * 2, 5 * 1024 + 2 * 1024 * 10 + 10),
        ("f4", ("audio",) * 3 + ("visual",) * 2, 5 * 10 + 10 + 10 * 10 + 10),
        ("f5", ("audio",) * 3 + ("visual",) * 2, 5 * 10 + 3 * 10 + 10 * 10 + 10),
        ("f6", ("audio",) * 3 + ("visual",) * 2, 5 * 10 + 2 * 10 * 10 + 10),
        # one modality: f2 keeps one modality weight, f3 is the one sum
        ("f5", ("audio",) * 3, 3 * 10 + 2 * 10 + 10 * 10 + 10),
        ("f6", ("visual",) * 2, 2 * 10 + 10 * 10 + 10),
    ],
)
def test_trainable_parameter_counts(method, modalities, expected):
    from featstore.models.fusion import build_fusion_model

    dim = 10 if method in ("f4", "f5", "f6") else 1024
    model = build_fusion_model(method, modalities=modalities, dim=dim)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == expected


def test_head_saves_and_loads_in_safe_mode(tmp_path):
    from featstore.models.fusion import build_fusion_model
    from featstore.registry import load_keras

    model = build_fusion_model("f2", modalities=("audio", "visual"), dim=4)
    model.save(tmp_path / "h.keras")
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(load_keras(str(tmp_path / "h.keras"))(x)), np.asarray(model(x)), rtol=1e-6)


# -- training ---------------------------------------------------------------------------------------


def test_audio_visual_fusion_beats_each_modality(embedding_store):
    from featstore.pipelines.fuse import FuseConfig, fuse

    accuracy = {}
    for modalities in (("audio",), ("visual",), ("audio", "visual")):
        record = fuse(embedding_store, FuseConfig(method="f4", modalities=modalities, epochs=60, batch_size=32, lr=1e-2, seed=0))
        accuracy[modalities] = record["metrics"]["clip"]["accuracy"]
    both = accuracy[("audio", "visual")]
    # each modality alone cannot split its partner pairs: about half right; together nearly all
    assert accuracy[("audio",)] < 0.7 and accuracy[("visual",)] < 0.7, accuracy
    assert both > 0.9 and both > max(accuracy[("audio",)], accuracy[("visual",)]) + 0.2, accuracy


def test_joint_mixup_mixes_modalities_independently():
    from featstore.pipelines.fuse import FuseConfig, _mixing

    rng = np.random.default_rng(0)
    modalities = ("audio", "audio", "visual")
    lam_x, lam_y = _mixing(4000, modalities, FuseConfig(method="f4", joint_mixup=0.25), rng)
    joint = lam_x[:, 0] != lam_x[:, 2]
    assert 0.2 < joint.mean() < 0.3, "about the requested fraction is mixed jointly"
    np.testing.assert_array_equal(lam_x[:, 0], lam_x[:, 1]), "one coefficient per modality"
    np.testing.assert_allclose(lam_y, (lam_x[:, 0] + lam_x[:, 2]) / 2, rtol=1e-6)
    plain_x, plain_y = _mixing(100, modalities, FuseConfig(method="f4"), rng)
    assert (plain_x == plain_y[:, None]).all()


def test_fuse_all_command_saves_runs_and_prints_table(embedding_store):
    proc = run_cli("fuse", embedding_store.url, "--method", "all", "--epochs", "3", "--batch-size", "64", "--name", "t", check=True)
    assert "Table I layout" in proc.stdout
    for c in featstore.CLASSES:
        assert f"| {c} |" in proc.stdout
    store = featstore.open_store(embedding_store.url)
    labels = store.label_indices(store.clips["label"])
    ev = np.flatnonzero(store.clips["split"].to_numpy() == "evaluate")
    for method in ("f1", "f2", "f3", "f4", "f5", "f6"):
        record = json.loads(store.side.read(f"runs/t-{method}.json"))
        assert record["layer"] == ("fc1024" if method in ("f1", "f2", "f3") else "fc10")
        assert record["models"] == ["aud-a1", "aud-a2", "vis-v1"] and len(record["history"]["loss"]) == 3
        assert store.side.exists(f"runs/t-{method}.keras")
        probs = store.array(f"predictions/t-{method}")[:]
        assert probs.shape == (store.n_clips, N_SEG, 10)
        clip_probs = probs[ev].astype(np.float64).mean(axis=1)
        clip_probs /= clip_probs.sum(axis=1, keepdims=True)
        m = record["metrics"]["clip"]
        assert m["accuracy"] == pytest.approx(accuracy_score(labels[ev], clip_probs.argmax(axis=1)))
        assert m["log_loss"] == pytest.approx(log_loss(labels[ev], clip_probs, labels=list(range(10))), rel=1e-4)
        assert record["metrics"]["segment"]["n"] == len(ev) * N_SEG


def test_fuse_refuses_missing_modality(embedding_store, tmp_path):
    proc = run_cli("fuse", embedding_store.url, "--method", "f4", "--models", "aud-a1", "--epochs", "1")
    assert proc.returncode == 1 and "visual" in proc.stderr
    proc = run_cli("fuse", embedding_store.url, "--method", "f4", "--models", "nope", "--epochs", "1")
    assert proc.returncode == 1 and "nope" in proc.stderr


# -- the packed read cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("shard_mb", [0.0, 0.002], ids=["unsharded", "sharded"])
def test_packed_embeddings_are_rebuilt_when_a_clip_changes(tmp_path, shard_mb):
    store = make_embedding_store(tmp_path / "p.zarr", clips_per_class=2, shard_mb=shard_mb)
    path = "embeddings/vis-v1/fc10"
    assert (store.array(path).shards is not None) == bool(shard_mb)
    values, rows = packed_segment_embeddings(store, path)
    raw = store.array(path)[:]
    np.testing.assert_allclose(values, raw.reshape(len(raw), N_SEG, 2, 10).mean(axis=2), rtol=1e-6)
    assert store.side.exists("packed/embeddings--vis-v1--fc10.npz")
    # a clip re-embedded with other values: its checksum changes, the packed copy must not be used
    new = np.full((2 * N_SEG, 10), 7.0, np.float32)
    store.array(path)[5] = new
    ledger = store.ledger(path)
    ledger.mark_done(store.clips["clip_id"][5], "synthetic", zlib.crc32(new.tobytes()))
    ledger.flush(store.side)
    again, _ = packed_segment_embeddings(featstore.open_store(store.url), path)
    np.testing.assert_array_equal(again[5], np.full((N_SEG, 10), 7.0, np.float32))
    # a clip no longer done leaves the result
    ledger.unmark(store.clips["clip_id"][0])
    ledger.flush(store.side)
    after, rows_after = packed_segment_embeddings(featstore.open_store(store.url), path)
    assert list(rows_after) == list(rows[1:])
    raw = store.array(path)[:].astype(np.float32)  # through zarr: the same values, bitwise
    np.testing.assert_array_equal(after, raw[rows_after].reshape(len(rows_after), N_SEG, 2, 10).mean(axis=2))
