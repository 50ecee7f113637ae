"""cvtool track: the ByteTrack tracker and the IoU baseline on known trajectories, the line and zone counters
(exact counts, an id switch not counted twice), and the command and API end to end with the face detector on a
generated video of two real face photos moving across the frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvtool.ops.counting import LineCounter, ZoneCounter, inside_polygon
from cvtool.ops.tracking import ByteTracker, IoUTracker, TrackerSettings, box_iou, make_tracker
from tests.conftest import invoke_cli, jsonl

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "faces"


def box(cx: float, cy: float, w: float = 40, h: float = 80) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


# -- the trackers ---------------------------------------------------------------------------------------------

def test_two_objects_crossing_keep_their_ids():
    """Two boxes walking towards each other overlap for several frames (IoU up to 0.45): the motion model keeps
    each id on its own object."""
    tracker = ByteTracker()
    history = []
    for f in range(40):
        a, b = box(20 + 6 * f, 100), box(260 - 6 * f, 120)
        ids = tracker.update([a, b], [0.9, 0.85])
        history.append(ids.tolist())
    assert max(box_iou(np.array([box(20 + 6 * f, 100)]), np.array([box(260 - 6 * f, 120)]))[0, 0]
               for f in range(40)) > 0.4
    assert all(ids == [1, 2] for ids in history)


def test_a_weak_box_keeps_an_occluded_objects_track_where_the_iou_baseline_loses_it():
    """Three frames of a half-occluded object at score 0.3 (below track_high 0.5): ByteTrack's second stage keeps
    id 1; the IoU baseline ignores the weak boxes, ends the track and starts id 2 after."""
    scores = [0.9] * 5 + [0.3] * 3 + [0.9] * 5
    byte, base = ByteTracker(TrackerSettings()), IoUTracker(TrackerSettings())
    byte_ids, base_ids = [], []
    for f, s in enumerate(scores):
        b = box(100 + 4 * f, 100)
        byte_ids.append(int(byte.update([b], [s])[0]))
        base_ids.append(int(base.update([b], [s])[0]))
    assert byte_ids == [1] * 13
    assert base_ids == [1] * 5 + [-1] * 3 + [2] * 5


def test_a_track_lost_for_some_frames_is_found_again_within_its_buffer():
    """Five frames without a box (full occlusion): the Kalman prediction carries the track along its path and the
    box that comes back takes the old id; with a buffer of 2 frames it is a new track."""
    def run(buffer: int) -> list[int]:
        tracker = ByteTracker(TrackerSettings(track_buffer=buffer))
        out = []
        for f in range(16):
            seen = not 5 <= f < 10
            ids = tracker.update([box(100 + 8 * f, 100)] if seen else [], [0.9] if seen else [])
            out.append(int(ids[0]) if seen else 0)
        return out

    assert run(30) == [1] * 5 + [0] * 5 + [1] * 6
    assert run(2) == [1] * 5 + [0] * 5 + [-1] + [2] * 5  # a new track, confirmed one frame after its birth


def test_a_one_frame_false_positive_gets_no_id():
    tracker = ByteTracker()
    assert tracker.update([box(50, 50)], [0.9]).tolist() == [1]  # the first frame's boxes are tracks at once
    assert tracker.update([box(50, 50), box(300, 300)], [0.9, 0.8]).tolist() == [1, -1]  # born, unconfirmed
    assert tracker.update([box(50, 50)], [0.9]).tolist() == [1]  # gone: dropped without an id
    tracker.update([box(50, 50), box(400, 100)], [0.9, 0.8])
    assert tracker.update([box(50, 50), box(400, 100)], [0.9, 0.8]).tolist() == [1, 2]  # ids are not spent


def test_boxes_of_another_class_never_join_a_track():
    tracker = ByteTracker()
    assert tracker.update([box(50, 50)], [0.9], [3]).tolist() == [1]
    tracker.update([box(50, 50)], [0.9], [5])
    assert tracker.update([box(50, 50)], [0.9], [5]).tolist() == [2]


def test_reset_starts_ids_again_and_unknown_trackers_are_named():
    tracker = make_tracker("bytetrack", TrackerSettings())
    tracker.update([box(50, 50), box(200, 50)], [0.9, 0.9])
    tracker.reset()
    assert tracker.update([box(300, 50)], [0.9]).tolist() == [1]
    with pytest.raises(ValueError, match="no tracker 'sort'; trackers: bytetrack, iou"):
        make_tracker("sort", TrackerSettings())
    with pytest.raises(ValueError, match="track_low 0.6 is above track_high 0.5"):
        TrackerSettings(track_low=0.6)


# -- counting -------------------------------------------------------------------------------------------------

def test_line_crossings_are_counted_per_track_and_direction_exactly():
    """A horizontal line from (0,100) to (200,100): `in` is downwards (the right-hand side walking left to right).
    Track 1 goes down through it, 2 up through it, 3 passes beyond the segment's end, 4 jitters across it five
    times (one `in`, one `out`), 5 stays above."""
    counter = LineCounter([0, 100, 200, 100])
    paths = {1: [(50, 60 + 10 * f) for f in range(8)], 2: [(120, 150 - 10 * f) for f in range(8)],
             3: [(260, 60 + 10 * f) for f in range(8)], 4: [(80, 95 + 10 * (f % 2)) for f in range(8)],
             5: [(150, 40 + f) for f in range(8)]}
    events = []
    for f in range(8):
        events += counter.update(list(paths), [paths[t][f] for t in paths])
    assert counter.counts == {"in": 2, "out": 2}
    assert sorted(events) == [(1, "in"), (2, "out"), (4, "in"), (4, "out")]


def test_an_id_switch_does_not_count_a_crossing_twice():
    """Track 7 crosses the line and, just past it, the tracker switches the object to a new id 8: 8 was born on
    the far side and has crossed nothing."""
    counter = LineCounter([0, 100, 200, 100])
    for y in (70, 90, 110):
        counter.update([7], [(50, y)])
    for y in (120, 130, 140):
        counter.update([8], [(50, y)])
    assert counter.counts == {"in": 1, "out": 0}


def test_the_tracker_and_the_line_counter_count_objects_through_an_occlusion_once():
    """Two objects crossing each other while both cross a vertical line (x = 150, from top to bottom): one in,
    one out, each counted once, from the tracker's own ids."""
    tracker, counter = ByteTracker(), LineCounter([150, 0, 150, 300])
    for f in range(40):
        boxes = [box(20 + 7 * f, 100), box(280 - 7 * f, 125)]
        ids = tracker.update(boxes, [0.9, 0.9])
        counter.update(ids, [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes])
    assert counter.counts == {"in": 1, "out": 1}
    assert sorted(counter.counted) == [(1, "out"), (2, "in")]  # left to right is `out` for a downward line


