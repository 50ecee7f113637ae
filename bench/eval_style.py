"""Style transfer: speed on this machine, and a contact sheet a person can look at.

    python bench/eval_style.py [--sheet bench/results/style_contact_sheet.png]

ImageNet VGG weights cannot be downloaded here, so the feature network is a VGG-19 with random
weights (seed 0), saved to a local file and loaded through `--weights` like any user file. Random
convolutional features still carry texture statistics, so the costs and the optimisation are real;
the pictures are not what pretrained VGG features give, and the figures below say only what they say.

1. seconds per optimisation step (L-BFGS and Adam) at 256 and 512 px, VGG-19, CPU;
2. images/s of the feed-forward network (Johnson et al., width 32) at 512x512, CPU;
3. on ../shared/datasets/style (tubingen + starry_night): the result's style cost relative to the
   content image's (how far the textures moved towards the painting) at three style weights, and a
   contact sheet: content | style | result at each weight.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, write_results  # noqa: E402

from cvtool.bench import time_calls, timed  # noqa: E402
from cvtool.io.image import read_image, write_image  # noqa: E402
from cvtool.models.loading import load_model  # noqa: E402
from cvtool.models.transformer_net import TransformerNet  # noqa: E402
from cvtool.pipelines.stylize import StyleSettings, Stylizer, fit_size, gram_distance  # noqa: E402

STYLE_DATA = ROOT.parent / "shared" / "datasets" / "style"


def seconds_per_step(vgg, content, style, size: int, optimizer: str, steps: int = 4) -> float:
    settings = StyleSettings(size=size, steps=1, optimizer=optimizer)
    stylizer = Stylizer(vgg.module.features, vgg.preprocess.mean, vgg.preprocess.std, settings, vgg.device)
    stylizer.set_styles([style])
    stylizer.stylize(content)  # warm-up, and the style Grams for this size
    stylizer.settings.steps = steps
    with timed() as clock:
        stylizer.stylize(content)
    return clock.seconds / steps


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, text, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sheet", type=Path, default=RESULTS / "style_contact_sheet.png")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.manual_seed(0)
    from torchvision.models import vgg19

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vgg19_random_seed0.pt"
        torch.save(vgg19().state_dict(), weights)
        vgg = load_model("vgg19", task="classify", weights=weights, progress=False)
    have_data = STYLE_DATA.is_dir()
    if have_data:
        content = read_image(STYLE_DATA / "content" / "tubingen.jpg")
        style = read_image(STYLE_DATA / "style" / "starry_night.jpg")
    else:  # speed figures need no particular image
        from skimage import data

        content, style = data.chelsea(), data.coffee()
    speeds = {f"{opt}_{size}px_s_per_step": round(seconds_per_step(vgg, content, style, size, opt), 3)
              for size in (256, 512) for opt in ("lbfgs", "adam")}

    net = TransformerNet().eval()
    x = torch.rand(1, 3, 512, 512)
    with torch.inference_mode():
        feed_forward = 3 / sum(time_calls({"feed_forward": lambda: net(x)}, iters=3, warmup=1)["feed_forward"])

    figures = {"feature_network": "VGG-19, random weights (seed 0) — ImageNet weights are not downloadable here",
               "optimisation_speed_cpu": speeds, "feed_forward_512px_images_per_s_cpu": round(feed_forward, 2)}
    if have_data:
        size, cells, distances = 192, [], {}
        small_content = fit_size(content, size)
        cells += [label(small_content, "content: tubingen"),
                  label(cv2.resize(style, small_content.shape[1::-1], interpolation=cv2.INTER_AREA), "style: starry night")]
        for weight in (1e3, 1e4, 1e5):
            settings = StyleSettings(size=size, steps=args.steps, style_weight=weight)
            stylizer = Stylizer(vgg.module.features, vgg.preprocess.mean, vgg.preprocess.std, settings, vgg.device)
            stylizer.set_styles([style])
            result, _ = stylizer.stylize(content)
            hw = result.shape[:2]
            ratio = gram_distance(stylizer, result, hw) / gram_distance(stylizer, small_content, hw)
            distances[f"style_weight_{weight:g}"] = round(ratio, 4)
            cells.append(label(result, f"beta {weight:g}: style cost x{ratio:.4f}"))
        write_image(args.sheet, np.hstack(cells))
        figures.update({"content": "tubingen.jpg", "style": "starry_night.jpg", "size": size, "steps": args.steps,
                        "style_cost_result_over_content": distances, "contact_sheet": str(sheet.relative_to(ROOT) if (sheet := args.sheet.resolve()).is_relative_to(ROOT)
                                             else args.sheet)})
    write_results("eval_style", figures)


if __name__ == "__main__":
    main()
