"""Whole-process times of one-shot commands (issue 18), against the tool a user would otherwise pick.

- `cvtool verify-face A B` (mmod and haar; the default `--backend auto`: the ONNX exports cached by the warm-up
  run, no torch; and `--backend torch`) vs `face_recognition KNOWN B` (the face_recognition CLI on dlib: HOG
  detector, 0.6 tolerance; KNOWN a folder holding A alone), on the same photos;
- the same pair through face_recognition's Python API with dlib's CNN detector (`model="cnn"`, upsampled once),
  the detector `--detector mmod` ports;
- `cvtool classify` one digit with the shipped LeNet-5: `--backend torch`, the exported file (`--weights
  lenet5_digits.onnx`) and `--backend auto` from the cached export; `cvtool --help`; `python -c pass`, the floor.

The commands take turns (one round runs each once), median of --repeats after a warm-up round that fills the
caches; wall and CPU seconds (user + system, the process and its children) of each; the load average is
recorded before and after (on a loaded machine the CPU seconds are the steadier figure). Then, untimed, every pair of the photos in --faces
(folders of one person each) goes through both tools and their verdicts are compared.

    python bench/oneshot.py [--repeats 5] [--faces ../shared/datasets/faces] [--people obama,biden]

Needs the `compare` extra and `pip install --no-deps face_recognition` (see pyproject.toml).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]

from _results import write_results  # noqa: E402

DLIB_CNN_PAIR = """import sys, face_recognition as fr
images = [fr.load_image_file(p) for p in sys.argv[1:3]]
codes = [fr.face_encodings(i, known_face_locations=fr.face_locations(i, 1, "cnn")) for i in images]
print(fr.face_distance(codes[0], codes[1][0]).min() if codes[0] and codes[1] else "no face")
"""
TOLERANCE = 0.6  # face_recognition's default, and dlib's threshold, cvtool's default for dlib_face_resnet


def face_recognition_cli() -> str:
    """The face_recognition CLI beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "face_recognition"
    found = str(beside) if beside.exists() else shutil.which("face_recognition")
    if found is None:
        sys.exit("face_recognition is not installed: pip install -e .[compare] && pip install --no-deps face_recognition")
    return found


def known_folder(image: Path, tmp: Path) -> Path:
    """A face_recognition KNOWN folder holding `image` alone, named after it (the name it answers with)."""
    folder = tmp / f"known-{image.stem}"
    folder.mkdir(exist_ok=True)
    target = folder / f"{image.stem}{image.suffix}"
    if not target.exists():
        target.symlink_to(image.resolve())
    return folder


def face_recognition_same(cli: str, a: Path, b: Path, tmp: Path) -> bool | None:
    """face_recognition's verdict on (a, b): True when a face in b matches a's (None: no face found)."""
    done = subprocess.run([cli, "--tolerance", str(TOLERANCE), str(known_folder(a, tmp)), str(b)],
                          capture_output=True, text=True, check=True)
    names = [line.rsplit(",", 1)[1] for line in done.stdout.splitlines() if "," in line]
    if not names or names == ["no_persons_found"]:
        return None
    return a.stem in names


