"""torchvision's semantic segmenters, registered with their DEFAULT weights (the 21 Pascal VOC
classes, trained on a COCO subset). Metadata is read from torchvision's weights enums. Their
forward returns {"out": logits, "aux": ...}; the entry's forward (contract.output_out) unwraps it."""

from __future__ import annotations

from functools import partial

from torch import nn

from cvtool.models import contract
from cvtool.models.registry import DownloadedWeights, ModelEntry, register
from cvtool.ops.preprocess import Preprocess

# name -> (family, builder kwargs). DeepLabV3 and FCN weights include the auxiliary head.
SEGMENTERS: dict[str, tuple[str, dict]] = {
    "deeplabv3_resnet50": ("deeplabv3", {"aux_loss": True}),
    "deeplabv3_resnet101": ("deeplabv3", {"aux_loss": True}),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3", {"aux_loss": True}),
    "fcn_resnet50": ("fcn", {"aux_loss": True}),
    "lraspp_mobilenet_v3_large": ("lraspp", {}),
}


def _default_weights(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def _build(name: str, **kwargs) -> nn.Module:
    from torchvision.models import get_model

    return get_model(name, weights=None, weights_backbone=None, **kwargs)


def _preprocess(name: str) -> Preprocess:
    transform = _default_weights(name).transforms()
    return Preprocess(crop_size=None, resize_size=int(transform.resize_size[0]), mean=tuple(transform.mean),
                      std=tuple(transform.std), resize_mode="shorter")


def _register_all() -> None:
    for name, (family, build_kwargs) in SEGMENTERS.items():
        weights = _default_weights(name)
        metrics = weights.meta["_metrics"]["COCO-val2017-VOC-labels"]
        register(
            ModelEntry(
                name=name,
                task="segment",
                family=family,
                builder=partial(_build, name),
                preprocess=partial(_preprocess, name),
                classes=partial(lambda n: list(_default_weights(n).meta["categories"]), name),
                weights=DownloadedWeights(url=weights.url, size_mb=weights.meta.get("_file_size")),
                licence="BSD-3-Clause; weights: COCO (CC BY 4.0) and ImageNet-1k terms",
                description=f"torchvision {name}, VOC classes, mIoU {metrics['miou']:.1f}",
                num_params=weights.meta["num_params"],
                build_kwargs=build_kwargs,
                input_kind="any_size",
                forward=contract.output_out,  # {"out": logits, "aux": ...}
                export=contract.any_size_graph("logits"),
                train_multiple=8,  # `train segment` pads to their backbones' output stride
            )
        )


_register_all()
