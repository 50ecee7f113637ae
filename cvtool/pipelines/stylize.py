"""Neural style transfer by optimisation (Gatys et al.): the generated image's pixels are optimised
so its VGG content features match the content image and its Gram matrices match the style image(s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from cvtool.device import Placement
from cvtool.errors import InputError, UsageError
from cvtool.io.image import DEFAULT_MAX_PIXELS, OneImageOut, read_image, write_image
from cvtool.io.outputs import OutputNamer, refuse_overwriting_input
from cvtool.models.vgg_features import VGGFeatures
from cvtool.ops.style import content_cost, gram_matrix, style_cost, total_variation
from cvtool.ops.tensors import image_to_tensor, tensor_to_image
from cvtool.ops.tiling import check_tiling
from cvtool.tasks.stylize import OPTIMISED_SIZE, SETTINGS, SPEC

_SET = SETTINGS.defaults()  # the task table's (cvtool.tasks.stylize): every default is written there


@dataclass
class StyleSettings:
    """The optimisation's settings: the fields of cvtool.tasks.stylize.SETTINGS, and the result's size."""

    size: int = OPTIMISED_SIZE  # longer side of the generated image
    steps: int = _SET["steps"]
    content_weight: float = _SET["content_weight"]
    style_weight: float = _SET["style_weight"]
    tv_weight: float = _SET["tv_weight"]
    content_layer: str = _SET["content_layer"]
    style_layers: tuple[str, ...] = _SET["style_layers"]
    style_layer_weights: tuple[float, ...] | None = _SET["style_layer_weights"]  # default: equal, summing to 1
    init: str = _SET["init"]  # content | noise | style
    optimizer: str = _SET["optimizer"]  # lbfgs | adam
    lr: float = _SET["lr"]  # adam only; pixels are in [0, 1]
    pool: str = _SET["pool"]  # max | avg
    preserve_color: bool = _SET["preserve_color"]
    style_blend: tuple[float, ...] | None = _SET["style_blend"]  # one weight per style image; default equal
    scales: int = _SET["scales"]  # coarse-to-fine: solve at size / 2**(scales-1) first, then upsample and refine
    seed: int = _SET["seed"]

    def layer_weights(self) -> dict[str, float]:
        weights = self.style_layer_weights or tuple(1.0 for _ in self.style_layers)
        if len(weights) != len(self.style_layers):
            raise UsageError(f"--style-layer-weights has {len(weights)} values for {len(self.style_layers)} layers")
        total = sum(weights)
        return {name: w / total for name, w in zip(self.style_layers, weights)}


@dataclass
class StepReport:
    step: int
    steps: int
    losses: dict[str, float]
    image: Callable[[], np.ndarray] = field(repr=False)  # the current result as uint8 RGB, on demand


def fit_size(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    if abs(scale - 1) < 1e-6:
        return rgb
    flag = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=flag)


def to_tensor(rgb: np.ndarray, device) -> torch.Tensor:
    """A batch of one: 1 x 3 x H x W in [0, 1] on `device`."""
    return image_to_tensor(rgb)[None].to(device)


def to_rgb(tensor: torch.Tensor) -> np.ndarray:
    """The first image of a batch as uint8 RGB."""
    return tensor_to_image(tensor[0])


def keep_content_colours(stylized: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Luminance from the stylised image, colour (chroma) from the content (Gatys et al. 2016)."""
    content = cv2.resize(content, stylized.shape[1::-1], interpolation=cv2.INTER_AREA)
    y = cv2.cvtColor(stylized, cv2.COLOR_RGB2YCrCb)[..., :1]
    crcb = cv2.cvtColor(content, cv2.COLOR_RGB2YCrCb)[..., 1:]
    return cv2.cvtColor(np.concatenate([y, crcb], axis=2), cv2.COLOR_YCrCb2RGB)


