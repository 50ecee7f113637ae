"""`cvtool detect`: boxes, labels and scores (and keypoints), in the input's own pixel coordinates."""

from cvtool.tasks.common import BATCH, BATCH_SIZE, FULL_DECODE, LOADING, model_option, with_default
from cvtool.tasks.options import CSV, Option, Options
from cvtool.tasks.spec import TABLE_FORMATS, TaskSpec

DEFAULT_CONF = 0.25  # a model's registry entry may declare its own (face: 0, its scores are margins)

SPEC = TaskSpec(
    name="detect",
    api="cvtool.api:Detector",
    summary="Detect objects: boxes in the input's own pixel coordinates, labels and scores; annotated images (or "
            "videos) with --out.",
    epilog="Example: cvtool detect street.jpg --model fasterrcnn_resnet50_fpn_v2 --classes person,car --out boxes/",
    default_model="fasterrcnn_resnet50_fpn_v2",
    options=Options([
        model_option("Model name (see `cvtool models --task detect`). Default: fasterrcnn_resnet50_fpn_v2."),
        Option("conf", float, None, f"Minimum score of a box (default {DEFAULT_CONF:g}; 0 for --model face, whose "
               "scores are margins).", low=0, high=1),
        Option("iou", float, 0.45, "Per-class non-max suppression IoU threshold.", low=0, high=1),
        Option("classes", CSV, None, "Comma-separated classes to keep, e.g. person,car."),
        Option("max_det", int, 300, "At most this many boxes per image.", low=1),
        Option("keypoints", bool, False, "Keypoint models: write and draw the landmarks (17 body points, or 68 face "
               "points with --model face)."),
        Option("save_crops", bool, False, "With --out: also one JPEG per box (per video frame: "
               "NAME.fNNNNNN.cropNNN-LABEL.jpg).", needs_out=True, server=False),
        Option("save_txt", bool, False, "With --out: OUT/labels/NAME.txt per image (YOLO: class cx cy w h score, "
               "fractions) and OUT/classes.txt, the layout `cvtool train detect` reads.", needs_out=True,
               server=False),
        *LOADING,
        FULL_DECODE,
        with_default(BATCH_SIZE, 4, help="Images per forward pass."),
        *(o for o in BATCH if o.name != "batch_size"),
    ]),
    columns=("label", "score", "x1", "y1", "x2", "y2"),
    rows=lambda result: [[d["label"], d["score"], *d["box"]] for d in result["detections"]],
    formats=(*TABLE_FORMATS, "coco", "yolo"),
    endpoint="/detect",
    batched=True,
)