def test_zone_entries_exits_and_objects_inside():
    square = [100, 100, 200, 100, 200, 200, 100, 200]
    counter = ZoneCounter(square)
    counter.update([1, 2, 3], [(50, 150), (150, 150), (300, 300)])  # 2 is born inside: no entry
    assert counter.counts == {"inside": 1, "entered": 0, "exited": 0}
    counter.update([1, 2, 3], [(150, 150), (250, 150), (300, 300)])
    assert counter.counts == {"inside": 1, "entered": 1, "exited": 1}
    counter.update([1, 2], [(250, 150), (150, 150)])  # 1 leaves, 2 comes back: 2 entered once
    counter.update([1, 2], [(150, 150), (150, 150)])  # 1 back in: already counted as entered
    assert counter.counts == {"inside": 2, "entered": 2, "exited": 2}
    points = np.array([[150, 150], [99, 150], [201, 199]])
    assert inside_polygon(points, np.array(square, float).reshape(-1, 2)).tolist() == [True, False, False]


def test_bad_lines_and_zones_are_refused_with_their_reason():
    with pytest.raises(ValueError, match=r"a line is x1,y1,x2,y2 \(4 numbers\), not 3"):
        LineCounter([1, 2, 3])
    with pytest.raises(ValueError, match="two different points"):
        LineCounter([5, 5, 5, 5])
    with pytest.raises(ValueError, match="at least 3 points"):
        ZoneCounter([0, 0, 1, 1])


