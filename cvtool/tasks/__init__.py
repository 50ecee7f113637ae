"""The task table: every task cvtool runs, declared once (`TaskSpec`: its options, outputs and API class).

`cvtool.cli_build` makes the CLI's commands from it, `cvtool.serve.app` the server's endpoints and OpenAPI schema,
`cvtool.serve.client` the thin client's requests and writers, `cvtool.scale.ray_data` Ray's task list,
`cvtool.__init__` the package's names and `cvtool.tasks.doc` the README's option tables. A new task is a module
here with a `SPEC`, listed in `_MODULES`. Standard library only: `cvtool --help` reads it.
"""

from __future__ import annotations

import importlib

from cvtool.tasks.spec import TaskSpec

_MODULES = ("classify", "detect", "localize", "landmarks", "segment", "stylize", "verify_face", "track")


def specs() -> list[TaskSpec]:
    """Every task, in the order `cvtool --help` lists them."""
    return [importlib.import_module(f"cvtool.tasks.{module}").SPEC for module in _MODULES]


def spec(name: str) -> TaskSpec:
    """A task by its command name (`verify-face`) or module name (`verify_face`)."""
    for task in specs():
        if name in (task.name, task.name.replace("-", "_")):
            return task
    raise KeyError(f"no task {name!r}; tasks: {', '.join(t.name for t in specs())}")


def names() -> list[str]:
    return [task.name for task in specs()]
