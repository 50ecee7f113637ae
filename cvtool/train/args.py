"""Command-line options declared on dataclass fields: a training recipe's arguments carry their own default,
range and help, written once. `arg(...)` makes such a field, `declared(cls)` lists a dataclass's; cvtool.cli_train
turns them into the `cvtool train` commands' options and cvtool.train's entries take their keyword defaults from
the same fields. Standard library only: `cvtool train X --help` imports this, never torch.

    @dataclass
    class ClassifyTrainArgs:
        data: str = arg(argument=True, help="ImageFolder directory ...")      # no default: None on the CLI
        val_split: float = arg(0.1, help="Without --val: fraction of each class held out.")
        epochs: int | None = arg(None, short="-e", low=1, help="Epochs to train", fallback=10)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING
from typing import Any, Callable, Optional

from cvtool.tasks.options import split_csv

_KEY = "cvtool.option"


@dataclasses.dataclass(frozen=True)
class Option:
    """One field's command-line side, as `declared` lists it."""

    name: str  # the keyword: the command's parameter and the cvtool.train entry's (the field's own name by default)
    owner: type  # the dataclass declaring it
    field: str  # its field there
    annotation: Any  # the option's type on the command line
    default: Any  # the field's default; None for a field without one (given for a new run, not for --resume)
    flags: tuple[str, ...]  # ("--val-split",), ("--arch", "-a"); () for a positional argument
    help: str | None
    low: Any  # the range typer enforces (min, max); None: open
    high: Any
    metavar: str | None
    argument: bool  # positional
    fallback: Any  # what a None default stands for (epochs=None: the task's own number), said in the help
    convert: Callable[[Any], Any] | None  # the command line's value -> the entry's (a comma list -> names)


def arg(default: Any = MISSING, flag: str | None = None, short: str | None = None, *, help: str | None = None,
        low: Any = None, high: Any = None, metavar: str | None = None, argument: bool = False,
        name: str | None = None, type: Any = None, fallback: Any = None,
        convert: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line option. `flag`: its long form (default `--field-name`;
    `--x/--no-x` for a boolean switched both ways), `short` e.g. "-a"; `low`/`high`: the range; `argument`: a
    positional argument instead; `name`: the keyword when it is not the field's; `type`: the command line's type
    when it is not the field's (a Path for a str field); `fallback`: what the default None stands for (appended
    to the help as "(default N)."); `convert`: turns the command line's value into the field's."""
    spec = {"flag": flag, "short": short, "help": help, "low": low, "high": high, "metavar": metavar,
            "argument": argument, "name": name, "type": type, "fallback": fallback, "convert": convert}
    return dataclasses.field(default=default, metadata={_KEY: spec})


def declared(cls: type) -> list[Option]:
    """The fields of dataclass `cls` made with `arg`, in their order, as command-line options."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if spec is None:
            continue
        default = None if f.default is MISSING else f.default
        annotation = spec["type"] if spec["type"] is not None else hints[f.name]
        if default is None and type(None) not in typing.get_args(annotation):
            annotation = Optional[annotation]
        flags = () if spec["argument"] else tuple(
            x for x in (spec["flag"] or "--" + f.name.replace("_", "-"), spec["short"]) if x)
        help_text = spec["help"]
        if spec["fallback"] is not None:
            help_text = f"{help_text} (default {spec['fallback']})."
        options.append(Option(spec["name"] or f.name, cls, f.name, annotation, default, flags, help_text, spec["low"],
                              spec["high"], spec["metavar"], spec["argument"], spec["fallback"], spec["convert"]))
    return options


def fallback(cls: type, name: str) -> Any:
    """What field `name` of `cls` stands for when left at None (its `arg(fallback=...)`)."""
    return next(f.metadata[_KEY]["fallback"] for f in dataclasses.fields(cls) if f.name == name)


def comma_list(text: str) -> list[str] | None:
    """`--class-names a,b`: the names, blanks dropped; None for an empty option."""
    return split_csv(text) if text else None
