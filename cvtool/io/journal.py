"""`--records FILE`: an append-only JSON Lines journal of a batch, so that a rerun does only what is left.

Each record (the same dict the batch prints) is appended as one line with a single `write` on an
O_APPEND descriptor as it is produced, and fsync'ed when the batch ends; a process killed at any point
leaves at most one partial last line, which the next open ignores and cuts off before appending.

What counts as done (skipped by a rerun, whatever --out is):
- an image: a record of it with a `result`; an error record is not done, the input is retried;
- a video: only its end marker `{"path": ..., "video_done": true, "frames": N}`, written after its last
  frame's record when the video ended without error. A video cut short is redone from its first frame;
  its frames are then in the journal twice, and `read_records` keeps only the attempt that finished.
  Cameras (`cam:N`) are never done.
Inputs are matched on their path as the batch lists it (normalised like `--shard`, cvtool.io.shards).

One process writes a journal at a time (an exclusive lock; give each shard its own file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Generator, Iterable, Iterator

from cvtool.errors import UsageError

MARKER = "video_done"


def _key(path: str) -> str:
    return os.path.normpath(path)


def _lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every complete line; a torn last line (no newline) is left out."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return  # the partial last line of a killed writer
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                raise UsageError(f"line {number} is not a JSON record (is this a cvtool --records journal?)",
                                 path) from None
            if not isinstance(record, dict):
                raise UsageError(f"line {number} is not a JSON object (is this a cvtool --records journal?)", path)
            yield number, record


def done_paths(path: str | Path) -> set[str]:
    """The inputs a journal records as done (normalised paths)."""
    done: set[str] = set()
    for _, record in _lines(Path(path)):
        name = record.get("path")
        if not isinstance(name, str):
            continue
        if record.get(MARKER) or ("result" in record and "frame" not in record):
            done.add(_key(name))
    return done


def read_records(path: str | Path) -> list[dict]:
    """The journal's final answer: per input, in order of first appearance, its latest result record (an
    image), the frames of the attempt that finished (a video), or else its latest error record. End
    markers are left out. Reads the whole journal into memory."""
    latest: dict[str, list[dict]] = {}
    attempt: dict[str, list[dict]] = {}  # frames of a video's attempt in progress
    for _, record in _lines(Path(path)):
        name = record.get("path")
        key = _key(name) if isinstance(name, str) else repr(name)
        if record.get(MARKER):
            latest[key] = attempt.pop(key, [])
        elif "frame" in record:
            frames = attempt.setdefault(key, [])
            if frames and record["frame"] <= frames[-1]["frame"]:
                frames.clear()  # a rerun started the video again
            frames.append(record)
            latest.setdefault(key, [])
        elif "result" in record:
            latest[key] = [record]
        else:  # an error: the answer unless a result is recorded
            attempt.pop(key, None)
            previous = latest.get(key)
            if not previous or "error" in previous[0]:
                latest[key] = [record]
    return [r for records in latest.values() for r in records]


class Journal:
    """An open journal: `done(path)` for the inputs to skip, `track(records)` to append a batch's records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        from cvtool.io.inputs import MEDIA_SUFFIXES

        if self.path.suffix.lower() in MEDIA_SUFFIXES:  # a slip of the shell; never append to an input
            raise UsageError("--records names an image or video file; give a journal file, e.g. records.jsonl",
                             self.path)
        if self.path.is_dir():
            raise UsageError("--records names a directory; give a file, e.g. records.jsonl", self.path)
        if not self.path.parent.is_dir():
            raise UsageError(f"cannot be created as a --records journal (no directory {self.path.parent})", self.path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot be opened as a --records journal ({exc.strerror})", self.path) from None
        try:
            self._lock()
            self._cut_torn_tail()
            self._done = done_paths(self.path)
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError("in use by another cvtool process (give each process, e.g. each "
                             "--shard, its own file)", self.path) from None

    def _cut_torn_tail(self) -> None:
        """Cut a partial last line (a killed writer's) so that the next record starts a line of its own."""
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - 65536)
            newline = os.pread(self._fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                os.ftruncate(self._fd, start + newline + 1)
                return
            end = start
        os.ftruncate(self._fd, 0)

    @property
    def recorded(self) -> int:
        """How many inputs the journal held as done when it was opened."""
        return len(self._done)

    def done(self, path: str) -> bool:
        """Whether the journal records `path` as done (cameras never are)."""
        from cvtool.io.video import camera_index

        return _key(path) in self._done and camera_index(path) is None

    def append(self, record: dict) -> None:
        """One record as one line, in one write (handed to the OS at once: a killed process keeps it)."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def track(self, records: Iterable[dict]) -> Generator[dict, None, None]:
        """Append each record as it passes; after a video's last frame, its end marker (if it ended well).
        A marker is written only when the video's records are over (the next input began, or the batch
        ended), never when the batch is stopped part-way."""
        from cvtool.io.video import camera_index

        video: list | None = None  # [path, frames, failed]

        def finish() -> None:
            if video is not None and not video[2] and camera_index(video[0]) is None:
                self.append({"path": video[0], MARKER: True, "frames": video[1]})

        for record in records:
            path = record.get("path")
            if video is not None and path != video[0]:
                finish()
                video = None
            if "frame" in record:
                if video is None:
                    video = [path, 0, False]
                video[1] += 1
            elif video is not None and "error" in record:
                video[2] = True
            self.append(record)
            yield record
        finish()

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
