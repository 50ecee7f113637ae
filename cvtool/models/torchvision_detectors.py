"""torchvision's COCO detectors (and Keypoint R-CNN for the 17 body landmarks), registered with
their DEFAULT weights. They take [0, 1] RGB tensors of any size, resize and normalise internally,
and return boxes in the input's own pixel coordinates."""

from __future__ import annotations

from functools import partial

from cvtool.models.registry import DownloadedWeights, ModelEntry, register
from cvtool.ops.preprocess import Preprocess

DETECTORS: dict[str, tuple[str, dict]] = {
    "fasterrcnn_resnet50_fpn_v2": ("fasterrcnn", {}),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("fasterrcnn", {}),
    "retinanet_resnet50_fpn_v2": ("retinanet", {}),
    "ssdlite320_mobilenet_v3_large": ("ssdlite", {}),
    "fcos_resnet50_fpn": ("fcos", {}),
    "keypointrcnn_resnet50_fpn": ("keypointrcnn", {"num_keypoints": 17}),
}

# The network does its own resizing and normalisation: hand it [0, 1] pixels at their own size.
RAW_PIXELS = Preprocess(crop_size=None, resize_size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_mode="none")


def _default_weights(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def _build(name: str, **kwargs):
    from torchvision.models import get_model

    kwargs.setdefault("num_classes", len(_default_weights(name).meta["categories"]))
    return get_model(name, weights=None, weights_backbone=None, **kwargs)


def keypoint_names(name: str) -> list[str]:
    return list(_default_weights(name).meta.get("keypoint_names", []))


def _register_all() -> None:
    for name, (family, build_kwargs) in DETECTORS.items():
        weights = _default_weights(name)
        metrics = weights.meta["_metrics"]["COCO-val2017"]
        register(
            ModelEntry(
                name=name,
                task="detect",
                family=family,
                builder=partial(_build, name),
                preprocess=lambda: RAW_PIXELS,
                classes=partial(lambda n: list(_default_weights(n).meta["categories"]), name),
                weights=DownloadedWeights(url=weights.url, size_mb=weights.meta.get("_file_size")),
                licence="BSD-3-Clause; weights: COCO (CC BY 4.0) and ImageNet-1k terms",
                description=f"torchvision {name}, COCO box mAP {metrics['box_map']:.1f}"
                + (f", keypoint mAP {metrics['kp_map']:.1f}" if "kp_map" in metrics else ""),
                num_params=weights.meta["num_params"],
                build_kwargs=build_kwargs,
                head_is_classes=False,
                input_kind="raw_images",  # a list of [0, 1] tensors; forward: the module's own call
                default_conf=0.25,
                export_refusal="only cvtool's YOLO detector exports to ONNX; torchvision's detectors do not "
                               "(their resizing and NMS are data-dependent Python)",
            )
        )


_register_all()
