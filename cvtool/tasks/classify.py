"""`cvtool classify`: top-k labels with probabilities."""

from cvtool.tasks.common import BATCH, FULL_DECODE, LOADING, model_option
from cvtool.tasks.options import Option, Options
from cvtool.tasks.spec import TaskSpec

SPEC = TaskSpec(
    name="classify",
    api="cvtool.api:Classifier",
    summary="Classify images: top-k labels with probabilities, one record per image (per frame of a video).",
    epilog="Example: cvtool classify photos/ --model resnet50 --top-k 3 --format jsonl > labels.jsonl",
    default_model="resnet18",
    options=Options([
        model_option("Model name (see `cvtool models`). Default: resnet18."),
        Option("top_k", int, 5, "Labels to report per image.", low=1, short="-k"),
        *LOADING,
        FULL_DECODE,
        *BATCH,
    ]),
    columns=("rank", "label", "prob"),
    rows=lambda result: [[rank, entry["label"], entry["prob"]] for rank, entry in enumerate(result["top_k"], 1)],
    endpoint="/classify",
    batched=True,
)
