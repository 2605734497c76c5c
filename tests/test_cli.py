"""The command line: help texts with examples, init / ingest / info end to end."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from featstore.cli.main import main
from tests.conftest import CLIP_S, run_cli

COMMANDS = ["init", "ingest", "demo-data", "info", "extract-audio", "extract-frames", "verify", "export", "import-h5", "train-backbone", "embed", "fuse", "ensemble", "report", "demo", "export-system", "predict", "train-joint", "unlock", "remove-clips"]


def test_every_command_is_listed():
    assert set(main.commands) == set(COMMANDS)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_example(command):
    args = ["--help"] if command is None else [command, "--help"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0
    assert "Example" in result.output


def test_init_ingest_info_json(demo_root, tmp_path):
    store = str(tmp_path / "s.zarr")
    run_cli("init", store, "--clip-duration-s", str(CLIP_S), check=True)
    out = run_cli("ingest", store, demo_root, "--json", check=True).stdout
    assert json.loads(out)["added"] == 20
    info = json.loads(run_cli("info", store, "--json", check=True).stdout)
    assert info["clips"] == 20
    assert info["clips_per_split"] == {"evaluate": 10, "train": 10}
    assert sum(info["clips_per_label"].values()) == 20 and info["failures"] == 0
