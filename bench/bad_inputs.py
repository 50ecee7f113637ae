"""Bad-input, integrity and fault sweep over every command: count tracebacks, changed inputs, hangs and
silent wrong answers.

    python bench/bad_inputs.py            # 170-odd cases, about 8-10 minutes on a loaded 2-core machine

Every case runs the real `python -m cvtool ...` in a subprocess (private TORCH_HOME and CVTOOL_CACHE in a
temporary directory, CVTOOL_OFFLINE=1, CVTOOL_NO_PROGRESS=1, OMP_NUM_THREADS=1), with a 60 s limit: a case
still running then is a hang (its process group is killed). For each case it records the command, the
case, the exit code, the last stderr line (the one-line message), whether a traceback was printed,
whether every input file kept its SHA-256 (hashed before and after), and whether it hung.

Cases:
- image corpus (tests/badinputs.py: empty, text, truncated JPEG/PNG, random bytes, 50000x50000 PNG bomb,
  awkward valid files, 1x1 and very thin/wide images, a missing path, an empty folder) through classify,
  detect, segment, stylize --model and verify-face --gallery, in one batch per command (each input needs
  its own record and, if bad, its own reason; the batch must go on and exit 1), and through classify one
  file at a time (exit code per file); verify-face A B with a bad A;
- a FIFO as a file and inside a directory, per command (and as --weights, as the calibration CSV, in
  training data, as the checkpoint to export);
- --out that cannot be written even by root (an immutable directory, a path under /proc, a path under
  a regular file): exit 2, one line, no work done; --out equal to the input folder holding files named like outputs
  (`foo.detect.jpg`, `bar.mask.png`, ... made here, so the user's: inputs, never overwritten), run twice: no
  input changed, no output of an output cvtool wrote, the rerun makes no new file;
- silent wrong answers: flipped bytes in the converted dlib caches and in an ONNX export cache (the answer
  must stay the same, or the command refuse), a random state_dict under resnet18's torch-cache name
  (refuse, exit 2), pickled code as weights (refuse, and the code must not run), malformed pairs CSVs for
  --calibrate (exit 2), `train classify --arch lenet5 --img-size 64` (refused, no run directory left);
- SIGINT and SIGKILL in the middle of a detect batch, then a rerun with --skip-existing: every input done
  exactly once, no output that does not decode.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _results import write_results  # noqa: E402
from badinputs import (  # noqa: E402
    flip_bytes_in_place,
    make_awkward_sizes,
    make_bad_corpus,
    make_fifo,
    write_pickled_code,
)

TIMEOUT = 60  # seconds: a case still running then is a hang
PARALLEL = 4  # cases at once (each is one process, mostly waiting for torch to import)
SAMPLES = ROOT / "sample_images"
FACES = ROOT.parent / "shared" / "datasets" / "faces"
ASTRONAUT = SAMPLES / "photos" / "astronaut.jpg"
# classify one file at a time (exit code per file): a few; the batches put every file through every command
ALONE = {"empty.jpg", "truncated.jpg", "bomb.png", "missing.jpg", "empty_dir", "café_日本.png", "size_1x1.png"}
OUTPUT_TOKENS = (".detect", ".mask", ".overlay", ".stylized", ".segment", ".faces", ".classify")

ENV: dict = {}  # filled in by main()
T: Path = Path()  # the sweep's temporary directory


# -- running one case -----------------------------------------------------------------------------


def _regular_files(paths) -> list[Path]:
    """Every regular file under the given inputs (FIFOs and other special files are never opened)."""
    found = []
    for path in map(Path, paths):
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            found.append(path)
        elif stat.S_ISDIR(mode):
            for sub in sorted(path.rglob("*")):
                if sub.is_file() and stat.S_ISREG(sub.lstat().st_mode):
                    found.append(sub)
    return found


def checksums(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in _regular_files(paths)}


def cvtool(args: list[str], *, inputs=(), timeout: float = TIMEOUT, cwd: Path | None = None) -> dict:
    """Run `python -m cvtool ARGS`; return exit, message, traceback, inputs_unchanged, hang, stdout."""
    before = checksums(inputs)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "cvtool", *map(str, args)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               cwd=cwd or T, start_new_session=True)
    hang = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hang = True
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    after = checksums(inputs)
    changed = sorted(k for k in before if after.get(k) != before[k])
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {"exit": None if hang else process.returncode, "message": lines[-1] if lines else "",
            "traceback": "Traceback" in stderr, "inputs_unchanged": not changed, "inputs_changed": changed,
            "hang": hang, "seconds": round(time.perf_counter() - started, 1), "stdout": stdout, "stderr": stderr}


def records(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def row(command: str, case: str, run: dict, *, ok: bool, why: str = "", **extra) -> dict:
    """One result row; `ok` is the case's own verdict, combined with the universal rules."""
    reasons = [why] if why and not ok else []
    if run["traceback"]:
        reasons.append("traceback")
    if run["hang"]:
        reasons.append(f"hang (> {TIMEOUT} s)")
    if not run["inputs_unchanged"]:
        reasons.append("inputs changed: " + ", ".join(Path(p).name for p in run["inputs_changed"]))
    if run["exit"] == 3:
        reasons.append("internal error (exit 3)")
    return {"command": command, "case": case, "exit": run["exit"], "message": run["message"],
            "traceback": run["traceback"], "inputs_unchanged": run["inputs_unchanged"], "hang": run["hang"],
            "seconds": run["seconds"], **extra, "ok": not reasons, "failure": "; ".join(reasons)}


