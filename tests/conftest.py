"""Shared fixtures: a generated demo dataset (3 s clips) and stores built from it; the test tiers.

Nothing is downloaded: audio is synthesised with numpy, video encoded with PyAV.

Two tiers: ``bash bootstrap.sh test -m "not slow"`` runs the fast tier (unit tests: no subprocess,
no dask cluster, no training), ``bash bootstrap.sh test`` everything. A test is marked ``slow``
here, at collection, when its body or a fixture it uses (directly or through other fixtures) calls
one of :data:`SLOW_CALLS`, so a new test lands in the right tier without being marked by hand.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import warnings

import pytest

import featstore
from featstore.demo import make_demo_dataset
from featstore.pipelines.ingest import ingest

CLIP_S = 3.0


def run_cli(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run ``featstore ARGS`` in a subprocess (the real console entry point's module)."""
    proc = subprocess.run([sys.executable, "-m", "featstore.cli.main", *args], capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"featstore {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> str:
    """A TAU-layout dataset: 10 classes x 2 clips of 3 s (wav 48 kHz 24-bit, H.264 mp4 160x120)."""
    root = tmp_path_factory.mktemp("demo") / "TAU-urban-audio-visual-scenes-2021-development"
    return make_demo_dataset(str(root), clips_per_class=2, seed=1, duration_s=CLIP_S)


def _ingested_store(path: str, demo_root: str, **layout) -> featstore.Store:
    store = featstore.init_store(path, clip_duration_s=CLIP_S, **layout)
    ingest(store, demo_root)
    return store


@pytest.fixture
def demo_store(tmp_path, demo_root) -> featstore.Store:
    """A fresh store with the demo dataset ingested (the default layout: many clips per shard)."""
    return _ingested_store(str(tmp_path / "store.zarr"), demo_root)


@pytest.fixture
def flat_demo_store(tmp_path, demo_root) -> featstore.Store:
    """The same in the one-object-per-clip layout (``shard_mb=0``), for tests that reach into a
    clip's own chunk file (damage it, count the files)."""
    return _ingested_store(str(tmp_path / "store.zarr"), demo_root, shard_mb=0)


def mel_windows_store(path: str, demo_root: str) -> featstore.Store:
    """The demo dataset ingested at ``path`` with MEL extracted: 20 clips of 3 s, 60 one-second windows."""
    from featstore.pipelines.extract_audio import extract_audio

    store = _ingested_store(path, demo_root)
    assert extract_audio(store, workers=0, features=("mel",), progress=False).done == 20
    return store


def units_by_value(store: featstore.Store, **options) -> dict[bytes, tuple[int, int]]:
    """Served values (bytes of one float32 MEL window) -> (row, unit), from the numpy loader's
    unshuffled plan with ``options``: tells which unit a loader served."""
    from featstore.loader import training_batches

    reference = training_batches(store, "audio/mel", shuffle=False, **options)
    table = {}
    for pairs, (x, _) in zip((b for block in reference.plan(0) for b in block.batches), reference.epoch(0)):
        table.update({example.tobytes(): (int(row), int(unit)) for example, (row, unit) in zip(x, pairs)})
    assert len(table) == 60, "every window's values are distinct (else the table could not tell units apart)"
    return table


@pytest.fixture(autouse=True)
def _quiet_numba():
    """numba's own warnings (its deprecations, first-compile notices), which librosa's import and the
    mixup kernel trigger, are not about featstore: silence those and nothing else."""
    with warnings.catch_warnings():
        for category in _numba_warnings():
            warnings.simplefilter("ignore", category)
        yield


def _numba_warnings() -> list[type[Warning]]:
    try:
        from numba.core import errors
    except ImportError:  # pragma: no cover - numba is a dependency
        return []
    return [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Warning)]


#: What makes a test slow: a subprocess (the CLI's real entry point), a dask cluster (workers > 0,
#: a scheduler), training (Keras fit, fuse, train-joint, the demo).
SLOW_CALLS = re.compile(
    r"\brun_cli\(|subprocess\.|Popen\(|LocalCluster\(|Client\(|workers=[1-9]|\"--workers\", \"[1-9]"
    r"|train_backbone\(|\bfuse\(|fuse_methods\(|run_train_joint\(|train_joint\(|\.fit\(|run_demo\(|train_head\("
)


def _source(func) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def _is_slow(item: pytest.Item) -> bool:
    seen, todo, sources = set(), list(item.fixturenames), [_source(getattr(item, "function", None))]
    defs = item._fixtureinfo.name2fixturedefs
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        for fixturedef in defs[name]:
            sources.append(_source(fixturedef.func))
            todo.extend(fixturedef.argnames)
    return any(SLOW_CALLS.search(src) for src in sources)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" not in item.keywords and _is_slow(item):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
