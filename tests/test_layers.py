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
