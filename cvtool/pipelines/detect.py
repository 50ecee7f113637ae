"""Object detection: boxes, labels and scores per image (and body keypoints with Keypoint R-CNN)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from cvtool.errors import UsageError
from cvtool.io.image import DEFAULT_MAX_PIXELS, read_reduced, write_image
from cvtool.io.outputs import OutputNamer, refuse_overwriting_input, safe_name
from cvtool.io.render import draw_detections
from cvtool.models.loading import LoadedModel
from cvtool.tasks.detect import DEFAULT_CONF, SPEC


@dataclass
class Sample:
    rgb: np.ndarray
    # 3 x H x W: float in [0, 1], or uint8 0-255 (CUDA: pinned, scaled on the device); a model's own prepared
    # input; on onnxruntime (3 x S x S float32 array letterboxed, its Letterbox)
    tensor: object
    input_hw: tuple[int, int]  # the network input's height and width (the letterbox, or the image)
    factor: int = 1  # `rgb` is the photo decoded `factor` times smaller per side (cvtool.io.image.Decoded)
    size: tuple[int, int] | None = None  # the photo's own (height, width) when `factor` > 1


# What the exported graph of a letterboxing detector (our YOLO) returns: boxes in letterboxed pixels, objectness,
# class probabilities (cvtool/models/yolo.py export_graph)
LETTERBOXED_OUTPUTS = ("boxes", "objectness", "class_probs")


def _on_device(tensor, device):
    """A sample's pixels as 3 x H x W float in [0, 1] on `device` (uint8 is copied as uint8, scaled there)."""
    import torch

    tensor = tensor.to(device, non_blocking=True)
    if not isinstance(tensor, torch.Tensor):  # a model's own prepared input (prepare_input), moved as a whole
        return tensor
    return tensor.float().div_(255) if tensor.dtype == torch.uint8 else tensor


def _on_host(values):
    """A NumPy array as it is; a tensor copied to the CPU (once per image, not once per number)."""
    return values if isinstance(values, np.ndarray) else values.cpu()


_D = SPEC.defaults()  # the task table's (cvtool.tasks.detect)