def refusal(command: str, case: str, args: list, *, inputs=(), exits=(2,), reason: str = "", silent: bool = True,
            after=None) -> dict:
    """A case that must be refused: a listed non-zero exit, a one-line `cvtool: ...` message (with
    `reason` in it), no result record. `silent`: answering instead would be a silent wrong answer."""
    run = cvtool(args, inputs=inputs)
    answered = [r for r in records(run["stdout"]) if "error" not in r]
    refused = run["exit"] in exits and run["message"].startswith("cvtool: ") and not answered and not run["traceback"]
    why = []
    if run["exit"] not in exits:
        why.append(f"exit {run['exit']}, expected {'/'.join(map(str, exits))}")
    if not run["message"].startswith("cvtool: "):
        why.append("no one-line cvtool: message")
    if reason and reason not in run["message"]:
        why.append(f"message lacks {reason!r}")
    if answered:
        why.append(f"{len(answered)} result record(s) printed")
    extra_ok, extra_why = (True, "") if after is None else after()
    if not extra_ok:
        why.append(extra_why)
    fields = {"refused": refused} if silent else {}
    if silent:
        fields["silent_wrong_answer"] = run["exit"] == 0 or bool(answered)
    return row(command, case, run, ok=not why, why="; ".join(why), **fields)


# -- fixtures -------------------------------------------------------------------------------------


def build_models(directory: Path) -> dict[str, Path]:
    """Random-weight checkpoints (as tests/test_video.py and tests/test_api.py build them)."""
    import torch

    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.models.transformer_net import FAST_STYLE_PREPROCESS, TransformerNet
    from cvtool.models.unet import UNET_PREPROCESS, UNet
    from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    yolo = YoloDetector(num_classes=2, width=4, img_size=64)
    with torch.no_grad():
        yolo.head.bias.zero_()
    save_checkpoint(directory / "yolo.pt", arch="yolo", task="detect", state_dict=yolo.state_dict(),
                    classes=["square", "disk"], preprocess=YOLO_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"anchors": yolo.anchors.tolist(), "width": 4, "img_size": 64}})
    unet = UNet(num_classes=2, in_channels=1, width=4, depth=2)
    save_checkpoint(directory / "unet.pt", arch="unet", task="segment", state_dict=unet.state_dict(),
                    classes=["background", "shape"], preprocess=UNET_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": 4, "depth": 2, "in_channels": 1}})
    style = TransformerNet(width=4, blocks=1)
    save_checkpoint(directory / "style.pt", arch="fast_style", task="stylize", state_dict=style.state_dict(),
                    classes=[], preprocess=FAST_STYLE_PREPROCESS.to_dict(),
                    extra={"arch_kwargs": {"width": 4, "blocks": 1}})
    write_pickled_code(directory / "evil.pt", T / "PICKLED_CODE_RAN")
    (directory / "random.pt").write_bytes(np.random.default_rng(2).integers(0, 256, 5000, np.uint8).tobytes())
    make_fifo(directory / "pipe.pt")
    return {p.stem: p for p in directory.iterdir()}


def photo(path: Path, width: int = 160, height: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 / width, ys * 255 / height, np.full_like(xs, 128.0)], axis=-1)
    array = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# -- the cases ------------------------------------------------------------------------------------


