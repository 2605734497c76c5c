"""HEAR-API and plain torch embedding models on raw audio: embedded, cached, fused (tiny models
written in the tests: tests/hear_tiny.py, tests/torch_tiny.py; nothing downloaded)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile
import soxr

from featstore.pipelines.embed import embed
from featstore.pipelines.fuse import FuseConfig, fuse
from featstore.runs import load_run
from tests.conftest import run_cli

torch = pytest.importorskip("torch")  # the optional torch extra; the tiny models below need it
from tests import hear_tiny, torch_tiny

HEAR = "tests.hear_tiny"
TORCH = "tests.torch_tiny.tiny_net"


def _segments(store, clip_id: str, sr: int) -> np.ndarray:
    """Reference input: the clip's source file decoded with soundfile, resampled whole, mono, cut
    into the store's segments (sound, samples)."""
    row = store.clips.set_index("clip_id").loc[clip_id]
    samples, source_sr = soundfile.read(f"{store.dataset_root}/{row['audio_path']}", dtype="float32", always_2d=True)
    mono = soxr.resample(samples, source_sr, sr, quality="HQ").mean(axis=1)
    n = round(store.segment_s * sr)
    mono = np.pad(mono, (0, max(0, store.n_segments * n - len(mono))))
    return mono[: store.n_segments * n].reshape(store.n_segments, n).astype(np.float32)


def test_hear_model_embedded_cached_refreshed_and_fused(demo_store, tmp_path):
    store = demo_store
    report, note = embed(store, f"hear:{HEAR}", workers=0)
    assert report.done == 20 and report.failed == 0 and note is None
    scene, timestamp = store.array(f"embeddings/{HEAR}/scene"), store.array(f"embeddings/{HEAR}/timestamp")
    assert scene.shape == (20, store.n_segments, 12) and timestamp.shape == (20, store.n_segments, 6)
    # against the HEAR API called directly on the clip's audio
    clip_id = str(store.clips["clip_id"].iloc[3])
    audio = torch.from_numpy(_segments(store, clip_id, hear_tiny.SAMPLE_RATE))
    model = hear_tiny.load_model()
    with torch.no_grad():
        ref_scene, (ref_timestamp, _) = hear_tiny.get_scene_embeddings(audio, model), hear_tiny.get_timestamp_embeddings(audio, model)
    np.testing.assert_allclose(scene[3], ref_scene.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(timestamp[3], ref_timestamp.numpy().mean(axis=1), rtol=1e-3, atol=1e-3)

    before = timestamp[3]
    again, _ = embed(store, f"hear:{HEAR}", workers=0)
    assert again.done == 0 and again.skipped == 20, "a second run is a cache hit"

    other = hear_tiny.TinyHear()
    with torch.no_grad():
        other.proj.weight.mul_(2.0)
    weights = str(tmp_path / "tiny.pt")
    torch.save(other.state_dict(), weights)
    refreshed, note = embed(store, f"hear:{HEAR}", weights_file=weights, workers=0)
    assert refreshed.done == 20 and "another model" in note
    assert not np.allclose(store.array(f"embeddings/{HEAR}/timestamp")[3], before)
    assert store.provenance(f"embeddings/{HEAR}/scene").modality == "audio"

    record = fuse(store, FuseConfig(method="mlp", models=(HEAR,), layer="scene", widths=(8,), epochs=2, batch_size=16))
    assert record["models"] == [HEAR] and len(record["history"]["loss"]) == 2
    assert load_run(store, record["name"])["layer"] == "scene"
    assert store.array(f"predictions/{record['name']}").shape == (20, store.n_segments, 10)


def test_torch_factory_embedded_and_cached_from_the_command_line(demo_store):
    store = demo_store
    proc = run_cli("embed", store.url, "--model", "torch:tests.torch_tiny:tiny_net", "--json", check=True)
    assert '"done": 20' in proc.stdout
    embedding, frames = store.array(f"embeddings/{TORCH}/embedding"), store.array(f"embeddings/{TORCH}/frames")
    assert embedding.shape == (20, store.n_segments, 4) and frames.shape == (20, store.n_segments, 3)
    net = torch_tiny.tiny_net().eval()
    with torch.no_grad():
        out = net(torch.from_numpy(_segments(store, str(store.clips["clip_id"].iloc[5]), net.sample_rate)))
    np.testing.assert_allclose(embedding[5], out["embedding"].numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(frames[5], out["frames"].numpy().mean(axis=2), rtol=1e-3, atol=1e-4)
    again = run_cli("embed", store.url, "--model", "torch:tests.torch_tiny:tiny_net", check=True)
    assert "0 done, 20 already done" in again.stdout
    bad = run_cli("embed", store.url, "--model", "torch:tests.torch_tiny")
    assert bad.returncode == 1 and "torch:PKG.MODULE:FACTORY" in bad.stderr and "Traceback" not in bad.stderr


def test_featstore_does_not_import_torch():
    code = "import sys, featstore, featstore.pipelines.embed, featstore.models.hear; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
