"""`cvtool train style`: a feed-forward stylisation network (Johnson et al.) trained with the same
perceptual costs as the optimisation method — content at one VGG layer, Gram-matrix style at several."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from cvtool.io.image import read_image
from cvtool.io.inputs import iter_inputs
from cvtool.models.vgg_features import VGGFeatures
from cvtool.ops.style import content_cost, gram_matrix, style_layer_cost, total_variation
from cvtool.ops.tensors import image_to_tensor
from cvtool.train.datasets import DataError
from cvtool.train.recipes import StyleTrainArgs

# Johnson et al.'s taps on VGG-16; the same names exist in VGG-19.
FAST_CONTENT_LAYER = "relu2_2"
FAST_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


def content_images(folder: str, on_skip=None) -> list[np.ndarray]:
    images = []
    for item in iter_inputs([folder], recursive=True):
        try:
            if item.error:
                raise DataError(item.error, item.path)
            images.append(read_image(item.path))
        except Exception as exc:  # noqa: BLE001 — a bad file is skipped with its reason
            if on_skip:
                on_skip(str(exc))
    if len(images) < 2:
        raise DataError("need at least 2 readable content images", folder)
    return images


class ContentCrops:
    """Random square crops (scaled to img_size) of the content photos, as [0, 1] tensors; the target is the input."""

    takes_augmentation_seeds = True  # __getitem__((index, seed)): see cvtool.train.engine.EpochBatches

    def __init__(self, images: list[np.ndarray], size: int, train: bool):
        self.images, self.size, self.train = images, size, train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        from cvtool.train.datasets import augmentation_rng, sample_index

        index, seed = sample_index(item)
        image = self.images[index]
        h, w = image.shape[:2]
        side = min(h, w)
        if self.train:
            rng = augmentation_rng(seed)
            side = int(side * rng.uniform(0.6, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        else:
            top, left = (h - side) // 2, (w - side) // 2
        crop = cv2.resize(image[top : top + side, left : left + side], (self.size, self.size), interpolation=cv2.INTER_AREA)
        tensor = image_to_tensor(crop)
        return tensor, tensor


class FastStyleTask:
    name = "stylize"

    def __init__(self, entry, vgg_features: nn.Sequential, mean, std, style: np.ndarray, args: StyleTrainArgs, device):
        self.entry, self.args = entry, args
        self.extractor = VGGFeatures(vgg_features, [FAST_CONTENT_LAYER, *FAST_STYLE_LAYERS]).to(device).eval()
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        style = cv2.resize(style, (args.img_size, args.img_size), interpolation=cv2.INTER_AREA)
        with torch.no_grad():
            feats = self._features(image_to_tensor(style)[None].to(device))
            self.grams = {name: gram_matrix(feats[name]) for name in FAST_STYLE_LAYERS}

    def _features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extractor((images - self.mean) / self.std)

    def build_model(self) -> nn.Module:
        return self.entry.build(width=self.args.width)

    def parts(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        generated, content = self._features(outputs), self._features(targets)
        n = outputs.shape[0]
        style = sum(style_layer_cost(self.grams[name], generated[name]) for name in FAST_STYLE_LAYERS) / (
            n * len(FAST_STYLE_LAYERS))
        return {"content": content_cost(content[FAST_CONTENT_LAYER], generated[FAST_CONTENT_LAYER]) / n,
                "style": style, "tv": total_variation(outputs)}

    def loss(self, outputs, targets):
        p, a = self.parts(outputs, targets), self.args
        return a.content_weight * p["content"] + a.style_weight * p["style"] + a.tv_weight * p["tv"]

    def start_metrics(self) -> dict:
        return {"content": 0.0, "style": 0.0, "n": 0}

    def update_metrics(self, state: dict, outputs, targets) -> None:
        parts = self.parts(outputs, targets)
        state["content"] += float(parts["content"]) * outputs.shape[0]
        state["style"] += float(parts["style"]) * outputs.shape[0]
        state["n"] += outputs.shape[0]

    def finish_metrics(self, state: dict) -> dict[str, float]:
        n = max(1, state["n"])
        return {"content_cost": state["content"] / n, "style_cost": state["style"] / n}

    def checkpoint_fields(self) -> dict:
        from cvtool.models.transformer_net import FAST_STYLE_PREPROCESS

        return {"arch": self.entry.name, "task": "stylize", "classes": None, "preprocess": FAST_STYLE_PREPROCESS.to_dict()}


def run_training(args: StyleTrainArgs, cfg, run_dir: Path, device, *, resume=False, callbacks=None, on_skip=None,
                 progress: bool = True) -> dict:
    from cvtool.models.loading import load_model
    from cvtool.models.registry import get_entry
    from cvtool.train import plots
    from cvtool.train.engine import Trainer

    start = time.perf_counter()
    vgg = load_model(args.vgg, task="classify", weights=args.vgg_weights, device=device, progress=progress,
                     weights_option="--vgg-weights FILE")
    style = read_image(args.style)
    images = content_images(args.data, on_skip)
    order = np.random.default_rng(cfg.seed).permutation(len(images))
    n_val = max(1, round(len(images) * args.val_split))
    val = [images[i] for i in order[:n_val]]
    train = [images[i] for i in order[n_val:]]
    task = FastStyleTask(get_entry("fast_style"), vgg.module.features, vgg.preprocess.mean, vgg.preprocess.std,
                         style, args, device)
    trainer = Trainer(task, ContentCrops(train, args.img_size, True), ContentCrops(val, args.img_size, False), cfg,
                      run_dir, device, callbacks=callbacks, args=vars(args).copy(),
                      extra_fields={"arch_kwargs": {"width": args.width}, "vgg_sha256": vgg.weights_sha256})
    if resume:
        trainer.resume(run_dir / "last.pt")
    state = trainer.fit()
    if not trainer.is_main:  # rank 0 scores, plots and writes the summary; the others get it
        return trainer.share_summary(None)
    plots.save_curves(state.history, run_dir / "curves.png")
    best_epoch = trainer.load_best_into(run_dir / "best.pt")
    summary = {"task": "stylize", "arch": "fast_style", "style": args.style, "train_images": len(train),
               "val_images": len(val), "epochs": state.epoch, "best_epoch": best_epoch,
               "val_best_epoch": next(row for row in state.history if row["epoch"] == best_epoch),
               "val": state.history[-1],
               "seconds": round(time.perf_counter() - start, 2)}
    return trainer.finish(summary)


def resumed_arguments(run_dir: Path, epochs: int | None):
    from cvtool.train.engine import stored_run

    args, cfg = stored_run(run_dir, epochs)
    return StyleTrainArgs(**args), cfg
