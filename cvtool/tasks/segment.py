"""`cvtool segment`: a class per pixel; masks and overlays with --out."""

from cvtool.tasks.common import BATCH, FULL_DECODE, LOADING, model_option
from cvtool.tasks.options import CSV, Option, Options
from cvtool.tasks.spec import TaskSpec

SPEC = TaskSpec(
    name="segment",
    api="cvtool.api:Segmenter",
    summary="Segment images: a class per pixel; with --out an indexed mask PNG and a colour overlay per image (an "
            "overlaid video per video).",
    epilog="Example: cvtool segment street.jpg --model deeplabv3_resnet50 --out masks/ --classes person,car",
    default_model="deeplabv3_resnet50",
    options=Options([
        model_option("Model name (see `cvtool models --task segment`). Default: deeplabv3_resnet50."),
        Option("alpha", float, 0.5, "Overlay opacity of the class colours.", low=0, high=1),
        Option("classes", CSV, None, "Comma-separated classes to keep; others become background."),
        Option("save_mask", bool, False, "With --out: also one black/white PNG per class found (per video frame: "
               "NAME.fNNNNNN.mask-LABEL.png).", needs_out=True, server=False),
        Option("tile", int, None, "Run in TILE x TILE tiles (large images, bounded memory).", low=16),
        Option("overlap", int, 32, "Overlap between tiles, blended linearly.", low=0),
        # one CLI flag for both: the tiles of one image per pass, and the video frames per batch
        Option("tile_batch", int, 4, "Tiles per forward pass (with --tile); video frames per batch.", low=1,
               flag="--batch-size", short="-b", aliases=("batch_size",)),
        Option("threshold", float, None, "Two-class models: the threshold on class 1's probability; below 0.5 the "
               "argmax's cells grow into the pixels above it, never into each other (default: the checkpoint's, "
               "chosen on validation by `train segment`; else the argmax).", low=0, high=1, exclusive=True),
        *LOADING,
        FULL_DECODE,
        *(o for o in BATCH if o.name != "batch_size"),
    ]),
    columns=("label", "pixels", "fraction"),
    rows=lambda result: [[entry["label"], entry["pixels"], entry["fraction"]] for entry in result["classes"]],
    endpoint="/segment",
    batched=True,
    png=True,
    run_batch="tile_batch",
)
