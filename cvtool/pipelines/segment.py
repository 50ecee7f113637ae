"""Semantic segmentation: a class per pixel, as an overlay, an indexed mask and per-class areas."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cvtool.errors import UsageError
from cvtool.io.atomic import atomic_write_bytes
from cvtool.io.image import DEFAULT_MAX_PIXELS, read_reduced, write_image
from cvtool.io.outputs import OutputNamer, refuse_overwriting_input, safe_name
from cvtool.io.render import class_palette, indexed_png, overlay
from cvtool.models.loading import LoadedModel
from cvtool.ops.tiling import check_tiling
from cvtool.tasks.segment import SPEC

_S = SPEC.defaults()  # the task table's (cvtool.tasks.segment)

MASK_SUFFIX = ".mask.png"
MAX_ASPECT = 4  # thinner images are padded before a shorter-side resize (see SegmentPipeline.prepare_array)


@dataclass
class Sample:
    rgb: np.ndarray  # the decoded input, for the overlay
    tensor: np.ndarray  # preprocessed C x h x w
    labels: np.ndarray | None = None  # H x W class indices at the input's size, filled by predict()
    valid: tuple[float, float] = (1.0, 1.0)  # the fractions of `tensor`'s height and width that are the image
    size: tuple[int, int] | None = None  # the photo's own (height, width) when `rgb` was decoded smaller

    @property
    def photo_hw(self) -> tuple[int, int]:
        """The size the labels and the record are in: the photo's own."""
        return self.size or self.rgb.shape[:2]


