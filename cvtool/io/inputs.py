"""Turning what the user typed (files, folders, globs, `-`) into a lazy stream of image paths.

Lazy so that `find ... | cvtool classify -` starts working on the first path at once; problems with
a spec (nothing matches, no such file, a FIFO or device rather than a file) become error items so the
batch reports them and goes on. Only regular files and cameras (`cam:N`) are inputs: a FIFO would block
the batch forever, a device never ends.

With an --out directory, files named like cvtool outputs lying in it (cvtool.io.outputs.is_previous_output)
are outputs of an earlier run, not inputs, when a directory, glob or stdin lists them; a file named
explicitly on the command line is always an input, and is protected from being overwritten.

URLs (`http(s)://`, `rtsp://`, `rtmp://`; cvtool.io.remote) pass through as inputs, named by the URL; they
are fetched when read, not here (offline, they are refused here, at once).

`-` reads stdin, which holds either one image or a list of paths. The rule, decided on the first bytes,
never by the file name or a guess about the text:
1. stdin starting with an image's magic number (JPEG, PNG, GIF, WebP, TIFF, BMP, JPEG 2000;
   cvtool.io.remote.image_kind) is one image, the input named `-`;
2. otherwise it must be UTF-8 text, one path, URL, directory or glob per line (`#` starts a comment). No list
   of paths starts like one of those images: each magic number has a byte no line of text has (invalid
   UTF-8 in JPEG and PNG, NUL in TIFF, BMP and JPEG 2000, a control byte in GIF's screen descriptor,
   the top byte of WebP's RIFF size), so `GIF89a.png` or `BMW.jpg` on the first line is still a path;
3. anything else (NUL bytes, invalid UTF-8: a video, an archive, a PNM) is one error line for `-`, and
   stdin is read no further.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

from cvtool.io import remote
from cvtool.io.files import STDIN_NAME, not_regular_reason, set_stdin_image
from cvtool.io.kinds import IMAGE_SUFFIXES, VIDEO_SUFFIXES, is_stream
from cvtool.io.outputs import is_previous_output, start_batch

MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES  # what a directory holds for the commands that take videos

_GLOB_CHARS = set("*?[")
_CAMERA = re.compile(r"cam:\d+")


@dataclass(frozen=True)
class InputItem:
    path: str
    error: str | None = None


class _Skipped:
    def __init__(self):
        self.previous_outputs = 0


def iter_inputs(
    specs: Iterable[str],
    *,
    recursive: bool = False,
    stdin: TextIO | None = None,
    suffixes: frozenset[str] = IMAGE_SUFFIXES,
    out_dir: str | Path | None = None,
    skipped: _Skipped | None = None,
) -> Iterator[InputItem]:
    """The inputs, each once; with `out_dir`, previous cvtool outputs in it listed by a directory, glob or
    stdin are left out (counted in `skipped`)."""
    seen: set[str] = set()
    skipped = skipped if skipped is not None else _Skipped()
    for spec in specs:
        if spec == "-":
            expanded = _from_stdin(stdin, recursive, suffixes, out_dir, skipped)
        else:
            expanded = _expand(spec, recursive, suffixes, out_dir, skipped, explicit=True)
        for item in expanded:
            named = item.error or item.path == STDIN_NAME or remote.is_url(item.path)
            key = item.path if named else os.path.realpath(item.path)
            if key in seen:
                continue
            seen.add(key)
            yield item


def expand_inputs(
    specs: list[str],
    *,
    recursive: bool = False,
    stdin: TextIO | None = None,
    out_dir: str | Path | None = None,
    suffixes: frozenset[str] = MEDIA_SUFFIXES,
    on_previous_outputs: Callable[[int], None] | None = None,
    also_protect: Iterable[str | Path] = (),
    guard=None,
) -> tuple[Iterator[InputItem], int | None]:
    """A batch's inputs, protected from being overwritten, and their count when known up front (for a
    progress bar: None when paths come from stdin or a video or camera makes the frame count unknown).

    The batch starts here (cvtool.io.outputs.start_batch): every input, from the command line at once and
    from stdin as it is read, is an input no output may be written onto. `on_previous_outputs(n)` is told,
    once the inputs are all listed, how many previous cvtool outputs in `out_dir` were not taken as inputs.
    `also_protect`: files the batch reads beside its inputs (stylize's style images), protected as well.
    `guard`: the batch's InputGuard when the caller holds one (`cvtool.io.outputs.protecting`); by default
    the inputs stay protected for the rest of the process.
    """
    from cvtool.errors import UsageError

    if specs.count("-") > 1:
        raise UsageError("'-' (read paths from stdin) may be given once")
    named = [*(spec for spec in specs if spec != "-" and os.path.lexists(spec)), *also_protect]
    if guard is None:
        guard = start_batch(named)
    else:
        for path in named:
            guard.add(path)
    skipped = _Skipped()

    def guarded(items: Iterable[InputItem]) -> Iterator[InputItem]:
        for item in items:
            if item.error is None and item.path != STDIN_NAME and not remote.is_url(item.path):
                guard.add(item.path)
            yield item
        if skipped.previous_outputs and on_previous_outputs is not None:
            on_previous_outputs(skipped.previous_outputs)

    items = guarded(iter_inputs(specs, recursive=recursive, stdin=stdin, suffixes=suffixes, out_dir=out_dir,
                                skipped=skipped))
    if "-" in specs:
        return items, None
    listed = list(items)
    unknown = any(i.error is None and is_stream(i.path) for i in listed)  # frames: unknown
    return iter(listed), None if unknown else len(listed)


_NEITHER = ("stdin is neither an image (JPEG, PNG, GIF, WebP, TIFF, BMP, JPEG 2000) nor UTF-8 text with one path "
            "per line")


def _from_stdin(stdin: TextIO | None, recursive: bool, suffixes, out_dir, skipped) -> Iterator[InputItem]:
    """One image, or paths one per line, or one error: the rule in this module's docstring."""
    if stdin is None:
        return
    buffer = getattr(stdin, "buffer", None)
    if buffer is None:  # a text stream (io.StringIO from the Python API): paths
        lines: Iterable[str] = stdin
    else:
        head = _head(buffer)
        if remote.image_kind(head) is not None:
            yield _stdin_image(head, buffer)
            return
        lines = _text_lines(head, buffer)
    try:
        for line in lines:
            spec = line.strip()
            if spec and not spec.startswith("#"):
                yield from _expand(spec, recursive, suffixes, out_dir, skipped, explicit=False)
    except UnicodeDecodeError:
        yield InputItem(STDIN_NAME, _NEITHER)


def _head(buffer) -> bytes:
    """stdin's first bytes: enough to see an image's magic number, without waiting for more than a line
    of text (`find ... | cvtool classify -` must start on the first path at once)."""
    head = b""
    while len(head) < 16 and (b"\n" not in head or remote.could_be_image(head)):
        chunk = buffer.read1(16 - len(head)) if hasattr(buffer, "read1") else buffer.read(16 - len(head))
        if not chunk:
            break
        head += chunk
        if remote.image_kind(head) is not None:
            break
    return head


def _stdin_image(head: bytes, buffer) -> InputItem:
    limit = remote.max_bytes()
    data = head + buffer.read(limit + 1 - len(head))
    if len(data) > limit:
        return InputItem(STDIN_NAME, remote.too_large(limit))
    set_stdin_image(data)
    return InputItem(STDIN_NAME)


def _text_lines(head: bytes, buffer) -> Iterator[str]:
    """stdin's lines as text, lazily; UnicodeDecodeError on a NUL byte or invalid UTF-8."""
    pending = head
    while True:
        newline = pending.find(b"\n")
        if newline < 0:
            more = buffer.readline()
            if more:
                pending += more
                continue
            if not pending:
                return
            line, pending = pending, b""
        else:
            line, pending = pending[:newline + 1], pending[newline + 1:]
        if b"\0" in line:
            raise UnicodeDecodeError("utf-8", line, line.index(b"\0"), line.index(b"\0") + 1, "NUL byte")
        yield line.decode("utf-8")


def _expand(spec: str, recursive: bool, suffixes, out_dir, skipped, *, explicit: bool) -> Iterator[InputItem]:
    if remote.is_url(spec):  # fetched when read (cvtool.io.image, cvtool.io.video), never a file name
        yield InputItem(spec, remote.OFFLINE_REASON if remote.is_offline() else None)
        return
    unsupported = remote.unsupported_scheme(spec)
    if unsupported is not None and not os.path.lexists(spec):
        yield InputItem(spec, unsupported)
        return
    path = Path(spec)
    if path.is_dir():
        yield from _directory(spec, recursive, suffixes, out_dir, skipped)
    elif _CAMERA.fullmatch(spec):  # camera N (cvtool.io.video), never a file of that name
        yield InputItem(spec)
    elif path.exists() or path.is_symlink():
        if not explicit and is_previous_output(spec, out_dir):
            skipped.previous_outputs += 1
        else:
            yield _file_item(spec)
    elif _GLOB_CHARS & set(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            yield InputItem(spec, "no files match this pattern")
        previous = 0
        for match in matches:
            if os.path.isdir(match) or not os.path.lexists(match):
                continue
            if is_previous_output(match, out_dir):
                previous += 1
                continue
            yield _file_item(match)
        skipped.previous_outputs += previous
        if previous and all(os.path.isdir(m) or is_previous_output(m, out_dir) for m in matches):
            yield InputItem(spec, f"only previous cvtool outputs in --out match this pattern ({previous}); "
                                  "they are not inputs")
    else:
        yield InputItem(spec, "no such file or directory")


def _file_item(path: str) -> InputItem:
    """A regular file (or a dangling link, reported when read); a FIFO, socket or device is an error item."""
    reason = not_regular_reason(path)
    return InputItem(path, reason) if reason else InputItem(path)


def _directory(spec: str, recursive: bool, suffixes, out_dir, skipped) -> Iterator[InputItem]:
    found = False
    has_subdirs = False
    previous = 0
    for root, dirs, files in os.walk(spec):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        has_subdirs = has_subdirs or bool(dirs)
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                path = os.path.join(root, name)
                if is_previous_output(path, out_dir):
                    previous += 1
                    continue
                found = True
                yield _file_item(path)
        if not recursive:
            break
    skipped.previous_outputs += previous
    if not found:
        hint = " (it has subdirectories: add --recursive)" if has_subdirs and not recursive else ""
        what = "image or video" if suffixes & VIDEO_SUFFIXES else "image"
        if previous:
            hint += f" ({previous} previous cvtool output(s) in --out are not inputs)"
        yield InputItem(spec, f"no {what} files in directory{hint}")


def is_single_file(out: Path) -> bool:
    """`--out x.png` (stylize) names one output file; anything else is a directory."""
    return out.suffix.lower() in MEDIA_SUFFIXES
