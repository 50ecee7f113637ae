"""The CLI's task commands, made from the task table (cvtool.tasks): each Option becomes one typer parameter.

A command's signature is built as an `inspect.Signature` of typer parameters and set as the function's
`__signature__`, which typer reads; its body gets the parsed values as one dict, keyed by option name. Nothing
here restates an option's flag, default, range or help: they are the table's. Imports no torch.
"""

from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from cvtool.console import exits_cleanly
from cvtool.tasks.options import CSV, FLOATS, PATH, PATHS, Option
from cvtool.tasks.spec import TaskSpec

FORMAT = "fmt"  # the parameter holding --format (a name no option of the table takes)
IMAGES = "images"

_ANNOTATIONS = {int: int, float: float, str: str, bool: bool, PATH: Path, PATHS: List[Path], CSV: str, FLOATS: str}


def _cli_default(option: Option) -> Any:
    """The default as the CLI shows and parses it: comma-joined for a list."""
    if option.type in (CSV, FLOATS) and isinstance(option.default, (tuple, list)):
        return ",".join(str(v) for v in option.default)
    return option.default


def typer_option(option: Option) -> Any:
    flag = option.cli_flag
    if option.type is bool and option.default is not False:  # on by default, or three states (None: neither)
        flag = f"{flag}/--no-{flag[2:]}"
    names = [flag] + ([option.short] if option.short else [])
    extra: dict[str, Any] = {}
    number = float if option.type is float else int
    help_text = option.help
    if option.exclusive:  # typer has no open ranges: the table's check refuses the bounds (cli_build.command)
        help_text += f"  [{option.bounds_text()}]"
    else:
        if option.low is not None:
            extra["min"] = number(option.low)
        if option.high is not None:
            extra["max"] = number(option.high)
    if option.metavar:
        extra["metavar"] = option.metavar
    if not option.show_default:
        extra["show_default"] = False
    return typer.Option(_cli_default(option), *names, help=help_text or None, **extra)


def option_parameter(option: Option) -> inspect.Parameter:
    annotation = _ANNOTATIONS[option.type]
    if option.default is None and option.type is not bool:
        annotation = Optional[annotation]
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=typer_option(option),
                             annotation=annotation)


def format_enum(spec: TaskSpec) -> type[Enum]:
    return Enum(f"{spec.name.title().replace('-', '')}Format", {f: f for f in spec.formats}, type=str)  # type: ignore


def format_help(spec: TaskSpec) -> str:
    if spec.formats != ("table", "json", "jsonl", "csv"):
        return ", ".join(spec.formats[:-1]) + f" or {spec.formats[-1]}."
    return "Output on stdout. Default: table on a terminal, jsonl otherwise."


def parameters(spec: TaskSpec, *, images_help: str, images_required: bool = True) -> list[inspect.Parameter]:
    """The command's parameters: the input argument, then every CLI option in table order, --format after --out."""
    metavar, help_text = spec.inputs
    images = inspect.Parameter(
        IMAGES, inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=List[str] if images_required else Optional[List[str]],
        default=typer.Argument(... if images_required else None, metavar=metavar, show_default=False,
                               help=help_text or images_help))
    fmt = inspect.Parameter(FORMAT, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[format_enum(spec)],
                            default=typer.Option(None, "--format", "-f", help=format_help(spec)))
    params = [images]
    for option in spec.options.select(route="cli"):
        params.append(option_parameter(option))
        if option.name == "out":
            params.append(fmt)
    if fmt not in params:
        params.append(fmt)
    return params


def command(app: typer.Typer, spec: TaskSpec, body: Callable[[TaskSpec, dict], None], *, images_help: str,
            images_required: bool = True) -> Callable:
    """Register `cvtool <task>`: typer parses the table's options; `body(spec, values)` runs the command."""

    def run(*args: Any, **values: Any) -> None:
        if args:
            values[IMAGES] = args[0]
        with exits_cleanly():  # the table's ranges, where typer has none of its own (open bounds)
            for option in spec.options.select(route="cli"):
                option.check(values.get(option.name), where=option.cli_flag)
        body(spec, values)

    run.__name__ = spec.name.replace("-", "_")
    run.__doc__ = spec.summary
    run.__signature__ = inspect.Signature(parameters(spec, images_help=images_help,  # type: ignore[attr-defined]
                                                     images_required=images_required))
    run.__annotations__ = {}
    return app.command(spec.name, epilog=spec.epilog)(run)
