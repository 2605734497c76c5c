"""Metrics against scikit-learn, late-fusion rules against numpy, `featstore ensemble` end to end."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, log_loss

import featstore
from featstore.metrics import classification_metrics, evaluate_predictions
from featstore.pipelines.ensemble import combine
from tests.conftest import run_cli


def _random_probs(rng, n, c=10, sharp=2.0):
    logits = sharp * rng.standard_normal((n, c))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    classes = list(featstore.CLASSES)
    labels = rng.integers(0, 10, 200)
    probs = _random_probs(rng, 200)
    probs[np.arange(200)[:120], labels[:120]] += 1.0  # better than chance
    probs /= probs.sum(axis=1, keepdims=True)
    m = classification_metrics(probs, labels, classes)
    predicted = probs.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert m["class_wise_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert m["log_loss"] == pytest.approx(log_loss(labels, probs, labels=list(range(10))), rel=1e-9)
    np.testing.assert_array_equal(np.array(m["confusion"]), confusion_matrix(labels, predicted, labels=list(range(10))))
    for c, name in enumerate(classes):
        mask = labels == c
        assert m["per_class_log_loss"][name] == pytest.approx(log_loss(labels[mask], probs[mask], labels=list(range(10))), rel=1e-9)


def test_clip_level_is_the_mean_of_segments():
    rng = np.random.default_rng(1)
    unit = _random_probs(rng, 30).reshape(6, 5, 10)
    labels = rng.integers(0, 10, 6)
    out = evaluate_predictions(unit, labels, list(featstore.CLASSES))
    assert out["segment"]["n"] == 30 and out["clip"]["n"] == 6
    assert out["clip"]["log_loss"] == pytest.approx(log_loss(labels, unit.mean(axis=1), labels=list(range(10))))


@pytest.mark.parametrize("rule", ["mean", "prod", "max"])
def test_rules_equal_numpy(rule):
    rng = np.random.default_rng(2)
    p = np.stack([_random_probs(rng, 7) for _ in range(3)])
    ref = {"mean": p.mean(0), "prod": p.prod(0), "max": p.max(0)}[rule]
    ref = ref / ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(combine(p, rule), ref, rtol=1e-9)
    assert combine(np.full((2, 1, 10), 1e-300), "prod").sum() == pytest.approx(1.0), "log space: no underflow"


def test_ensemble_command_writes_a_run(tmp_path):
    rng = np.random.default_rng(3)
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=2.0)
    n = 12
    labels = rng.integers(0, 10, n)
    store.add_clips(pd.DataFrame({
        "clip_id": [f"c{i}" for i in range(n)], "label": [featstore.CLASSES[k] for k in labels],
        "split": ["evaluate"] * 8 + ["train"] * 4,
    }))
    inputs = {}
    for name, units in (("aud-x", 2), ("vis-y", 4)):
        values = _random_probs(rng, n * units).reshape(n, units, 10).astype(np.float32)
        array = store.create_array(f"predictions/{name}", per_clip_shape=(units, 10), dtype="float32", dims=("unit", "class"), stage="test", params={})
        ledger = store.ledger(f"predictions/{name}")
        for i in range(n):
            array[i] = values[i]
            ledger.mark_done(f"c{i}", "x", zlib.crc32(values[i].tobytes()))
        ledger.flush(store.side)
        inputs[name] = values
    proc = run_cli("ensemble", store.url, "--rule", "prod", "--inputs", "aud-x,vis-y", "--name", "late", "--json", check=True)
    record = json.loads(proc.stdout)
    clip_probs = np.stack([v.astype(np.float64).mean(axis=1) for v in inputs.values()])
    expected = clip_probs.prod(axis=0)
    expected /= expected.sum(axis=1, keepdims=True)
    stored = featstore.open_store(store.url).array("predictions/late")[:]
    np.testing.assert_allclose(stored[:, 0], expected, rtol=1e-5)
    ev = slice(0, 8)
    assert record["clips"] == 12 and record["split"] == "evaluate"
    assert record["metrics"]["clip"]["n"] == 8
    assert record["metrics"]["clip"]["accuracy"] == pytest.approx(accuracy_score(labels[ev], expected[ev].argmax(axis=1)))
    assert record["metrics"]["clip"]["log_loss"] == pytest.approx(log_loss(labels[ev], expected[ev], labels=list(range(10))), rel=1e-5)
    assert json.loads(store.side.read("runs/late.json"))["rule"] == "prod"
