"""Throughput of `cvtool classify` against the model's pure forward pass, in the same process.

    python bench/throughput.py [--model resnet18] [--images 64] [--batch-size 16]

Random weights saved to a local file stand in for the pretrained ones (speed does not depend on the
values). Three figures, all on the same images and machine:
  forward_only   the network alone on tensors already in memory (the ceiling);
  pipeline       cvtool's pipeline in-process: load weights from disk, decode JPEGs, preprocess,
                 infer, format records;
  cli            the whole `cvtool classify ...` command in a subprocess, interpreter start-up and
                 `import torch` included (what a shell script pays per call).
Each figure is the best of --repeats runs (the CLI: one run); forward_only and pipeline take turns after a
warm-up of each (cvtool.bench.time_calls).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

from cvtool.bench import time_calls, time_commands  # noqa: E402
from cvtool.io.inputs import iter_inputs  # noqa: E402
from cvtool.io.records import JsonLinesWriter  # noqa: E402
from cvtool.models.loading import load_model  # noqa: E402
from cvtool.models.registry import get_entry  # noqa: E402
from cvtool.pipelines.classify import ClassifyPipeline  # noqa: E402
from cvtool.tasks.classify import SPEC as CLASSIFY  # noqa: E402
from cvtool.pipelines.runner import run  # noqa: E402


def make_images(directory: Path, count: int) -> list[Path]:
    """Real photos (scikit-image's), cropped and resized differently each time, as 640x480 JPEGs."""
    from skimage import data

    sources = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        h, w = image.shape[:2]
        top, left = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = image[top : top + 3 * h // 4, left : left + 3 * w // 4]
        crop = cv2.resize(crop, (640, 480), interpolation=cv2.INTER_AREA)
        path = directory / f"img_{i:03d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp, args.images)
        weights = tmp / f"{args.model}-random.pt"
        torch.save(get_entry(args.model).build().state_dict(), weights)
        loaded = load_model(args.model, task="classify", weights=weights, progress=False)
        preprocess = loaded.preprocess

        tensors = torch.from_numpy(
            np.stack([preprocess(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for p in paths])
        )

        def forward_only() -> None:
            with torch.inference_mode():
                for i in range(0, len(tensors), args.batch_size):
                    loaded.module(tensors[i : i + args.batch_size])

        def pipeline() -> None:
            model = load_model(args.model, task="classify", weights=weights, progress=False)
            writer = JsonLinesWriter(io.StringIO(), CLASSIFY.columns, CLASSIFY.rows)
            items = iter_inputs([str(tmp)])
            for record in run(ClassifyPipeline(model), items, batch_size=args.batch_size, workers=2):
                assert "error" not in record, record
                writer.write(record)

        # the warm-up: first-call allocations and kernel selection
        times = time_calls({"forward_only": forward_only, "pipeline": pipeline}, iters=args.repeats, warmup=1)
        forward_ips, pipeline_ips = (len(paths) / min(times[k]) for k in ("forward_only", "pipeline"))

        cli = [sys.executable, "-m", "cvtool", "-q", "classify", str(tmp), "--weights", str(weights),
               "--model", args.model, "--batch-size", str(args.batch_size), "--format", "jsonl"]
        cli_ips = len(paths) / min(time_commands({"cli": cli}, repeats=1)["cli"])

    write_results(
        f"throughput_{args.model}",
        {
            "model": args.model,
            "images": len(paths),
            "image_size": "640x480 JPEG",
            "batch_size": args.batch_size,
            "forward_only_images_per_s": round(forward_ips, 2),
            "pipeline_images_per_s": round(pipeline_ips, 2),
            "pipeline_over_forward": round(pipeline_ips / forward_ips, 3),
            "cli_images_per_s": round(cli_ips, 2),
            "cli_over_forward": round(cli_ips / forward_ips, 3),
            "target_pipeline_over_forward": 0.8,
        },
    )


if __name__ == "__main__":
    main()
