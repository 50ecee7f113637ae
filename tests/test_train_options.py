"""`cvtool train X`'s options are declared once, on the recipes' dataclasses (cvtool.train.recipes): every declared
field is an option in --help, with one default for the dataclass, the typer parameter and cvtool.train's entry, and
the range typer enforces. Parsing only: nothing here trains (and --help imports no torch)."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import typing

import pytest
import typer.main
from typer.testing import CliRunner

import cvtool.train
from cvtool import cli_train
from cvtool.cli import app
from cvtool.train import recipes
from cvtool.train.args import Option, fallback

COMMANDS = {"classify": cli_train.train_classify, "detect": cli_train.train_detect,
            "segment": cli_train.train_segment, "style": cli_train.train_style, "face": cli_train.train_face,
            "localize": cli_train.train_localize, "landmarks": cli_train.train_landmarks}
# the entries' own keywords that are not options (hooks the CLI fills in)
HOOKS = {"callbacks", "on_skip", "on_warning", "progress"}
# `train classify`'s options of the CLI alone (evaluate a checkpoint, the report's format)
CLI_ONLY = {"eval_only", "weights", "fmt"}

CASES = [(name, option) for name, command in COMMANDS.items() for option in command.options]


def _id(case) -> str:
    name, option = case
    return f"{name}-{option.name}"


_help: dict[str, str] = {}


def help_text(name: str) -> str:
    if name not in _help:
        result = CliRunner().invoke(app, ["train", name, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        _help[name] = result.stdout
    return _help[name]


def typer_parameters(name: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands["train"].commands[name].params}


def field_default(option: Option):
    """The default written on the dataclass field (None for a field without one: given for a new run only)."""
    field = {f.name: f for f in dataclasses.fields(option.owner)}[option.field]
    return None if field.default is dataclasses.MISSING else field.default


def test_every_command_is_declared_and_every_entry_keyword_is_an_option():
    assert set(typer.main.get_command(app).commands["train"].commands) == set(COMMANDS)
    for name, command in COMMANDS.items():
        names = [option.name for option in command.options]
        assert len(names) == len(set(names)), name
        entry = inspect.signature(getattr(cvtool.train, name)).parameters
        assert set(entry) - HOOKS == set(names) - CLI_ONLY, name


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_option_is_in_help(case):
    name, option = case
    text = help_text(name)
    if option.argument:
        assert (option.metavar or option.name) in text.split("\n", 1)[0]  # the usage line
    for flag in option.flags:
        for part in flag.split("/"):
            assert f" {part}" in text or f"{part}," in text, (flag, text)
    if option.help:  # the first words of its help (the rest may wrap)
        assert " ".join(option.help.split()[:3]) in " ".join(text.split())


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_one_default_for_dataclass_typer_and_entry(case):
    name, option = case
    default = field_default(option)
    assert option.default == default
    assert typer_parameters(name)[option.name].default == default
    entry = inspect.signature(getattr(cvtool.train, name)).parameters
    if option.name not in CLI_ONLY:
        assert entry[option.name].default == default, (name, option.name)


def _just_outside(option: Option, bound, step: int) -> str:
    """A value one step past `bound`: a whole one for an int option, half-way to the next for a float one."""
    types = typing.get_args(option.annotation) or (option.annotation,)
    return str(bound + step if int in types else bound + step * 0.5)


RANGED = [(name, option, side) for name, option in CASES for side in ("low", "high")
          if getattr(option, side) is not None]


@pytest.mark.parametrize("case", RANGED, ids=lambda c: f"{c[0]}-{c[1].name}-{c[2]}")
def test_range_is_enforced_exit_2(case, tmp_path):
    name, option, side = case
    bound = getattr(option, side)
    value = _just_outside(option, bound, -1 if side == "low" else 1)
    args = ["train", name, *(["d"] if name != "style" else ["s.jpg"]), option.flags[0], value,
            "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (args, result.output)
    relation = "greater than or equal to" if side == "low" else "less than or equal to"
    flags = " / ".join(f"'{flag}'" for flag in option.flags)
    assert f"Invalid value for {flags}: Input should be {relation} {bound:g}" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_epochs_default_said_in_help_is_the_one_used():
    """`--epochs` is None on the command line; the task's number (said in its help) is the fallback the entry uses."""
    for name, config in (("classify", recipes.ClassifyConfig), ("detect", recipes.DetectConfig),
                         ("segment", recipes.SegmentConfig), ("style", recipes.StyleConfig),
                         ("face", recipes.FaceConfig)):
        epochs = fallback(config, "epochs")
        assert isinstance(epochs, int) and epochs >= 1
        assert f"(default {epochs})." in " ".join(help_text(name).split())


def test_train_help_imports_no_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom cvtool.cli import app\n"
            "for name in ('classify', 'detect', 'segment', 'style', 'face'):\n"
            "    assert CliRunner().invoke(app, ['train', name, '--help']).exit_code == 0\n"
            "print(sorted({'torch', 'torchvision', 'cv2', 'numpy'} & set(sys.modules)))")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"


def test_a_detector_run_from_before_mosaics_resumes_without_them(monkeypatch):
    """--mosaic's default (0.5) is the dataclass's; a checkpoint stored before mosaics existed has no `mosaic`
    and trained without them, and resumes so."""
    from pathlib import Path

    from cvtool.train import detection, engine

    monkeypatch.setattr(engine, "stored_run", lambda run_dir, epochs: ({"data": "d", "img_size": 64}, "cfg"))
    args, _ = detection.resumed_arguments(Path("run"), None)
    assert (args.mosaic, args.img_size) == (0.0, 64) and recipes.DetectTrainArgs("d").mosaic == 0.5
