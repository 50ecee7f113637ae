"""Atomic file writes: a reader (or a killed process) never sees a half-written output, and no write
lands on an input of the running batch (cvtool.io.outputs.check_not_input)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from cvtool.errors import InputError
from cvtool.io.files import temp_prefix
from cvtool.io.outputs import check_not_input, record_output

# mkstemp creates files 0600; outputs should get the user's usual permissions. Read once, at import,
# because os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteError(InputError, OSError):
    """A file could not be written (disk full, permission denied, read-only file system).

    An InputError, so a batch reports it as that input's one error line and goes on; an OSError too,
    so callers that tolerate a failed write (a cache) keep catching it as before.
    """

    def __init__(self, path: str | Path, exc: OSError):
        reason = (exc.strerror or type(exc).__name__).lower()
        InputError.__init__(self, f"cannot write {path} ({reason})")
        self.errno, self.strerror, self.filename = exc.errno, exc.strerror, str(path)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temp file beside `path`; on clean exit fsync it and rename it over `path`.

    On an exception the temp file is removed and `path` is left as it was. An input of the running batch
    is never written (InputError); an OSError while writing becomes a WriteError naming `path`.
    """
    path = Path(path)
    check_not_input(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    try:
        handle = os.fdopen(fd, mode, **kwargs)
        try:
            yield handle  # what the caller's own code raises in here passes through unchanged
        except BaseException:
            with contextlib.suppress(OSError):
                handle.close()
            raise
        try:  # buffered data reaches the disk here (a full disk or a size limit shows up now, or at close)
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        except OSError as exc:
            with contextlib.suppress(OSError):
                handle.close()
            raise WriteError(path, exc) from exc
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except OSError as exc:
            raise WriteError(path, exc) from exc
        record_output(path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        _write(handle, data, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        _write(handle, text, path)


def _write(handle: IO, data, path) -> None:
    try:
        handle.write(data)
    except OSError as exc:  # e.g. no space left on device
        raise WriteError(path, exc) from exc
