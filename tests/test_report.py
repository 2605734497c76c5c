"""`featstore report`: its numbers against direct computations, its files, the DCASE submission format."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd
import pytest
from featstore.pipelines.report import build_report
from sklearn.metrics import accuracy_score

import featstore
from featstore.constants import META_CLASSES
from featstore.metrics import accuracy_over_time, meta_class_accuracy
from tests.conftest import run_cli


def _store_with_predictions(path, rng, n_eval=30, n_test=6, units=4):
    store = featstore.init_store(str(path), clip_duration_s=float(units))
    labels = rng.integers(0, 10, n_eval)
    store.add_clips(pd.DataFrame({
        "clip_id": [f"e{i}" for i in range(n_eval)] + [f"t{i}" for i in range(n_test)],
        "label": [featstore.CLASSES[k] for k in labels] + [""] * n_test,
        "split": ["evaluate"] * n_eval + ["test"] * n_test,
        "audio_path": [f"audio/e{i}.wav" for i in range(n_eval)] + [f"audio/{i}.wav" for i in range(n_test)],
    }))
    n = n_eval + n_test
    logits = rng.standard_normal((n, units, 10))
    logits[np.arange(n_eval), :, labels] += np.linspace(0, 2.5, units)  # more seconds, more evidence
    probs = (np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)).astype(np.float32)
    array = store.create_array("predictions/m1", per_clip_shape=(units, 10), dtype="float32", dims=("segment", "class"), stage="embed", params={"frames_per_segment": 1})
    ledger = store.ledger("predictions/m1")
    for i in range(n):
        array[i] = probs[i]
        ledger.mark_done(store.clips["clip_id"][i], "x", zlib.crc32(probs[i].tobytes()))
    ledger.flush(store.side)
    return store, probs, labels


def test_accuracy_over_time_and_meta_classes_equal_direct_computation():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=(40, 5))
    labels = rng.integers(0, 10, 40)
    curve = accuracy_over_time(probs, labels)
    for k in range(1, 6):
        assert curve[k - 1] == pytest.approx(accuracy_score(labels, probs[:, :k].mean(axis=1).argmax(axis=1)))
    classes = list(featstore.CLASSES)
    meta = meta_class_accuracy(probs, labels, classes)
    meta_of = {c: m for m, members in META_CLASSES.items() for c in members}
    predicted = probs.mean(axis=1).argmax(axis=1)
    for m in META_CLASSES:
        mine = [i for i in range(40) if meta_of[classes[labels[i]]] == m]
        assert meta[m] == pytest.approx(np.mean([meta_of[classes[predicted[i]]] == m for i in mine]))
    assert meta["overall"] == pytest.approx(np.mean([meta_of[classes[labels[i]]] == meta_of[classes[predicted[i]]] for i in range(40)]))


def test_report_files_and_submission(tmp_path):
    rng = np.random.default_rng(1)
    store, probs, labels = _store_with_predictions(tmp_path / "r.zarr", rng)
    proc = run_cli("report", store.url, "--out", str(tmp_path / "out"), check=True)
    assert "report.html" in proc.stdout
    out = tmp_path / "out"
    for name in ("report.html", "report.md", "confusion-best.png", "per-class.png", "accuracy-over-time.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "confusion-best.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    clip_acc = accuracy_score(labels, probs[:30].astype(np.float64).mean(axis=1).argmax(axis=1))
    header = next(line for line in markdown.splitlines() if "evaluate accuracy (%)" in line).split(" | ")
    row = next(line for line in markdown.splitlines() if line.startswith("| 1 | m1 |")).split(" | ")
    assert row[header.index("evaluate accuracy (%)")] == f"{100 * clip_acc:.1f}", "the leaderboard's clip accuracy, in percent"
    assert "best" in row[2]
    assert "indoor" in markdown and "| overall |" in markdown
    sub = pd.read_csv(out / "submission-m1.tsv", sep="\t")
    assert list(sub.columns) == ["filename_audio", "scene_label", *featstore.CLASSES]
    assert list(sub.filename_audio) == [f"audio/{i}.wav" for i in range(6)]
    test_probs = probs[30:].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(sub[list(featstore.CLASSES)].to_numpy(), test_probs, atol=1e-6)
    assert list(sub.scene_label) == [featstore.CLASSES[k] for k in test_probs.argmax(axis=1)]


def test_report_of_an_empty_store_says_so(tmp_path):
    store = featstore.init_store(str(tmp_path / "e.zarr"))
    paths = build_report(store, str(tmp_path / "out"))
    with open(paths["markdown"]) as f:
        assert "No predictions" in f.read()


def test_leaderboard_is_sorted_marks_the_best_per_modality_and_flags_late_fusion(tmp_path):
    from featstore.pipelines.ensemble import ensemble
    from featstore.pipelines.fuse import FuseConfig, fuse

    from tests.test_fuse import make_embedding_store

    store = make_embedding_store(tmp_path / "e.zarr", clips_per_class=6)
    records = [fuse(store, FuseConfig(method="f4", modalities=m, name=f"f4-{m[0]}", epochs=3, seed=0)) for m in (("audio",), ("visual",))]
    records.append(fuse(store, FuseConfig(method="f1", name="f1-av", epochs=3, seed=0)))
    ensemble(store, ["f4-audio", "f4-visual"], rule="mean", name="late-mean")
    with open(build_report(store, str(tmp_path / "out"))["markdown"]) as f:
        markdown = f.read()
    lines = markdown.splitlines()
    header = next(line for line in lines if "evaluate accuracy (%)" in line).split(" | ")
    rows = [line.split(" | ") for line in lines if re.match(r"\| \d+ \| ", line)]
    accuracy = [float(r[header.index("evaluate accuracy (%)")]) for r in rows]
    assert accuracy == sorted(accuracy, reverse=True)
    by_source = {r[1]: r for r in rows}
    for record in records:
        row = by_source[record["name"]]
        assert float(row[header.index("evaluate accuracy (%)")]) == pytest.approx(100 * record["metrics"]["clip"]["accuracy"], abs=0.05)
        assert row[header.index("epochs")] == "3" and row[header.index("seed")] == "0"
        assert float(row[header.index("val log-loss")]) == pytest.approx(min(record["history"]["val_log_loss"]), abs=5e-4)
    best = {r[header.index("modality")]: r[1] for r in rows if "best" in r[header.index("best")]}
    assert set(best) == {"audio", "visual", "audio-visual"}
    for modality, source in best.items():
        first = next(r for r in rows if r[header.index("modality")] == modality)
        assert first[1] == source, "the best of a modality is its highest row"
    assert "chosen on evaluate" in by_source["late-mean"][header.index("method")]
    assert "About late fusion" in markdown
