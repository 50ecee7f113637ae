"""Predictable output file names inside --out, that never land on an input.

Three rules keep inputs safe whatever --out says (the README's "Outputs" section states them for users):

1. cvtool knows its own outputs: each one written into a directory is listed, with its size and mtime, in
   that directory's `.cvtool-outputs` manifest (`written_by_cvtool`). Such a file, unchanged since, lying
   in the --out directory, is a previous output, not an input, when it comes from a directory, a glob or
   stdin (`cvtool.io.inputs.expand_inputs` leaves it out), so a re-run never makes
   `photo.detect.detect.jpg`.
2. Every input of the running batch is protected (`InputGuard`): no output is ever written onto one
   (`check_not_input`, called by `OutputNamer`, `refuse_overwriting_input` and every atomic write); that
   input fails with one error line and the batch goes on.
3. An output is never written over a file cvtool did not write there (a user's `photo.detect.jpg` that
   merely looks like an output): that input fails with one line saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from cvtool.errors import InputError, UsageError
from cvtool.io.files import remove_stale_temp_files

# Every name a command writes into --out, as `<stem><one of these>` (stem may carry `-<8 hex>`):
# classify .json/.classify.mp4; detect .detect.jpg/.detect.mp4 and crops .cropNNN-LABEL.jpg; segment .mask.png,
# .overlay.(png|jpg|jpeg), .mask-LABEL.png, .segment.mp4; verify-face .faces.jpg/.faces.mp4, .vs.OTHER.jpg;
# stylize .stylized.png/.stylized.mp4, .stepNNNN.png; landmarks .landmarks.jpg/.landmarks.mp4, .faceNN.pts;
# localize .localize.jpg/.localize.mp4. A new
# kind of output must be added here (OutputNamer checks).
_OUTPUT_NAME = re.compile(
    r".+(\.json|\.classify\.mp4|\.detect\.jpg|\.detect\.mp4|\.crop\d{3}-[\w-]*\.jpg|\.mask\.png|\.mask-[\w-]*\.png"
    r"|\.overlay\.(png|jpe?g)|\.segment\.mp4|\.faces\.jpg|\.faces\.mp4|\.vs\..+\.jpg|\.stylized\.png|\.stylized\.mp4"
    r"|\.step\d{4}\.png|\.track\.jpg|\.track\.mp4|\.landmarks\.jpg|\.landmarks\.mp4|\.face\d{2}\.pts"
    r"|\.localize\.jpg|\.localize\.mp4)"
)


def is_output_name(name: str) -> bool:
    """Whether a file name is one cvtool writes into --out (`photo.detect.jpg`, `photo-1a2b3c4d.mask.png`, ...)."""
    return _OUTPUT_NAME.fullmatch(name) is not None


MANIFEST = ".cvtool-outputs"  # JSON lines {"name", "size", "mtime_ns"}: the outputs cvtool wrote in this folder
_manifest_lock = threading.Lock()
_manifests: dict[str, tuple[tuple[int, int], dict[str, tuple[int, int]]]] = {}  # folder -> (its stat, entries)
_claimed: set[str] = set()  # real paths this process names as outputs (recorded in the manifest once written)


def _manifest_entries(folder: str) -> dict[str, tuple[int, int]]:
    path = os.path.join(folder, MANIFEST)
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = (st.st_size, st.st_mtime_ns)
    with _manifest_lock:
        cached = _manifests.get(folder)
        if cached is not None and cached[0] == key:
            return cached[1]
    entries: dict[str, tuple[int, int]] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    item = json.loads(line)
                    entries[str(item["name"])] = (int(item["size"]), int(item["mtime_ns"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line (a killed process): that output is simply not known
    except OSError:
        return {}
    with _manifest_lock:
        _manifests[folder] = (key, entries)
    return entries


def written_by_cvtool(path: str | Path) -> bool:
    """Whether `path` is an output cvtool wrote, unchanged since (its size and mtime as recorded)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return False
    return _manifest_entries(os.path.dirname(real)).get(os.path.basename(real)) == (st.st_size, st.st_mtime_ns)


