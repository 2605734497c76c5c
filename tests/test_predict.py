"""From development to submission: export a system, apply it to a store of 1 s clips cut from the
training clips, `--run` on appended clips, refusals, re-runs, the submission file, one video.

Store A holds the demo clips (3 s, to keep the suite fast; the framing rule is per segment, so the
clip length does not matter) with their audio resampled once to 32 kHz float wavs. Store B holds 1 s
files cut from some of them: audio cut sample-exactly with soundfile, video re-encoded per second
with PyAV (H.264, lossy).
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import av
import keras
import numpy as np
import pytest
import soundfile
import soxr

import featstore
from featstore.demo import write_video
from featstore.models import build_model
from featstore.models.head import add_head
from featstore.packed import packed_segment_embeddings
from featstore.pipelines.embed import embed
from featstore.pipelines.extract_audio import AudioConfig, extract_audio
from featstore.pipelines.extract_frames import FramesConfig, extract_frames
from featstore.pipelines.fuse import FuseConfig, fuse
from featstore.pipelines.ingest import ingest
from featstore.pipelines.predict import predict, predict_file
from featstore.pipelines.stages import system_from_run
from featstore.system import System
from tests.conftest import CLIP_S, run_cli

FRAMES = FramesConfig(size=32)
CUT_CLIPS = (0, 1, 10, 11)  # rows of store A cut into 1 s files (train and evaluate clips)
#: Visual predictions of a 1 s file re-encoded from the clip vs the clip's own: H.264 at crf 18 moves
#: pixel values by a few levels, which moves a random-init backbone's softmax by well under this.
VISUAL_ATOL = 0.02


def _resample_to_32k(root: str) -> None:
    for name in os.listdir(os.path.join(root, "audio")):
        path = os.path.join(root, "audio", name)
        samples, sr = soundfile.read(path, dtype="float32", always_2d=True)
        soundfile.write(path, soxr.resample(samples, sr, 32_000, quality="HQ"), 32_000, subtype="FLOAT")


def _decoded_frames(path: str) -> list[tuple[float, np.ndarray]]:
    with av.open(path) as container:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def _cut_one_second_files(store: featstore.Store, out: str, *, audio_from: str | None = None) -> str:
    """1 s wav + mp4 files of every second of the CUT_CLIPS, and a CSV manifest; returns the CSV."""
    os.makedirs(out, exist_ok=True)
    rows = []
    for i in CUT_CLIPS:
        clip = store.clips.iloc[i]
        audio_path = os.path.join(audio_from or store.dataset_root, clip.audio_path)
        samples, sr = soundfile.read(audio_path, dtype="float32", always_2d=True)
        frames = _decoded_frames(os.path.join(store.dataset_root, clip.video_path))
        for k in range(int(CLIP_S)):
            stem = f"{clip.clip_id}-s{k}"
            soundfile.write(os.path.join(out, stem + ".wav"), samples[k * sr : (k + 1) * sr], sr, subtype="FLOAT")
            second = [img for t, img in frames if k - 1e-6 <= t < k + 1 - 1e-6]
            write_video(os.path.join(out, stem + ".mp4"), lambda j: second[j], n_frames=len(second), fps=30)
            rows.append({"audio": stem + ".wav", "video": stem + ".mp4", "label": clip.label, "split": "test", "clip_id": stem})
    manifest = os.path.join(out, "clips.csv")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _tiny_visual_model(path: str) -> None:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, add_head(x, units=12)).save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_root):
    """Store A with two backbones and audio-only, visual-only and audio-visual f4 runs, exported."""
    work = tmp_path_factory.mktemp("predict")
    root = str(work / "data-32k")
    shutil.copytree(demo_root, root)
    _resample_to_32k(root)
    store = featstore.init_store(str(work / "a.zarr"), clip_duration_s=CLIP_S, shard_mb=0.25)  # sharded, several shards
    ingest(store, root)
    assert extract_audio(store, AudioConfig(features=("mel",)), workers=0).done == 20
    assert extract_frames(store, FRAMES, workers=0).done == 20
    keras.utils.set_random_seed(0)
    build_model("aud-mel", input_shape=(128, 72, 6), widths=(4, 8), head_units=16).save(str(work / "aud.keras"))
    _tiny_visual_model(str(work / "vis.keras"))
    assert embed(store, "aud-mel", model_file_path=str(work / "aud.keras"))[0].done == 20
    assert embed(store, "tiny-vis", model_file_path=str(work / "vis.keras"), input_array="frames/rgb")[0].done == 20
    fuse(store, FuseConfig(method="f4", modalities=("audio",), epochs=2))
    fuse(store, FuseConfig(method="f4", modalities=("visual",), epochs=2))
    fuse(store, FuseConfig(method="f4", epochs=2))
    systems = {}
    for run in ("fuse-f4-audio", "fuse-f4-visual", "fuse-f4-av"):
        systems[run] = system_from_run(store, run).export(str(work / "systems" / run))
    return store, systems, work


@pytest.fixture(scope="module")
def cut_store(trained):
    store, systems, work = trained
    manifest = _cut_one_second_files(store, str(work / "cut"))
    cut = featstore.init_store(str(work / "b.zarr"), clip_duration_s=1.0, shard_mb=0.25)
    ingest(cut, manifest, fmt="csv")
    for run in ("fuse-f4-audio", "fuse-f4-av"):
        report = predict(cut, System.load(systems[run]), workers=0)
        assert report.ok and report.done == len(CUT_CLIPS) * int(CLIP_S), report.to_json()
    return cut


def _pairs(store: featstore.Store, cut: featstore.Store):
    """(row in A, second, row in B) for every cut file."""
    for b_row, clip_id in enumerate(cut.clips.clip_id):
        source, second = clip_id.rsplit("-s", 1)
        yield store.clip_index(source), int(second), b_row


def test_one_second_files_give_the_clips_segment_predictions(trained, cut_store):
    store, _, _ = trained
    a = {p: packed_segment_embeddings(store, f"predictions/{p}") for p in ("aud-mel", "fuse-f4-audio", "tiny-vis", "fuse-f4-av")}
    b = {p: packed_segment_embeddings(cut_store, f"predictions/{p}") for p in a}
    visual_diffs = []
    for a_row, k, b_row in _pairs(store, cut_store):
        for name, exact in (("aud-mel", True), ("fuse-f4-audio", True), ("tiny-vis", False), ("fuse-f4-av", False)):
            va = a[name][0][np.searchsorted(a[name][1], a_row), k]
            vb = b[name][0][np.searchsorted(b[name][1], b_row), 0]
            if exact:  # the same samples, framed the same way: the same numbers
                np.testing.assert_allclose(vb, va, atol=1e-5, err_msg=f"{name} segment {k} of row {a_row}")
            else:
                visual_diffs.append(float(np.abs(vb - va).max()))
    assert max(visual_diffs) < VISUAL_ATOL, f"visual predictions differ by up to {max(visual_diffs):.4f}"


def test_source_rate_cuts_are_close_not_equal(trained, demo_root, tmp_path):
    """Cut at 48 kHz (as the challenge ships its clips), each 1 s file is resampled on its own: the
    resampler's filter sees zeros past the file's edges where the clip had audio, so the first and
    last milliseconds differ and the audio predictions are close, not equal."""
    store, systems, _ = trained
    cut = featstore.init_store(str(tmp_path / "b48.zarr"), clip_duration_s=1.0)
    ingest(cut, _cut_one_second_files(store, str(tmp_path / "cut48"), audio_from=demo_root), fmt="csv")
    assert predict(cut, System.load(systems["fuse-f4-audio"]), workers=0).ok
    a, b = (packed_segment_embeddings(s, "predictions/aud-mel") for s in (store, cut))
    diffs = [float(np.abs(b[0][np.searchsorted(b[1], br), 0] - a[0][np.searchsorted(a[1], ar), k]).max()) for ar, k, br in _pairs(store, cut)]
    assert 0 < max(diffs) < 0.02, diffs


def test_rerun_is_a_noop_and_the_submission_file(trained, cut_store, tmp_path):
    _, systems, _ = trained
    again = predict(cut_store, System.load(systems["fuse-f4-av"]), workers=0)
    assert again.done == 0 and again.skipped == cut_store.n_clips and again.stages == []
    path = str(tmp_path / "submission.tsv")
    proc = run_cli("predict", cut_store.url, "--system", systems["fuse-f4-av"], "--submission", path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["done"] == 0
    with open(path) as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["filename_audio", "scene_label", *featstore.CLASSES]
    assert len(rows) == 1 + cut_store.n_clips
    probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert [r[1] for r in rows[1:]] == [featstore.CLASSES[i] for i in probs.argmax(axis=1)]
    record = json.loads(cut_store.side.read("runs/fuse-f4-av.json"))
    assert record["kind"] == "predict" and record["clips"] == cut_store.n_clips and "clip" in record["metrics"]


def test_system_with_other_parameters_than_the_store_is_refused(trained, tmp_path):
    store, systems, _ = trained
    other = featstore.init_store(str(tmp_path / "o.zarr"), clip_duration_s=CLIP_S)
    ingest(other, store.dataset_root)
    extract_audio(other, AudioConfig(features=("mel",), n_bins=64), workers=0, clips=[other.clips.clip_id[0]])
    with pytest.raises(featstore.ConfigError, match=r"audio/mel exists .*n_bins: stored 64, system 128"):
        predict(other, System.load(systems["fuse-f4-audio"]), workers=0)
    proc = run_cli("predict", other.url, "--system", systems["fuse-f4-audio"])
    assert proc.returncode == 1 and "n_bins: stored 64, system 128" in proc.stderr


def test_tampered_system_file_is_refused(trained, tmp_path):
    _, systems, _ = trained
    copy = shutil.copytree(systems["fuse-f4-av"], str(tmp_path / "sys"))
    head = os.path.join(copy, "heads", "fuse-f4-av.keras")
    raw = bytearray(open(head, "rb").read())
    raw[len(raw) // 2] ^= 0x01
    open(head, "wb").write(bytes(raw))
    with pytest.raises(featstore.ConfigError, match="heads/fuse-f4-av.keras: checksum differs"):
        System.load(copy)


def test_run_on_appended_clips_equals_the_head_in_memory(trained, tmp_path):
    store, _, work = trained
    # two more clips: copies of existing files under new names, appended with a CSV
    extra = []
    for i in (2, 12):
        clip = store.clips.iloc[i]
        for col in ("audio_path", "video_path"):
            src = os.path.join(store.dataset_root, clip[col])
            shutil.copy(src, src.replace(clip.clip_id, clip.clip_id + "-again"))
        extra.append({"audio": clip.audio_path.replace(clip.clip_id, clip.clip_id + "-again"), "video": clip.video_path.replace(clip.clip_id, clip.clip_id + "-again"), "label": clip.label, "split": "test", "clip_id": clip.clip_id + "-again"})
    manifest = os.path.join(store.dataset_root, "extra.csv")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(extra[0]))
        writer.writeheader()
        writer.writerows(extra)
    ingest(store, manifest, fmt="csv")
    proc = run_cli("predict", store.url, "--run", "fuse-f4-av", "--workers", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["done"] == 2
    probs, rows = packed_segment_embeddings(store, "predictions/fuse-f4-av")
    head = keras.saving.load_model(store.side.path("runs/fuse-f4-av.keras"), safe_mode=True)
    models = json.loads(store.side.read("runs/fuse-f4-av.json"))["models"]
    for clip_id in (c["clip_id"] for c in extra):
        row = store.clip_index(clip_id)
        x = np.stack([packed_segment_embeddings(store, f"embeddings/{m}/fc10")[0][np.searchsorted(packed_segment_embeddings(store, f"embeddings/{m}/fc10")[1], row)] for m in models], axis=1)
        np.testing.assert_allclose(probs[np.searchsorted(rows, row)], np.asarray(head(x, training=False)), atol=1e-5)
        # the copy of a clip gets that clip's predictions
        original = store.clip_index(clip_id.removesuffix("-again"))
        np.testing.assert_allclose(probs[np.searchsorted(rows, row)], probs[np.searchsorted(rows, original)], atol=1e-5)
    assert run_cli("predict", store.url, "--run", "fuse-f4-av", "--workers", "0").returncode == 0


def test_one_video_file(trained):
    """`predict --file`: a visual-only system on one of the store's own videos gives that clip's
    predictions, per second and for the whole clip."""
    store, systems, _ = trained
    row = 5
    video = os.path.join(store.dataset_root, store.clips.video_path[row])
    proc = run_cli("predict", "--system", systems["fuse-f4-visual"], "--file", video, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    probs, rows = packed_segment_embeddings(store, "predictions/fuse-f4-visual")
    expected = probs[np.searchsorted(rows, row)]
    np.testing.assert_allclose(result["per_segment"], expected, atol=1e-5)
    np.testing.assert_allclose(result["clip"], expected.mean(axis=0), atol=1e-5)
    assert result["label"] == featstore.CLASSES[int(np.argmax(result["clip"]))]
    text = run_cli("predict", "--system", systems["fuse-f4-visual"], "--file", video, "--per-segment").stdout
    assert text.splitlines()[0].endswith(f"{result['label']} ({result['probability']:.3f})") and len(text.splitlines()) == 2 + int(CLIP_S) + 1
    with pytest.raises(featstore.MediaError):  # the demo videos have no audio track
        predict_file(System.load(systems["fuse-f4-audio"]), video)


def test_a_bad_clip_is_a_named_failure_and_the_others_are_predicted(trained, cut_store, tmp_path):
    _, systems, work = trained
    data = tmp_path / "mixed"
    data.mkdir()
    rows = []
    for clip_id in list(cut_store.clips.clip_id[:2]):
        for ext in (".wav", ".mp4"):
            shutil.copy(work / "cut" / (clip_id + ext), data / (clip_id + ext))
        rows.append({"audio": clip_id + ".wav", "video": clip_id + ".mp4", "label": "", "split": "test", "clip_id": clip_id})
    (data / "broken.wav").write_bytes(os.urandom(3000))
    (data / "broken.mp4").write_bytes(os.urandom(3000))
    rows.append({"audio": "broken.wav", "video": "broken.mp4", "label": "", "split": "test", "clip_id": "broken"})
    with open(data / "clips.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    store = featstore.init_store(str(tmp_path / "m.zarr"), clip_duration_s=1.0)
    ingest(store, str(data / "clips.csv"), fmt="csv")
    proc = run_cli("predict", store.url, "--system", systems["fuse-f4-av"], "--workers", "0", "--json")
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["done"] == 2 and summary["failed"] == 1
    assert [f["clip_id"] for f in summary["failures"]] == ["broken"] and "extract-" in summary["failures"][0]["error"]
    assert "clip broken failed" in proc.stderr
    probs, rows_done = packed_segment_embeddings(store, "predictions/fuse-f4-av")
    assert list(rows_done) == [0, 1]


def test_challenge_evaluation_layout_is_detected_and_predicted(trained, tmp_path):
    """The evaluation layout (numbered 1 s files, fold1_test.csv without labels), written from two
    clips of store A, is ingested as unlabelled test clips and gets a submission file."""
    from featstore.evalset import write_eval_layout

    store, systems, _ = trained
    sources = list(store.clips.clip_id[10:12])
    root = write_eval_layout(store, sources, str(tmp_path / "TAU-urban-audio-visual-scenes-2021-evaluation"))
    evaluation = featstore.init_store(str(tmp_path / "eval.zarr"), clip_duration_s=1.0)
    proc = run_cli("ingest", evaluation.url, root, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["added"] == 2 * int(CLIP_S), proc.stderr
    evaluation = featstore.open_store(evaluation.url)
    assert list(evaluation.clips.clip_id) == [str(i) for i in range(2 * int(CLIP_S))]
    assert set(evaluation.clips.split) == {"test"} and set(evaluation.clips.label) == {""}
    submission = str(tmp_path / "submission.tsv")
    proc = run_cli("predict", evaluation.url, "--system", systems["fuse-f4-av"], "--workers", "0", "--submission", submission)
    assert proc.returncode == 0, proc.stderr
    with open(submission) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["filename_audio"] for r in rows] == [f"audio/{i}.wav" for i in range(2 * int(CLIP_S))]
    # each numbered file is a second of a clip of A: its audio predictions are that segment's (24-bit PCM)
    with open(os.path.join(root, "truth.csv")) as f:
        truth = list(csv.DictReader(f, delimiter="\t"))
    a, e = (packed_segment_embeddings(s, "predictions/aud-mel") for s in (store, evaluation))
    for i, t in enumerate(truth):
        expected = a[0][np.searchsorted(a[1], store.clip_index(t["source_clip"])), int(t["second"])]
        np.testing.assert_allclose(e[0][np.searchsorted(e[1], i), 0], expected, atol=0.02)


def test_a_concat_head_of_models_of_different_widths_applies_as_trained(trained, tmp_path):
    """A joint-modeling `concat` run over fc1024 embeddings of different widths (16 and 12, zero-padded
    as fuse pads them), exported and applied to a fresh store of the same clips, gives the run's own
    predictions."""
    store, _, _ = trained
    record = fuse(store, FuseConfig(method="concat", models=("aud-mel", "tiny-vis"), widths=(8, 8), epochs=1, name="concat-small"))
    assert record["models"] == ["aud-mel", "tiny-vis"]
    system_dir = system_from_run(store, "concat-small").export(str(tmp_path / "sys"))
    fresh = featstore.init_store(str(tmp_path / "fresh.zarr"), clip_duration_s=CLIP_S)
    ingest(fresh, store.dataset_root)
    assert predict(fresh, System.load(system_dir), workers=0).done == 20
    ours, rows = packed_segment_embeddings(fresh, "predictions/concat-small")
    theirs, their_rows = packed_segment_embeddings(store, "predictions/concat-small")
    same = np.isin(their_rows, rows)  # A may hold more clips (appended by another test), after these 20
    assert list(their_rows[same]) == list(rows) == list(range(20))
    assert list(store.clips.clip_id[:20]) == list(fresh.clips.clip_id)
    np.testing.assert_allclose(ours, theirs[same], atol=1e-5)


def _long_file(out: str, seconds: float) -> tuple[str, str]:
    """A 64x36 mp4 of ``seconds`` (moving noise, 10 fps) and a 48 kHz stereo wav of the same length."""
    rng = np.random.default_rng(int(seconds))
    base = rng.integers(0, 256, (36, 64 + 200, 3), dtype=np.uint8)
    video, audio = os.path.join(out, f"long{seconds:g}.mp4"), os.path.join(out, f"long{seconds:g}.wav")
    write_video(video, lambda i: np.ascontiguousarray(base[:, i % 200 : i % 200 + 64]), n_frames=int(seconds * 10), fps=10)
    soundfile.write(audio, 0.1 * rng.standard_normal((int(seconds * 48_000), 2)).astype(np.float32), 48_000, subtype="FLOAT")
    return video, audio


def test_a_file_in_windows_equals_the_whole_file(trained, tmp_path):
    """`predict --file` classifies a file a window at a time: windows of 2 segments give every
    segment and the clip the values of one whole-file window (audio resampled from 48 kHz, read
    from an offset; frames at the window's own times)."""
    _, systems, _ = trained
    video, audio = _long_file(str(tmp_path), 7.0)
    av_system = System.load(systems["fuse-f4-av"])
    whole = predict_file(av_system, video, audio, window_segments=1000)
    windowed = predict_file(av_system, video, audio, window_segments=2)
    assert len(whole["per_segment"]) == 7
    np.testing.assert_allclose(windowed["per_segment"], whole["per_segment"], atol=2e-6)
    np.testing.assert_allclose(windowed["clip"], whole["clip"], atol=2e-6)
    assert windowed["label"] == whole["label"]


MEMORY_SCRIPT = """
import resource, sys
from featstore.pipelines.predict import predict_file
from featstore.system import System
def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
system, warm, window, file, runs = System.load(sys.argv[1]), sys.argv[2:4], int(sys.argv[4]), sys.argv[5:7], int(sys.argv[7])
predict_file(system, *warm, window_segments=window)  # warm: models loaded, a first and a later window run
start, kept = rss_kb(), []
for _ in range(runs):
    before = rss_kb()
    predict_file(system, *file, window_segments=window)
    kept.append(rss_kb() - before)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start, min(kept))  # peak and kept growth, KiB
"""


#: Memory each further window of a file may keep (KiB): the system's models are loaded once, in the
#: first window, so a further window leaves only its temporary store's small objects behind
#: (measured: 13 further windows keep 1 to 5 MB in all, once 14 MB).
KEPT_PER_WINDOW_KIB = 2_000
#: How much higher the peak may be per further window (KiB): transient allocator growth, not kept
#: (measured: 0.3 to 4.3 MB a window run alone, up to 11 MB a window run from pytest).
PEAK_PER_WINDOW_KIB = 15_000
#: Runs of each file after the warm-up; what a file keeps is the least of them. The first file after
#: the warm-up keeps 40 to 53 MB more in about 3 processes of 4, once, whatever its length (the same
#: with ``malloc_trim`` before each reading: memory in use, taken once by the libraries, not free
#: memory the allocator holds); a window's own growth would show in every run.
MEMORY_RUNS = 3


def test_predict_file_memory_is_bounded_by_a_window(trained, tmp_path):
    """Memory above the warmed-up process is bounded by the window, not the file: a file of 13
    windows keeps within a small residue per further window of what a file of one keeps (the
    models are not loaded again), and peaks within a small allowance per further window."""
    import subprocess
    import sys

    _, systems, _ = trained
    window = "10"  # segments
    warm = _long_file(str(tmp_path), 20.0)  # two windows: a first one and a later one (read with a lead)
    growth = {}
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # glibc's per-thread arenas fragment by chance (up to 40 MB a run); two keep that noise small
    for seconds in (10.0, 130.0):
        video, audio = _long_file(str(tmp_path), seconds)
        args = [systems["fuse-f4-av"], *warm, window, video, audio, str(MEMORY_RUNS)]
        proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        growth[seconds] = [int(v) for v in proc.stdout.split()[-2:]]  # peak, least kept (KiB)
    assert growth[130.0][1] <= growth[10.0][1] + 12 * KEPT_PER_WINDOW_KIB, growth
    assert growth[130.0][0] <= growth[10.0][0] + 12 * PEAK_PER_WINDOW_KIB, growth