class DetectPipeline:
    task = "detect"
    no_video_reason = None  # takes videos: the hooks below

    def __init__(self, model: LoadedModel, *, conf: float = DEFAULT_CONF, iou: float = _D["iou"],
                 max_det: int = _D["max_det"], classes: list[str] | None = None, keypoints: bool = False,
                 save_crops: bool = False, save_txt: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, out_dir=None,
                 full_decode: bool = _D["full_decode"], decode_on_device: bool | None = None):
        self.model, self.model_name, self.weights_sha256 = model, model.name, model.weights_sha256
        self.conf, self.iou, self.max_det, self.max_pixels = conf, iou, max_det, max_pixels
        self.keypoints, self.save_crops, self.save_txt = keypoints, save_crops, save_txt
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._classes_written = False
        self._classes_lock = threading.Lock()
        self.keep = None
        if classes:
            unknown = [c for c in classes if c not in model.classes]
            if unknown:
                raise UsageError(f"--classes: {', '.join(unknown)} not among this model's classes")
            self.keep = np.array([model.classes.index(c) for c in classes], dtype=np.int64)
        self.output_name = OutputNamer(out_dir, ".detect.jpg") if out_dir is not None else None
        self.video_name = OutputNamer(out_dir, ".detect.mp4") if out_dir is not None else None
        self.categories = coco_categories(model.classes, model.meta.get(COCO_IDS_FIELD))
        # On CUDA the workers hand over uint8 pixels in page-locked memory (4x fewer bytes than float32, an
        # asynchronous copy) and the device scales them; our YOLO then letterboxes on the device too.
        self.pixels_on_device = model.device.type == "cuda" and model.backend == "torch"
        if self.pixels_on_device and model.contract.input_side is not None:
            from cvtool.device import tune_for_fixed_sizes

            tune_for_fixed_sizes(model.device)  # every batch has the letterbox's size
        # onnxruntime: NumPy from end to end. The one exported detector graph, our YOLO's, takes images
        # letterboxed to its `img_size` and returns decoded boxes, objectness and class probabilities.
        self.letterbox_size = None
        if model.runs_on_arrays:
            size = model.module.meta.get("img_size")
            if size is None or model.module.meta.get("outputs") != list(LETTERBOXED_OUTPUTS):
                raise UsageError(f"{model.weights_path}: an ONNX detector whose outputs this cvtool cannot read "
                                 f"({', '.join(model.module.meta.get('outputs') or [])})")
            self.letterbox_size = int(size)
        self.reduction = None if full_decode or out_dir is not None else self._reduction()
        # A letterboxing model (our YOLO) on CUDA without --out: a file's JPEG is decoded on the device (nvJPEG, a
        # batch per call) and letterboxed there (cvtool.io.device_decode, cvtool.ops.device_preprocess); with --out
        # the annotated image and crops need the photo's pixels on the host
        letterboxing = model.backend == "torch" and model.contract.input_side is not None  # (onnx: no registry)
        self.decode_on_device = letterboxing and (self.pixels_on_device and out_dir is None
                                                  if decode_on_device is None else decode_on_device)

    def _reduction(self):
        """A letterboxing model's JPEGs decoded as small as its square allows (cvtool.ops.letterbox); None for a model
        that resizes (torchvision's) or pyramids (faces) the image itself, whose input size this cannot know, and
        with --out, whose annotated images and crops are of the photo in full."""
        from cvtool.ops.letterbox import letterbox_reduction

        side = self.letterbox_size
        if side is None and self.model.contract.input_side is not None:
            side = self.model.contract.input_side(self.model)
        return None if side is None else partial(letterbox_reduction, size=int(side))

    @property
    def extra_formats(self) -> dict:
        """The writers of `-f coco` / `-f yolo` for this model (for make_writer's `extra_formats`)."""
        return extra_formats(self.model)

    def prepare(self, path: str) -> Sample:
        if self.decode_on_device:  # the bytes only: decoded with the batch, on the device (rgb stays None)
            from cvtool.io.device_decode import read_for_device

            read = read_for_device(path, max_pixels=self.max_pixels)
            side = self.model.contract.input_side(self.model)
            return Sample(None, read, (side, side), size=read.size)
        decoded = read_reduced(path, max_pixels=self.max_pixels, reduction=self.reduction)
        sample = self.prepare_array(decoded.rgb)
        if decoded.factor != 1:
            sample.factor, sample.size = decoded.factor, decoded.size
        return sample

    def prepare_array(self, rgb: np.ndarray) -> Sample:
        if self.letterbox_size is not None:  # onnxruntime: the letterboxed [0, 1] pixels as an array, and the box
            from cvtool.ops.letterbox import letterbox
            from cvtool.ops.tensors import image_to_array

            boxed, box = letterbox(rgb, self.letterbox_size)
            return Sample(rgb, (image_to_array(boxed), box), boxed.shape[:2])
        import torch

        from cvtool.ops.tensors import image_to_tensor

        if self.pixels_on_device:  # a letterboxing model letterboxes there, on the device
            side = self.model.contract.input_side
            return Sample(rgb, torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).pin_memory(),
                          (side(self.model),) * 2 if side is not None else rgb.shape[:2])
        prepared = self.model.prepare_input(rgb)  # e.g. our YOLO letterboxes here, in the decoding threads
        if prepared is None:
            return Sample(rgb, image_to_tensor(rgb), rgb.shape[:2])
        return Sample(rgb, prepared, tuple(prepared.shape[-2:]))

    def batch_key(self, sample: Sample) -> tuple | None:
        """Samples with equal keys may share a forward pass: any mix where each is letterboxed to the model's
        size (the exported graph, our YOLO's prepare_input); else one size per pass, since torchvision's
        detectors pad a batch to its largest image, which moves their boxes."""
        if self.letterbox_size is not None or self.model.contract.prepare_input is not None:
            return None
        return tuple(sample.rgb.shape[:2])

    @staticmethod
    def input_pixels(sample: Sample) -> int:
        """The pixels of the network's input: the letterbox, or the image itself."""
        return int(sample.input_hw[0] * sample.input_hw[1])

    def render(self, rgb: np.ndarray, sample: Sample, result: dict) -> np.ndarray:
        return draw_detections(rgb, result["detections"])

    def predict(self, samples: list[Sample]) -> list[dict]:
        from cvtool.ops.boxes import detection_record, filter_detections

        if self.letterbox_size is not None:  # onnxruntime, NumPy only: the graph, then the same mapping and NMS
            from cvtool.ops.letterbox import detections_in_original_pixels

            decoded = self.model.module.run(np.stack([s.tensor[0] for s in samples]))
            outputs = detections_in_original_pixels(*decoded, [s.tensor[1] for s in samples])
        else:
            import torch

            with torch.inference_mode():  # the entry's forward: our YOLO letterboxes itself; torchvision's resize
                outputs = self.model.forward(self._on_device_inputs(samples))
        results = []
        for sample, out in zip(samples, outputs):
            order, mask = filter_detections(out["boxes"], out["scores"], out["labels"], conf=self.conf, iou=self.iou,
                                            max_det=self.max_det, keep_labels=self.keep)
            boxes, scores, labels = (_on_host(out[k][mask][order]) for k in ("boxes", "scores", "labels"))
            if sample.factor != 1:  # decoded smaller: back to the photo's own pixels
                boxes = in_photo_pixels(boxes, sample.factor, sample.size)
            detections = [detection_record(box, score, label, self.model.classes[int(label)])
                          for box, score, label in zip(boxes, scores, labels)]
            if self.keypoints and "keypoints" in out:
                points = _on_host(out["keypoints"][mask][order])
                if sample.factor != 1:
                    points = np.asarray(points, dtype=np.float64) * np.array([sample.factor, sample.factor, 1.0])
                for det, kp in zip(detections, points):
                    det["keypoints"] = [[round(float(x), 2), round(float(y), 2), int(v > 0)] for x, y, v in kp.tolist()]
            h, w = sample.size or sample.rgb.shape[:2]
            results.append({"size": [h, w], "detections": detections})
        return results

    def _on_device_inputs(self, samples: list[Sample]) -> list:
        """The forward pass's inputs on the model's device; files read for the device are decoded and letterboxed
        there as one batch, handed over as the model's own letterboxed inputs (cvtool.models.yolo.Letterboxed)."""
        from cvtool.io.device_decode import DeviceRead

        if not isinstance(samples[0].tensor, DeviceRead):
            return [_on_device(s.tensor, self.model.device.torch) for s in samples]
        from cvtool.io.device_decode import decode_batch
        from cvtool.models.yolo import Letterboxed
        from cvtool.ops.device_preprocess import letterbox_batch

        images = decode_batch([s.tensor for s in samples], self.model.device)
        batch, boxes = letterbox_batch(images, self.model.contract.input_side(self.model))
        return [Letterboxed(tensor, box) for tensor, box in zip(batch, boxes)]

    def save(self, path: str, sample: Sample, result: dict, out_dir: Path) -> list[str]:
        target = self.output_name(path)
        write_image(target, draw_detections(sample.rgb, result["detections"]))
        base = str(target)[: -len(".detect.jpg")]
        written = [str(target)]
        if self.save_crops:
            written += write_crops(base, sample.rgb, result["detections"], path)
        if self.save_txt:
            written += self._write_labels(Path(base).name, result, path)
        return written

    def save_frame(self, path: str, index: int, rgb: np.ndarray, sample: Sample, result: dict) -> list[str]:
        """A video's kept frame (with --out): its crops `NAME.fNNNNNN.cropNNN-LABEL.jpg` and its label file
        `labels/NAME.fNNNNNN.txt`, NNNNNN the frame's index in the video (as the record's `frame`)."""
        stem = f"{str(self.video_name(path))[: -len('.detect.mp4')]}.f{index:06d}"
        written = write_crops(stem, rgb, result["detections"], path) if self.save_crops else []
        if self.save_txt:
            written += self._write_labels(Path(stem).name, result, path)
        return written

    def _write_labels(self, stem: str, result: dict, path: str) -> list[str]:
        with self._classes_lock:  # saves run in the runner's writer threads: classes.txt is written once
            classes = None if self._classes_written else self.model.classes
            self._classes_written = True
        return write_labels(self.out_dir, stem, result, path, classes)

    def already_done(self, path: str) -> bool:
        return self.output_name is not None and self.output_name.exists(path)


