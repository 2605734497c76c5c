"""What is in a store: clips per split and label, arrays with shape, chunking, progress and size.

A damaged side file or ``zarr.json`` raises :class:`~featstore.errors.DamagedFile` naming it
(``featstore verify`` lists every one).
"""

from __future__ import annotations

from typing import Any

from featstore.store import Store


def _bytes_under(store: Store, path: str) -> int:
    fs = store.side.fs
    root = store.side.root.rsplit("/", 1)[0]
    try:
        return int(fs.du(f"{root}/{path}", total=True))
    except FileNotFoundError:
        return 0


def store_info(store: Store) -> dict[str, Any]:
    """A JSON-serialisable summary of ``store`` (what ``featstore info --json`` prints)."""
    removed = store.removed
    clips = store.clips[~removed]  # a removed clip keeps its row but is counted apart
    by_split = clips.groupby("split").size().to_dict() if len(clips) else {}
    by_label = clips.groupby("label").size().to_dict() if len(clips) else {}
    failures = store.failures
    arrays = []
    done_anywhere: set[str] = set()
    for path in store.array_paths():
        array = store.array(path)
        prov = store.provenance(path)
        done = store.ledger(path).entries
        n_done = len(done)
        n_rows = int((~removed[: array.shape[0]]).sum())  # the clips the array is for
        done_anywhere.update(done)
        if len(failures):  # a clip done since it failed (by another run) counts as done only
            failures = failures[~((failures["array"] == path) & failures["clip_id"].isin(list(done)))]
        arrays.append(
            {
                "path": path,
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "chunks": list(array.chunks),
                "clips_per_shard": int(array.shards[0]) if array.shards is not None else 1,
                "dims": prov.get("dims"),
                "stage": prov.get("stage"),
                "fingerprint": prov.get("fingerprint"),
                "done": n_done,
                "fraction_done": n_done / n_rows if n_rows else 0.0,
                "bytes_on_disk": _bytes_under(store, path),
                "failures": int((failures["array"] == path).sum()) if len(failures) else 0,
            }
        )
    if len(failures):  # an ingest failure (a missing file) of a clip that stages have since computed
        failures = failures[~((failures["array"] == "") & failures["clip_id"].isin(list(done_anywhere)))]
    return {
        "url": store.url,
        "dataset_root": store.dataset_root,
        "segment_s": store.segment_s,
        "clip_duration_s": store.clip_duration_s,
        "classes": store.classes,
        "clips": len(clips),
        "removed_clips": int(removed.sum()),
        "clips_per_split": {str(k) or "(none)": int(v) for k, v in by_split.items()},
        "clips_per_label": {str(k) or "(none)": int(v) for k, v in by_label.items()},
        "arrays": arrays,
        # a clip that failed in a stage counts once, however many of the stage's arrays it misses
        "failures": int(len(failures.drop_duplicates(["stage", "clip_id"]))),
    }


def format_info(info: dict[str, Any]) -> str:
    """The summary as a human-readable text block."""
    lines = [
        f"store        {info['url']}",
        f"dataset root {info['dataset_root']}",
        f"segments     {info['segment_s']} s grid over {info['clip_duration_s']} s clips",
        f"clips        {info['clips']}" + (f" ({info['removed_clips']} removed)" if info["removed_clips"] else ""),
    ]
    lines += [f"  split {k:<12} {v}" for k, v in sorted(info["clips_per_split"].items())]
    lines += [f"  label {k:<18} {v}" for k, v in sorted(info["clips_per_label"].items())]
    lines.append(f"arrays       {len(info['arrays'])}")
    for a in info["arrays"]:
        lines.append(
            f"  {a['path']:<24} {str(tuple(a['shape'])):<22} {a['dtype']:<8} chunks {tuple(a['chunks'])} "
            + (f"in shards of {a['clips_per_shard']} clips " if a["clips_per_shard"] > 1 else "")
            + f"done {a['fraction_done']:.0%} {a['bytes_on_disk'] / 1e6:.1f} MB failures {a['failures']}"
        )
    lines.append(f"failures     {info['failures']}")
    return "\n".join(lines)
