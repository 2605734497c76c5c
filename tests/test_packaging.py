"""Packaging: a non-editable wheel installs one import package, ``featstore``, and runs.

The repository keeps ``featstore/``, ``pipelines/`` and ``cli/`` at its top level; setuptools'
``package_dir`` installs them as ``featstore``, ``featstore.pipelines`` and ``featstore.cli``. The
wheel is built once per test run (``--no-build-isolation``, no network), installed without its
dependencies into a fresh virtual environment that has no pip, and the dependencies are borrowed from
the test environment through a ``.pth`` line (adding a directory to ``sys.path`` does not run the
``.pth`` files in it, so the test environment's editable finder stays out).
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", ".venv", "build", "dist", "demo-out", "__pycache__", ".pytest_cache"}


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> dict[str, str]:
    """A fresh venv with the featstore wheel installed (not editable): its python, bin and site-packages."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=lambda d, names: [n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")])
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = glob.glob(str(wheels / "featstore-*.whl"))
    env_dir = work / "fresh"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], check=True, capture_output=True, text=True)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "zz_test_deps.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    return {"python": python, "bin": str(env_dir / "bin"), "purelib": purelib}


def test_wheel_installs_only_featstore(wheel_env):
    entries = set(os.listdir(wheel_env["purelib"])) - {"zz_test_deps.pth", "__pycache__"}
    names = {e for e in entries if not e.endswith(".dist-info")}
    assert names == {"featstore"}, f"site-packages holds {sorted(entries)}"
    assert [e for e in entries if e.endswith(".dist-info")] == [f"featstore-{_version()}.dist-info"]
    for sub in ("pipelines", "cli", "models"):
        assert os.path.isfile(os.path.join(wheel_env["purelib"], "featstore", sub, "__init__.py"))


def test_installed_package_imports_from_site_packages(wheel_env, tmp_path):
    code = "import featstore, featstore.pipelines.runner, featstore.cli.main; print(featstore.__file__); print(featstore.pipelines.runner.__file__)"
    out = subprocess.run([wheel_env["python"], "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    for line in out.split():
        assert line.startswith(wheel_env["purelib"]), line
    for top in ("pipelines", "cli"):
        probe = subprocess.run([wheel_env["python"], "-c", f"import {top}"], cwd=tmp_path, capture_output=True, text=True)
        assert probe.returncode != 0, f"`import {top}` works from the wheel"


def test_console_script_runs_first_demo_stages(wheel_env, tmp_path):
    exe = os.path.join(wheel_env["bin"], "featstore")
    env = {**os.environ, "PATH": wheel_env["bin"] + os.pathsep + os.environ["PATH"]}

    def run(*args: str) -> str:
        proc = subprocess.run([exe, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"featstore {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
        return proc.stdout

    assert "extract-audio" in run("--help")
    run("demo-data", "data", "--clips-per-class", "1", "--duration-s", "2")
    run("init", "s.zarr", "--clip-duration-s", "2")
    run("ingest", "s.zarr", "data")
    run("extract-audio", "s.zarr", "--features", "mel", "--workers", "0", "--quiet")
    assert "audio/mel" in run("info", "s.zarr")


def _version() -> str:
    import featstore

    return featstore.__version__
