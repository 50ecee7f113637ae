"""One option of a task, declared once: its name, type, default, range, help text and CLI flag.

The CLI (`cvtool.cli_build`), the Python API (`cvtool.api`), the server's endpoints (`cvtool.serve.app`), the thin
client (`cvtool.serve.client`) and the README's option tables (`cvtool.tasks.doc`) read these declarations; none of
them writes an option's default or range again. Standard library only: `cvtool --help` reads this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from cvtool.errors import UsageError

# When an option takes effect
LOAD = "load"  # fixed when the model loads (model, weights, device, backend, half, ...)
CALL = "call"  # the task object's settings; `task.with_options(...)` changes them per call, sharing the network
RUN = "run"    # how a batch runs (batch size, --out, --shard, ...): arguments of `run`, not of the object

# Value types beyond Python's own: a file or folder, a repeatable path, comma-separated words or numbers
PATH, PATHS, CSV, FLOATS = "path", "paths", "csv", "floats"
TYPES = (int, float, str, bool, PATH, PATHS, CSV, FLOATS)


@dataclass(frozen=True)
class Option:
    """An option: `name` is the Python keyword and the server's query parameter; `flag` the CLI's (default
    `--` + name with dashes). `low`/`high` are inclusive bounds (None: unbounded); `default` None means "the
    model's own" or "off", which `help` says. `cli`/`api`/`server`: the routes that take it. `aliases`: old server
    names still taken, with a deprecation warning. `needs_out`: the CLI refuses it without --out. `exclusive`: the
    bounds are exclusive."""

    name: str
    type: Any
    default: Any = None
    help: str = ""
    low: float | None = None
    high: float | None = None
    stage: str = CALL
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    cli: bool = True
    api: bool = True
    server: bool = True
    aliases: tuple[str, ...] = ()
    needs_out: bool = False
    show_default: bool = True
    exclusive: bool = False  # the bounds themselves are outside the range (0 < threshold < 1)

    def __post_init__(self):
        if self.type not in TYPES:
            raise TypeError(f"option {self.name}: type {self.type!r} is not one of {TYPES}")
        if self.stage not in (LOAD, CALL, RUN):
            raise TypeError(f"option {self.name}: stage {self.stage!r}")
        if self.default is not None:
            self.check(self.default)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def bounds_text(self) -> str:
        if self.exclusive:
            return (f"strictly between {self.low:g} and {self.high:g}" if self.low is not None and self.high is not None
                    else f"above {self.low:g}" if self.low is not None else f"below {self.high:g}")
        if self.low is not None and self.high is not None:
            return f"from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"at least {self.low:g}"
        return f"at most {self.high:g}" if self.high is not None else ""

    def check(self, value: Any, *, where: str | None = None) -> None:
        """A UsageError naming the option (`where`: how the caller spells it) when `value` is outside its range
        or not finite; None passes (the default applies)."""
        if value is None or self.type not in (int, float):
            return
        label = where or self.name
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{label}={value!r}: expected a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{label}={value!r} is not a finite number")
        below = self.low is not None and (value <= self.low if self.exclusive else value < self.low)
        above = self.high is not None and (value >= self.high if self.exclusive else value > self.high)
        if below or above:
            raise UsageError(f"{label}={value!r} is out of range: {self.bounds_text()}")

    def parse_text(self, text: str | None) -> Any:
        """A CSV or FLOATS option's text as the list the API takes (None stays None)."""
        if text is None or self.type not in (CSV, FLOATS):
            return text
        parts = split_csv(text)
        if self.type == CSV:
            return parts or None
        try:
            return tuple(float(p) for p in parts) or None
        except ValueError:
            raise UsageError(f"{self.cli_flag} {text!r}: expected comma-separated numbers") from None


def split_csv(text: str) -> list[str]:
    """`person, car,` -> ["person", "car"]."""
    return [part.strip() for part in text.split(",") if part.strip()]


class Options(tuple):
    """A task's options, in the order `--help` lists them; looked up by name."""

    def __new__(cls, options: Iterable[Option]):
        items = tuple(options)
        names = [o.name for o in items]
        if len(set(names)) != len(names):
            raise TypeError(f"options declared twice: {sorted({n for n in names if names.count(n) > 1})}")
        return super().__new__(cls, items)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            for option in self:
                if option.name == key:
                    return option
            raise KeyError(key)
        return super().__getitem__(key)

    def names(self, *, stage: str | None = None, route: str | None = None) -> list[str]:
        return [o.name for o in self.select(stage=stage, route=route)]

    def select(self, *, stage: str | None = None, route: str | None = None) -> Iterator[Option]:
        for option in self:
            if (stage is None or option.stage == stage) and (route is None or getattr(option, route)):
                yield option

    def defaults(self, *, stage: str | None = None, route: str | None = None) -> dict[str, Any]:
        return {o.name: o.default for o in self.select(stage=stage, route=route)}

    def setting(self, text: str, *, where: str = "--set") -> tuple[str, Any]:
        """`KEY=VALUE` (`cvtool ray --set top_k=3`) as (name, value) of the option's type, range-checked."""
        key, sep, raw = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"{where} {text!r}: expected KEY=VALUE")
        try:
            option = self[key]
        except KeyError:
            raise UsageError(f"{where} {text!r}: no option {key!r} (options: {', '.join(self.names())})") from None
        try:
            if option.type is bool:
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value: Any = raw.lower() in ("true", "1", "yes")
            elif option.type in (int, float):
                value = option.type(raw)
            elif option.type == PATHS:
                value = split_csv(raw)
            else:
                value = option.parse_text(raw)
        except ValueError:
            raise UsageError(f"{where} {text!r}: {key} takes {getattr(option.type, '__name__', option.type)}") from None
        option.check(value, where=f"{where} {key}")
        return key, value

    def check(self, values: dict[str, Any]) -> None:
        """Range checks of every declared option in `values` (others are not this table's)."""
        for name, value in values.items():
            for option in self:
                if option.name == name:
                    option.check(value)
