"""Benchmark: the evaluation set's shape (one-second clips) through `featstore` as whole processes,
against the same work written by hand as one batched loop, measured in the same run (CPU).

A small audio-visual system (tiny aud-mel and visual backbones, an f4 head; the one of
``bench_predict.py``) is trained and exported. Generated 10 s clips are cut into the challenge's
evaluation layout (``audio/N.wav``, ``video/N.mp4``, ``evaluation_setup/fold1_test.csv``) at two
sizes. For each size, in alternating rounds, each a fresh process:

- featstore: ``featstore init --clip-duration-s 1``, ``featstore ingest``, ``featstore predict
  --system DIR --submission FILE`` (three processes);
- by hand: one process that reads each file (soundfile + soxr + the mel front end per clip, PyAV
  frames), then makes one batched model call per backbone and one for the head, and writes a TSV.

The difference between the two sizes gives the marginal seconds per clip of each (process start-up,
imports and compilation cancel), their ratio (target <= 1.3x), the files the store holds per clip
(target <= 0.05) and the extrapolation to the 72,000 clips of the evaluation set. Both are measured
in wall seconds and in CPU seconds (the processes' user and system time, their children's
included: the steadier measure on a shared machine, and the cost per core).

    python benchmarks/bench_evalset.py                       # 40 and 120 clips, 2 rounds
    python benchmarks/bench_evalset.py --sizes 200 1000      # the evaluation set's scale, slower
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_predict import _train_system

#: Clips of the challenge's evaluation set.
EVAL_CLIPS = 72_000


def _featstore(*args: str) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "featstore")
    subprocess.run([exe, *args], check=True, stdout=subprocess.DEVNULL)


def _eval_layouts(work: str, sizes: list[int]) -> dict[int, str]:
    """One evaluation layout per size, cut from generated 10 s clips: {size: root}."""
    import featstore
    from featstore.demo import make_demo_dataset
    from featstore.evalset import write_eval_layout
    from featstore.pipelines.ingest import ingest

    n_sources = -(-max(sizes) // 10)
    data = make_demo_dataset(os.path.join(work, "sources"), clips_per_class=-(-n_sources // 10), seed=7, duration_s=10.0)
    store = featstore.init_store(os.path.join(work, "sources.zarr"))
    ingest(store, data)
    clip_ids = list(store.clips["clip_id"])
    return {n: write_eval_layout(store, clip_ids[: n // 10], os.path.join(work, f"eval-{n}")) for n in sizes}


def _timed(run) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the processes ``run`` starts and waits for, their children
    included): on a shared machine the CPU time is the steadier measure of the work done."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _run_featstore(eval_root: str, system_dir: str, store: str, submission: str, workers: int | None) -> tuple[float, float]:
    def run():
        _featstore("init", store, "--segment-s", "1", "--clip-duration-s", "1")
        _featstore("ingest", store, eval_root)
        _featstore("predict", store, "--system", system_dir, "--submission", submission, *(["--workers", str(workers)] if workers is not None else []))

    return _timed(run)


def _run_by_hand(eval_root: str, system_dir: str, out: str, batch_units: int) -> tuple[float, float]:
    return _timed(lambda: subprocess.run([sys.executable, __file__, "--by-hand", eval_root, system_dir, out, "--batch-units", str(batch_units)], check=True))


def by_hand(eval_root: str, system_dir: str, out: str, batch_units: int) -> None:
    """The work of ``predict --submission`` on an evaluation layout, as a plain batched loop."""
    import soundfile

    import keras

    from featstore.audio import AudioParams, add_deltas, prepare_waveform, spectrograms
    from featstore.models.applications import embedding_model
    from featstore.models.deltas import model_wants_deltas
    from featstore.pipelines.embed import forward_function
    from featstore.system import System
    from featstore.video import decode_frames

    system = System.load(system_dir)
    a, f = system.inputs["audio/mel"]["config"], system.inputs["frames/rgb"]["config"]
    p = AudioParams(sr=a["sr"], n_bins=a["n_bins"], win_ms=a["win_ms"], hop_ms=a["hop_ms"], segment_s=system.segment_s, n_segments=1)
    with open(os.path.join(eval_root, "evaluation_setup", "fold1_test.csv")) as fh:
        listed = list(csv.DictReader(fh, delimiter="\t"))
    mel, rgb = [], []
    for row in listed:
        samples, sr = soundfile.read(os.path.join(eval_root, row["filename_audio"]), dtype="float32", always_2d=True)
        mel.append(spectrograms(prepare_waveform(samples, sr, p)[0], p, ("mel",))["mel"])  # (channel, bin, frame)
        rgb.append(decode_frames(os.path.join(eval_root, row["filename_video"]), fps=f["fps"], duration_s=system.segment_s, size=f["size"], resize=f["resize"]).rgb)
    n = len(listed)
    decision = system.decision
    embeddings = []
    for item in decision["models"]:
        model_name, _, layer = item.partition("/")
        entry = system.backbones[model_name]
        model = system.load_keras(entry["file"])
        if entry["input"] == "audio/mel":
            spec = np.concatenate(mel, axis=2)  # (channel, bin, clip * frame): deltas stay within each clip
            if model_wants_deltas(model, spec.shape[0]):
                spec = add_deltas(spec, p.frames_per_segment, p.delta_width)
            c, b, _ = spec.shape
            x = np.ascontiguousarray(spec.reshape(c, b, n, p.frames_per_segment).transpose(2, 1, 3, 0))
        else:
            x = np.concatenate(rgb)  # (clip * frame, size, size, 3)
        embedder = keras.Model(model.inputs, embedding_model(model, layer or decision["layer"]).output)
        values = forward_function(embedder, batch_units)([x])[0]
        embeddings.append(values.reshape(n, -1, values.shape[-1]).mean(axis=1))  # one segment per clip
    head = system.load_keras(decision["head"])
    probs = np.asarray(head(np.stack(embeddings, axis=1), training=False))
    classes = np.array(system.classes)
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename_audio", "scene_label", *classes])
        for row, pr in zip(listed, probs):
            writer.writerow([row["filename_audio"], classes[pr.argmax()], *(f"{v:.6f}" for v in pr)])


def _labels(path: str) -> dict[str, str]:
    with open(path) as fh:
        return {r["filename_audio"]: r["scene_label"] for r in csv.DictReader(fh, delimiter="\t")}


def _files(root: str) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _files_at(store_path: str, n: int, target: int) -> int:
    """The files of the store at ``store_path`` (``n`` clips) grown to ``target`` clips: each array
    gains the stored objects (shards, or chunks when unsharded) that ``target`` clips fill."""
    import featstore
    from featstore.shards import shard_clips

    store = featstore.open_store(store_path)
    grown = sum(-(-target // c) - -(-n // c) for c in (shard_clips(store.array(path)) for path in store.array_paths()))
    return _files(store_path) + grown


def _table(measure: str, seconds: dict[tuple[str, int], list[float]], small: int, large: int, hours_label: str) -> None:
    """Print the markdown table of ``measure`` (wall or CPU seconds): each way's medians at both
    sizes, its marginal cost per clip, the ratio and the hours for the evaluation set."""
    med = {key: statistics.median(v) for key, v in seconds.items()}
    marginal = {kind: (med[kind, large] - med[kind, small]) / (large - small) for kind in ("featstore", "hand")}
    resolved = min(marginal.values()) > 0  # else fixed costs and noise hid the per-clip cost: larger --sizes
    print(f"\n| run ({measure}) | {small} clips (s) | {large} clips (s) | marginal ms/clip | vs by hand | {EVAL_CLIPS:,} clips, {hours_label} (h) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, label in (("hand", "by hand, one batched loop"), ("featstore", "featstore init + ingest + predict --submission")):
        m = marginal[kind]
        vs = "1.00x" if kind == "hand" else f"{marginal['featstore'] / marginal['hand']:.2f}x (target <= 1.3x)" if resolved else "not resolved"
        hours = f"{m * EVAL_CLIPS / 3600:.2f}" if m > 0 else ""
        print(f"| {label} | {med[kind, small]:.1f} | {med[kind, large]:.1f} | {1000 * m:.1f} | {vs} | {hours} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[40, 120], help="Two numbers of one-second clips (multiples of 10).")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds per size.")
    parser.add_argument("--batch-units", type=int, default=256, help="Units per model call of the hand-written loop (predict's default).")
    parser.add_argument("--workers", type=int, default=None, help="predict --workers (default: predict's own, a local dask cluster of one process per core; 0: in-process, one core like the loop).")
    parser.add_argument("--by-hand", nargs=3, metavar=("EVAL_ROOT", "SYSTEM", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # every process below: no TensorFlow start-up chatter
    if args.by_hand:
        by_hand(*args.by_hand, args.batch_units)
        return
    small, large = sorted(args.sizes)
    if small % 10 or large % 10 or small == large:
        parser.error("--sizes must be two different multiples of 10")

    with tempfile.TemporaryDirectory() as work:
        t = time.perf_counter()
        system_dir = _train_system(work, 2)
        roots = _eval_layouts(work, [small, large])
        print(f"system trained and exported, layouts cut: {time.perf_counter() - t:.0f} s")
        times: dict[tuple[str, int], list[float]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        files, agree, at_eval = {}, [], 0
        for r in range(args.rounds):
            for n in (small, large):
                store, sub, hand_tsv = (os.path.join(work, x) for x in (f"eval-{n}.zarr", f"sub-{n}.tsv", f"hand-{n}.tsv"))
                order = ("featstore", "hand") if r % 2 == 0 else ("hand", "featstore")
                for kind in order:
                    if kind == "featstore":
                        shutil.rmtree(store, ignore_errors=True)
                        seconds, cpu_s = _run_featstore(roots[n], system_dir, store, sub, args.workers)
                        files[n] = _files(store)
                        if n == large:
                            at_eval = _files_at(store, n, EVAL_CLIPS)
                    else:
                        seconds, cpu_s = _run_by_hand(roots[n], system_dir, hand_tsv, args.batch_units)
                    times.setdefault((kind, n), []).append(seconds)
                    cpu.setdefault((kind, n), []).append(cpu_s)
                got, ref = _labels(sub), _labels(hand_tsv)
                assert len(got) == len(ref) == n, (len(got), len(ref), n)
                agree.append(np.mean([got[k] == ref[k] for k in ref]))
                print(
                    f"round {r + 1}, {n} clips: featstore {times['featstore', n][-1]:.1f} s ({cpu['featstore', n][-1]:.1f} s CPU), "
                    f"by hand {times['hand', n][-1]:.1f} s ({cpu['hand', n][-1]:.1f} s CPU), load {os.getloadavg()[0]:.1f}, "
                    f"store {files[n]} files, same decision on {100 * agree[-1]:.0f}% of clips"
                )

    files_per_clip = (files[large] - files[small]) / (large - small)
    workers = "predict's default workers" if args.workers is None else f"predict --workers {args.workers}"
    print(f"\nOne-second clips, medians of {args.rounds} alternating rounds, whole processes, {workers}:")
    _table("wall", times, small, large, "on this machine's cores")
    _table("CPU", cpu, small, large, "per core")
    print(
        f"\nStore files: {files[small]} at {small} clips, {files[large]} at {large}: {files_per_clip:.3f} files per clip "
        f"(target <= 0.05); grown to {EVAL_CLIPS:,} clips by its arrays' shard sizes: {at_eval:,} files, {at_eval / EVAL_CLIPS:.4f} per clip"
    )
    print(f"Decisions equal to the hand-written loop's on {100 * min(agree):.0f}% of clips (lowest round)")


if __name__ == "__main__":
    main()