class SegmentPipeline:
    task = "segment"
    no_video_reason = None  # takes videos: the hooks below

    def __init__(self, model: LoadedModel, *, alpha: float = _S["alpha"], classes: list[str] | None = None,
                 save_mask: bool = False, tile: int | None = None, overlap: int = _S["overlap"],
                 tile_batch: int = _S["tile_batch"],
                 max_pixels: int = DEFAULT_MAX_PIXELS, out_dir=None, threshold: float | None = None,
                 full_decode: bool = _S["full_decode"], decode_on_device: bool | None = None):
        self.model = model
        self.model_name, self.weights_sha256 = model.name, model.weights_sha256
        self.alpha, self.save_mask, self.max_pixels = alpha, save_mask, max_pixels
        self.tile, self.overlap, self.tile_batch = tile, overlap, tile_batch
        if tile is not None:
            check_tiling(tile, overlap)  # before any image, not on each
        self.keep = self._class_filter(classes)
        self.threshold = self._threshold(threshold)
        self.size_multiple = model.size_multiple
        self.output_name = OutputNamer(out_dir, MASK_SUFFIX) if out_dir is not None else None
        self.video_name = OutputNamer(out_dir, ".segment.mp4") if out_dir is not None else None
        self.palette = class_palette()
        # A model that resizes its input (torchvision's: the shorter side) may take a JPEG decoded smaller; one that
        # runs at the image's own size (our U-Net), tiles, and --out (overlays of the photo) take it in full.
        resizes = model.preprocess.resize_mode != "none" and model.preprocess.resize_size is not None
        self.reduction = (model.preprocess.decode_reduction if resizes and not full_decode and out_dir is None
                          and tile is None else None)
        # On CUDA, whole images without --out: a file's JPEG is decoded on the device (nvJPEG, a batch per call)
        # and preprocessed there (cvtool.io.device_decode, cvtool.ops.device_preprocess); tiles and overlays
        # take the photo on the host
        on_cuda = model.device.type == "cuda" and model.backend == "torch"
        self.decode_on_device = model.backend == "torch" and tile is None and out_dir is None and (
            on_cuda if decode_on_device is None else decode_on_device)

    def _class_filter(self, names: list[str] | None) -> np.ndarray | None:
        """--classes: pixels of any other class become background (class 0)."""
        if not names:
            return None
        unknown = [n for n in names if n not in self.model.classes]
        if unknown:
            raise UsageError(f"--classes: {', '.join(unknown)} not among this model's classes "
                             f"({', '.join(self.model.classes[:8])}{'…' if len(self.model.classes) > 8 else ''})")
        keep = np.zeros(len(self.model.classes), bool)
        keep[[self.model.classes.index(n) for n in names]] = True
        return keep

    def _threshold(self, given: float | None) -> float | None:
        """--threshold, else the checkpoint's (`train segment` chose it on validation); None: the argmax."""
        if given is not None:
            if len(self.model.classes) != 2:
                raise UsageError(f"--threshold is for two-class models; {self.model.name} has "
                                 f"{len(self.model.classes)} classes")
        threshold = given if given is not None else self.model.decision_threshold
        return None if threshold is None or threshold == 0.5 or len(self.model.classes) != 2 else float(threshold)

    def prepare(self, path: str) -> Sample:
        if self.decode_on_device:
            from cvtool.io.device_decode import read_for_device

            read = read_for_device(path, max_pixels=self.max_pixels)
            if not self._padded_first(*read.size):  # the bytes only: decoded with the batch, on the device
                return Sample(None, read, size=read.size)
            from cvtool.io.image import decode_image

            rgb = read.rgb if read.rgb is not None else decode_image(read.data, path, max_pixels=None)
            return self.prepare_array(rgb)
        decoded = read_reduced(path, max_pixels=self.max_pixels, reduction=self.reduction)
        sample = self.prepare_array(decoded.rgb)
        if decoded.factor != 1:
            sample.size = decoded.size  # the labels are made at the photo's own size (predict)
        return sample

    def prepare_array(self, rgb: np.ndarray) -> Sample:
        """A model that resizes the shorter side (torchvision's segmenters) would blow a thin strip up to an
        enormous image (1 x 500 pixels -> 520 x 260,000): such an image is padded first, with its edge
        pixels, to an aspect ratio of at most MAX_ASPECT, and the labels of the padding are cut off again."""
        h, w = rgb.shape[:2]
        pre = self.model.preprocess
        if not self._padded_first(h, w):
            return Sample(rgb, pre(rgb))
        padded_h, padded_w = max(h, -(-w // MAX_ASPECT)), max(w, -(-h // MAX_ASPECT))
        padded = cv2.copyMakeBorder(rgb, 0, padded_h - h, 0, padded_w - w, cv2.BORDER_REPLICATE)
        return Sample(rgb, pre(padded), valid=(h / padded_h, w / padded_w))

    def _padded_first(self, h: int, w: int) -> bool:
        """Whether an h x w image is padded to MAX_ASPECT before the model's shorter-side resize (prepare_array)."""
        pre = self.model.preprocess
        return pre.resize_mode == "shorter" and pre.resize_size is not None and max(h, w) > MAX_ASPECT * min(h, w)

    def batch_key(self, sample: Sample) -> tuple | None:
        """Samples with equal keys share a forward pass (`_whole_batched`: one input size per pass); tiled,
        each image runs alone."""
        return None if self.tile else tuple(sample.tensor.shape)

    @staticmethod
    def input_pixels(sample: Sample) -> int:
        return int(sample.tensor.shape[-2] * sample.tensor.shape[-1])

    def render(self, rgb: np.ndarray, sample: Sample, result: dict) -> np.ndarray:
        return overlay(rgb, sample.labels, self.alpha, self.palette)

    def predict(self, samples: list[Sample]) -> list[dict]:
        if self.model.runs_on_arrays:  # onnxruntime: NumPy from end to end, no torch
            labels = self._labels(samples)
        else:
            import torch

            with torch.inference_mode():
                if self.threshold is None and self._read_for_device(samples):  # files, no --out: counts come back
                    return self._summaries_on_device(samples)
                labels = self._labels(samples)
        for sample, image_labels in zip(samples, labels):  # with a threshold: class 1's probability
            if sample.valid != (1.0, 1.0):  # cut off the labels of the padding (see prepare_array)
                image_labels = image_labels[: max(1, round(image_labels.shape[0] * sample.valid[0])),
                                            : max(1, round(image_labels.shape[1] * sample.valid[1]))]
            if self.threshold is None:
                sample.labels = self._to_input_size(image_labels, sample.photo_hw)
            else:  # decided at the input's size, so no resize thins away a line between two cells
                from cvtool.ops.regions import thresholded_labels

                probability = self._to_input_size(image_labels, sample.photo_hw, cv2.INTER_LINEAR)
                sample.labels = thresholded_labels(probability, self.threshold)
        return [self._summary(sample.labels) for sample in samples]

    def _labels(self, samples: list[Sample]) -> list[np.ndarray]:
        """Each sample's class per pixel of its preprocessed input (NumPy, uint8 for up to 256 classes); with a
        threshold, class 1's probability (float32) instead."""
        if self.tile:  # tiles of one image at a time, `tile_batch` tiles per forward pass
            if self.model.runs_on_arrays:
                logits = [self._tiled(sample.tensor) for sample in samples]
            else:
                import torch

                logits = [self._tiled(torch.from_numpy(sample.tensor)) for sample in samples]
        else:  # whole images: those of one size go through the network together (--batch-size)
            logits = self._whole_batched(self._inputs(samples))
        if self.threshold is not None:
            return [self._foreground_probability(image_logits) for image_logits in logits]
        dtype = np.uint8 if len(self.model.classes) <= 256 else np.int32
        if self.model.runs_on_arrays:
            return [image_logits.argmax(0).astype(dtype) for image_logits in logits]
        import torch

        # max(0).indices is argmax(0) (the first of equal maxima, as documented) and on the CPU ~10x faster: torch's
        # argmax over the outer dimension of C x H x W cost more than decoding the image (bench/host_ceiling.py)
        return [image_logits.max(0).indices.to(torch.uint8 if dtype == np.uint8 else torch.int32).cpu().numpy()
                for image_logits in logits]

    def _foreground_probability(self, image_logits) -> np.ndarray:
        """Class 1's probability (float32 NumPy) from one image's 2 x h x w logits: softmax, as training scores it."""
        if self.model.runs_on_arrays:
            logits = image_logits.astype(np.float32)
            return (1.0 / (1.0 + np.exp(np.clip(logits[0] - logits[1], -80, 80)))).astype(np.float32)
        import torch

        return torch.softmax(image_logits.float(), 0)[1].cpu().numpy()

    def _inputs(self, samples: list[Sample]) -> list:
        """The samples' preprocessed C x h x w inputs; files read for the device are decoded and preprocessed there,
        as one batch (tensors on the model's device)."""
        from cvtool.io.device_decode import DeviceRead

        reads = [i for i, s in enumerate(samples) if isinstance(s.tensor, DeviceRead)]
        if not reads:
            return [sample.tensor for sample in samples]
        import torch

        from cvtool.io.device_decode import decode_batch
        from cvtool.ops.device_preprocess import preprocess_images

        device = self.model.device.torch
        out = [torch.from_numpy(s.tensor).to(device) if i not in reads else None for i, s in enumerate(samples)]
        images = decode_batch([samples[i].tensor for i in reads], self.model.device)  # those padded first: on the host
        for i, tensor in zip(reads, preprocess_images(images, self.model.preprocess)):
            out[i] = tensor
        return out

    def _read_for_device(self, samples: list[Sample]) -> bool:
        """Whether the batch has files read for the device decoder (`prepare` with decode_on_device: the batch runner;
        arrays, the API's calls and video frames, never have: their results keep their masks)."""
        from cvtool.io.device_decode import DeviceRead

        return self.decode_on_device and any(isinstance(s.tensor, DeviceRead) for s in samples)

    def _summaries_on_device(self, samples: list[Sample]) -> list[dict]:
        """predict's records without the labels leaving the device: the argmax, the padding's cut, the resize to
        the photo's size (nearest, as OpenCV's INTER_NEAREST), --classes and the per-class counts there; only the
        counts are copied back (`sample.labels` stays None: nothing is written without --out)."""
        import torch
        import torch.nn.functional as F

        keep = None if self.keep is None else torch.from_numpy(self.keep).to(self.model.device.torch)
        counts = []
        for sample, image_logits in zip(samples, self._whole_batched(self._inputs(samples))):
            labels = image_logits.max(0).indices
            if sample.valid != (1.0, 1.0):
                labels = labels[: max(1, round(labels.shape[0] * sample.valid[0])),
                                : max(1, round(labels.shape[1] * sample.valid[1]))]
            h, w = sample.photo_hw
            if tuple(labels.shape) != (h, w):
                labels = F.interpolate(labels[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
            if keep is not None:
                labels = torch.where(keep[labels], labels, torch.zeros_like(labels))
            counts.append(torch.bincount(labels.reshape(-1), minlength=len(self.model.classes)))
        return [self._summary_of(c, sample.photo_hw) for c, sample in zip(torch.stack(counts).cpu().numpy(), samples)]

    def _whole_batched(self, tensors: list) -> list:
        """Each C x h x w input's logits (on the model's device; NumPy on onnxruntime), one forward pass per
        group of equal size."""
        from cvtool.ops.tiling import pad_bottom_right, padded_size

        groups: dict[tuple, list[int]] = {}
        for i, tensor in enumerate(tensors):
            groups.setdefault(tensor.shape, []).append(i)
        out: list = [None] * len(tensors)
        for shape, members in groups.items():
            h, w = shape[-2:]
            if isinstance(tensors[members[0]], np.ndarray):
                batch = np.stack([tensors[i] for i in members])
                if not self.model.runs_on_arrays:
                    from cvtool.device import to_device

                    batch = to_device(batch, self.model.device)
            else:  # preprocessed on the device already
                import torch

                batch = torch.stack([tensors[i] for i in members])
            logits = self._forward(pad_bottom_right(batch, *padded_size(h, w, self.size_multiple)))[:, :, :h, :w]
            for i, image_logits in zip(members, logits):
                out[i] = image_logits
        return out

    def _forward(self, batch):
        if self.model.runs_on_arrays:
            return self.model.module.run(batch)[0]
        return self.model.forward(batch.to(self.model.device.torch))  # logits: the entry's forward unwraps torchvision's dict

    def _tiled(self, tensor):
        from cvtool.ops.tiling import tiled_logits

        if self.tile % self.size_multiple:
            raise UsageError(f"--tile must be a multiple of {self.size_multiple} for {self.model_name}")
        return tiled_logits(self._forward, tensor, num_classes=len(self.model.classes), tile=self.tile,
                            overlap=self.overlap, batch_size=self.tile_batch, multiple=self.size_multiple)

    @staticmethod
    def _to_input_size(labels: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_NEAREST) -> np.ndarray:
        h, w = size
        if labels.shape == (h, w):
            return labels
        return cv2.resize(labels, (w, h), interpolation=interpolation)

    def _summary(self, labels: np.ndarray) -> dict:
        if self.keep is not None:
            labels[~self.keep[labels]] = 0
        return self._summary_of(np.bincount(labels.reshape(-1), minlength=len(self.model.classes)), labels.shape)

    def _summary_of(self, counts: np.ndarray, shape: tuple[int, int]) -> dict:
        """The record's result from the per-class pixel counts of labels of `shape` (height, width)."""
        total = int(shape[0]) * int(shape[1])
        present = [i for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
        return {
            "size": [int(shape[0]), int(shape[1])],
            "classes": [{"index": int(i), "label": self.model.classes[i], "pixels": int(counts[i]),
                         "fraction": round(float(counts[i]) / total, 6)} for i in present],
        }

    def save(self, path: str, sample: Sample, result: dict, out_dir: Path) -> list[str]:
        return write_outputs(self.output_name(path), path, sample.rgb, sample.labels, result, alpha=self.alpha,
                             palette=self.palette, save_mask=self.save_mask)

    def save_frame(self, path: str, index: int, rgb: np.ndarray, sample: Sample, result: dict) -> list[str]:
        """A video's kept frame (with --out --save-mask): `NAME.fNNNNNN.mask-LABEL.png` per class found,
        NNNNNN the frame's index in the video (as the record's `frame`)."""
        if not self.save_mask:
            return []
        base = f"{str(self.video_name(path))[: -len('.segment.mp4')]}.f{index:06d}"
        return write_class_masks(base, sample.labels, result, path)

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)


def write_outputs(mask_path: Path, path: str, rgb: np.ndarray, labels: np.ndarray, result: dict, *, alpha: float,
                  palette: np.ndarray, save_mask: bool) -> list[str]:
    """`--out` for one image: `NAME.mask.png` (the class ids, palette PNG), `NAME.overlay.EXT` (EXT the input's
    when JPEG or PNG, else PNG) and with --save-mask `NAME.mask-LABEL.png` per class found."""
    base = str(mask_path)[: -len(MASK_SUFFIX)]
    suffix = Path(path).suffix.lower() if Path(path).suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    overlay_path = Path(base + ".overlay" + suffix)
    refuse_overwriting_input(overlay_path, path)
    atomic_write_bytes(mask_path, indexed_png(labels, palette))
    write_image(overlay_path, overlay(rgb, labels, alpha, palette))
    written = [str(mask_path), str(overlay_path)]
    if save_mask:
        written += write_class_masks(base, labels, result, path)
    return written


def write_class_masks(base: str, labels: np.ndarray, result: dict, path: str) -> list[str]:
    """--save-mask: a black/white `BASE.mask-LABEL.png` for each class the result found."""
    written = []
    for entry in result["classes"]:
        binary = np.where(labels == entry["index"], 255, 0).astype(np.uint8)
        target = Path(f"{base}.mask-{safe_name(entry['label'])}.png")
        refuse_overwriting_input(target, path)
        write_image(target, binary)
        written.append(str(target))
    return written