# -- the command and the API, with the face detector on a generated video -------------------------------------

FRAMES, STEP = 12, 15


def _faces() -> tuple[np.ndarray, np.ndarray]:
    import cv2

    from cvtool.io.image import read_image

    def crop(path: Path, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
        image = read_image(str(path))
        m = int((x2 - x1) * 0.4)
        return cv2.resize(image[max(0, y1 - m):y2 + m, max(0, x1 - m):x2 + m], (90, 90), interpolation=cv2.INTER_AREA)

    # each photo's face (the face detector's own box on the full photo, rounded)
    return (crop(SHARED / "obama" / "obama1.jpg", 354, 135, 600, 380),
            crop(SHARED / "biden" / "biden1.jpg", 425, 214, 720, 508))


def _frames() -> list[np.ndarray]:
    """Obama's face moves right along the top, Biden's left along the bottom, both crossing x = 160."""
    a, b = _faces()
    frames = []
    for f in range(FRAMES):
        canvas = np.full((200, 320, 3), 128, np.uint8)
        xa, xb = 20 + STEP * f, 210 - STEP * f
        canvas[10:100, xa:xa + 90] = a
        canvas[105:195, xb:xb + 90] = b
        frames.append(canvas)
    return frames


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    if not (SHARED / "obama" / "obama1.jpg").is_file():
        pytest.skip(f"needs the shared face photos in {SHARED}")
    import cv2

    path = tmp_path_factory.mktemp("track") / "faces.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 200))
    for frame in _frames():
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def tracked(face_video, tmp_path_factory):
    """One CLI run: JSON Lines records, the annotated video and the counts on stderr."""
    out = tmp_path_factory.mktemp("tracked")
    result = invoke_cli("track", str(face_video), "--model", "face", "--line", "160,0,160,200", "--zone",
                        "0,0,160,0,160,200,0,200", "--out", str(out), "--threads", "1", "-f", "jsonl")
    return result, out


def test_the_command_tracks_two_faces_and_counts_their_line_crossings(tracked, face_video):
    result, out = tracked
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    assert [r["frame"] for r in records] == list(range(FRAMES))
    assert all(r["task"] == "track" and r["model"] == "face" for r in records)
    for r in records:  # Obama (top) is track 1 and Biden (bottom) track 2 in every frame
        by_id = {d["track_id"]: d["box"] for d in r["result"]["detections"]}
        assert sorted(by_id) == [1, 2], r
        assert by_id[1][1] < 100 < by_id[2][1]
    # the line x = 160 drawn downwards: Obama goes left to right (`out`), Biden right to left (`in`)
    assert records[-1]["result"]["counts"]["line"] == {"in": 1, "out": 1}
    first_past = [min(f for f, r in enumerate(records) if r["result"]["counts"]["line"][k] == 1) for k in ("in", "out")]
    assert all(2 < f < FRAMES - 2 for f in first_past)
    # the zone is the left half: Biden enters it, Obama leaves it; one of them is inside at the end
    assert records[-1]["result"]["counts"]["zone"] == {"inside": 1, "entered": 1, "exited": 1}
    assert records[0]["result"]["counts"]["zone"]["inside"] == 1
    assert f"{face_video}: line in 1 out 1 | zone inside 1 entered 1 exited 1" in result.stderr


def test_the_annotated_video_has_every_frame(tracked):
    import cv2

    _, out = tracked
    videos = list(out.glob("*.track.mp4"))
    assert len(videos) == 1
    capture = cv2.VideoCapture(str(videos[0]))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = capture.read()
    capture.release()
    assert ok and count == FRAMES and frame.shape[:2] == (200, 320)


def test_mot_output_is_the_motchallenge_text_of_the_records(tracked):
    import io

    from cvtool.pipelines.track import MotWriter

    result, _ = tracked
    records = jsonl(result.stdout)
    stream = io.StringIO()
    writer = MotWriter(stream, [], None)
    for record in records:
        writer.write(record)
    writer.close()
    lines = [line.split(",") for line in stream.getvalue().splitlines()]
    assert len(lines) == 2 * FRAMES and all(len(p) == 10 and p[7:] == ["-1", "-1", "-1"] for p in lines)
    expected = [(r["frame"] + 1, d["track_id"], d["box"], d["score"])
                for r in records for d in r["result"]["detections"]]
    for parts, (frame, tid, (x1, y1, x2, y2), score) in zip(lines, expected):
        assert (int(parts[0]), int(parts[1])) == (frame, tid)
        assert [float(v) for v in parts[2:7]] == pytest.approx([x1, y1, x2 - x1, y2 - y1, score], abs=0.01)


def test_the_api_tracks_frame_by_frame_as_the_command_does(tracked):
    import cvtool

    result, _ = tracked
    records = jsonl(result.stdout)
    tracker = cvtool.Tracker("face", line=(160, 0, 160, 200), threads=1)
    frames = _frames()
    results = [tracker(frame) for frame in frames[:4]]
    assert [r.track_ids.tolist() for r in results] == [[d["track_id"] for d in r["result"]["detections"]]
                                                        for r in records[:4]]
    assert results[0].counts == {"line": {"in": 0, "out": 0}}
    tracker.reset()  # a new sequence: ids from 1, counts from 0, here starting from the last frame
    again = tracker(frames[-1])
    assert sorted(again.track_ids.tolist()) == [1, 2] and again.counts["line"] == {"in": 0, "out": 0}


def test_bad_counting_options_fail_with_one_line(face_video):
    result = invoke_cli("track", str(face_video), "--model", "face", "--line", "1,2,3")
    assert result.returncode == 2
    assert "--line: a line is x1,y1,x2,y2 (4 numbers), not 3" in result.stderr
    assert "Traceback" not in result.stderr
    result = invoke_cli("track", str(face_video), "--model", "face", "--tracker", "sort")
    assert result.returncode == 2 and "no tracker 'sort'; trackers: bytetrack, iou" in result.stderr


def test_each_video_and_each_run_of_images_is_its_own_sequence(face_video, tmp_path):
    """A video then a folder of frames (as a MOT sequence's img1/, here frames 3-9 of the video): ids start at 1 in
    each, the folder's frames are tracked in name order (MOT frames 1-7), and each sequence has its own counts."""
    from cvtool.io.image import write_image

    folder = tmp_path / "img1"
    folder.mkdir()
    part = _frames()[3:10]
    for f, frame in enumerate(part):
        write_image(folder / f"{f + 1:06d}.png", frame)
    result = invoke_cli("track", str(face_video), str(folder), "--model", "face", "--line", "160,0,160,200",
                        "--threads", "1", "-f", "mot")
    assert result.returncode == 0, result.stderr
    rows = [tuple(int(float(v)) for v in line.split(",")[:2]) for line in result.stdout.splitlines()]
    video, images = rows[:2 * FRAMES], rows[2 * FRAMES:]
    assert video == [(f, i) for f in range(1, FRAMES + 1) for i in (1, 2)]
    assert sorted(images) == [(f, i) for f in range(1, len(part) + 1) for i in (1, 2)]
    assert f"{face_video}: line in 1 out 1" in result.stderr and "images: line in 1 out 1" in result.stderr


def test_track_is_never_sent_to_a_server():
    result = invoke_cli("track", "clip.mp4", env={"CVTOOL_SERVER": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "cvtool track runs on this machine" in result.stderr and "Traceback" not in result.stderr


def test_a_detector_tracks_with_its_own_network(tracked):
    import cvtool

    result, _ = tracked
    records = jsonl(result.stdout)
    det = cvtool.Detector("face", threads=1)
    tracker = det.tracker(line=(160, 0, 160, 200))
    assert tracker.loaded is det.loaded and tracker._lock is det._lock and tracker.iou == det.iou
    frames = _frames()[:3]
    assert [tracker(f).track_ids.tolist() for f in frames] == [
        [d["track_id"] for d in r["result"]["detections"]] for r in records[:3]]
    with pytest.raises(cvtool.UsageError, match="conf: not a per-call option of track"):
        det.tracker(conf=0.5)
