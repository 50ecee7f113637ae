"""`cvtool stylize`: neural style transfer, by optimisation (Gatys et al.) or a feed-forward network.

Mode rules: with --model (a `cvtool train style` network) every positional is a content image or video and the
optimisation settings do not apply; without it the first positional is the content and the rest are styles
(or, with --style, every positional is a content). `SETTINGS` are the optimisation's settings, the fields of
`cvtool.pipelines.stylize.StyleSettings` (whose defaults are read from here)."""

from __future__ import annotations

from pathlib import Path

from cvtool.errors import UsageError
from cvtool.tasks.common import DEVICE, HALF, MAX_PIXELS, RECORDS, SHARD, THREADS, VID_STRIDE, OUT, with_default
from cvtool.tasks.options import CSV, FLOATS, LOAD, PATH, PATHS, RUN, Option, Options
from cvtool.tasks.spec import Table, TaskSpec

OPTIMISED_SIZE = 512  # the optimisation's longer side when --size is not given
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

def _setting(name: str, type, default, help: str = "", **bounds) -> Option:
    """An optimisation setting: never sent to a server, which runs feed-forward networks only."""
    return Option(name, type, default, help, stage=LOAD, server=False, **bounds)


SETTINGS = Options([
    _setting("steps", int, 300, "Optimisation steps.", low=1),
    _setting("content_weight", float, 1.0, "alpha: weight of the content cost."),
    _setting("style_weight", float, 1e4, "beta: weight of the style cost."),
    _setting("tv_weight", float, 0.0, "Weight of the total-variation (smoothness) term."),
    _setting("content_layer", str, "relu4_2"),
    _setting("style_layers", CSV, DEFAULT_STYLE_LAYERS),
    _setting("style_layer_weights", FLOATS, None, "Comma-separated, one per layer."),
    _setting("init", str, "content", "content, noise or style."),
    _setting("optimizer", str, "lbfgs", "lbfgs or adam."),
    _setting("lr", float, 0.02, "Adam's step size (pixels in [0, 1])."),
    _setting("pool", str, "max", "max, or avg (Gatys et al.'s choice)."),
    _setting("preserve_color", bool, False, "Keep the content's colours."),
    _setting("style_blend", FLOATS, None, "Weights of several styles, e.g. 0.7,0.3."),
    _setting("scales", int, 1, "Coarse-to-fine passes (large outputs).", low=1, high=5),
    _setting("seed", int, 0),
])

SPEC = TaskSpec(
    name="stylize",
    api="cvtool.api:Stylizer",
    summary="Neural style transfer (Gatys et al.): optimise an image to keep the content and take on the style.",
    epilog="Example: cvtool stylize photo.jpg starry_night.jpg --size 512 --steps 300 --out photo_starry.png",
    inputs=("CONTENT [STYLE...]", "A content image then style image(s); with --style, all are contents."),
    default_model="fast_style",
    options=Options([
        Option("style", PATHS, None, "Style image (repeatable).", short="-s", stage=LOAD, server=False),
        with_default(OUT, Path("stylized"), help="Output image file (one content) or directory."),
        Option("size", int, None, f"Longer side of the result, in pixels (default {OPTIMISED_SIZE}; with --model, "
               "the input's own size).", low=16),
        *SETTINGS,
        Option("save_every", int, None, "Also write the image every N steps.", low=1, stage=RUN, server=False),
        Option("model", PATH, None, "A network from `cvtool train style`: one forward pass per image, or per frame "
               "of a video input.", stage=LOAD, short="-m"),
        Option("tile", int, None, "With --model: tiles for large images.", low=16),
        Option("overlap", int, 32, "With --tile: overlap, blended linearly.", low=0),
        VID_STRIDE,
        Option("backend", str, "torch", "With --model: torch, or onnxruntime (or a .onnx --model).", stage=LOAD),
        Option("vgg", str, "vgg19", "Feature network: vgg19 or vgg16 (ImageNet weights).", stage=LOAD, server=False),
        Option("weights", PATH, None, "The VGG's weights file, instead of the download.", stage=LOAD, short="-w",
               server=False),
        DEVICE,
        Option("skip_existing", bool, False, "Skip contents whose output already exists.", stage=RUN, server=False),
        SHARD,
        RECORDS,
        THREADS,
        HALF,
        with_default(MAX_PIXELS, MAX_PIXELS.default, cli=False),
    ]),
    columns=("content_cost", "style_cost", "style_distance_vs_content"),
    rows=lambda result: [[result["losses"]["content"], result["losses"]["style"], _ratio(result["style_distance"])]],
    tables={"feed_forward": Table(("height", "width"), lambda result: [list(result["size"][:2])])},
    endpoint="/stylize",
    png=True,
)


# mode rules: the options each mode's Stylizer takes (the others do not apply to it)
FEED_FORWARD = ("size", "tile", "overlap", "device", "backend", "half", "max_pixels")
OPTIMISATION = ("vgg", "weights", "size", "device", "backend", "half", "max_pixels", *SETTINGS.names())


def _ratio(distance: dict) -> float:
    """How far the result's style statistics are from the style's, relative to the content's own distance."""
    return round(distance["result"] / distance["content"], 4) if distance["content"] else float("nan")


def split_inputs(images: list[str], style: list | None, feed_forward: bool) -> tuple[list[str], list[str]]:
    """(contents, styles) from the positionals: the mode rules above."""
    if feed_forward:
        return list(images), []
    if style:
        return list(images), [str(p) for p in style]
    contents, styles = list(images[:1]), list(images[1:])
    if not styles:
        raise UsageError("give a style image: cvtool stylize CONTENT STYLE, or --style STYLE")
    return contents, styles


__all__ = ["SPEC", "SETTINGS", "FEED_FORWARD", "OPTIMISATION", "split_inputs"]