def cvtool_same(a: Path, b: Path, detector: str) -> bool | None:
    """cvtool's verdict (exit 0: same, 1: different; None: an error, e.g. no face found)."""
    done = subprocess.run([sys.executable, "-m", "cvtool", "-q", "verify-face", str(a), str(b), "--detector", detector,
                           "-f", "jsonl"], capture_output=True, text=True, cwd=ROOT)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        return None
    return bool(json.loads(done.stdout)["result"]["same"])


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children) of one whole process. Exit 0
    or 1 (verify-face's "different person") is success; anything else raises RuntimeError with its last line."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0, 1):
            errors.seek(0)
            last = errors.read().decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise RuntimeError(f"{shlex.join(argv)} exited with {proc.returncode}: {last[0]}")
    return wall, usage.ru_utime + usage.ru_stime


def time_commands(commands: dict[str, list[str]], *, repeats: int) -> tuple[dict, dict]:
    """Each command once per round, in turn (a warm-up round first, not counted): wall and CPU seconds."""
    wall = {name: [] for name in commands}
    cpu = {name: [] for name in commands}
    for round_ in range(repeats + 1):
        for name, argv in commands.items():
            w, c = run_once(argv)
            if round_:
                wall[name].append(w)
                cpu[name].append(c)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--faces", default=str(ROOT.parent / "shared" / "datasets" / "faces"))
    parser.add_argument("--people", default="obama,biden", help="folders of --faces whose photos are paired")
    parser.add_argument("--tag", default="", help="results file bench/results/oneshot_TAG.json (default oneshot.json)")
    parser.add_argument("--no-verdicts", action="store_true", help="time only; skip the all-pairs verdicts")
    parser.add_argument("--no-dlib-cnn", action="store_true", help="leave out face_recognition's API on dlib's CNN "
                        "(minutes and ~8 GB per run on a 2,000-px photo)")
    parser.add_argument("--a", default=None, help="timed pair: A (default: the first photo of the first person)")
    parser.add_argument("--b", default=None, help="timed pair: B (default: the second photo of the first person: "
                        "the same person, so that verify-face exits 0, which the timing asks of every command)")
    args = parser.parse_args()
    faces = Path(args.faces)
    people = {name: sorted((faces / name).glob("*.jpg")) for name in args.people.split(",")}
    first = next(iter(people.values()))
    a, b = Path(args.a or first[0]), Path(args.b or first[1])
    cli = face_recognition_cli()
    tmp = Path(tempfile.mkdtemp(prefix="cvtool-oneshot-"))
    digit = str(ROOT / "sample_images/digits/digit_0.png")
    lenet_onnx = tmp / "lenet5_digits.onnx"
    cvtool = [sys.executable, "-m", "cvtool", "-q"]
    subprocess.run([*cvtool, "export", "lenet5_digits", "--out", str(lenet_onnx)], check=True, cwd=ROOT)
    # the cached export `--backend auto` runs from (made once by `--backend onnxruntime`)
    subprocess.run([*cvtool, "classify", digit, "-m", "lenet5_digits", "--backend", "onnxruntime"], check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)

    commands = {"python -c pass": [sys.executable, "-c", "pass"], "cvtool --help": [*cvtool, "--help"]}
    for det in ("mmod", "haar"):
        commands[f"verify-face {det} torch"] = [*cvtool, "verify-face", str(a), str(b), "--detector", det,
                                                "--backend", "torch"]
        commands[f"verify-face {det} default (auto: cached ONNX)"] = [*cvtool, "verify-face", str(a), str(b),
                                                                      "--detector", det]
    # --face-index takes the face by its number among all faces, so every pyramid level is searched: the search
    # every verdict made before the coarse-to-fine one (issue 31); these photos hold one face each
    commands["verify-face mmod default, every level (--face-index 0)"] = [*cvtool, "verify-face", str(a), str(b),
                                                                          "--face-index", "0"]
    commands["face_recognition KNOWN B (dlib HOG)"] = [cli, "--tolerance", str(TOLERANCE), str(known_folder(a, tmp)),
                                                       str(b)]
    # the same detector as `--detector mmod` (dlib's CNN, upsampled once: faces from ~40 px), on dlib itself
    if not args.no_dlib_cnn:
        commands["face_recognition API A B (dlib CNN)"] = [sys.executable, "-c", DLIB_CNN_PAIR, str(a), str(b)]
    commands["classify lenet5_digits torch"] = [*cvtool, "classify", digit, "-m", "lenet5_digits", "--backend", "torch"]
    commands["classify --weights lenet5_digits.onnx"] = [*cvtool, "classify", digit, "--weights", str(lenet_onnx),
                                                         "--backend", "auto"]
    commands["classify lenet5_digits auto (cached ONNX)"] = [*cvtool, "classify", digit, "-m", "lenet5_digits",
                                                             "--backend", "auto"]
    load_before = os.getloadavg()
    times, cpu_times = time_commands(commands, repeats=args.repeats)
    load_after = os.getloadavg()

    photos = [] if args.no_verdicts else [p for name in people for p in people[name]]
    verdicts = []
    for x, y in itertools.combinations(photos, 2):
        truth = x.parent.name == y.parent.name
        verdicts.append({"a": x.name, "b": y.name, "same_person": truth,
                         "face_recognition": face_recognition_same(cli, x, y, tmp),
                         "cvtool_mmod": cvtool_same(x, y, "mmod"), "cvtool_haar": cvtool_same(x, y, "haar")})
    agree = {tool: sum(v[tool] == v["face_recognition"] for v in verdicts)
             for tool in ("cvtool_mmod", "cvtool_haar")}
    correct = {tool: sum(v[tool] == v["same_person"] for v in verdicts)
               for tool in ("face_recognition", "cvtool_mmod", "cvtool_haar")}
    median = {name: round(statistics.median(t), 3) for name, t in times.items()}
    median_cpu = {name: round(statistics.median(t), 3) for name, t in cpu_times.items()}
    fr, fr_cpu = median["face_recognition KNOWN B (dlib HOG)"], median_cpu["face_recognition KNOWN B (dlib HOG)"]
    figures = {
        "load_average": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in load_after],
        "threads": os.environ.get("OMP_NUM_THREADS", "libraries' defaults"),
        "repeats": args.repeats, "a": str(a), "b": str(b), "tolerance": TOLERANCE,
        "median_s": median,
        "median_cpu_s": median_cpu,
        "ratio_to_face_recognition": {name: round(s / fr, 3) for name, s in median.items() if "verify-face" in name},
        "cpu_ratio_to_face_recognition": {name: round(s / fr_cpu, 3) for name, s in median_cpu.items()
                                          if "verify-face" in name},
        "all_s": {name: [round(x, 3) for x in t] for name, t in times.items()},
        "all_cpu_s": {name: [round(x, 3) for x in t] for name, t in cpu_times.items()},
        "verdicts": {"pairs": len(verdicts), "agree_with_face_recognition": agree, "correct": correct,
                     "per_pair": verdicts},
    }
    for name, seconds in median.items():
        print(f"{name:44s} {seconds:7.3f} s wall {median_cpu[name]:7.3f} CPU-s")
    print(f"verdicts on {len(verdicts)} pairs: agree with face_recognition {agree}; correct {correct}")
    print(f"load average {figures['load_average']} -> {figures['load_average_after']}")
    print(write_results("oneshot" + (f"_{args.tag}" if args.tag else ""), figures))


if __name__ == "__main__":
    main()