def command_args(models: dict) -> dict[str, list]:
    """Each image command, ready for inputs; outputs go to a fresh folder per run."""
    gallery = T / "gallery"
    gallery.mkdir(exist_ok=True)
    if not (gallery / "astronaut.jpg").exists():
        shutil.copy(ASTRONAUT, gallery / "astronaut.jpg")
    return {
        "classify": ["classify", "--model", "lenet5_digits", "-f", "jsonl"],
        "detect": ["detect", "--weights", models["yolo"], "--conf", "0.05", "-f", "jsonl"],
        "segment": ["segment", "--weights", models["unet"], "-f", "jsonl"],
        "stylize": ["stylize", "--model", models["style"], "-f", "jsonl"],
        "verify-face --gallery": ["verify-face", "--gallery", gallery, "-f", "jsonl"],
    }


def batch_cases(command: str, args: list, corpus: dict[str, str]) -> list[dict]:
    """The whole corpus in one call: every input gets its own record (its reason, if bad); exit 1."""
    out = T / "out" / command.replace(" ", "_").replace("-", "")
    names = sorted(corpus)
    paths = [str(T / "corpus" / name) for name in names]
    run = cvtool([*args, *paths, "--out", out], inputs=[T / "corpus"])
    by_path: dict[str, list] = {}
    for record in records(run["stdout"]):
        by_path.setdefault(record.get("path"), []).append(record)
    face = command.startswith("verify-face")
    partial = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")] if out.is_dir() else []
    rows = []
    for name, path in zip(names, paths):
        mine = by_path.get(path, [])
        line = next((ln for ln in run["stderr"].splitlines() if ln.startswith(f"cvtool: {path}: ")), "")
        expected = corpus[name]
        why = ""
        if not mine:
            why = "no record for this input (the batch stopped?)"
        elif expected == "":  # a valid file: a result, or (tiny sizes; no face) one error line for it
            if "error" in mine[0] and not (face or name.startswith("size_")):
                why = f"valid file failed: {mine[0]['error']}"
            elif "error" in mine[0] and not line:
                why = "error record without its stderr line"
        elif "error" not in mine[0]:
            why = f"bad file answered instead of refused (expected {expected!r})"
        elif expected not in line:
            why = f"message lacks {expected!r}"
        if not why and run["exit"] != 1:
            why = f"batch exit {run['exit']}, expected 1"
        if not why and partial:
            why = "partial output files: " + ", ".join(partial)
        status = "none" if not mine else ("error" if "error" in mine[0] else "ok")
        result = row(command, f"batch: {name}", run, ok=not why, why=why, input_status=status)
        result["message"] = line
        rows.append(result)
    return rows


def single_classify(args: list, name: str, expected: str) -> dict:
    path = T / "corpus" / name
    run = cvtool([*args, path], inputs=[path])
    line = next((ln for ln in run["stderr"].splitlines() if ln.startswith(f"cvtool: {path}: ")), "")
    want = {0} if expected == "" else {1}
    if name.startswith("size_"):
        want = {0, 1}
    why = ""
    if run["exit"] not in want:
        why = f"exit {run['exit']}, expected {'/'.join(map(str, sorted(want)))}"
    elif expected and expected not in line:
        why = f"message lacks {expected!r}"
    result = row("classify", f"alone: {name}", run, ok=not why, why=why)
    result["message"] = line or result["message"]
    return result


def fifo_cases(command: str, args: list) -> dict:
    """A FIFO given as a file and a FIFO inside a directory, with a good image beside it: the good image
    gets its result, the FIFO one line; nothing blocks."""
    good = T / "fifo_dir" / "good.png"
    out = T / "out" / ("fifo_" + command.replace(" ", "_").replace("-", ""))
    run = cvtool([*args, T / "pipe.jpg", T / "fifo_dir", "--out", out], inputs=[T / "fifo_dir"])
    recs = records(run["stdout"])
    good_done = any(r.get("path") == str(good) for r in recs)
    why = ""
    if not good_done:
        why = "the good image beside the FIFO got no record"
    elif not any(str(T / "pipe.jpg") in ln for ln in run["stderr"].splitlines()):
        why = "no line about the FIFO given as a file"
    elif run["exit"] not in (0, 1):
        why = f"exit {run['exit']}"
    return row(command, "FIFO as a file and inside a directory", run, ok=not why, why=why)


def verify_pair_case(name: str, expected: str) -> dict:
    path = T / "corpus" / name if name not in ("pipe.jpg",) else T / "pipe.jpg"
    return refusal("verify-face A B", f"A = {name}", ["verify-face", path, ASTRONAUT, "-f", "jsonl"],
                   inputs=[path, ASTRONAUT], exits=(2,), reason=expected, silent=False)


