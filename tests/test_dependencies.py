"""Every third-party module cvtool imports is a declared dependency: the core ones in [project] dependencies, the
optional ones (an HTTP server, PyAV, Ray) in their extra. Read from the source, function-level imports included,
so a `pip install cvtool` without the dev extra cannot meet a ModuleNotFoundError in a documented command."""

from __future__ import annotations

import importlib.metadata
import re
import sys

import pytest

from test_layering import PACKAGE, imported_modules

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

PYPROJECT = PACKAGE.parent / "pyproject.toml"

# the extras that cvtool imports from, behind a clear error naming the extra when it is absent; an extra's
# modules may come from what its own distributions require (Starlette under FastAPI)
OPTIONAL = {"serve": {"fastapi", "uvicorn", "multipart", "python_multipart", "starlette"}, "video": {"av"},
            "ray": {"ray"}}


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements_of(distributions: set[str]) -> set[str]:
    """What the installed `distributions` themselves require (one level)."""
    found = set()
    for name in distributions:
        try:
            found |= {distribution_name(r) for r in importlib.metadata.requires(name) or []}
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def third_party_modules() -> dict[str, list[str]]:
    """Top-level module -> where cvtool imports it, for modules neither cvtool's own nor the standard library's."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top and top != "cvtool" and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return found


def test_every_imported_module_is_a_declared_dependency():
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    core = {distribution_name(r) for r in project["dependencies"]}
    extras = {name: {distribution_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    owners = importlib.metadata.packages_distributions()
    undeclared = []
    for module, where in third_party_modules().items():
        optional = [extra for extra, modules in OPTIONAL.items() if module in modules]
        allowed = core | set().union(*(extras[extra] | requirements_of(extras[extra]) for extra in optional))
        distributions = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        if not distributions:  # an optional module not installed here: declared in its extra is all we can check
            assert optional, f"{module} (imported at {where[0]}) is installed by no distribution here"
            continue
        if not distributions & allowed:
            undeclared.append(f"{module} ({', '.join(sorted(distributions))}) imported at {where[0]}")
    assert undeclared == [], "imported but not a dependency of `pip install cvtool`: " + "; ".join(undeclared)


def test_the_check_sees_function_level_imports():
    modules = third_party_modules()
    assert "skimage" in modules and "torch" in modules and "cv2" in modules
    assert any(place.startswith("cvtool/ops/regions.py") for place in modules["skimage"])
