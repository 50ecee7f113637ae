"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) as a PyTorch module.

A 150x150 RGB face chip (aligned by the 5-point template) becomes a 128-D descriptor; two faces are the
same person when their descriptors are less than 0.6 apart (Euclidean; the distance the net was trained
for). The graph is hard-coded because dlib's file does not store its wiring; the converter checks every
record against it. Two dlib behaviours are kept: input scaling by (x - mean) / 256, and residual adds
that zero-pad the smaller operand (channels, rows and columns) instead of projecting it.
Layout and measurements: ../shared/specs/dlib-model-formats.md section 3.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cvtool.errors import WeightsError
from cvtool.models import contract
from cvtool.models.registry import ModelEntry, register
from cvtool.ops.preprocess import Preprocess

RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
SAME_PERSON_DISTANCE = 0.6  # the loss's dist_thresh: descriptors closer than this are one person
NUM_PARAMS = 5_614_592  # conv weights+biases, affine scales+shifts, fc weights (dlib's count; the tests check it)
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)

# dlib's layer wrappers, outermost first (the file's version-stack order). Stage sizes: 3 RES(32);
# DOWN(64) + 3 RES; DOWN(128) + 2 RES; DOWN(256) + 2 RES; DOWN(256).
_RES = ["relu", "add_prev", "affine", "con", "relu", "affine", "con", "tag"]
_DOWN = ["relu", "add_prev", "avg_pool", "skip", "tag", "affine", "con", "relu", "affine", "con", "tag"]
ARCH_TOKENS = (
    ["fc", "avg_pool"] + _DOWN + _RES * 2 + _DOWN + _RES * 2 + _DOWN + _RES * 3 + _DOWN + _RES * 3
    + ["max_pool", "relu", "affine", "con"]
)
_STAGES = [(32, 32, False, 3), (32, 64, True, 3), (64, 128, True, 2), (128, 256, True, 2), (256, 256, True, 0)]


def padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the output takes the larger size on every axis; each operand is zero-padded at the end."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class Affine(nn.Module):
    """Per-channel y = weight * x + bias: dlib's frozen batch norm (no eps, no running statistics)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias[:, None, None], x, self.weight[:, None, None])


class ResBlock(nn.Module):
    """RES (same size) or DOWN (stride-2 conv without padding; the skip path is a 2x2 average pool)."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.aff2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(padded_add(skip, y))


class FaceResNet(nn.Module):
    """RGB chips N x 3 x 150 x 150, pixel values 0..255 (uint8 or float) -> N x 128 descriptors, not normalised.

    The input scaling (x - mean) / 256 is done here, with the mean stored in the state_dict, so callers
    pass raw chips.
    """

    def __init__(self, mean_rgb: tuple[float, float, float] = DLIB_MEAN_RGB):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2)
        self.aff1 = Affine(32)
        blocks = []
        for cin, cout, down, repeats in _STAGES:
            if down:
                blocks.append(ResBlock(cin, cout, True))
            blocks += [ResBlock(cout, cout, False) for _ in range(repeats)]
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last: oneDNN's faster CPU convolutions (about 25% here); the values are unchanged
        x = ((x.to(self.mean.dtype) - self.mean) * (1.0 / 256.0)).contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(self.aff1(self.conv1(x))), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def resnet_state_dict_from_dlib(path: str | Path) -> dict[str, torch.Tensor]:
    """Parse the .dat file and return a FaceResNet state_dict; a WeightsError names the file if it does not fit."""
    from cvtool.models.dlib.dnn import parse_dnn

    parsed = parse_dnn(path, ARCH_TOKENS)
    if parsed.loss["id"] != "loss_metric_2" or parsed.input["id"] != "input_rgb_image_sized":
        raise WeightsError(f"{parsed.loss['id']} / {parsed.input['id']} is not the face-recognition network", path)
    model = FaceResNet()
    slots = [m for m in model.modules() if isinstance(m, (nn.Conv2d, Affine, nn.Linear))]
    records = [r for r in parsed.layers if r.kind in ("con", "affine", "fc")]
    state = {"mean": torch.tensor(parsed.input["avg_rgb"], dtype=torch.float32).view(1, 3, 1, 1)}
    names = {m: n for n, m in model.named_modules()}
    for slot, record in zip(slots, records, strict=True):
        prefix = names[slot]
        if isinstance(slot, nn.Conv2d):
            geometry = (record["num_filters"], record["nr"], record["stride_y"], record["stride_x"],
                        record["padding_y"], record["padding_x"])
            want = (slot.out_channels, slot.kernel_size[0], *slot.stride, *slot.padding)
            if geometry != want or record["weight"].shape != tuple(slot.weight.shape) or record["use_relu"]:
                raise WeightsError(f"convolution {prefix} is {geometry}, expected {want}", path)
            state[f"{prefix}.weight"] = torch.from_numpy(record["weight"])
            state[f"{prefix}.bias"] = torch.from_numpy(record["bias"])
        elif isinstance(slot, Affine):
            if record.id not in ("affine_", "affine_2") or record["mode"] != 0 or record["gamma"].size != slot.weight.numel():
                raise WeightsError(f"{prefix}: expected a per-channel affine of {slot.weight.numel()}, found {record.id}", path)
            state[f"{prefix}.weight"] = torch.from_numpy(record["gamma"])
            state[f"{prefix}.bias"] = torch.from_numpy(record["beta"])
        else:
            if record["weight"].shape != tuple(slot.weight.shape) or record["bias"] is not None:
                raise WeightsError(f"fc layer is {record['weight'].shape}, expected {tuple(slot.weight.shape)} without bias", path)
            state[f"{prefix}.weight"] = torch.from_numpy(record["weight"])
    pools = parsed.of_kind("avg_pool")
    if [p["nr"] for p in pools] != [2, 2, 2, 2, 0] or parsed.of_kind("max_pool")[0]["nr"] != 3:
        raise WeightsError("pooling layers differ from the face-recognition network", path)
    return state


def load_face_resnet(device: torch.device | str | None = None) -> FaceResNet:
    """The pretrained network in eval mode (converted from face_recognition_models once, then cached)."""
    from cvtool.models.dlib.convert import load_converted_module

    return load_converted_module(FaceResNet, RESNET_FILE, resnet_state_dict_from_dlib, "dlib_face_resnet", device)


# Chips are aligned by the caller (5-point template, 150 px, padding 0.25); the module normalises itself,
# so the preprocessing only stretches to 150x150 and keeps raw 0..255 values.
FACE_CHIP_PREPROCESS = Preprocess(crop_size=None, resize_size=CHIP_SIZE, mean=(0.0, 0.0, 0.0),
                                  std=(1 / 255, 1 / 255, 1 / 255), resize_mode="exact")


def _register() -> None:
    from cvtool.models.dlib.convert import PackageModelWeights

    register(
        ModelEntry(
            name="dlib_face_resnet",
            task="face-embed",
            family="dlib",
            builder=FaceResNet,
            preprocess=lambda: FACE_CHIP_PREPROCESS,
            classes=lambda: None,
            weights=PackageModelWeights(RESNET_FILE, "dlib_face_resnet", resnet_state_dict_from_dlib),
            licence="CC0 (face_recognition_models / dlib)",
            description="dlib's face ResNet: aligned 150x150 chip -> 128-D descriptor; same person if distance < 0.6",
            num_params=NUM_PARAMS,
            head_is_classes=False,
            input_kind="face_chip",
            export=contract.chip_graph("embedding"),
        )
    )


_register()
