"""Tracking: a detector's pipeline, then a multi-object tracker (cvtool.ops.tracking) and counters
(cvtool.ops.counting) over the frames of one sequence.

`TrackPipeline` is a VideoPipeline over a DetectPipeline: `predict` runs the detector on a batch of frames, then
steps the tracker through them in order, so each result's boxes carry a `track_id`; `render` draws ids, trails,
the counting line and zone and the counts. A sequence is one video (camera, stream) or one run of images in
input order; `start(path)` begins the next one (ids from 1 again, counts from 0), and `run_sequences` calls it
before each sequence the runner plays.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cvtool.errors import UsageError
from cvtool.io.image import write_image
from cvtool.io.outputs import OutputNamer
from cvtool.io.render import draw_tracks
from cvtool.ops.counting import LineCounter, ZoneCounter, box_centres, counts_text
from cvtool.ops.tracking import TrackerSettings, make_tracker
from cvtool.pipelines.detect import DetectPipeline


@dataclass
class TrackSample:
    inner: Any  # the detector's prepared sample
    trails: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # filled by predict

    @property
    def rgb(self) -> np.ndarray:
        return self.inner.rgb


class TrackPipeline:
    task = "track"
    no_video_reason = None

    def __init__(self, detector: DetectPipeline, settings: TrackerSettings, *, tracker: str,
                 line: tuple[float, ...] | None = None, zone: tuple[float, ...] | None = None, trail: int,
                 out_dir=None):
        self.detector = detector
        self.model_name, self.weights_sha256 = detector.model_name, detector.weights_sha256
        self.max_pixels = detector.max_pixels
        self.settings, self.tracker_name, self.trail = settings, tracker, trail
        self.line, self.zone = (list(line) if line else None), (list(zone) if zone else None)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.output_name = OutputNamer(out_dir, ".track.jpg") if out_dir is not None else None
        self.video_name = OutputNamer(out_dir, ".track.mp4") if out_dir is not None else None
        self.counts: dict[str, dict] = {}  # sequence -> its counts so far (the summary)
        try:  # the first sequence's tracker and counters: bad settings, a bad line or zone refused here
            self.start(None)
        except ValueError as exc:
            raise UsageError(f"--{_option_of(str(exc))}: {exc}") from None

    # -- a sequence ---------------------------------------------------------------------------------------------
    def start(self, path: str | None) -> None:
        """Begin a sequence: a fresh tracker (ids from 1), counters at 0, no trails."""
        self.sequence = path
        self.tracker = make_tracker(self.tracker_name, self.settings)
        self.line_counter = LineCounter(self.line) if self.line is not None else None
        self.zone_counter = ZoneCounter(self.zone) if self.zone is not None else None
        self.trails: dict[int, deque] = {}

    def _step(self, result: dict) -> tuple[dict, dict]:
        """One frame through the tracker and counters: (the result with tracked boxes only, the trails)."""
        detections = result["detections"]
        boxes = np.array([d["box"] for d in detections], dtype=float).reshape(-1, 4)
        ids = self.tracker.update(boxes, [d["score"] for d in detections], [d["index"] for d in detections])
        tracked = [{**d, "track_id": int(i)} for d, i in zip(detections, ids) if i >= 0]
        kept = ids >= 0
        centres = box_centres(boxes[kept])
        live = self.tracker.live_ids()
        out = {"size": result["size"], "detections": tracked}
        counts = {}
        for name, counter in (("line", self.line_counter), ("zone", self.zone_counter)):
            if counter is not None:
                counter.update(ids[kept], centres)
                counter.forget(live)
                counts[name] = dict(counter.counts)
        if counts:
            out["counts"] = counts
            self.counts[self.sequence or "images"] = counts
        trails = {}
        if self.trail:
            for tid, centre in zip(ids[kept].tolist(), centres.tolist()):
                self.trails.setdefault(tid, deque(maxlen=self.trail)).append((centre[0], centre[1]))
            self.trails = {tid: t for tid, t in self.trails.items() if tid in live}
            trails = {tid: list(self.trails[tid]) for tid in ids[kept].tolist()}
        return out, trails

    # -- the pipeline's steps -----------------------------------------------------------------------------------
    def prepare(self, path: str) -> TrackSample:
        return TrackSample(self.detector.prepare(path))

    def prepare_array(self, rgb: np.ndarray) -> TrackSample:
        return TrackSample(self.detector.prepare_array(rgb))

    def predict(self, samples: list[TrackSample]) -> list[dict]:
        results = []
        for sample, result in zip(samples, self.detector.predict([s.inner for s in samples])):
            result, sample.trails = self._step(result)  # in frame order: the tracker's state moves on
            results.append(result)
        return results

    def render(self, rgb: np.ndarray, sample: TrackSample, result: dict) -> np.ndarray:
        return draw_tracks(rgb, result["detections"], sample.trails, [self.line] if self.line else [],
                           [self.zone] if self.zone else [], caption=counts_text(result.get("counts")))

    def save(self, path: str, sample: TrackSample, result: dict, out_dir: Path) -> list[str]:
        assert self.output_name is not None  # the runner saves only with --out
        target = self.output_name(path)
        write_image(target, self.render(sample.rgb, sample, result))
        return [str(target)]

    def save_frame(self, path: str, index: int, rgb: np.ndarray, sample: TrackSample, result: dict) -> list[str]:
        return []

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)


def _option_of(message: str) -> str:
    return "line" if message.startswith("a line") else "zone" if message.startswith("a zone") else "tracker"


def run_sequences(pipeline: TrackPipeline, items: Iterable, **run_options) -> Iterator[dict]:
    """The runner (cvtool.pipelines.runner.run) over each sequence in turn, the tracker started afresh before
    each: a video (camera, stream) on its own; a run of consecutive images as one sequence, in input order."""
    from cvtool.io.video import is_stream
    from cvtool.pipelines.runner import run

    def streamed(item) -> bool:
        return item.error is None and is_stream(item.path)

    for videos, group in itertools.groupby(items, key=streamed):
        if videos:
            for item in group:
                pipeline.start(item.path)
                yield from run(pipeline, [item], **run_options)
        else:
            pipeline.start(None)
            yield from run(pipeline, group, **run_options)


class MotWriter:
    """MOTChallenge text, one line per tracked box: `frame,id,x,y,w,h,score,-1,-1,-1` (frame 1-based: a video's
    frame index + 1, or an image's place in its sequence; x, y the box's top-left corner, w, h its size, in
    pixels): what TrackEval and py-motmetrics read. One sequence per file: with several inputs, run one each."""

    def __init__(self, stream, columns, rows_fn):
        self.stream, self.images = stream, 0

    def write(self, record: dict) -> None:
        if "error" in record:
            return
        if "frame" in record:
            frame = record["frame"] + 1
        else:
            self.images += 1
            frame = self.images
        for d in record["result"]["detections"]:
            x1, y1, x2, y2 = d["box"]
            self.stream.write(f"{frame},{d['track_id']},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
                              f"{d['score']:.4f},-1,-1,-1\n")
        self.stream.flush()

    def close(self) -> None:
        pass


EXTRA_FORMATS = {"mot": MotWriter}
