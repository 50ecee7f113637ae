"""`cvtool track`: a detector's boxes followed across video frames (ByteTrack): a track id per box, trails, and
counts of line crossings and zone entries and exits."""

from cvtool.tasks.common import BATCH, BATCH_SIZE, LOADING, model_option, with_default
from cvtool.tasks.detect import SPEC as DETECT
from cvtool.tasks.options import FLOATS, Option, Options
from cvtool.tasks.spec import TABLE_FORMATS, TaskSpec

TRACKERS = ("bytetrack", "iou")  # cvtool.ops.tracking.TRACKERS (the library's registry; this list is for --help)

SPEC = TaskSpec(
    name="track",
    api="cvtool.api:Tracker",
    summary="Track objects across video frames: a detector's boxes with a track id each (ByteTrack), trails drawn "
            "with --out, and counts of --line crossings and --zone entries and exits.",
    epilog="Example: cvtool track street.mp4 --classes person --line 0,300,1280,300 --out tracked/  (a folder of "
           "frames, e.g. a MOT sequence's img1/, is tracked as one sequence in name order)",
    inputs=("VIDEOS...", "Videos, cam:N, rtsp:// streams (each tracked on its own), or image files and folders "
                         "(each run of images is one sequence, in order)."),
    default_model=DETECT.default_model,
    options=Options([
        model_option("Detector (see `cvtool models --task detect`): our YOLO, torchvision's, face. Default: "
                     f"{DETECT.default_model}."),
        DETECT.options["iou"],
        DETECT.options["classes"],
        DETECT.options["max_det"],
        Option("track_high", float, None, "Boxes scoring at least this are matched first and may start tracks "
               "(default: the model's confidence threshold, as `detect --conf`: 0.25; 0 for --model face).",
               low=0, high=1),
        Option("track_low", float, 0.1, "Boxes from this score up to --track-high are matched second, to tracks "
               "the first stage left (occluded objects keep their id); the detector runs at this threshold (at "
               "most --track-high).", low=0, high=1),
        Option("new_track", float, None, "A box left unmatched starts a track from this score (default: "
               "--track-high).", low=0, high=1),
        Option("match_iou", float, 0.2, "First stage: the least IoU (times the box's score) for a box to join a "
               "track.", low=0, high=1),
        Option("track_buffer", int, 30, "Frames a lost track is kept to be found again (same id).", low=0),
        Option("tracker", str, "bytetrack", f"{' or '.join(TRACKERS)} (the plain IoU baseline: no motion model, no "
               "low-score stage)."),
        Option("line", FLOATS, None, "Count crossings of the line x1,y1,x2,y2 (pixels), per track: `in` from its "
               "left to its right walking from (x1,y1) to (x2,y2) on the image, `out` the other way.",
               metavar="X1,Y1,X2,Y2"),
        Option("zone", FLOATS, None, "Count tracks inside the polygon x1,y1,x2,y2,x3,y3,... (pixels), and their "
               "entries and exits, per track.", metavar="X1,Y1,..."),
        Option("trail", int, 30, "With --out: draw each track's last N centres (0: none).", low=0),
        *LOADING,
        with_default(BATCH_SIZE, 4, help="Frames per forward pass."),
        *(o for o in BATCH if o.name != "batch_size"),
    ]),
    columns=("track_id", "label", "score", "x1", "y1", "x2", "y2"),
    rows=lambda result: [[d["track_id"], d["label"], d["score"], *d["box"]] for d in result["detections"]],
    formats=(*TABLE_FORMATS, "mot"),
)
