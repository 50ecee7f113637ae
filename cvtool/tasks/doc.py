"""The README's option tables, made from the task table: `python -m cvtool.tasks.doc --write README.md`.

tests/test_tasks.py holds the README equal to what this prints, so the tables cannot drift from the code."""

from __future__ import annotations

import sys
from pathlib import Path

from cvtool.tasks import specs
from cvtool.tasks.options import CSV, FLOATS, Option

README_BEGIN = "<!-- option tables: made by `python -m cvtool.tasks.doc --write README.md`; do not edit -->"
README_END = "<!-- end of option tables -->"
STAGES = {"load": "load", "call": "per call", "run": "batch"}


def _default(option: Option) -> str:
    if option.default is None:
        return "—"
    if option.type in (CSV, FLOATS) and isinstance(option.default, (tuple, list)):
        return "`" + ",".join(map(str, option.default)) + "`"
    return f"`{option.default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def option_tables() -> str:
    lines = [README_BEGIN, ""]
    for spec in specs():
        lines += [f"**`cvtool {spec.name}`** (`{spec.api.split(':')[1]}`"
                  + (f", `POST {spec.endpoint}`" if spec.endpoint else "") + ")", "",
                  "| CLI | Python / server | default | range | when | help |", "|---|---|---|---|---|---|"]
        for o in spec.options:
            flag = f"`{o.cli_flag}`" + (f" `{o.short}`" if o.short else "") if o.cli else "—"
            routes = f"`{o.name}`" if o.api else "—"
            routes += "" if o.server else " (not served)"
            lines.append(f"| {flag} | {routes} | {_default(o)} | {o.bounds_text() or '—'} | {STAGES[o.stage]} | "
                         f"{_cell(o.help)} |")
        lines.append("")
    lines.append(README_END)
    return "\n".join(lines)


def write(readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + option_tables() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]))
    else:
        print(option_tables())
