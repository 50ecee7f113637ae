"""Opening the user's files without ever blocking on one that is not a file.

A FIFO (named pipe) opened for reading waits for a writer forever; a character device (`/dev/zero`)
never ends; a socket cannot be opened at all. cvtool reads regular files only (cameras `cam:N` are
opened by index, never as files): everything else is one clear error naming its kind.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import IO

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def non_regular_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("a FIFO", "a socket", ...)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a file"


def not_regular_reason(path: str | Path) -> str | None:
    """"not a regular file (a FIFO)" and the like, or None for a regular file (symlinks followed).
    A missing or unreadable path is left for the open that follows to report."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kind = non_regular_kind(mode)
    return None if kind is None else f"not a regular file ({kind})"


def open_regular(path: str | Path, mode: str = "rb", **kwargs) -> IO:
    """`open()` for reading that refuses, without blocking, anything but a regular file.

    The file is opened with O_NONBLOCK (a FIFO then opens at once instead of waiting for a writer) and
    checked with fstat on the open descriptor, so nothing can be swapped in between the check and the read.
    Raises IsADirectoryError for a directory and OSError(EINVAL, "not a regular file (a FIFO)") for the rest.
    """
    if any(c in mode for c in "wax+"):
        raise ValueError("open_regular is for reading")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        kind = non_regular_kind(os.fstat(fd).st_mode)
        if kind == "a directory":
            raise IsADirectoryError(21, "Is a directory", str(path))
        if kind is not None:
            raise NotRegularFileError(f"not a regular file ({kind})", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: back to ordinary reads
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


class NotRegularFileError(OSError):
    """A FIFO, socket or device where a file was expected; `str()` is the one-line reason."""

    def __init__(self, reason: str, path: str):
        super().__init__(reason)
        self.reason, self.filename, self.strerror = reason, path, reason

    def __str__(self) -> str:
        return self.reason


# An image piped on stdin (`cat a.jpg | cvtool detect -`): its bytes, read once by cvtool.io.inputs, are
# what reading the input "-" returns (cvtool.io.image._read_bytes). "-" is never a file name there:
# a file called "-" is `./-`.
STDIN_NAME = "-"
_stdin_image: bytes | None = None


def set_stdin_image(data: bytes | None) -> None:
    global _stdin_image
    _stdin_image = data


def stdin_image() -> bytes | None:
    """The image read from stdin, if one was (None otherwise)."""
    return _stdin_image


# Temp files of atomic writes carry the writer's pid, so a later run can tell one left by a killed process
# (SIGKILL leaves no chance to clean up) from one a running process is still writing.
_TEMP = re.compile(r"^\..+\.cvtool-(\d+)-[^/]*$")


def is_within(path: str | Path, root: str | Path) -> bool:
    """`path` is `root` or lies below it, as written (made absolute) or with symlinks followed: a link
    inside `root` that points elsewhere still counts as inside it."""
    pairs = ((os.path.abspath(path), os.path.abspath(root)), (os.path.realpath(path), os.path.realpath(root)))
    return any(Path(p) == Path(r) or Path(r) in Path(p).parents for p, r in pairs)


def temp_prefix(path: Path) -> str:
    """mkstemp's prefix for an atomic write of `path`: hidden, named after it, with this process's pid."""
    return f".{path.name}.cvtool-{os.getpid()}-"


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete temp files that a killed cvtool process left in `folder` (their pid no longer runs)."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = _TEMP.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
