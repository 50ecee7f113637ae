"""`landmark_net`: N landmarks regressed as 2N numbers by a registered classifier's features + a linear head.

The network (cvtool.models.heads.BackboneHead: any `cvtool models --task classify` entry, its last linear layer
giving 2N outputs) takes a square crop (a face's box, or the whole image) and returns B x 2N: x0, y0, x1, y1, ...
as fractions of the crop (cvtool.ops.landmarks). What the points are (their layout: left/right pairs for flips,
the error's normaliser) and how a face detector's boxes map to the crops it was trained on travel in the
checkpoint (`cvtool train landmarks` writes them); nothing here branches on a data set.
"""

from __future__ import annotations

from torch import nn

from cvtool.models import contract
from cvtool.models.heads import BackboneHead, square_preprocess
from cvtool.models.registry import ModelEntry, get_entry, register
from cvtool.ops.preprocess import Preprocess

DEFAULT_BACKBONE = "resnet18"
DEFAULT_POINTS = 68
DEFAULT_SIZE = 128

# checkpoint fields (beside arch_kwargs {backbone, num_points})
LAYOUT_FIELD = "landmark_layout"  # cvtool.ops.landmarks.Layout.to_dict()
REGION_FIELD = "landmark_region"  # "box": crops around a face's box; "image": the whole image
BOX_FIT_FIELD = "landmark_box_fit"  # cvtool.ops.landmarks.BoxFit.to_dict(), or None (no detector fitted)


class LandmarkNet(nn.Module):
    """B x C x S x S crops -> B x 2N point coordinates, fractions of the crop."""

    def __init__(self, num_classes: int | None = None, *, backbone: str = DEFAULT_BACKBONE,
                 num_points: int = DEFAULT_POINTS, pretrained: bool = False, progress: bool = False):
        super().__init__()
        self.num_points = int(num_points)
        self.body = BackboneHead(backbone, 2 * self.num_points, pretrained=pretrained, progress=progress)
        # a bias that starts at the crop's centre: the first steps need not learn where the middle is
        head = [m for m in self.body.net.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.constant_(head.bias, 0.5)

    def forward(self, x):
        return self.body(x)


def landmark_preprocess(backbone: str, size: int) -> Preprocess:
    """The backbone's normalisation on a `size` x `size` crop."""
    return square_preprocess(get_entry(backbone, "classify"), size)


def _preprocess_for_build(base: Preprocess, options: dict) -> Preprocess:
    return landmark_preprocess(options.get("backbone", DEFAULT_BACKBONE), base.crop_size or DEFAULT_SIZE)


def landmark_fields(loaded) -> dict:
    """What a loaded landmark model says about its points: layout, region and detector box fit (a checkpoint's
    fields on PyTorch, the exported file's metadata on onnxruntime)."""
    source = loaded.meta if loaded.backend == "torch" else loaded.module.meta
    return {key: source.get(key) for key in (LAYOUT_FIELD, REGION_FIELD, BOX_FIT_FIELD)}


def _export(loaded, img_size: int | None):
    """The classifier-style fixed-size graph (B x C x S x S -> B x 2N), with the points' fields in its metadata."""
    if img_size and img_size != loaded.preprocess.crop_size:
        from cvtool.errors import UsageError

        raise UsageError(f"--img-size {img_size}: {loaded.name} was trained on {loaded.preprocess.crop_size} px crops")
    graph = contract.fixed_size_graph("points")(loaded, None)
    graph.extra.update(landmark_fields(loaded))
    return graph


register(
    ModelEntry(
        name="landmark_net",
        task="landmarks",
        family="cvtool",
        builder=LandmarkNet,
        preprocess=lambda: Preprocess(crop_size=DEFAULT_SIZE, resize_size=DEFAULT_SIZE, resize_mode="exact"),
        classes=lambda: None,
        weights=None,
        licence="yours (trained by `cvtool train landmarks`)",
        description="N landmarks (x, y) regressed from a square crop by a registered classifier's features",
        head_is_classes=False,
        export=_export,
        train_build_options=("backbone", "num_points"),
        preprocess_for_build=_preprocess_for_build,
    )
)