def unwritable_out_cases(models: dict, commands: dict) -> list:
    """--out that even root cannot write: refused (exit 2, one line) before any work; nothing made."""
    targets = {"/proc": Path("/proc/cvtool-bench/out")}
    regular = T / "regular_file.txt"
    regular.write_text("a file, not a folder\n")
    targets["under a regular file"] = regular / "out"
    immutable = T / "immutable_out"
    immutable.mkdir(exist_ok=True)
    if subprocess.run(["chattr", "+i", str(immutable)], capture_output=True).returncode == 0:
        targets["immutable folder (chattr +i)"] = immutable
    image = SAMPLES / "digits" / "digit_3.png"
    jobs = []
    for kind, target in targets.items():
        every = kind.startswith("immutable")  # every command; the other two kinds through detect and export
        for command, args in commands.items():
            if every or command == "detect":
                jobs.append(("refusal", (command, f"--out {kind}", [*args, image, "--out", target]),
                             {"inputs": [image], "silent": False}))
        onnx = target / "yolo.onnx"
        if every or kind == "/proc":
            jobs.append(("refusal", ("export", f"--out {kind}", ["export", models["yolo"], "--out", onnx]),
                         {"inputs": [models["yolo"]], "silent": False}))
        run_dir = target / "run"
        if every:
            jobs.append(("refusal", ("train classify", f"--out {kind}",
                                     ["train", "classify", T / "train_ok", "--arch", "lenet5", "--epochs", "1",
                                      "--device", "cpu", "--out", run_dir]),
                         {"inputs": [T / "train_ok"], "silent": False}))
    return jobs


def out_is_input_case(command: str, args: list, existing: dict[str, str]) -> dict:
    """--out equal to the input folder that holds the user's files named like outputs, run twice."""
    folder = T / ("same_" + command.replace(" ", "_").replace("-", ""))
    folder.mkdir()
    photo(folder / "foo.jpg", seed=3)
    photo(folder / "bar.png", seed=4)
    for name, like in existing.items():
        photo(folder / name, seed=hash(name) % 100)
    before = set(os.listdir(folder))
    first = cvtool([*args, folder, "--out", folder], inputs=[folder / n for n in before])
    after_first = set(os.listdir(folder))
    second = cvtool([*args, folder, "--out", folder], inputs=[folder / n for n in before])
    after_second = set(os.listdir(folder))
    # the lookalikes were made here, not by cvtool: they are inputs, and an output of one (foo.detect.detect.jpg)
    # is right; an output of an output cvtool wrote would carry a third token (or be new in the rerun, below)
    doubled = sorted(n for n in after_second if sum(n.count(t) for t in OUTPUT_TOKENS) >= 3)
    temps = sorted(n for n in after_second if n.endswith(".tmp"))
    why = []
    if doubled:
        why.append("outputs of outputs: " + ", ".join(doubled))
    if after_second - after_first:
        why.append("the rerun made new files: " + ", ".join(sorted(after_second - after_first)))
    if temps:
        why.append("temp files left: " + ", ".join(temps))
    for run in (first, second):
        if run["exit"] not in (0, 1, 2):
            why.append(f"exit {run['exit']}")
    merged = dict(second)
    merged["traceback"] = first["traceback"] or second["traceback"]
    merged["inputs_unchanged"] = first["inputs_unchanged"] and second["inputs_unchanged"]
    merged["inputs_changed"] = first["inputs_changed"] + second["inputs_changed"]
    merged["hang"] = first["hang"] or second["hang"]
    return row(command, "--out = the input folder, holding " + ", ".join(existing) + "; run twice", merged,
               ok=not why, why="; ".join(why), first_exit=first["exit"], first_message=first["message"],
               new_files=sorted(after_first - before), silent_wrong_answer=bool(doubled))


def _result_of(run: dict) -> list:
    return [r.get("result", r.get("error")) for r in records(run["stdout"])]


def same_or_refused(command: str, case: str, baseline: dict, run: dict, *, rounding=4) -> dict:
    def rounded(value):
        return json.loads(json.dumps(value), parse_float=lambda s: round(float(s), rounding))

    same = rounded(_result_of(run)) == rounded(_result_of(baseline)) and run["exit"] == baseline["exit"]
    refused = run["exit"] == 2 and run["message"].startswith("cvtool: ") and not records(run["stdout"])
    why = "" if same or refused else f"answer changed: {_result_of(run)!r:.200} (baseline exit {baseline['exit']})"
    return row(command, case, run, ok=same or refused, why=why, refused=refused, same_answer=same,
               silent_wrong_answer=not (same or refused))


