"""Shared fixtures: a generated demo dataset (3 s clips) and stores built from it.

Nothing is downloaded: audio is synthesised with numpy, video encoded with PyAV.
"""

from __future__ import annotations

import os
import subprocess
import sys

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


@pytest.fixture
def demo_store(tmp_path, demo_root) -> featstore.Store:
    """A fresh store with the demo dataset ingested."""
    store = featstore.init_store(str(tmp_path / "store.zarr"), clip_duration_s=CLIP_S)
    ingest(store, demo_root)
    return store


@pytest.fixture(autouse=True)
def _quiet_numba(monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    yield


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