class Stylizer:
    """Holds the VGG feature extractor and the style Gram matrices, reused across content images."""

    def __init__(self, vgg_features: torch.nn.Sequential, mean, std, settings: StyleSettings, device: Placement):
        self.settings, self.device = settings, device.torch
        if settings.optimizer not in ("lbfgs", "adam"):
            raise UsageError(f"unknown --optimizer {settings.optimizer!r}; use lbfgs or adam")
        if settings.init not in ("content", "noise", "style"):
            raise UsageError(f"unknown --init {settings.init!r}; use content, noise or style")
        self.layer_weights = settings.layer_weights()
        layers = [settings.content_layer, *settings.style_layers]
        self.extractor = VGGFeatures(vgg_features, layers, pool=settings.pool).to(self.device).eval()
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        pools = sum(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in self.extractor.stack)
        self.min_side = 2**pools  # the deepest layer used must keep at least one pixel a side
        self.styles: list[np.ndarray] = []
        self._grams: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def set_styles(self, styles: list[np.ndarray]) -> None:
        blend = self.settings.style_blend or tuple(1.0 for _ in styles)
        if len(blend) != len(styles):
            raise UsageError(f"--style-blend has {len(blend)} weights for {len(styles)} style images")
        self.styles, self.blend = styles, [w / sum(blend) for w in blend]
        self._grams.clear()

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extractor((image - self.mean) / self.std)

    @torch.no_grad()
    def style_grams(self, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Blended Gram matrices of the style images, each resized to the generated image's size (the
        style cost divides by that size), computed once per size and reused for every content image."""
        if size not in self._grams:
            h, w = size
            grams = {name: 0 for name in self.settings.style_layers}
            for style, weight in zip(self.styles, self.blend):
                resized = cv2.resize(style, (w, h), interpolation=cv2.INTER_AREA)
                feats = self.features(to_tensor(resized, self.device))
                for name in grams:
                    grams[name] = grams[name] + weight * gram_matrix(feats[name])
            self._grams[size] = grams
        return self._grams[size]

    def losses(self, generated: torch.Tensor, content_target: torch.Tensor, grams) -> dict[str, torch.Tensor]:
        s = self.settings
        feats = self.features(generated)
        parts = {"content": content_cost(content_target, feats[s.content_layer]),
                 "style": style_cost(grams, feats, self.layer_weights)}
        parts["tv"] = total_variation(generated) if s.tv_weight else torch.zeros((), device=self.device)
        parts["total"] = s.content_weight * parts["content"] + s.style_weight * parts["style"] + s.tv_weight * parts["tv"]
        return parts

    def _sizes(self) -> list[int]:
        """The longer side at each scale, coarsest first."""
        return [max(16, self.settings.size // 2**k) for k in reversed(range(max(1, self.settings.scales)))]

    def check_size(self, content: np.ndarray) -> None:
        """An InputError when the image, fitted to the coarsest scale, is too thin for the VGG layers used."""
        h, w = content.shape[:2]
        size = self._sizes()[0]
        fh, fw = fit_size(content, size).shape[:2]
        if min(fh, fw) < self.min_side:
            m = self.min_side
            raise InputError(f"image is {h}x{w} pixels ({fh}x{fw} at size {size}); style transfer through these "
                             f"VGG layers needs at least {m}x{m}")

    def stylize(self, content: np.ndarray, on_step: Callable[[StepReport], None] | None = None) -> tuple[np.ndarray, dict]:
        """Returns (uint8 RGB image, final losses)."""
        s = self.settings
        self.check_size(content)
        torch.manual_seed(s.seed)
        sizes = self._sizes()
        steps_per_scale = [max(1, s.steps // len(sizes))] * len(sizes)
        steps_per_scale[-1] += s.steps - sum(steps_per_scale)
        done, image, losses = 0, None, {}
        for size, steps in zip(sizes, steps_per_scale):
            target_rgb = fit_size(content, size)
            image, losses = self._solve(target_rgb, image, steps, done, s.steps, on_step)
            done += steps
        result = to_rgb(image)
        if s.preserve_color:
            result = keep_content_colours(result, content)
        return result, {k: float(v) for k, v in losses.items()}

    def _initial(self, content_rgb: np.ndarray, previous: torch.Tensor | None) -> torch.Tensor:
        h, w = content_rgb.shape[:2]
        if previous is not None:  # coarse-to-fine: the coarser solution, upsampled
            return torch.nn.functional.interpolate(previous, size=(h, w), mode="bilinear", align_corners=False)
        if self.settings.init == "noise":
            return torch.rand(1, 3, h, w, device=self.device)
        if self.settings.init == "style":
            return to_tensor(cv2.resize(self.styles[0], (w, h), interpolation=cv2.INTER_AREA), self.device)
        return to_tensor(content_rgb, self.device)

    def _solve(self, content_rgb, previous, steps, offset, total_steps, on_step):
        s = self.settings
        with torch.no_grad():
            content_target = self.features(to_tensor(content_rgb, self.device))[s.content_layer]
        grams = self.style_grams(content_rgb.shape[:2])
        generated = self._initial(content_rgb, previous).clone().requires_grad_(True)
        state = {"record": True, "losses": {}}

        def closure():  # a smooth cost for L-BFGS's line search; pixels are clamped when the image is read out
            optimizer.zero_grad(set_to_none=True)
            parts = self.losses(generated, content_target, grams)
            parts["total"].backward()
            if state["record"]:  # the first evaluation of a step is at the current image; later ones are
                state["losses"] = {k: float(v.detach()) for k, v in parts.items()}  # line-search trials
                state["record"] = False
            return parts["total"]

        if s.optimizer == "lbfgs":
            # no early stop: with small, well-scaled costs L-BFGS's default tolerances end it too soon
            # with a strong-Wolfe line search (about 2 cost evaluations a step): a fixed unit step overshot
            # and the style cost swung by 10x from step to step
            optimizer = torch.optim.LBFGS([generated], lr=1.0, max_iter=1, max_eval=10, history_size=50,
                                          tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")
        else:
            optimizer = torch.optim.Adam([generated], lr=s.lr)
        for step in range(steps):
            state["record"] = True
            optimizer.step(closure)
            if s.optimizer != "lbfgs":  # Adam: project back to valid pixels after each step
                with torch.no_grad():
                    generated.clamp_(0, 1)
            if on_step is not None:
                on_step(StepReport(offset + step + 1, total_steps, state["losses"], lambda: to_rgb(generated)))
        with torch.no_grad():
            final = {k: float(v) for k, v in self.losses(generated.clamp(0, 1), content_target, grams).items()}
        return generated.detach(), final


def gram_distance(vgg: Stylizer, image: np.ndarray, size: tuple[int, int]) -> float:
    """Style cost of `image` against the style targets: how far its textures are from the style's."""
    with torch.no_grad():
        resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        feats = vgg.features(to_tensor(resized, vgg.device))
        return float(style_cost(vgg.style_grams(size), feats, vgg.layer_weights))


