"""Decoding JPEGs where the network runs: nvJPEG on a CUDA device, a batch per call.

Two steps, so the host's threads do only what is cheap:
- `read_for_device(path)` (a decoding worker thread): the file's bytes and header, read as `read_image` reads
  them (the same refusals: missing, not regular, empty, truncated, over --max-pixels from the header before
  any decoding) into a `DeviceRead`. A baseline or progressive JPEG (or MPO) in RGB or grey, without an ICC
  profile, keeps its bytes for the device; anything else (PNG, WebP, CMYK JPEGs, JPEGs with an ICC profile,
  which `read_image` converts to sRGB) is decoded right there by cvtool.io.image, the CPU path itself.
- `decode_on_device(items, device)` (the thread that runs the network): every JPEG of the batch through one
  `torchvision.io.decode_jpeg(list, device=...)` call, the EXIF orientation applied there with the same flips
  and turns as `read_image`; the CPU-decoded arrays copied over. A batch the device decoder refuses is retried
  one file at a time, and a file it refuses alone is decoded on the CPU instead (or gets that path's error).

The result is what `read_image` gives, as an H x W x 3 uint8 tensor on `device`, up to the JPEG decoders'
rounding: libjpeg-turbo (OpenCV) and nvJPEG or torchvision's libjpeg differ in their inverse DCT and chroma
upsampling by a few levels (tests/test_device_decode.py states the bound). On the CPU `decode_on_device` runs
torchvision's libjpeg the same way: what the tests exercise without a GPU.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvtool.errors import InputError
from cvtool.io.image import DEFAULT_MAX_PIXELS, _check_complete, _read_bytes, check_pixels, decode_image

_DEVICE_FORMATS = ("JPEG", "MPO")  # MPO: a phone's JPEG with a second picture appended
_DEVICE_MODES = ("RGB", "L")  # YCbCr and grey JPEGs; CMYK/YCCK ones go to the CPU


@dataclass
class DeviceRead:
    """One input on its way to the device: a JPEG's bytes for the device decoder (`data`), or the pixels the CPU
    decoded (`rgb`, H x W x 3 uint8) of a file it cannot take."""

    path: str
    size: tuple[int, int]  # (height, width) of the upright image: the decoded tensor's
    data: bytes | None = None
    orientation: int = 1  # EXIF orientation of `data` (1: upright)
    rgb: np.ndarray | None = None


def read_for_device(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DeviceRead:
    """A file read for `decode_on_device`; InputError for a file `read_image` refuses."""
    data = _read_bytes(path)
    header = _device_header(data)
    if header is None:  # not a JPEG the device decodes: the CPU path, with all its checks
        rgb = decode_image(data, path, max_pixels=max_pixels)
        return DeviceRead(str(path), rgb.shape[:2], rgb=rgb)
    (w, h), orientation = header
    check_pixels((w, h), max_pixels, path)
    _check_complete(data, path)
    return DeviceRead(str(path), (w, h) if orientation in (5, 6, 7, 8) else (h, w), data, orientation)


def _device_header(data: bytes) -> tuple[tuple[int, int], int] | None:
    """((width, height), orientation) of a JPEG the device decoder takes; None for anything else."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the pixel limit is ours (check_pixels), with our message
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in _DEVICE_FORMATS or image.mode not in _DEVICE_MODES or image.info.get("icc_profile"):
                return None
            try:
                orientation = int(image.getexif().get(0x0112, 1))
            except Exception:  # a malformed EXIF block: read_image takes the image upright too
                orientation = 1
            return image.size, orientation if orientation in range(1, 9) else 1
    except Exception:
        return None  # the CPU path says what is wrong with it


def decode_on_device(items: list[DeviceRead], device: Any) -> list[Any]:
    """`read_for_device`'s items -> per item, in order, an H x W x 3 uint8 tensor on `device` (a torch device or
    cvtool Placement), or the InputError of a file that could not be decoded."""
    import torch

    from cvtool.device import Placement

    torch_device = Placement.of(torch.device(device) if isinstance(device, str) else device).torch
    out: list[Any] = [None] * len(items)
    encoded = [i for i, item in enumerate(items) if item.data is not None]
    for i, item in enumerate(items):
        if item.data is None:
            rgb = np.ascontiguousarray(item.rgb)
            out[i] = _to_device(torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy()), torch_device)
    if encoded:
        decoded = _decode_jpegs([items[i] for i in encoded], torch_device)
        for i, image in zip(encoded, decoded):
            out[i] = image
    return out


def _decode_jpegs(items: list[DeviceRead], device) -> list[Any]:
    try:
        images = _decode_jpeg_call(items, device)
    except Exception:  # noqa: BLE001 - whatever the decoder raises for a file it refuses: the CPU path decides
        if len(items) == 1:
            return [_on_cpu(items[0], device)]
        return [image for item in items for image in _decode_jpegs([item], device)]
    out = []
    for item, chw in zip(items, images):
        hwc = _upright(chw.permute(1, 2, 0), item.orientation)
        out.append(hwc if hwc.shape[:2] == item.size else _on_cpu(item, device))  # a header that lied: the CPU says
    return out


def _decode_jpeg_call(items: list[DeviceRead], device) -> list:
    """One torchvision.io.decode_jpeg call on the batch (deprecated for TorchCodec from torchvision 0.29; its
    warning is silenced here, where the call is made)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        data = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items]
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _on_cpu(item: DeviceRead, device) -> Any:
    """The CPU path's pixels of a file the device decoder refused, or that path's InputError."""
    import torch

    try:
        rgb = decode_image(item.data, item.path, max_pixels=None)
    except InputError as exc:
        return exc
    return _to_device(torch.from_numpy(rgb), device)


def _to_device(tensor, device):
    import torch

    if torch.device(device).type == "cuda":  # a torch.device or its name
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _upright(hwc, orientation: int):
    """cvtool.io.image's EXIF orientations (as Pillow's exif_transpose) on an H x W x C tensor."""
    import torch

    if orientation == 2:
        return hwc.flip(1)
    if orientation == 3:
        return hwc.flip(0, 1)
    if orientation == 4:
        return hwc.flip(0)
    if orientation == 5:
        return hwc.transpose(0, 1)
    if orientation == 6:
        return torch.rot90(hwc, -1, (0, 1))
    if orientation == 7:
        return hwc.transpose(0, 1).flip(0, 1)
    if orientation == 8:
        return torch.rot90(hwc, 1, (0, 1))
    return hwc


def decode_batch(items: list[DeviceRead], device: Any) -> list[Any]:
    """`decode_on_device` for a pipeline's batch: the tensors, or the InputError of the first file that could not
    be decoded (the runner then retries the batch one input at a time, so only that input fails)."""
    decoded = decode_on_device(items, device)
    for image in decoded:
        if isinstance(image, InputError):
            raise image
    return decoded