def landmark_cache_cases() -> list[dict]:
    """Flip bytes in the converted dlib models; verify-face's answer must not move."""
    if (FACES / "obama").is_dir():
        a, b = FACES / "obama" / "obama1.jpg", FACES / "biden" / "biden1.jpg"
    else:  # the same face, mirrored: "same person"
        a, b = ASTRONAUT, T / "astronaut_mirrored.jpg"
        Image.open(ASTRONAUT).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(b)
    args = ["verify-face", a, b, "-f", "jsonl"]
    baseline = cvtool(args, inputs=[a, b], timeout=180)  # converts dlib's models into the empty cache
    rows = [row("verify-face A B", "baseline (converts the models)", baseline,
                ok=baseline["exit"] in (0, 1), why=f"exit {baseline['exit']}")]
    dlib = Path(ENV["CVTOOL_CACHE"]) / "dlib"
    groups = {"flipped bytes in the 5-point landmark cache": ["shape_predictor-*5_face*.pt"],
              "flipped bytes in the face-embedder and MMOD caches": ["dlib_face_resnet-*.pt", "dlib_mmod_face-*.pt"]}
    for case, patterns in groups.items():
        found = [p for pattern in patterns for p in dlib.glob(pattern)]
        if not found:
            rows.append(row("verify-face A B", case, baseline, ok=False, why="no cache file to tamper with"))
            continue
        for path in found:
            flip_bytes_in_place(path)
        rows.append(same_or_refused("verify-face A B", case, baseline, cvtool(args, inputs=[a, b])))
    return rows


def onnx_cache_case() -> list[dict]:
    digits = SAMPLES / "digits"
    args = ["classify", "--model", "lenet5_digits", "--backend", "onnxruntime", "-f", "jsonl", digits]
    baseline = cvtool(args, inputs=[digits], timeout=120)
    rows = [row("classify --backend onnxruntime", "baseline (exports into the cache)", baseline,
                ok=baseline["exit"] == 0, why=f"exit {baseline['exit']}")]
    found = list((Path(ENV["CVTOOL_CACHE"]) / "onnx").glob("*.onnx"))
    if not found:
        return rows + [row("classify --backend onnxruntime", "flipped bytes in the ONNX export cache", baseline,
                           ok=False, why="no ONNX cache file to tamper with")]
    for path in found:
        flip_bytes_in_place(path, at=0.5, count=256)
    rows.append(same_or_refused("classify --backend onnxruntime", "flipped bytes in the ONNX export cache",
                                baseline, cvtool(args, inputs=[digits])))
    return rows


def torch_cache_case() -> dict:
    """A random state_dict under the exact file name the offline message asks for."""
    import torch
    import torchvision

    hub = Path(ENV["TORCH_HOME"]) / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), hub / "resnet18-f37072fd.pth")
    return refusal("classify", "random state_dict as $TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth",
                   ["classify", "--model", "resnet18", "-f", "jsonl", ASTRONAUT], inputs=[ASTRONAUT], exits=(2,))


def calibrate_jobs() -> list:
    if (FACES / "obama").is_dir():
        o1, o2, b1 = (FACES / "obama" / "obama1.jpg", FACES / "obama" / "obama2.jpg", FACES / "biden" / "biden1.jpg")
    else:
        o1, o2, b1 = ASTRONAUT, ASTRONAUT, ASTRONAUT
    csvs = T / "csv"
    csvs.mkdir()
    (csvs / "good.csv").write_text(f"path_a,path_b,same\n{o1},{o2},1\n{o1},{b1},0\n")
    bad = {
        "two columns": f"path_a,path_b\n{o1},{o2}\n",
        "same = maybe": f"path_a,path_b,same\n{o1},{o2},maybe\n{o1},{b1},0\n",
        "binary garbage": None,
    }
    jobs = []
    for i, (case, text) in enumerate(bad.items()):
        path = csvs / f"bad{i}.csv"
        if text is None:
            path.write_bytes(np.random.default_rng(3).integers(0, 256, 3000, np.uint8).tobytes())
        else:
            path.write_text(text)
        jobs.append(("refusal", ("verify-face --calibrate", f"malformed CSV: {case}",
                                 ["verify-face", "--calibrate", path, "-f", "jsonl"]),
                     {"inputs": [path], "exits": (2,)}))
    make_fifo(csvs / "pipe.csv")
    jobs.append(("refusal", ("verify-face --calibrate", "the CSV is a FIFO",
                             ["verify-face", "--calibrate", csvs / "pipe.csv", "-f", "jsonl"]), {"exits": (2,)}))
    jobs.append(("refusal", ("verify-face --calibrate", "missing CSV",
                             ["verify-face", "--calibrate", csvs / "missing.csv", "-f", "jsonl"]), {"exits": (2,)}))
    jobs.append(("plain", ("verify-face --calibrate", "valid pairs CSV",
                           ["verify-face", "--calibrate", csvs / "good.csv", "-f", "jsonl"]),
                 {"inputs": [csvs / "good.csv", o1, o2, b1], "exits": (0,), "timeout": 3 * TIMEOUT}))  # real work
    return jobs