class _OneImageOut:
    """Both stylize pipelines write one image per input (`image_out`: `--out FILE` for a single input, else
    `OUT/NAME.stylized.png`)."""

    image_out: OneImageOut

    def target(self, path: str) -> Path:
        return self.image_out.target(path)

    def save(self, path: str, sample, result: dict, out_dir) -> list[str]:
        return self.image_out.write(path, result.pop("image"))

    def already_done(self, path: str) -> bool:
        return self.image_out.done(path)


class StylizePipeline(_OneImageOut):
    """The runner's shape for style transfer: one content image at a time, outputs written atomically."""

    task = "stylize"
    no_video_reason = "a video needs --model (a feed-forward network from `cvtool train style`)"

    def __init__(self, stylizer: Stylizer, *, model_name: str, weights_sha256: str, out: Path,
                 single_file: bool = False, save_every: int | None = None, on_step=None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.stylizer, self.model_name, self.weights_sha256 = stylizer, model_name, weights_sha256
        self.save_every, self.on_step, self.max_pixels = save_every, on_step, max_pixels
        self.image_out = OneImageOut(out, single_file, ".stylized.png")

    def prepare(self, path: str) -> tuple[str, np.ndarray]:
        content = read_image(path, max_pixels=self.max_pixels)
        self.stylizer.check_size(content)
        return path, content

    def predict(self, samples: list[tuple[str, np.ndarray]]) -> list[dict]:
        return [self._one(path, content) for path, content in samples]

    def _one(self, path: str, content: np.ndarray) -> dict:
        def on_step(report: StepReport) -> None:
            if self.save_every and report.step % self.save_every == 0 and report.step < report.steps:
                target = self.target(path)
                step_image = target.with_name(f"{target.name.split('.')[0]}.step{report.step:04d}.png")
                refuse_overwriting_input(step_image, path)
                write_image(step_image, report.image())
            if self.on_step is not None:
                self.on_step(report)

        image, losses = self.stylizer.stylize(content, on_step)
        size = image.shape[:2]
        return {
            "image": image,  # written by save(), not part of the record
            "size": [int(size[0]), int(size[1])],
            "steps": self.stylizer.settings.steps,
            "losses": {k: round(v, 6) for k, v in losses.items()},
            "style_distance": {"result": round(gram_distance(self.stylizer, image, size), 6),
                               "content": round(gram_distance(self.stylizer, content, size), 6)},
        }


class FastStylePipeline(_OneImageOut):
    """Feed-forward stylisation (a network from `cvtool train style`): one forward pass per image or frame."""

    task = "stylize"
    no_video_reason = None  # takes videos: the hooks below

    def __init__(self, model, *, out: Path, single_file: bool = False, size: int | None = None,
                 tile: int | None = None, overlap: int = SPEC.options["overlap"].default,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.model, self.model_name, self.weights_sha256 = model, model.name, model.weights_sha256
        self.size, self.tile, self.overlap, self.max_pixels = size, tile, overlap, max_pixels
        if tile is not None:
            check_tiling(tile, overlap)  # before any image, not on each
        self.image_out = OneImageOut(out, single_file, ".stylized.png")
        self.video_names = OutputNamer(out, ".stylized.mp4")

    def prepare(self, path: str) -> np.ndarray:
        return self.prepare_array(read_image(path, max_pixels=self.max_pixels))

    def prepare_array(self, rgb: np.ndarray) -> np.ndarray:
        return fit_size(rgb, self.size) if self.size else rgb

    def render(self, rgb: np.ndarray, sample, result: dict) -> np.ndarray:
        return result.pop("image")  # a video frame: the stylised image goes into the video, not the record

    def save_frame(self, path: str, index: int, rgb: np.ndarray, sample, result: dict) -> list[str]:
        return []  # a frame's record is all: no files of its own beside the video

    def video_name(self, path: str) -> Path:
        """`--out FILE.mp4` for a single input, else `OUT/NAME.stylized.mp4`."""
        return self.image_out.out if self.image_out.single_file else self.video_names(path)

    @torch.inference_mode()
    def stylize(self, rgb: np.ndarray) -> np.ndarray:
        """Any size works, 1 x 1 included: the image is padded to what the network needs and cropped back."""
        from cvtool.ops.tiling import run_padded, tiled_logits

        tensor = to_tensor(rgb, "cpu")[0]
        forward = lambda b: self.model.forward(b.to(self.model.device.torch)).float()  # noqa: E731 - --half runs in autocast
        multiple = self.model.size_multiple
        if self.tile:
            if self.tile % multiple:
                raise UsageError(f"--tile must be a multiple of {multiple} for {self.model_name}")
            out = tiled_logits(forward, tensor, num_classes=3, tile=self.tile, overlap=self.overlap, multiple=multiple)
        else:
            out = run_padded(forward, tensor, multiple)
        return to_rgb(out[None])

    def predict(self, samples: list[np.ndarray]) -> list[dict]:
        results = []
        for sample in samples:
            image = self.stylize(sample)
            results.append({"image": image, "size": [int(image.shape[0]), int(image.shape[1])]})
        return results
