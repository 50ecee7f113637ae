"""Lower layers never import higher ones: cvtool/models runs networks and knows nothing of the commands,
pipelines or console; cvtool/io and cvtool/ops sit below the models. Read from the source (every import,
function-level ones included), so a lazy import inside a function is caught too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cvtool"

# layer -> what it may never import (a module or any of its submodules)
FORBIDDEN = {
    "models": ["cvtool.export", "cvtool.console", "cvtool.cli", "cvtool.pipelines", "cvtool.api", "cvtool.bench",
               "cvtool.train"],
    "io": ["cvtool.models", "cvtool.pipelines", "cvtool.export", "cvtool.console", "cvtool.cli", "cvtool.api",
           "cvtool.bench", "cvtool.train"],
    "ops": ["cvtool.models", "cvtool.pipelines", "cvtool.export", "cvtool.console", "cvtool.cli", "cvtool.api",
            "cvtool.bench", "cvtool.train"],
    # the training recipes and the inference pipelines are siblings over models/, io/ and ops/
    "train": ["cvtool.pipelines", "cvtool.export", "cvtool.console", "cvtool.cli", "cvtool.api", "cvtool.serve"],
    # the task table is declarations only, under everything: it reads nothing of cvtool but its own errors
    "tasks": ["cvtool.models", "cvtool.pipelines", "cvtool.io", "cvtool.ops", "cvtool.export", "cvtool.console",
              "cvtool.cli", "cvtool.api", "cvtool.bench", "cvtool.train", "cvtool.serve", "cvtool.scale",
              "cvtool.device", "cvtool.val", "cvtool.cache"],
    "pipelines": ["cvtool.train", "cvtool.export", "cvtool.console", "cvtool.cli", "cvtool.api", "cvtool.serve"],
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`; `from cvtool import x` counts as cvtool.x."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package up
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_import_nothing_above_them(layer):
    assert (PACKAGE / layer).is_dir()
    assert violations(layer) == []


@pytest.mark.parametrize("layer", ["models", "io", "ops"])
def test_lower_layers_never_reach_up_to_the_package_top(layer):
    """`from cvtool import __version__` in models/ ran back up through cvtool/__init__.py (which re-exports the
    API); the version has its own module, cvtool.version."""
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted((PACKAGE / layer).rglob("*.py"))
           for line, module in imported_modules(path) if module in ("cvtool", "cvtool.__version__")]
    assert bad == []


def test_the_checker_sees_a_function_level_import(tmp_path, monkeypatch):
    fake = tmp_path / "cvtool" / "models"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from cvtool.export import graph_for\n    from ..console import info\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "cvtool")
    assert violations("models") == ["cvtool/models/bad.py:2 imports cvtool.export",
                                    "cvtool/models/bad.py:2 imports cvtool.export.graph_for",
                                    "cvtool/models/bad.py:3 imports cvtool.console",
                                    "cvtool/models/bad.py:3 imports cvtool.console.info"]


def test_importing_the_cli_and_the_registry_loads_no_torch():
    code = ("import sys, cvtool.cli, cvtool.models.registry, cvtool.models.contract, cvtool.models.onnx_session; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _module_graph() -> dict[str, set[str]]:
    """cvtool module -> the cvtool modules it imports (function-level imports included). `from pkg import
    submodule` counts as importing the submodule only: importing a package's __init__ first is Python's way,
    not a dependency."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cvtool") and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                targets |= subs if len(subs) == len(node.names) else subs | {node.module}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = {t for t in targets if t in modules and t not in (name, "cvtool")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_cvtool_modules():
    assert _cycles(_module_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