def claim_output(target: str | Path, input_path: str | None = None) -> None:
    """`target` is about to be written as an output: refuse when a file is there that cvtool did not write
    (rule 3), and remember to list it in its folder's manifest once written (`record_output`)."""
    real = os.path.realpath(target)
    if os.path.lexists(real) and not written_by_cvtool(real):
        raise InputError(f"output {target} exists and was not written by cvtool; move it away or choose another "
                         "--out", input_path or target)
    with _manifest_lock:
        _claimed.add(real)


def record_output(path: str | Path) -> None:
    """After an atomic write: list a claimed output in its folder's manifest (one appended line)."""
    real = os.path.realpath(path)
    with _manifest_lock:
        if real not in _claimed:
            return
    try:
        st = os.stat(real)
        line = json.dumps({"name": os.path.basename(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n"
        fd = os.open(os.path.join(os.path.dirname(real), MANIFEST), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one small O_APPEND write: whole lines even with concurrent writers
        finally:
            os.close(fd)
    except OSError:
        pass  # the output is written; unlisted, a re-run treats it as a foreign file and says so


def is_previous_output(path: str | Path, out_dir: str | Path | None) -> bool:
    """An output of an earlier run: a file named like a cvtool output, lying directly in `out_dir`, that
    cvtool wrote there (listed in the manifest, unchanged since)."""
    if out_dir is None:
        return False
    path = Path(path)
    return (is_output_name(path.name) and os.path.realpath(path.parent) == os.path.realpath(out_dir)
            and written_by_cvtool(path))


class InputGuard:
    """The real paths of a batch's inputs, which no output may be written onto."""

    def __init__(self, paths: Iterable[str | Path] = ()):
        self._paths: set[str] = set()
        self._lock = threading.Lock()
        for path in paths:
            self.add(path)

    def add(self, path: str | Path) -> None:
        key = os.path.realpath(path)
        with self._lock:
            self._paths.add(key)

    def __contains__(self, path: str | Path) -> bool:
        return os.path.realpath(path) in self._paths


# Every batch running in this process has a guard; an output may land on no input of any of them, so
# concurrent batches (the Python API from several threads, a server) protect each other's inputs too.
_active: list[InputGuard] = []
_active_lock = threading.Lock()


def start_batch(paths: Iterable[str | Path] = ()) -> InputGuard:
    """A new batch begins: its inputs (these, and those added to the returned guard) stay protected for the
    rest of the process (the CLI runs one batch per process; a library caller uses `protecting`)."""
    guard = InputGuard(paths)
    with _active_lock:
        _active.append(guard)
    return guard


@contextlib.contextmanager
def protecting(paths: Iterable[str | Path] = ()) -> Iterator[InputGuard]:
    """Protect these inputs (and those added to the guard) for the duration of the block."""
    guard = start_batch(paths)
    try:
        yield guard
    finally:
        with _active_lock:
            _active.remove(guard)


def protect(path: str | Path) -> None:
    """Add one more input to the latest batch (e.g. a style image read beside the contents)."""
    with _active_lock:
        guard = _active[-1] if _active else None
    (guard or start_batch()).add(path)


def check_not_input(target: str | Path, input_path: str | None = None) -> None:
    """Refuse to write `target` when it is an input of a running batch (symlinks resolved)."""
    with _active_lock:
        guards = list(_active)
    if any(target in guard for guard in guards):
        raise InputError(f"output {target} would overwrite an input of this batch; choose another --out",
                         input_path or target)


def output_stem(input_path: str) -> str:
    """The name an input's outputs start with: the file's stem; for a URL, the stem of its last path part
    (`https://host/img/cat.jpg?size=2` -> `cat`, `download` when there is none); `stdin` for `-`."""
    if input_path == "-":
        return "stdin"
    if "://" in input_path:
        from urllib.parse import urlsplit

        stem = Path(urlsplit(input_path).path).stem
        return safe_name(stem) if stem else "download"
    return Path(input_path).stem


class OutputNamer:
    """`photo.jpg` -> `OUT/photo<suffix>`; a later input with the same stem from another folder gets
    `OUT/photo-<8 hex of its absolute path><suffix>`, so names are stable across re-runs of the same batch."""

    def __init__(self, out_dir: str | Path, suffix: str):
        if not is_output_name(f"x{suffix}"):
            raise ValueError(f"output suffix {suffix!r} is not in cvtool.io.outputs._OUTPUT_NAME; add it there, "
                             "or a re-run would take these outputs as inputs")
        self.out_dir = Path(out_dir)
        self.suffix = suffix
        self._by_input: dict[str, Path] = {}
        self._taken: set[Path] = set()

    def __call__(self, input_path: str) -> Path:
        candidate = self._name(input_path)
        refuse_overwriting_input(candidate, input_path)
        return candidate

    def _name(self, input_path: str) -> Path:
        if input_path in self._by_input:
            return self._by_input[input_path]
        stem = output_stem(input_path)
        candidate = self.out_dir / f"{stem}{self.suffix}"
        if candidate in self._taken:
            where = input_path if "://" in input_path else str(Path(input_path).resolve())
            digest = hashlib.sha1(where.encode()).hexdigest()[:8]
            candidate = self.out_dir / f"{stem}-{digest}{self.suffix}"
        self._taken.add(candidate)
        self._by_input[input_path] = candidate
        return candidate

    def exists(self, input_path: str) -> bool:
        """For --skip-existing: this input's output is there, written by cvtool (anything else is not "done":
        writing it reports the problem)."""
        try:
            return written_by_cvtool(self._name(input_path))
        except InputError:
            return False


def refuse_overwriting_input(target: str | Path, input_path: str) -> None:
    """Inputs are never overwritten, whatever --out says: neither this output's own input nor any other
    input of the running batch."""
    if os.path.realpath(target) == os.path.realpath(input_path):
        raise InputError(f"output {target} would overwrite the input; choose another --out", input_path)
    check_not_input(target, input_path)
    claim_output(target, input_path)


def check_out_dir(out: Path | None, *, skip_existing: bool = False) -> None:
    """Before any work: --out is a directory we can write into (created if missing), or a UsageError."""
    if skip_existing and out is None:
        raise UsageError("--skip-existing needs --out DIR")
    if out is None:
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"--out {out}: cannot create it (a part of the path is a file)") from None
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create it ({_reason(exc)})") from None
    remove_stale_temp_files(out)  # what a killed earlier run (SIGKILL) was writing when it died
    reason = _unwritable(out)
    if reason:
        raise UsageError(f"--out {out}: not writable ({reason})")


def check_outside_data(out: str | Path, folders: Iterable[Path], what: str) -> None:
    """Before any work: a folder that training or validation writes into is none of the data folders being
    read (`folders`: cvtool.train.datasets.data_folders), nor inside one. Its files (best.pt, curves.png,
    confusion.png, ...) would replace data files of the same name and be read as data by the next run (an
    image-folder class named after the run, plots taken for photos)."""
    from cvtool.io.files import is_within

    for folder in folders:
        if is_within(out, folder):
            raise UsageError(f"{what} is inside the data folder {folder}: its files would mix with the data's (and "
                             "could replace some); choose a folder outside it")


def check_writable(target: str | Path, what: str) -> None:
    """Before any work: `target` (a file or directory to be made) can be created where it is asked for, or a
    UsageError naming `what` (e.g. "--out x.onnx"). Nothing is created: the nearest existing folder is probed."""
    folder = Path(os.path.abspath(target)).parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{what}: cannot create it ({folder} is a file)")
    reason = _unwritable(folder)
    if reason:
        raise UsageError(f"{what}: not writable ({reason} in {folder})")


def _unwritable(folder: Path) -> str | None:
    """Why no file can be created in `folder`, or None. The real test, a file made and removed: os.access says
    yes to root on a read-only mount or an immutable folder."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".cvtool-write-test.", dir=folder)
    except OSError as exc:
        return _reason(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def _reason(exc: OSError) -> str:
    text = exc.strerror or type(exc).__name__
    return text[0].lower() + text[1:]


def safe_name(label: str) -> str:
    """A class label as a file-name part (`traffic light` -> `traffic_light`)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)


def one_input_for_file(out: Path, items: list) -> list:
    """`--out FILE` takes one input: the items, or a UsageError when there are more."""
    if len(items) > 1:
        raise UsageError(f"--out {out} is a file but {len(items)} inputs were given; pass a directory")
    return items