def plain(command: str, case: str, args: list, *, inputs=(), exits=(0,), after=None, timeout=TIMEOUT) -> dict:
    run = cvtool(args, inputs=inputs, timeout=timeout)
    why = "" if run["exit"] in exits else f"exit {run['exit']}, expected {'/'.join(map(str, exits))}"
    if not why and after is not None:
        ok, note = after()
        why = "" if ok else note
    return row(command, case, run, ok=not why, why=why)


def train_jobs() -> list:
    digits = sorted((SAMPLES / "digits").glob("*.png"))
    for folder, extra in (("train_ok", None), ("train_corrupt", "corrupt"), ("train_fifo", "fifo"), ("train_tiny", "tiny")):
        for copy in range(1 if extra == "tiny" else 2):
            for i, path in enumerate(digits[:4] if extra == "tiny" else digits):
                target = T / folder / ("even" if i % 2 == 0 else "odd") / f"{copy}_{path.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
        if extra == "corrupt":
            shutil.copy(T / "corpus" / "truncated.png", T / folder / "even" / "truncated.png")
            shutil.copy(T / "corpus" / "empty.jpg", T / folder / "odd" / "empty.jpg")
            shutil.copy(T / "corpus" / "random.png", T / folder / "odd" / "random.png")
        if extra == "fifo":
            make_fifo(T / folder / "even" / "pipe.png")
    (T / "train_empty").mkdir()
    base = ["train", "classify", "--arch", "lenet5", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "-f", "json"]
    runs = T / "runs"

    def no_dir(path):
        return lambda: (not path.exists(), f"left {path.name}/ behind: {sorted(os.listdir(path)) if path.exists() else ''}")

    return [
        ("plain", ("train classify", "ImageFolder of 20 digits, 1 epoch", [*base, T / "train_ok", "--out", runs / "ok"]),
         {"inputs": [T / "train_ok"], "exits": (0,)}),
        ("plain", ("train classify", "2 images per class (default --val-split 0.1)",
                   [*base, T / "train_tiny", "--out", runs / "tiny"]),
         {"inputs": [T / "train_tiny"], "exits": (0, 2)}),
        ("refusal", ("train classify", "--arch lenet5 --img-size 64",
                     [*base, T / "train_ok", "--img-size", "64", "--out", runs / "img64"]),
         {"inputs": [T / "train_ok"], "exits": (2,), "after": no_dir(runs / "img64")}),
        ("plain", ("train classify", "corrupt images among the training data",
                   [*base, T / "train_corrupt", "--out", runs / "corrupt"]),
         {"inputs": [T / "train_corrupt"], "exits": (0, 1, 2)}),
        ("plain", ("train classify", "a FIFO among the training data", [*base, T / "train_fifo", "--out", runs / "fifo"]),
         {"inputs": [T / "train_fifo"], "exits": (0, 1, 2)}),
        ("refusal", ("train classify", "empty data folder", [*base, T / "train_empty", "--out", runs / "empty"]),
         {"inputs": [T / "train_empty"], "exits": (2,), "silent": False, "after": no_dir(runs / "empty")}),
        ("refusal", ("train classify", "missing data folder", [*base, T / "nowhere", "--out", runs / "missing"]),
         {"exits": (2,), "silent": False, "after": no_dir(runs / "missing")}),
        ("refusal", ("train classify", "pickled code as --weights (--eval-only)",
                     [*base, T / "train_ok", "--eval-only", "--weights", T / "models" / "evil.pt"]),
         {"inputs": [T / "train_ok", T / "models" / "evil.pt"], "exits": (2,), "after": code_did_not_run}),
    ]


def code_did_not_run():
    marker = T / "PICKLED_CODE_RAN"
    return not marker.exists(), "THE PICKLED CODE RAN"


