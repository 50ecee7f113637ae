"""Our YOLO-style detector vs Ultralytics YOLO11n, both from scratch on the raccoon photos, the same CPU budget.

    python bench/yolo_vs_yolo11.py [--budget 600] [--img-size 256] [--ours '{"ema": 0.999}'] [--venv DIR]

- Data: ../shared/datasets/raccoon split as bench/eval_detect.py splits it (130 train / 33 validation photos,
  duplicate groups kept together, seed 0); Ultralytics gets the same photos in its YOLO layout.
- Training: each in its own process with one torch thread, started together. Both get the same CPU-seconds
  budget: a 3-epoch calibration run of each measures its CPU seconds per epoch (validation included) and
  start-up, and the real run gets the epochs that fit. The CPU seconds each run actually used are recorded.
  Ours: `cvtool train detect`'s recipe (256 px, width 16, batch 8, lr 5e-3, mosaic 0.5) plus --ours options;
  YOLO11n: `YOLO("yolo11n.yaml").train(...)` with Ultralytics' defaults (batch 16, close_mosaic 10, ...), no
  pretrained weights, amp off, plots off.
- Scoring: both checkpoints' boxes on the validation photos (conf 0.001, NMS IoU 0.6, 100 per image, rounded as
  `cvtool detect` prints them) scored by the same function, cvtool's pycocotools `coco_map`; best.pt and
  last.pt of each. Ours also through `cvtool val detect`'s code, which must equal its training summary.
- Speed: per image (decoded RGB in, boxes out at conf 0.25), batch 1, one thread, the two models interleaved.
- Ultralytics lives in a throw-away venv made here (python -m venv; a .pth file points at this project's
  venv, so torch is not downloaded twice; `pip install ultralytics --no-deps` and its missing small deps),
  run offline (YOLO_OFFLINE=1, a private YOLO_CONFIG_DIR with a TTF font as Arial.ttf).
Writes bench/results/yolo_vs_yolo11.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

CONF, IOU, MAX_DET = 0.001, 0.6, 100  # cvtool.val's DETECT_* (COCO-style scoring)
OURS_RECIPE = {"img_size": 256, "width": 16, "mosaic": 0.5}
OURS_CONFIG = {"batch_size": 8, "lr": 5e-3, "weight_decay": 5e-4, "warmup_epochs": 1, "monitor": "val_map50_95"}


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# -- the data, in both layouts ------------------------------------------------------------------------------
def prepare_data(tmp: Path) -> dict:
    from eval_detect import DATA, link_subset, split

    from cvtool.train.detection_data import read_voc

    stems = sorted(p.stem for p in (DATA / "annotations").glob("*.xml"))
    train, val = split(stems, 0.2, seed=0)
    layout = {"voc_train": link_subset(train, tmp / "voc_train"), "voc_val": link_subset(val, tmp / "voc_val")}
    yolo = tmp / "yolo"
    for part, folder in (("train", layout["voc_train"]), ("val", layout["voc_val"])):
        data = read_voc(folder)
        (yolo / "images" / part).mkdir(parents=True)
        (yolo / "labels" / part).mkdir(parents=True)
        import cv2

        for path, boxes in zip(data.paths, data.boxes):
            (yolo / "images" / part / path.name).symlink_to(path.resolve())
            h, w = cv2.imread(str(path)).shape[:2]
            lines = [f"0 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                     for x1, y1, x2, y2 in boxes.tolist()]
            (yolo / "labels" / part / f"{path.stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    (yolo / "data.yaml").write_text(f"path: {yolo}\ntrain: images/train\nval: images/val\nnames:\n  0: raccoon\n")
    layout["yolo_yaml"] = yolo / "data.yaml"
    return {k: str(v) for k, v in layout.items()} | {"train_images": len(train), "val_images": len(val)}


# -- Ultralytics' throw-away venv ---------------------------------------------------------------------------
def make_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # this venv's torch, numpy, OpenCV... and cvtool itself (for the shared scorer)
    (site / "cvtool_main.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{ROOT}\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps"]
    if subprocess.run([str(python), "-c", "import ultralytics"], capture_output=True).returncode:
        subprocess.run([*pip, "ultralytics"], check=True)
    missing = [pkg for pkg, module in (("psutil", "psutil"), ("polars", "polars"), ("ultralytics-thop", "thop"))
               if subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode]
    if missing:
        subprocess.run([*pip, *missing], check=True)
    return python


def ultralytics_env(config_dir: Path) -> dict:
    font = config_dir / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        font.parent.mkdir(parents=True, exist_ok=True)
        found = next(iter(sorted(Path("/usr/share/fonts").rglob("*.ttf"))), None)
        if found is None:
            sys.exit("no TTF font under /usr/share/fonts for Ultralytics (it would try to download Arial.ttf)")
        shutil.copy(found, font)
    return {"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(config_dir), "YOLO_VERBOSE": "False"}


# -- the training processes ---------------------------------------------------------------------------------
def child_ours(spec: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from cvtool.train.detection import DetectTrainArgs, run_training
    from cvtool.train.engine import Callbacks, TrainConfig

    marks = []

    class Marks(Callbacks):
        def on_epoch_end(self, row):
            marks.append(cpu_seconds())

    args = DetectTrainArgs(spec["data"]["voc_train"], val=spec["data"]["voc_val"], **{**OURS_RECIPE, **spec["ours"]})
    cfg = TrainConfig(epochs=spec["epochs"], seed=0, **OURS_CONFIG)
    summary = run_training(args, cfg, Path(spec["out"]), torch.device("cpu"), callbacks=Marks(), progress=False)
    return {"epoch_cpu_marks": marks, "summary": summary}


def child_yolo11(spec: dict) -> dict:
    import torch
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    torch_utils.NUM_THREADS = 1  # select_device sets torch's threads to this
    torch.set_num_threads(1)
    marks = []
    model = YOLO("yolo11n.yaml")
    model.add_callback("on_fit_epoch_end", lambda trainer: marks.append(cpu_seconds()))
    model.train(data=spec["data"]["yolo_yaml"], epochs=spec["epochs"], imgsz=spec["img_size"], device="cpu", workers=0,
                plots=False, amp=False, pretrained=False, seed=0, project=str(Path(spec["out"]).parent),
                name=Path(spec["out"]).name, exist_ok=True, verbose=False, patience=10_000)
    params = sum(p.numel() for p in model.model.parameters())
    return {"epoch_cpu_marks": marks, "params": params, "threads": torch.get_num_threads()}


def run_children(jobs: list[tuple[str, list[str], dict, dict]]) -> dict:
    """Start the training processes together; each writes its result (and CPU seconds) to a JSON file."""
    running = {}
    for name, python, spec, env in jobs:
        spec_path = Path(spec["out"] + ".spec.json")
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec))
        log = open(spec["out"] + ".log", "w")
        running[name] = (subprocess.Popen([*python, __file__, "--child", name, str(spec_path)], stdout=log,
                                          stderr=subprocess.STDOUT, env={**os.environ, **env}), spec, log)
    results = {}
    for name, (process, spec, log) in running.items():
        process.wait()
        log.close()
        if process.returncode:
            sys.exit(f"{name} failed; see {spec['out']}.log:\n{Path(spec['out'] + '.log').read_text()[-3000:]}")
        results[name] = json.loads(Path(spec["out"] + ".result.json").read_text())
    return results


# -- scoring and speed (in Ultralytics' venv, which sees cvtool too) ----------------------------------------
def child_score(spec: dict) -> dict:
    import cv2
    import numpy as np
    import torch
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    from cvtool.api import Detector
    from cvtool.ops.boxes import detection_record
    from cvtool.train.detection import coco_map, detection_tensors
    from cvtool.train.detection_data import open_detection_data
    from cvtool.val import detect as val_detect

    torch_utils.NUM_THREADS = 1
    torch.set_num_threads(1)
    data = open_detection_data(spec["data"]["voc_val"])
    truth = [{"boxes": torch.from_numpy(b).float().reshape(-1, 4), "labels": torch.from_numpy(c)}
             for b, c in zip(data.boxes, data.labels)]
    paths = [str(p) for p in data.paths]

    def theirs(model, conf, images):
        found = []
        for image in images:
            r = model.predict(image, conf=conf, iou=IOU, max_det=MAX_DET, imgsz=spec["img_size"], device="cpu",
                              verbose=False)[0].boxes
            found.append([detection_record(b, s, c, "raccoon") for b, s, c in
                          zip(r.xyxy.tolist(), r.conf.tolist(), r.cls.int().tolist())])
        return found

    scores = {}
    for which in ("best", "last"):
        ours = Detector(weights=Path(spec["ours_run"]) / f"{which}.pt", conf=CONF, iou=IOU, max_det=MAX_DET,
                        device="cpu")
        found = [detection_tensors(r.result["detections"]) for r in ours(paths, batch_size=1)]
        scores[f"ours_{which}"] = coco_map(truth, found, ["raccoon"])
        yolo = YOLO(str(Path(spec["yolo_run"]) / "weights" / f"{which}.pt"))
        found = [detection_tensors(d) for d in theirs(yolo, CONF, paths)]
        scores[f"yolo11n_{which}"] = coco_map(truth, found, ["raccoon"])
    via_val = val_detect(spec["data"]["voc_val"], weights=Path(spec["ours_run"]) / "best.pt", device="cpu")

    # speed: decoded RGB in, boxes at the deployment threshold out, batch 1, interleaved
    ours = Detector(weights=Path(spec["ours_run"]) / "best.pt", conf=0.25, device="cpu")
    yolo = YOLO(str(Path(spec["yolo_run"]) / "weights" / "best.pt"))
    rgb = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in paths]
    bgr = [np.ascontiguousarray(image[..., ::-1]) for image in rgb]
    for image in rgb[:3]:  # warm-up
        ours(image)
    theirs(yolo, 0.25, bgr[:3])
    times = {"ours": [], "yolo11n": []}
    for _ in range(spec.get("speed_repeats", 3)):
        for image_rgb, image_bgr in zip(rgb, bgr):
            start = time.perf_counter()
            ours(image_rgb)
            times["ours"].append(time.perf_counter() - start)
            start = time.perf_counter()
            theirs(yolo, 0.25, [image_bgr])
            times["yolo11n"].append(time.perf_counter() - start)
    ours_params = sum(p.numel() for p in ours.loaded.module.parameters())
    return {
        "scores": {k: {"map50": v["map50"], "map50_95": v["map50_95"]} for k, v in scores.items()},
        "ours_val_detect": {"map50": via_val["map50"], "map50_95": via_val["map50_95"]},
        "ms_per_image_median": {k: round(1000 * float(np.median(v)), 2) for k, v in times.items()},
        "ours_params": ours_params, "threads": torch.get_num_threads(),
    }


def per_epoch(marks: list[float]) -> tuple[float, float]:
    """(CPU seconds per epoch, start-up CPU seconds) from the CPU clock read at each epoch's end."""
    epoch = (marks[-1] - marks[0]) / (len(marks) - 1)
    return epoch, marks[0] - epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=600.0, help="CPU seconds of training for each model.")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--ours", default="{}", help="DetectTrainArgs options for ours, as JSON.")
    parser.add_argument("--venv", type=Path, help="Ultralytics' venv (default: a temporary one, removed after).")
    parser.add_argument("--keep", type=Path, help="Keep the runs and data here (default: a temporary folder).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = {"ours": child_ours, "yolo11": child_yolo11, "score": child_score}[args.child](spec)
        result["cpu_s"] = cpu_seconds()
        Path(spec["out"] + ".result.json").write_text(json.dumps(result))
        return

    from eval_detect import DATA

    if not DATA.is_dir():
        sys.exit(f"skipped: {DATA} is not here (the shared data sets sit beside the project)")
    from _results import write_results

    work = args.keep or Path(tempfile.mkdtemp(prefix="yolo_vs_yolo11_"))
    work.mkdir(parents=True, exist_ok=True)
    venv = args.venv or work / "venv"
    try:
        load_start = os.getloadavg()
        python = make_venv(venv)
        env = {**ultralytics_env(work / "yolo_config"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        data = prepare_data(work / "data")
        ours_options = json.loads(args.ours)
        common = {"data": data, "img_size": args.img_size, "ours": ours_options}

        def jobs(stage: str, epochs: dict) -> list:
            return [("ours", [sys.executable], {**common, "epochs": epochs["ours"], "out": str(work / stage / "ours")},
                     {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
                    ("yolo11", [str(python)], {**common, "epochs": epochs["yolo11"], "out": str(work / stage / "yolo11n")},
                     env)]

        calibration = run_children(jobs("calibrate", {"ours": 3, "yolo11": 3}))
        costs = {name: per_epoch(r["epoch_cpu_marks"]) for name, r in calibration.items()}
        epochs = {name: max(1, int((args.budget - start) // epoch)) for name, (epoch, start) in costs.items()}
        print(f"calibrated (CPU s per epoch, start-up): {costs}; epochs for {args.budget:.0f} CPU s: {epochs}",
              file=sys.stderr)
        trained = run_children(jobs("train", epochs))
        score_spec = {**common, "out": str(work / "score"), "ours_run": str(work / "train" / "ours"),
                      "yolo_run": str(work / "train" / "yolo11n")}
        scored = run_children([("score", [str(python)], score_spec, env)])["score"]
        load_end = os.getloadavg()
    finally:
        if args.venv is None and args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        elif args.venv is None:
            shutil.rmtree(venv, ignore_errors=True)
    summary = trained["ours"]["summary"]
    s = scored["scores"]
    r4 = lambda x: round(x, 4)  # noqa: E731
    figures = {
        "data": f"raccoon, {data['train_images']} train / {data['val_images']} validation photos (eval_detect.py's "
                "split: duplicate groups kept together, seed 0)",
        "budget_cpu_s_each": args.budget, "img_size": args.img_size, "threads_each": 1,
        "ours": {"recipe": {**OURS_RECIPE, **OURS_CONFIG, **ours_options}, "epochs": epochs["ours"],
                 "train_cpu_s": round(trained["ours"]["cpu_s"], 1), "params": scored["ours_params"],
                 "best_epoch": summary["best_epoch"],
                 "best": {"map50": r4(s["ours_best"]["map50"]), "map50_95": r4(s["ours_best"]["map50_95"])},
                 "last": {"map50": r4(s["ours_last"]["map50"]), "map50_95": r4(s["ours_last"]["map50_95"])},
                 "train_summary_val": {"map50": summary["val"]["map50"], "map50_95": summary["val"]["map50_95"]},
                 "val_detect": scored["ours_val_detect"],
                 "ms_per_image": scored["ms_per_image_median"]["ours"]},
        "yolo11n": {"recipe": "YOLO('yolo11n.yaml').train(imgsz, epochs, device=cpu, workers=0, amp=False, "
                              "pretrained=False, plots=False); Ultralytics defaults otherwise (batch 16, close_mosaic 10)",
                    "epochs": epochs["yolo11"], "train_cpu_s": round(trained["yolo11"]["cpu_s"], 1),
                    "params": trained["yolo11"]["params"],
                    "best": {"map50": r4(s["yolo11n_best"]["map50"]), "map50_95": r4(s["yolo11n_best"]["map50_95"])},
                    "last": {"map50": r4(s["yolo11n_last"]["map50"]), "map50_95": r4(s["yolo11n_last"]["map50_95"])},
                    "ms_per_image": scored["ms_per_image_median"]["yolo11n"]},
        "calibration_cpu_s_per_epoch_and_startup": {k: [round(v[0], 2), round(v[1], 1)] for k, v in costs.items()},
        "scoring": f"cvtool's coco_map (pycocotools) on both, conf {CONF}, NMS IoU {IOU}, max {MAX_DET} per image",
        "speed": "median ms per image, decoded RGB in, boxes (conf 0.25) out, batch 1, one thread, interleaved",
        "load_average_1min_start_end": [round(load_start[0], 2), round(load_end[0], 2)],
    }
    best_ours, best_theirs = figures["ours"]["best"], figures["yolo11n"]["best"]
    figures["target_met"] = {
        "map50": best_ours["map50"] > best_theirs["map50"], "map50_95": best_ours["map50_95"] > best_theirs["map50_95"],
        "faster": figures["ours"]["ms_per_image"] < figures["yolo11n"]["ms_per_image"]}
    write_results("yolo_vs_yolo11", figures)


if __name__ == "__main__":
    main()