def in_photo_pixels(boxes, factor: int, size: tuple[int, int]) -> np.ndarray:
    """N x 4 boxes in an image decoded `factor` times smaller -> the photo's pixels, clipped to its (height, width)
    (the reduced image's last pixel may stand for fewer than `factor` of the photo's)."""
    h, w = size
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * factor
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


def write_crops(base: str, rgb: np.ndarray, detections: list[dict], path: str) -> list[str]:
    """--save-crops: each detection's box cut from the image, `BASE.cropNNN-LABEL.jpg`."""
    written = []
    for i, det in enumerate(detections):
        x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
        crop = rgb[max(0, y1) : max(y1 + 1, y2), max(0, x1) : max(x1 + 1, x2)]
        crop_path = Path(f"{base}.crop{i:03d}-{safe_name(det['label'])}.jpg")
        refuse_overwriting_input(crop_path, path)
        write_image(crop_path, crop)
        written.append(str(crop_path))
    return written


def write_labels(out_dir: Path, stem: str, result: dict, path: str, classes: list[str] | None) -> list[str]:
    """--save-txt: `OUT/labels/STEM.txt` in YOLO's layout (`class cx cy w h score`, fractions of the image;
    empty when nothing was found) and, when `classes` is given (the batch's first), `OUT/classes.txt`: the
    layout `cvtool train detect` reads with OUT/images/ beside them (so `--out` the folder above images/ makes a
    training set)."""
    from cvtool.io.atomic import atomic_write_text

    written = []
    if classes is not None:
        classes_path = out_dir / "classes.txt"
        refuse_overwriting_input(classes_path, path)
        atomic_write_text(classes_path, "".join(f"{name}\n" for name in classes))
        written.append(str(classes_path))
    label_path = out_dir / "labels" / f"{stem}.txt"
    refuse_overwriting_input(label_path, path)
    label_path.parent.mkdir(exist_ok=True)
    atomic_write_text(label_path, "".join(f"{line}\n" for line in yolo_lines(result)))
    return [*written, str(label_path)]