def weights_jobs(models: dict, commands: dict) -> list:
    image = SAMPLES / "digits" / "digit_3.png"
    jobs = []
    evil = models["evil"]
    for command, args in [
        ("classify", ["classify", "--model", "lenet5", "--weights", evil]),
        ("detect", ["detect", "--weights", evil]),
        ("segment", ["segment", "--weights", evil]),
        ("stylize", ["stylize", "--model", evil]),
        ("verify-face A B", ["verify-face", "--weights", evil, ASTRONAUT]),
    ]:
        jobs.append(("refusal", (command, "pickled code as weights", [*args, image, "-f", "jsonl"]),
                     {"inputs": [image, evil], "exits": (2,), "after": code_did_not_run}))
    jobs.append(("refusal", ("export", "pickled code as the checkpoint", ["export", evil, "--out", T / "evil.onnx"]),
                 {"inputs": [evil], "exits": (2,), "after": code_did_not_run}))
    for name in ("random", "pipe"):
        what = {"random": "random bytes", "pipe": "a FIFO"}[name]
        jobs.append(("refusal", ("classify", f"{what} as --weights",
                                 ["classify", "--model", "lenet5", "--weights", models[name], image, "-f", "jsonl"]),
                     {"inputs": [image, models[name]], "exits": (2,)}))
        jobs.append(("refusal", ("export", f"{what} as the checkpoint",
                                 ["export", models[name], "--out", T / f"{name}.onnx"]),
                     {"inputs": [models[name]], "exits": (2,)}))
    jobs.append(("refusal", ("export", "missing checkpoint", ["export", T / "nowhere.pt", "--out", T / "n.onnx"]),
                 {"exits": (2,), "silent": False}))
    jobs.append(("refusal", ("export", "unknown model name", ["export", "no_such_model", "--out", T / "n.onnx"]),
                 {"exits": (2,), "silent": False}))
    onnx = T / "exported" / "yolo.onnx"
    jobs.append(("plain", ("export", "random-weight YOLO checkpoint (checked against PyTorch)",
                           ["export", models["yolo"], "--out", onnx]),
                 {"inputs": [models["yolo"]], "exits": (0,), "after": lambda: (onnx.is_file(), "no .onnx written")}))
    return jobs


