"""Predictable output file names inside --out, that never land on an input."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cvtool.errors import InputError


class OutputNamer:
    """`photo.jpg` -> `OUT/photo<suffix>`; a later input with the same stem from another folder gets
    `OUT/photo-<8 hex of its absolute path><suffix>`, so names are stable across re-runs of the same batch."""

    def __init__(self, out_dir: str | Path, suffix: str):
        self.out_dir = Path(out_dir)
        self.suffix = suffix
        self._by_input: dict[str, Path] = {}
        self._taken: set[Path] = set()

    def __call__(self, input_path: str) -> Path:
        if input_path in self._by_input:
            return self._by_input[input_path]
        source = Path(input_path)
        candidate = self.out_dir / f"{source.stem}{self.suffix}"
        if candidate in self._taken:
            digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:8]
            candidate = self.out_dir / f"{source.stem}-{digest}{self.suffix}"
        refuse_overwriting_input(candidate, input_path)
        self._taken.add(candidate)
        self._by_input[input_path] = candidate
        return candidate

    def exists(self, input_path: str) -> bool:
        """For --skip-existing; an unusable output name is not "done": writing it reports the problem."""
        try:
            return self(input_path).exists()
        except InputError:
            return False


def refuse_overwriting_input(target: str | Path, input_path: str) -> None:
    """Inputs are never overwritten, whatever --out says."""
    if Path(target).resolve() == Path(input_path).resolve():
        raise InputError(f"output {target} would overwrite the input; choose another --out", input_path)


def safe_name(label: str) -> str:
    """A class label as a file-name part (`traffic light` -> `traffic_light`)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