from cvtool.models.checkpoint import COCO_IDS_FIELD  # noqa: E402 - a checkpoint field, read here
_PLACEHOLDERS = ("__background__", "N/A")  # torchvision's COCO class lists: index 0, and ids COCO never used


def coco_categories(classes: list[str], category_ids: list[int] | None = None) -> dict[int, dict]:
    """Class index -> COCO category {"id", "name"}: the ids a checkpoint stored (its training set's own);
    else, for a class list in torchvision's COCO layout ('__background__' first), the index itself is the
    COCO id and the placeholders are no categories; else index + 1 (COCO ids start at 1)."""
    if category_ids is not None and len(category_ids) == len(classes):
        return {i: {"id": int(cid), "name": name} for i, (cid, name) in enumerate(zip(category_ids, classes))}
    if classes and classes[0] == "__background__":
        return {i: {"id": i, "name": name} for i, name in enumerate(classes) if name not in _PLACEHOLDERS}
    return {i: {"id": i + 1, "name": name} for i, name in enumerate(classes)}


def extra_formats(model: LoadedModel) -> dict:
    """make_writer's `extra_formats` for a loaded detector: COCO lists every category of the model, with
    its COCO id (see `coco_categories`); YOLO's text format needs nothing more."""
    return writers_for(coco_categories(model.classes, model.meta.get(COCO_IDS_FIELD)))


