"""Turning what the user typed (files, folders, globs, `-`) into a lazy stream of image paths.

Lazy so that `find ... | cvtool classify -` starts working on the first path at once; problems with
a spec (nothing matches, no such file) become error items so the batch reports them and goes on.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from cvtool.io.image import IMAGE_SUFFIXES
from cvtool.io.video import VIDEO_SUFFIXES

MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES  # what a directory holds for the commands that take videos

_GLOB_CHARS = set("*?[")
_CAMERA = re.compile(r"cam:\d+")


@dataclass(frozen=True)
class InputItem:
    path: str
    error: str | None = None


def iter_inputs(
    specs: Iterable[str],
    *,
    recursive: bool = False,
    stdin: TextIO | None = None,
    suffixes: frozenset[str] = IMAGE_SUFFIXES,
) -> Iterator[InputItem]:
    seen: set[str] = set()
    for spec in specs:
        expanded = _from_stdin(stdin, recursive, suffixes) if spec == "-" else _expand(spec, recursive, suffixes)
        for item in expanded:
            key = item.path if item.error else os.path.realpath(item.path)
            if key in seen:
                continue
            seen.add(key)
            yield item


def _from_stdin(stdin: TextIO | None, recursive: bool, suffixes) -> Iterator[InputItem]:
    if stdin is None:
        return
    for line in stdin:
        spec = line.strip()
        if spec and not spec.startswith("#"):
            yield from _expand(spec, recursive, suffixes)


def _expand(spec: str, recursive: bool, suffixes) -> Iterator[InputItem]:
    path = Path(spec)
    if path.is_dir():
        yield from _directory(spec, recursive, suffixes)
    elif _CAMERA.fullmatch(spec):  # camera N (cvtool.io.video), never a file of that name
        yield InputItem(spec)
    elif path.exists() or path.is_symlink():
        yield InputItem(spec)
    elif _GLOB_CHARS & set(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            yield InputItem(spec, "no files match this pattern")
        for match in matches:
            if Path(match).is_file():
                yield InputItem(match)
    else:
        yield InputItem(spec, "no such file or directory")


def _directory(spec: str, recursive: bool, suffixes) -> Iterator[InputItem]:
    found = False
    has_subdirs = False
    for root, dirs, files in os.walk(spec):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        has_subdirs = has_subdirs or bool(dirs)
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                found = True
                yield InputItem(os.path.join(root, name))
        if not recursive:
            break
    if not found:
        hint = " (it has subdirectories: add --recursive)" if has_subdirs and not recursive else ""
        what = "image or video" if suffixes & VIDEO_SUFFIXES else "image"
        yield InputItem(spec, f"no {what} files in directory{hint}")
