"""`cvtool localize`: one object per image (classification with localisation): Pc, the box and its class."""

from cvtool.tasks.common import BATCH, BATCH_SIZE, LOADING, model_option, with_default
from cvtool.tasks.options import Option, Options
from cvtool.tasks.spec import TABLE_FORMATS, TaskSpec

DEFAULT_CONF = 0.5  # Pc at or above it: the image has its object (what `train localize` validates with)

SPEC = TaskSpec(
    name="localize",
    api="cvtool.api:Localizer",
    summary="Localise one object per image: Pc (is there one), its box in the input's own pixels and its class; "
            "annotated images with --out.",
    epilog="Example: cvtool localize pets/ --weights runs/pets/best.pt --format coco > boxes.json",
    default_model="localizer",
    options=Options([
        model_option("Model name (see `cvtool models --task localize`); a checkpoint of `cvtool train localize` "
                     "with --weights names its own."),
        Option("conf", float, DEFAULT_CONF, "Pc at or above which the image has its object (its box is then in "
               "`detections`, drawn and written in the coco/yolo formats).", low=0, high=1),
        *LOADING,
        with_default(BATCH_SIZE, 16, help="Images per forward pass."),
        *(o for o in BATCH if o.name != "batch_size"),
    ]),
    columns=("pc", "label", "class_prob", "x1", "y1", "x2", "y2", "found"),
    rows=lambda result: [[result["pc"], result["label"], result["class_prob"], *result["box"],
                          bool(result["detections"])]],
    formats=(*TABLE_FORMATS, "coco", "yolo"),
    endpoint="/localize",
    batched=True,
)
