"""The U-Net paper's training recipe on the ISBI 2012 membrane set, scored on held-out slices by ISBI's own measure.

    python bench/unet_isbi.py [--epochs 150] [--width 32] [--threads 1] [--select rand] [--no-balance] [--ema 0.99]
                              [--seed 0] [--cpu-bf16] [--val-every 1]
                              [--name unet_isbi] [--baseline]

Needs ../shared/datasets/membrane (24 512x512 EM slices). The fixed split (numpy default_rng(0).permutation of the
24 sorted names): the first 5 are held out (4, 12, 7, 18, 19: the slices the README's earlier figures were taken
on), the next 3 validate (pick best.pt: 10, 8, 14), the other 16 train. Training: cvtool.train.segment (the library
under `cvtool train segment`) with elastic deformations, the border-weighted cross-entropy (w0 10, sigma 5 px),
64 px of mirrored context, 256 px crops + flips, AdamW + cosine, in this process with `--threads` torch threads;
its CPU time (all threads) is recorded against the 60 CPU-minute budget. `--baseline`: the README's earlier
recipe (CE + Dice, crops + flips only) on the same split, for a comparison within one machine state.
The README's recipe (`make eval-unet-isbi`): `--no-balance --ema 0.99 --cpu-bf16 --val-every 5 --epochs 380`.
On a CPU without bfloat16 instructions (AVX2 only; or CVTOOL_CPU_BF16=0), `--cpu-bf16` falls back to float32 in
one line: `--float32-epochs` (default 150, the README's float32 row), fewer where two epochs timed first on this
CPU say 150 would not fit the budget; the results file says so (`precision`, `fallback`).
Scoring: `cvtool val segment`'s code (cvtool.val.segment) on the 5 held-out slices, for best.pt and last.pt:
adapted Rand error of the cell regions after border thinning (ISBI 2012's final measure, cvtool/ops/regions.py),
VI split / merge, pixel accuracy, membrane IoU; with the threshold on the cell probability that training chose on
the validation slices and stored in the checkpoint, and with the plain argmax beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _results import write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "membrane"
BUDGET_CPU_S = 3600


def split(names: list[str]) -> dict[str, list[str]]:
    import numpy as np

    order = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    return {"held_out": order[:5], "val": order[5:8], "train": order[8:]}


def fixed_split() -> dict[str, list[str]]:
    """`split` of the shared slices' names; exits with a "skipped" line where ../shared is not here."""
    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is not here (the shared data sets sit beside the project)")
    return split(sorted(p.name for p in (DATA / "image").iterdir()))


def link_split(root: Path, picked: list[str]) -> Path:
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True)
        for name in picked:
            (root / sub / name).symlink_to(DATA / sub / name)
    return root


def scores(result: dict) -> dict:
    """The figures kept from a `cvtool.val.segment` result."""
    return {"adapted_rand_error": result["rand"]["adapted_rand_error"], "vi_split": result["rand"]["vi_split"],
            "vi_merge": result["rand"]["vi_merge"], "pixel_accuracy": result["pixel_accuracy"],
            "iou_membrane": result["iou"]["membrane"], "iou_cell": result["iou"]["cell"],
            "per_image_rand_error": result["rand"]["per_image_error"], "decision_threshold": result["decision_threshold"]}


def held_out_scores(weights: Path, held_dir: Path, threshold: float | None = None) -> dict:
    """The held-out slices scored with the checkpoint's own decision (`threshold`: this one instead), and with the
    plain argmax beside it when the two differ."""
    import cvtool.val

    own = scores(cvtool.val.segment(str(held_dir), weights=str(weights), device="cpu", threshold=threshold))
    if own["decision_threshold"] is not None:
        own["argmax"] = scores(cvtool.val.segment(str(held_dir), weights=str(weights), device="cpu", threshold=0.5))
    return own


