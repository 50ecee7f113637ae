"""torchvision's ImageNet classifiers, registered with their DEFAULT weights.

Everything model-specific (URL, preprocessing, class names, size) is read from torchvision's own
weights enums, so cvtool never hard-codes it.
"""

from __future__ import annotations

from functools import partial

from cvtool.models import contract
from cvtool.models.registry import DownloadedWeights, ModelEntry, register
from cvtool.ops.preprocess import Preprocess

# name -> (family, extra builder kwargs). GoogLeNet and Inception v3 are published with their
# auxiliary heads and expect torchvision's input transform, so they are built that way to load them.
_AUX = {"aux_logits": True, "transform_input": True, "init_weights": False}
CLASSIFIERS: dict[str, tuple[str, dict]] = {
    "alexnet": ("alexnet", {}),
    "vgg16": ("vgg", {}),
    "vgg16_bn": ("vgg", {}),
    "vgg19": ("vgg", {}),
    "resnet18": ("resnet", {}),
    "resnet34": ("resnet", {}),
    "resnet50": ("resnet", {}),
    "resnet101": ("resnet", {}),
    "googlenet": ("inception", _AUX),
    "inception_v3": ("inception", _AUX),
    "mobilenet_v2": ("mobilenet", {}),
    "mobilenet_v3_small": ("mobilenet", {}),
    "mobilenet_v3_large": ("mobilenet", {}),
    **{f"efficientnet_b{i}": ("efficientnet", {}) for i in range(8)},
}

_INTERPOLATION_NAMES = {"InterpolationMode.BILINEAR": "bilinear", "InterpolationMode.BICUBIC": "bicubic"}


def _default_weights(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def _build(name: str, **kwargs):
    from torchvision.models import get_model

    return get_model(name, weights=None, **kwargs)


def _preprocess(name: str) -> Preprocess:
    transform = _default_weights(name).transforms()
    return Preprocess(
        crop_size=int(transform.crop_size[0]),
        resize_size=int(transform.resize_size[0]),
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        interpolation=_INTERPOLATION_NAMES.get(str(transform.interpolation), "bilinear"),
    )


def _classes(name: str) -> list[str]:
    return list(_default_weights(name).meta["categories"])


def _weights_source(name: str) -> DownloadedWeights:
    weights = _default_weights(name)
    return DownloadedWeights(url=weights.url, size_mb=weights.meta.get("_file_size"))


def _features(net):
    """VGG's and AlexNet's convolutional stack: plain conv / ReLU / max-pool layers, named as the papers do."""
    return net.features


def _register_all() -> None:
    for name, (family, build_kwargs) in CLASSIFIERS.items():
        meta = _default_weights(name).meta
        register(
            ModelEntry(
                name=name,
                task="classify",
                family=family,
                builder=partial(_build, name),
                preprocess=partial(_preprocess, name),
                classes=partial(_classes, name),
                weights=_weights_source(name),
                licence="BSD-3-Clause; weights: ImageNet-1k terms (non-commercial research)",
                description=f"torchvision {name}, ImageNet top-1 {meta['_metrics']['ImageNet-1K']['acc@1']:.1f}%",
                num_params=meta["num_params"],
                build_kwargs=build_kwargs,
                input_kind="image",
                export=contract.fixed_size_graph("logits"),
                feature_stack=_features if family in ("vgg", "alexnet") else None,
            )
        )


_register_all()
