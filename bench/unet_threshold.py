"""Re-score saved `bench/unet_isbi.py` runs with the decision `train segment` now makes: a threshold on the cell
probability chosen on the 3 validation slices (the best mIoU among cvtool.train.segmentation.THRESHOLDS,
ties to the one nearest 0.5, the argmax's membranes kept as 1 px lines), then the 5 held-out slices scored with
it and with the plain argmax. For checkpoints saved before training stored the threshold; a checkpoint that
stores one is scored with its own (`--rechoose`: chosen again, for a checkpoint whose rule has changed since).

    python bench/unet_threshold.py RUN_DIR [RUN_DIR ...] [--rechoose] [--name unet_isbi_threshold]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402
from unet_isbi import fixed_split, held_out_scores, link_split  # noqa: E402


def chosen_on_validation(weights: Path, val_dir: Path) -> tuple[float, dict]:
    """train segment's choice, made again with cvtool.val.segment: (threshold, mIoU per threshold)."""
    import cvtool.val
    from cvtool.train.segmentation import THRESHOLDS

    miou = {t: cvtool.val.segment(str(val_dir), weights=str(weights), device="cpu", threshold=t, rand=False)["miou"]
            for t in THRESHOLDS}
    return max(THRESHOLDS, key=lambda t: (miou[t], -abs(t - 0.5))), miou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of bench/unet_isbi.py --keep")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rechoose", action="store_true", help="choose again even where the checkpoint stores one")
    parser.add_argument("--name", default="unet_isbi_threshold")
    args = parser.parse_args()
    parts = fixed_split()
    import torch

    torch.set_num_threads(args.threads)
    from cvtool.api import Segmenter

    runs, load_before, start = {}, os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        val_dir, held_dir = link_split(Path(tmp) / "val", parts["val"]), link_split(Path(tmp) / "held", parts["held_out"])
        for run in args.runs:
            for which in ("best", "last"):
                weights = run / f"{which}.pt"
                stored = Segmenter(weights=weights, device="cpu").decision_threshold
                if stored is None or args.rechoose:
                    threshold, tried = chosen_on_validation(weights, val_dir)
                    row = {"threshold_from": "chosen here on the 3 validation slices", "val_miou": tried,
                           "stored_threshold": stored}
                else:
                    threshold, row = None, {"threshold_from": "the checkpoint"}
                row["held_out_5_slices"] = held_out_scores(weights, held_dir, threshold)
                runs[f"{run}/{which}.pt"] = row
                print(run, which, row["held_out_5_slices"]["decision_threshold"],
                      {k: row["held_out_5_slices"][k] for k in ("adapted_rand_error", "pixel_accuracy", "iou_membrane")},
                      flush=True)
    write_results(args.name, {
        "what": "held-out scores with the validation-chosen threshold on the cell probability vs the argmax",
        "split": parts, "torch_threads": args.threads, "seconds": round(time.perf_counter() - start, 1),
        "loadavg_before": [round(x, 2) for x in load_before], "runs": runs,
    })


if __name__ == "__main__":
    main()