def float32_fallback(args, options: dict, train_dir: Path, val_dir: Path, probe_dir: Path) -> dict:
    """The float32 epochs that fit the budget on this CPU: `--float32-epochs`, or fewer where two epochs of the
    same recipe (timed here, validated once) say they would not fit, keeping a tenth of the budget spare."""
    import cvtool.train

    cpu0 = time.process_time()
    cvtool.train.segment(str(train_dir), val=str(val_dir), out=str(probe_dir),
                         **{**options, "cpu_bf16": False, "epochs": 2, "val_every": 2})
    per_epoch = (time.process_time() - cpu0) / 2
    fits = int(0.9 * BUDGET_CPU_S / max(per_epoch, 1e-9))
    forced = os.environ.get("CVTOOL_CPU_BF16") == "0"
    reason = ("CVTOOL_CPU_BF16=0 says to run as on" if forced else "this CPU is") + " a CPU without bfloat16 instructions"
    return {"reason": reason, "epochs": max(1, min(args.float32_epochs, fits)),
            "probe_cpu_s_per_epoch": round(per_epoch, 1), "asked_epochs": args.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--select", default="rand", help="what picks best.pt on the 3 validation slices: rand, miou")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss", default="weighted-ce")
    parser.add_argument("--mirror-pad", type=int, default=64)
    parser.add_argument("--no-elastic", action="store_true")
    parser.add_argument("--no-balance", action="store_true", help="border weights with w_c = 1 (no class balancing)")
    parser.add_argument("--w0", type=float, default=10.0, help="the border weight map's w0 (the paper's 10)")
    parser.add_argument("--ema", type=float, default=0.0, help="validate and save a moving average of the weights "
                        "with this decay (0: off)")
    parser.add_argument("--cpu-bf16", action="store_true", help="train in bf16 mixed precision (channels-last)")
    parser.add_argument("--val-every", type=int, default=1, help="validate after every N-th epoch and the last")
    parser.add_argument("--float32-epochs", type=int, default=150,
                        help="--cpu-bf16 on a CPU without bf16: train float32 for at most this many epochs instead")
    parser.add_argument("--baseline", action="store_true", help="the README's earlier recipe on the same split")
    parser.add_argument("--seed", type=int, default=0, help="training's seed (the split stays fixed)")
    parser.add_argument("--name", default="unet_isbi")
    parser.add_argument("--keep", type=Path, help="keep the run directory here")
    args = parser.parse_args()
    parts = fixed_split()
    import torch

    torch.set_num_threads(args.threads)
    import cvtool.train
    if args.baseline:
        recipe = dict(loss="ce+dice", elastic=False, mirror_pad=0)
    else:
        recipe = dict(loss=args.loss, elastic=not args.no_elastic, mirror_pad=args.mirror_pad,
                      border_balance=not args.no_balance, border_w0=args.w0)
    options = dict(arch="unet", epochs=args.epochs, width=args.width, depth=4, crop=256, batch_size=4, lr=args.lr,
                   class_names=["membrane", "cell"], seed=args.seed, device="cpu", select=args.select, ema=args.ema,
                   cpu_bf16=args.cpu_bf16, val_every=args.val_every, **recipe)
    load_before = os.getloadavg()
    fallback = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dir, val_dir = link_split(tmp / "train", parts["train"]), link_split(tmp / "val", parts["val"])
        held_dir = link_split(tmp / "held_out", parts["held_out"])
        if args.cpu_bf16:
            from cvtool.device import cpu_description, cpu_has_bf16

            if not cpu_has_bf16():
                fallback = float32_fallback(args, options, train_dir, val_dir, tmp / "probe")
                cpu = cpu_description()
                print(f"unet_isbi: {fallback['reason']} ({cpu['model']}; {', '.join(cpu['isa']) or 'no AVX2'}): --cpu-bf16 "
                      f"falls back to float32, {fallback['epochs']} epochs (2 epochs took "
                      f"{fallback['probe_cpu_s_per_epoch']:.0f} CPU-s each here; budget {BUDGET_CPU_S} CPU-s)",
                      file=sys.stderr, flush=True)
                options.update(cpu_bf16=False, epochs=fallback["epochs"])
                args.epochs = fallback["epochs"]
        run = args.keep or tmp / "run"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = cvtool.train.segment(str(train_dir), val=str(val_dir), out=str(run), **options)
        train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        load_after = os.getloadavg()
        scored = {which: held_out_scores(run / f"{which}.pt", held_dir) for which in ("best", "last")}
    call = "cvtool.train.segment(TRAIN, val=VAL, " + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")"
    write_results(args.name, {
        "data": "ISBI 2012 membrane (../shared/datasets/membrane), 24 slices; split by "
                "numpy.random.default_rng(0).permutation of the sorted names: 5 held out, 3 validation, 16 train",
        "split": parts,
        "weights_scored": f"a moving average of the weights (decay {args.ema})" if args.ema else "the weights",
        "recipe": "baseline (README's earlier: CE + Dice, crops + flips)" if args.baseline else
                  "U-Net paper: elastic deformations (3x3 lattice, sigma 10 px), "
                  f"loss {args.loss}" + (f" (border weights w0 {args.w0:g}, sigma 5 px, "
                                         f"{'w_c = 1' if args.no_balance else 'class-balanced w_c'})"
                                         if args.loss.startswith("weighted") else "")
                  + ", mirrored context, 256 px crops + flips",
        "train_call": call,
        "torch_threads": args.threads,
        "precision": "bf16 mixed (--cpu-bf16)" if options["cpu_bf16"] else "float32",
        "fallback": fallback,
        "budget_cpu_s": BUDGET_CPU_S,
        "train_cpu_s": round(train_cpu, 1), "train_wall_s": round(train_wall, 1),
        "within_budget": train_cpu <= BUDGET_CPU_S,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "best_epoch": summary["best_epoch"], "epochs": args.epochs,
        "best_pt_selected_by": {"rand": "validation Rand F-score", "miou": "validation mIoU"}[args.select],
        "val_3_slices": {which: {k: round(summary[key][k], 4) for k in
                                 ("adapted_rand_error", "vi_split", "vi_merge", "pixel_accuracy", "iou_membrane")}
                         for which, key in (("best", "val"), ("last", "val_last_epoch"))},
        "held_out_5_slices": scored,
        "targets": {"adapted_rand_error": "<= 0.08", "pixel_accuracy": ">= 0.92 (README 0.913)",
                    "iou_membrane": ">= 0.67"},
    })


if __name__ == "__main__":
    main()
