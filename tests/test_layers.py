"""The layers hold: the library (featstore/*) never imports the pipelines or the CLI, and
``import featstore`` loads none of the heavy dependencies (TensorFlow, librosa, dask, torch)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "featstore").rglob("*.py"))
UPPER = ("featstore.pipelines", "featstore.cli")


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function (absolute names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_scan_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from featstore.pipelines import stages\n    import featstore.cli.main\n")
    assert {"featstore.pipelines", "featstore.cli.main"} <= imported_modules(sample)


def test_the_library_never_imports_the_pipelines_or_the_cli():
    assert len(LIBRARY) > 30
    offending = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if any(m == u or m.startswith(u + ".") for u in UPPER))
        for path in LIBRARY
    }
    assert {k: v for k, v in offending.items() if v} == {}


def test_import_featstore_loads_no_heavy_dependency():
    """Nor do the model registries the CLI reads (featstore.models)."""
    code = ("import sys, featstore, featstore.models; heavy = [m for m in ('tensorflow', 'keras', 'librosa', 'dask', 'distributed', 'torch') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_mel_and_gam_load_neither_librosa_nor_scipy_signal():
    """Their start-up is most of a short extract-audio run's fixed cost (only CQT needs librosa):
    neither the spectrograms nor their arrays' frequency coordinates."""
    code = ("import sys, numpy as np; from featstore.audio import AudioParams, spectrograms; "
            "p = AudioParams(sr=16000, n_bins=32, win_ms=32.0, hop_ms=16.0, segment_s=1.0, n_segments=2); "
            "spectrograms(np.zeros((2, 2, 16000), np.float32), p, ('mel', 'gam')); "
            "from featstore.pipelines.audio_features import GamConfig, MelConfig; "
            "MelConfig().bin_coordinate(16000); GamConfig().bin_coordinate(16000); "
            "print(','.join(m for m in ('librosa', 'scipy.signal', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
