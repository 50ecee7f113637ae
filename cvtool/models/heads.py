"""Any registered classifier as a backbone with a head of your own width: the building block of the regression
tasks (`train localize`: [Pc, bx, by, bh, bw, c1..cn]; `train landmarks`: 2 x K coordinates).

    from cvtool.models.heads import BackboneHead, square_preprocess
    net = BackboneHead("resnet18", outputs=5 + 2)            # B x 3 x S x S -> B x 7, raw numbers
    pre = square_preprocess(get_entry("resnet18", "classify"), 128)   # the whole image stretched to 128 x 128

How: the registered classifier (`cvtool models --task classify`: LeNet-5, ResNet, MobileNet, EfficientNet, ...)
is built with `num_classes=outputs`, so its own last linear layer is the head (what fine-tuning a torchvision
classifier does: its features, a fresh `fc`). The outputs are raw (no softmax): the task reads them as it
likes. GoogLeNet/Inception's auxiliary classifiers (training mode) are dropped from the output: `forward`
always returns one B x outputs tensor. `pretrained=True` starts from the entry's own weights (downloaded once)
with only the head fresh.

`square_preprocess`: an entry's normalisation (mean, std, grey or colour) with the image stretched whole to a
square of `size` (no crop), so coordinates as fractions of the network input are fractions of the image.

Layering: this imports the registry and checkpoint loading only (no pipelines, no training code).
"""

from __future__ import annotations

import torch
from torch import nn

from cvtool.models.registry import ModelEntry, get_entry
from cvtool.ops.preprocess import Preprocess


def square_preprocess(entry: ModelEntry, size: int | None = None) -> Preprocess:
    """`entry`'s preprocessing, the whole image resized (stretched) to `size` x `size` (default: its crop)."""
    base = entry.preprocess()
    side = int(size or base.crop_size or base.resize_size or 224)
    return Preprocess(crop_size=side, resize_size=side, mean=base.mean, std=base.std,
                      interpolation=base.interpolation, grayscale=base.grayscale, resize_mode="exact")


def _last_linears(model: nn.Module, out_features: int) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == out_features]


def _swap_linear(model: nn.Module, name: str, outputs: int) -> None:
    old = model.get_submodule(name)
    assert isinstance(old, nn.Linear)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(old.in_features, outputs))


def _pretrained_backbone(entry: ModelEntry, outputs: int, progress: bool) -> nn.Module:
    from cvtool.errors import WeightsError
    from cvtool.models.checkpoint import apply_state_dict, load_weights_file

    if entry.weights is None:
        raise WeightsError(f"{entry.name} has no pretrained weights; train it from scratch (--no-pretrained)")
    loaded = load_weights_file(entry.weights.local_path(progress=progress, alternative=None))
    old = len(loaded.classes or entry.classes() or [])
    model = entry.build(num_classes=old or None)
    apply_state_dict(model, loaded.state_dict, source=str(loaded.path))
    for name in _last_linears(model, old):  # the main head and any auxiliary ones
        _swap_linear(model, name, outputs)
    return model


class BackboneHead(nn.Module):
    """The registered classifier `backbone` whose last linear layer gives `outputs` raw numbers.

    `self.net` is the classifier itself (its state_dict keys are the classifier's, under `net.`)."""

    def __init__(self, backbone: str, outputs: int, *, pretrained: bool = False, progress: bool = False):
        super().__init__()
        entry = get_entry(backbone, "classify")
        entry.check_network()
        self.backbone, self.outputs = entry.name, int(outputs)
        self.net = _pretrained_backbone(entry, outputs, progress) if pretrained else entry.build(num_classes=outputs)

    def forward(self, x):
        out = self.net(x)
        if not isinstance(out, torch.Tensor):  # GoogLeNet/Inception in training: (logits, aux...) -> the main logits
            out = out[0]
        return out
