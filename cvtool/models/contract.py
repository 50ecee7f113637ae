"""The model contract's building blocks: what a registry entry declares about running and exporting it.

A `ModelEntry` (cvtool/models/registry.py) names, instead of leaving callers to probe its module:
  input_kind    what the network takes (INPUT_KINDS)
  size_multiple the side multiple its input must have (int, or a function of the built module)
  default_conf  detectors: the score threshold its scores are made for
  forward       (module, inputs) -> what the pipeline uses: the PyTorch module's call, adapted
  graph_forward (onnx network, inputs) -> the same, for the graph `export` built, run by onnxruntime
  export        (loaded, img_size) -> ExportGraph, or None with `export_refusal` saying why
  face_detector task face-detect: (entry, FaceDetectorOptions) -> the detector verify-face runs
                (cvtool/models/face_detectors.py); entries without a network (builder None) are classical

This module imports nothing heavy at import time (the registry imports it for `--help`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from cvtool.errors import UsageError

# What a network's input is; each names how a pipeline feeds it.
INPUT_KINDS = {
    "image": "a batch of images preprocessed to one fixed size (classifiers)",
    "any_size": "one preprocessed image of any size, padded to size_multiple (segmenters, style networks)",
    "raw_images": "a list of [0, 1] RGB tensors at their own sizes; the model resizes itself (detectors)",
    "face_chip": "a batch of aligned face chips of the preprocessing's size (face embedders)",
    "canvas": "an image pyramid canvas of any size (dlib's CNN face detector)",
    "classical": "RGB uint8 images as read; not a network (OpenCV's Haar cascade, run by its face_detector)",
}


@dataclass
class ExportGraph:
    """What goes into the ONNX graph, and the input it takes."""

    module: object  # nn.Module: one float tensor B x C x H x W in, tensor(s) out
    channels: int
    size: tuple[int, int] | None  # fixed H, W; None: any size that is a multiple of `multiple`
    multiple: int
    outputs: list[str]
    preprocess: object  # Preprocess, as the exported graph expects it
    extra: dict = field(default_factory=dict)  # what running the graph needs beyond it (YOLO: img_size)


# -- forward adapters: (module, inputs) -> what the pipeline uses --------------------------------------------

def call(module, inputs):
    """The module's own call: tensors in, the pipeline's tensor(s) out."""
    return module(inputs)


def output_out(module, inputs):
    """torchvision's segmenters return {"out": logits, "aux": ...}: the logits."""
    return module(inputs)["out"]


def segmentation_logits(output):
    """A segmenter's raw output as logits: torchvision's are {"out": logits, "aux": ...}, our U-Net's are the
    logits (training sees both kinds of output)."""
    return output["out"] if isinstance(output, dict) else output


def detect_images(module, images):
    """Our detectors letterbox (or pyramid) the images themselves: `module.detect_images`."""
    return module.detect_images(images)


def adapted(module, forward: Callable):
    """`module` with `forward` applied, as one nn.Module (what the ONNX exporter traces)."""
    import torch

    class Adapted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = module

        def forward(self, x):
            return forward(self.net, x)

    return Adapted().eval()


def input_channels(net, preprocess) -> int:
    """The first convolution says how many channels the network takes (a colour U-Net, a grey LeNet)."""
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            return int(module.in_channels)
    return preprocess.channels


# -- export hooks: (loaded, img_size) -> ExportGraph ---------------------------------------------------------

def fixed_size_graph(output: str) -> Callable:
    """Classifiers: a fixed square input, the crop size (or --img-size, keeping the resize-to-crop ratio)."""

    def hook(loaded, img_size: int | None) -> ExportGraph:
        net, pre = loaded.module, loaded.preprocess
        if img_size and pre.crop_size:
            resize = round(img_size * (pre.resize_size or pre.crop_size) / pre.crop_size)
            pre = replace(pre, crop_size=img_size, resize_size=resize)
        size = img_size or pre.crop_size
        return ExportGraph(adapted(net, loaded.contract.forward), input_channels(net, pre),
                           (size, size) if size else None, 1, [output], pre)

    return hook


def any_size_graph(output: str) -> Callable:
    """Fully convolutional networks: any size that is a multiple of the entry's size_multiple (or fixed by --img-size)."""

    def hook(loaded, img_size: int | None) -> ExportGraph:
        net, pre = loaded.module, loaded.preprocess
        multiple = loaded.size_multiple
        if img_size and img_size % multiple:
            raise UsageError(f"--img-size must be a multiple of {multiple} for {loaded.name}")
        return ExportGraph(adapted(net, loaded.contract.forward), input_channels(net, pre),
                           (img_size, img_size) if img_size else None, multiple, [output], pre)

    return hook


def chip_graph(output: str) -> Callable:
    """Face embedders: a chip of the preprocessing's fixed size in, a descriptor out."""

    def hook(loaded, img_size: int | None) -> ExportGraph:
        net, pre = loaded.module, loaded.preprocess
        size = img_size or pre.crop_size or (pre.resize_size if pre.resize_mode == "exact" else None)
        return ExportGraph(adapted(net, loaded.contract.forward), input_channels(net, pre),
                           (size, size) if size else None, 1, [output], pre)

    return hook


def canvas_graph(output: str) -> Callable:
    """A CNN over a canvas of any size -> a score map; the pyramid and NMS stay outside the graph."""

    def hook(loaded, img_size: int | None) -> ExportGraph:
        net, pre = loaded.module, loaded.preprocess
        return ExportGraph(adapted(net, loaded.contract.forward), input_channels(net, pre), None, 1, [output], pre)

    return hook
