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
