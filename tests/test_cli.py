"""The command line: help texts with examples, init / ingest / info end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from featstore.cli.main import main
from tests.conftest import CLIP_S, run_cli

COMMANDS = ["init", "ingest", "demo-data", "info", "extract-audio", "extract-frames", "verify", "export", "import-h5", "train-backbone", "embed", "fuse", "ensemble", "report", "demo", "export-system", "predict", "train-joint", "unlock", "remove-clips"]


def test_every_command_is_listed():
    assert set(main.list_commands(None)) == set(COMMANDS)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_example(command):
    args = ["--help"] if command is None else [command, "--help"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0
    assert "Example" in result.output


#: Runs the CLI in a fresh interpreter, then prints which of featstore's heavier dependencies it loaded.
_LOADED = """
import sys
from featstore.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(m for m in ("zarr", "pandas.core.frame", "pyarrow", "scipy", "librosa", "dask", "distributed", "tensorflow", "torch") if m in sys.modules))
"""


def test_a_command_loads_only_what_it_needs(tmp_path):
    """Each subcommand's module is imported when it runs: ``--version`` loads none of the
    dependencies, ``init`` only zarr (pandas loads on first use), an in-process stage neither dask
    nor a deep-learning framework."""
    def loaded(*args: str) -> set[str]:
        proc = subprocess.run([sys.executable, "-c", _LOADED, *args], capture_output=True, text=True, check=True)
        return set(proc.stdout.splitlines()[-1].split())

    assert loaded("--version") == set()
    assert loaded("init", str(tmp_path / "s.zarr")) == {"zarr"}
    assert loaded("ingest", str(tmp_path / "s.zarr"), str(tmp_path / "nothing.csv"), "--format", "csv") == {"zarr"}
    in_process = loaded("extract-audio", str(tmp_path / "s.zarr"), "--features", "mel", "--workers", "0", "--quiet")
    assert "pandas.core.frame" in in_process and in_process.isdisjoint({"dask", "distributed", "tensorflow", "torch"})


def test_init_ingest_info_json(demo_root, tmp_path):
    store = str(tmp_path / "s.zarr")
    run_cli("init", store, "--clip-duration-s", str(CLIP_S), check=True)
    out = run_cli("ingest", store, demo_root, "--json", check=True).stdout
    assert json.loads(out)["added"] == 20
    info = json.loads(run_cli("info", store, "--json", check=True).stdout)
    assert info["clips"] == 20
    assert info["clips_per_split"] == {"evaluate": 10, "train": 10}
    assert sum(info["clips_per_label"].values()) == 20 and info["failures"] == 0