def writers_for(categories: dict[int, dict]) -> dict:
    """make_writer's `extra_formats` for a detector with these COCO categories (class index -> {"id", "name"})."""
    return {"coco": partial(CocoWriter, categories=categories), "yolo": YoloWriter}


class CocoWriter:
    """A COCO-style JSON document (images, annotations with [x, y, w, h] boxes and scores, categories).

    `categories` (class index -> {"id", "name"}, see `coco_categories`) lists all of the model's classes
    even when nothing is found; the pipeline's `extra_formats` passes it. Without it, the categories are
    those detected, with ids index + 1.

    Streamed, in bounded memory: each image entry is written to the stream as it comes, the annotations
    wait in a temporary file until the images are all out; the document is the same bytes `json.dump`
    of the whole would write."""

    def __init__(self, stream, columns, rows_fn, categories: dict[int, dict] | None = None):
        self.stream, self.images, self.annotations = stream, 0, 0  # counts written
        self.categories = dict(categories or {})
        self._spool = None  # the annotations so far, as JSON text

    def write(self, record: dict) -> None:
        if "error" in record:
            return
        image_id = self.images + 1
        h, w = record["result"]["size"]
        image = {"id": image_id, "file_name": record["path"], "width": w, "height": h}
        if "frame" in record:  # a video's frame: the video's path, the frame's index and time
            image.update(frame=record["frame"], time_s=record.get("time_s"))
        self.stream.write(('{"images": [' if self.images == 0 else ", ") + json.dumps(image))
        self.stream.flush()
        self.images += 1
        for det in record["result"]["detections"]:
            x1, y1, x2, y2 = det["box"]
            category = self.categories.get(det["index"])
            if category is None:
                category = self.categories[det["index"]] = {"id": det["index"] + 1, "name": det["label"]}
            annotation = {"id": self.annotations + 1, "image_id": image_id, "category_id": category["id"],
                          "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                          "area": round((x2 - x1) * (y2 - y1), 2), "score": det["score"], "iscrowd": 0}
            if self._spool is None:
                import tempfile

                self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")
            self._spool.write((", " if self.annotations else "") + json.dumps(annotation))
            self.annotations += 1

    def close(self) -> None:
        import shutil

        categories = sorted(({"id": c["id"], "name": c["name"]} for c in self.categories.values()), key=lambda c: c["id"])
        self.stream.write(('{"images": [' if self.images == 0 else "") + '], "annotations": [')
        if self._spool is not None:
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, self.stream)
            self._spool.close()
            self._spool = None
        self.stream.write('], "categories": ' + json.dumps(categories) + "}\n")
        self.stream.flush()


def yolo_lines(result: dict) -> list[str]:
    """YOLO's label lines of one result: `class cx cy w h score`, the box as fractions of the image. A box is cut
    to the image first (a face's rectangle may reach past it): a label is of what the image shows, and
    `cvtool train detect` reads fractions in 0-1; a box with nothing left inside the image has no line."""
    h, w = result["size"]
    lines = []
    for det in result["detections"]:
        x1, x2 = (min(max(v, 0.0), w) for v in det["box"][0::2])
        y1, y2 = (min(max(v, 0.0), h) for v in det["box"][1::2])
        if x2 <= x1 or y2 <= y1:
            continue
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        lines.append(f"{det['index']} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f} {det['score']:.4f}")
    return lines


class YoloWriter:
    """YOLO's text format, one line per box: `path class cx cy w h score`, coordinates as fractions."""

    def __init__(self, stream, columns, rows_fn):
        self.stream = stream

    def write(self, record: dict) -> None:
        if "error" in record:
            return
        for line in yolo_lines(record["result"]):
            self.stream.write(f"{record['path']} {line}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


EXTRA_FORMATS = {"coco": CocoWriter, "yolo": YoloWriter}
