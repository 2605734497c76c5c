"""Every stage command's options are generated from the configs that declare them (one
``option(...)`` each: default, help, range), so the CLI, the Python API and the generated CLI
reference cannot drift; only how a command prints (--json, --quiet...) is the command's own."""

from __future__ import annotations

import dataclasses
import inspect

import click
import pytest
from click.testing import CliRunner

import featstore
from featstore.cli.common import FeatstoreGroup, config_options
from featstore.cli.main import main
from featstore.pipelines.config import RunOptions, check_fields, flag_of, option, run_option
from featstore.pipelines.embed import LAYERS, EmbedOptions, embed
from featstore.pipelines.ensemble import EnsembleConfig
from featstore.pipelines.extract_audio import AudioConfig
from featstore.pipelines.extract_frames import FramesConfig
from featstore.pipelines.fuse import FuseConfig
from featstore.pipelines.predict import PredictOptions, predict
from featstore.pipelines.train_backbone import TrainConfig
from featstore.pipelines.train_joint import JointConfig
from featstore.pipelines.verify import VerifyOptions, repair

#: Stage command -> the configs its options come from.
STAGE_COMMANDS = {
    "extract-audio": (AudioConfig, RunOptions),
    "extract-frames": (FramesConfig, RunOptions),
    "embed": (EmbedOptions,),
    "train-backbone": (TrainConfig,),
    "train-joint": (JointConfig,),
    "fuse": (FuseConfig,),
    "ensemble": (EnsembleConfig,),
    "predict": (PredictOptions,),
    "verify": (VerifyOptions,),
}
#: Commands that run no stage (store set-up, import / export, the report, the demo).
OTHER_COMMANDS = {"init", "ingest", "remove-clips", "demo-data", "info", "export", "import-h5", "report", "demo", "export-system", "unlock"}
#: How a command prints, which the Python API has no use for: declared by the command.
OUTPUT_FLAGS = {"--json", "--quiet", "--verbose", "--per-segment"}


def test_every_command_is_a_stage_command_or_not():
    assert set(STAGE_COMMANDS) | OTHER_COMMANDS == set(main.list_commands(None))


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_a_stage_commands_options_are_its_configs_declared_options(command):
    """Flag, name the command receives, required or not, default, help: the field's; an option
    declared by hand in cli/ (not in a config) fails this."""
    cmd = main.get_command(None, command)
    params = {p.name: p for p in cmd.params if isinstance(p, click.Option) and p.opts[0] not in OUTPUT_FLAGS}
    fields = {f.name: f for config in STAGE_COMMANDS[command] for f in dataclasses.fields(config) if f.metadata.get("cli", True) and "help" in f.metadata}
    assert sorted(params) == sorted(fields), f"{command}: options not from its configs: {sorted(set(params) - set(fields))}"
    ctx = click.Context(cmd)
    for name, f in fields.items():
        p = params[name]
        assert p.opts[0] == flag_of(f) and p.envvar == f.metadata["envvar"], name
        assert p.help.startswith(f.metadata["help"]), name
        assert p.required == (f.default is dataclasses.MISSING), name
        if not p.required:
            assert p.process_value(ctx, p.default) == f.default, name


@pytest.mark.parametrize("api, options, elsewhere", [
    (embed, EmbedOptions, {"layer"}),  # embed() takes it as layers (EmbedOptions.keywords)
    (predict, PredictOptions, {"system_dir", "run", "submission", "video", "audio"}),  # System.load, write_predict_submission, predict_file
    (repair, VerifyOptions, {"arrays", "repair"}),  # verify_store's arrays; whether to call repair()
])
def test_the_python_api_takes_the_commands_defaults(api, options, elsewhere):
    """Each option is a keyword of the API function with the same default (one home for each
    default), but those the command hands to another function."""
    keywords = inspect.signature(api).parameters
    for f in dataclasses.fields(options):
        if f.name not in elsewhere:
            assert f.name in keywords, f"{f.name} is not a keyword of {api.__name__}()"
            if f.default is not dataclasses.MISSING:
                assert keywords[f.name].default == f.default, f.name


def test_embed_options_are_embeds_keywords():
    keywords = EmbedOptions(model="aud-mel", layer="fc10,avg_pool").keywords()
    assert keywords["layers"] == ("fc10", "avg_pool") and EmbedOptions(model="aud-mel").keywords()["layers"] == LAYERS
    assert set(keywords) <= set(inspect.signature(embed).parameters)


@pytest.mark.parametrize("make, message", [
    (lambda: PredictOptions(), "give exactly one of --system DIR and --run RUN"),
    (lambda: PredictOptions(run="r", video="v.mp4"), "--file needs --system"),
    (lambda: PredictOptions(run="r", name="a/b"), "--name 'a/b': '/' is not allowed"),
    (lambda: PredictOptions(run="r", workers=-1), "--workers must be >= 0, got -1"),
    (lambda: EmbedOptions(model="keras:../x"), "--model"),
    (lambda: EmbedOptions(model="aud-mel", batch_units=0), "--batch-units must be >= 1, got 0"),
    (lambda: VerifyOptions(workers=-2), "--workers must be >= 0, got -2"),
    (lambda: FuseConfig(method="f4", name="a/b"), "--name 'a/b'"),
    (lambda: EnsembleConfig(rule="mean", inputs=("a", "b"), name=".."), "--name"),
])
def test_the_python_api_refuses_what_the_command_line_refuses(make, message):
    with pytest.raises(featstore.ConfigError, match=message.replace("(", r"\(")):
        make()


@dataclasses.dataclass(frozen=True)
class _NewOptions:
    """A config as a new command would declare it: each option one line."""

    size: int = option(3, "Items per thing.", min=1)
    tag: str | None = option(None, "A run name.", kind=str, usage=True, check=featstore.names.single_name)
    workers: int | None = run_option("workers", 0)

    def __post_init__(self) -> None:
        check_fields(self)


@click.group(cls=FeatstoreGroup)
def _app():
    pass


@_app.command()
@config_options(_NewOptions)
def new(**fields):
    """Echo the options."""
    click.echo(repr(_NewOptions(**fields)))


@pytest.mark.parametrize("args, status, out", [
    ([], 0, "_NewOptions(size=3, tag=None, workers=0)"),
    (["--size", "5", "--tag", "t", "--workers", "2"], 0, "_NewOptions(size=5, tag='t', workers=2)"),
    (["--size", "0"], 1, "--size must be >= 1, got 0"),  # what the config computes: its own error
    (["--tag", "a/b"], 2, "Invalid value for '--tag'"),  # how it runs: a usage error, while parsing
    (["--workers", "-1"], 2, "Invalid value for '--workers'"),
])
def test_one_option_line_makes_the_command_line_option(args, status, out):
    """A field declared with option(...) is the command's option, default, range and error, without
    a line in the command."""
    result = CliRunner().invoke(_app, ["new", *args])
    assert result.exit_code == status, result.output
    assert out in (result.stdout if status == 0 else result.stderr)
    help_text = CliRunner().invoke(_app, ["new", "--help"]).stdout
    assert "Items per thing. Allowed: >= 1." in help_text and "--tag TEXT" in help_text and "x>=0" in help_text