def interrupt_case(sig: signal.Signals, models: dict) -> dict:
    """Stop a detect batch mid-way (SIGINT or SIGKILL), rerun with --skip-existing: every input done
    exactly once, every output decodes, no temp file left."""
    name = sig.name
    folder, out = T / f"batch_{name}", T / f"batch_{name}_out"
    for i in range(400):  # enough that an idle machine is still busy when the signal comes
        photo(folder / f"img{i:03d}.jpg", 480, 360, seed=i)
    inputs = sorted(str(p) for p in folder.iterdir())
    args = ["detect", "--weights", models["yolo"], "--conf", "0.05", "-f", "jsonl", "--batch-size", "2",
            "--workers", "1", folder, "--out", out]
    before = checksums([folder])
    # a job started in the background ignores SIGINT and its children inherit that: give the child the default
    process = subprocess.Popen([sys.executable, "-m", "cvtool", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV, cwd=T, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_dir() and len(list(out.glob("*.detect.jpg"))) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(sig)
    try:
        stdout1, stderr1 = process.communicate(timeout=TIMEOUT)
        hang1 = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout1, stderr1 = process.communicate()
        hang1 = True
    done_first = {str(folder / n.name[: -len(".detect.jpg")]) + ".jpg" for n in out.glob("*.detect.jpg")}
    temps_after_stop = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) if out.is_dir() else []
    rerun = cvtool([*args, "--skip-existing"], inputs=[folder])
    processed = [r["path"] for r in records(rerun["stdout"]) if "error" not in r]
    outputs = sorted(out.glob("*.detect.jpg"))
    broken = []
    for path in outputs:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception:  # noqa: BLE001 - any decoding failure is a partial output
            broken.append(path.name)
    covered = {str(folder / p.name[: -len(".detect.jpg")]) + ".jpg" for p in outputs}
    twice = sorted(set(processed) & done_first)
    missing = sorted(set(inputs) - covered)
    temps = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    why = []
    expected_exit = 130 if sig == signal.SIGINT else -signal.SIGKILL
    if process.returncode != expected_exit:
        why.append(f"stopped run exit {process.returncode}, expected {expected_exit}")
    if not done_first or len(done_first) == len(inputs):
        why.append(f"the stop did not land mid-batch ({len(done_first)}/{len(inputs)} done)")
    if twice:
        why.append(f"{len(twice)} input(s) done twice")
    if missing:
        why.append(f"{len(missing)} input(s) never done")
    if broken:
        why.append("outputs that do not decode: " + ", ".join(broken))
    if rerun["exit"] != 0:
        why.append(f"rerun exit {rerun['exit']}")
    if temps:
        why.append("temp files left after the rerun: " + ", ".join(temps))
    if sig == signal.SIGINT and "Traceback" in stderr1:
        rerun = {**rerun, "traceback": True}
    rerun = {**rerun, "hang": rerun["hang"] or hang1,
             "inputs_unchanged": rerun["inputs_unchanged"] and checksums([folder]) == before}
    lines = [ln for ln in stderr1.splitlines() if ln.strip()]
    return row("detect", f"{name} mid-batch, then --skip-existing", rerun, ok=not why, why="; ".join(why),
               stopped_exit=process.returncode, stopped_message=lines[-1] if lines else "",
               done_before_stop=len(done_first), done_by_rerun=len(processed), inputs=len(inputs),
               temp_files_after_stop=temps_after_stop)


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    global T, ENV
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvtool-bad-") as tmp:
        T = Path(tmp)
        ENV = {**os.environ, "TORCH_HOME": str(T / "torch_home"), "CVTOOL_CACHE": str(T / "cvtool_cache"),
               "CVTOOL_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "CVTOOL_OFFLINE": "1",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        ENV.pop("CVTOOL_WEIGHTS_MIRROR", None)
        try:
            rows = sweep()
        finally:
            subprocess.run(["chattr", "-i", str(T / "immutable_out")], capture_output=True)
    rows.sort(key=lambda r: (r["command"], r["case"]))
    failures = [r for r in rows if not r["ok"]]
    figures = {
        "cases": len(rows),
        "commands": sorted({r["command"] for r in rows}),
        "tracebacks": sum(r["traceback"] for r in rows),
        "inputs_changed": sum(not r["inputs_unchanged"] for r in rows),
        "hangs": sum(r["hang"] for r in rows),
        "silent_wrong_answers": sum(bool(r.get("silent_wrong_answer")) for r in rows),
        "silent_wrong_answer_cases": sum("silent_wrong_answer" in r for r in rows),
        "internal_errors": sum(r["exit"] == 3 for r in rows),
        "failed_cases": len(failures),
        "failures": [f"{r['command']} | {r['case']} | exit {r['exit']} | {r['failure']} | {r['message']}"
                     for r in failures],
        "wall_s": round(time.perf_counter() - started, 1),
        "per_case": rows,
    }
    write_results("bad_inputs", figures)
    bad = figures["tracebacks"] or figures["inputs_changed"] or figures["hangs"] or figures["silent_wrong_answers"]
    sys.exit(1 if bad or failures else 0)


def sweep() -> list[dict]:
    corpus = make_bad_corpus(T / "corpus")
    corpus.update(make_awkward_sizes(T / "corpus"))
    corpus.pop("mixed/notes.txt", None)
    (T / "corpus" / "empty_dir").mkdir()
    corpus.update({"missing.jpg": "no such file", "empty_dir": "no image or video files in directory"})
    make_fifo(T / "pipe.jpg")
    photo(T / "fifo_dir" / "good.png")
    make_fifo(T / "fifo_dir" / "pipe.png")
    models = build_models(T / "models")
    commands = command_args(models)
    train = train_jobs()

    rows = landmark_cache_cases()  # first and alone: converts dlib's models once for every face case
    jobs = []
    for command, args in commands.items():
        jobs.append(("call", batch_cases, (command, args, corpus)))
        jobs.append(("call", fifo_cases, (command, args)))
    for name, expected in sorted(corpus.items()):
        if name not in ALONE:
            continue
        jobs.append(("call", single_classify, (commands["classify"], name, expected)))
    for name in ("empty.jpg", "bomb.png", "missing.jpg", "size_1x1.png", "pipe.jpg"):
        jobs.append(("call", verify_pair_case, (name, "" if name == "empty_dir" else corpus.get(name, ""))))
    jobs += unwritable_out_cases(models, commands)
    jobs.append(("call", out_is_input_case, ("detect", commands["detect"], {"foo.detect.jpg": "", "bar.detect.jpg": ""})))
    jobs.append(("call", out_is_input_case, ("segment", commands["segment"],
                                             {"bar.mask.png": "", "bar.overlay.png": "", "foo.mask.png": ""})))
    jobs.append(("call", out_is_input_case, ("stylize", commands["stylize"], {"foo.stylized.png": ""})))
    jobs.append(("call", onnx_cache_case, ()))
    jobs.append(("call", torch_cache_case, ()))
    jobs += calibrate_jobs()
    jobs += train
    jobs += weights_jobs(models, commands)
    jobs.append(("call", interrupt_case, (signal.SIGINT, models)))
    jobs.append(("call", interrupt_case, (signal.SIGKILL, models)))

    def do(job):
        kind, what, rest = job
        if kind == "call":
            return what(*rest)
        return (refusal if kind == "refusal" else plain)(*what, **rest)

    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        for result in pool.map(do, jobs):
            rows.extend(result if isinstance(result, list) else [result])
    return rows


if __name__ == "__main__":
    main()
