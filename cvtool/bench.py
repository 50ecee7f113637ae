"""`cvtool bench`: how fast a model's network runs on this machine, in PyTorch and in onnxruntime, in one
process on one input, so the two numbers can be compared directly.

Weights are random: a forward pass costs the same whatever the values, and no download is needed.
Only the network is timed (the same call the pipelines make, YOLO's box decoding included), not
image decoding or post-processing. A model with no ONNX form that takes raw images (torchvision's
detectors) is timed through its registry entry's forward on a list of square random images at the
size it resizes to itself, its NMS included; its onnxruntime row is an error row giving the reason. The backends' passes alternate (torch, onnxruntime, torch, ...)
so that load from other processes on a shared machine falls on both alike, and onnxruntime's
threads do not spin between its runs (they would steal the CPU from PyTorch's turn). Each figure is
the median over `iters` timed passes after `warmup` untimed ones, with the interquartile range.
Memory is measured during the warm-up passes, one backend at a time: the peak resident set of the
process on the CPU (the kernel's high-water mark, reset before each backend), or
torch.cuda.max_memory_allocated on CUDA.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

from cvtool.errors import CvtoolError, UsageError

TASK_MODELS = {"classify": "resnet18", "detect": "yolo", "segment": "unet", "stylize": "fast_style"}
ANY_SIZE_DEFAULT = 256  # input side for networks that take any size (U-Net, segmenters, style networks)
BACKENDS = ("torch", "onnxruntime")
WEIGHTS_NOTE = "random weights: a forward pass costs the same whatever the values"
DETECTOR_NOTE = ("the model's own call on a list of images: all it does inside (resizing, box post-processing, NMS) "
                 "included; random weights may propose more boxes than trained ones, so that part may cost more")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def resolve_targets(targets: list[str] | None) -> list[str]:
    """Task names stand for their bench model; model names are checked against the registry."""
    from cvtool.models.registry import get_entry

    names = [TASK_MODELS.get(t, t) for t in (targets or list(TASK_MODELS))]
    for name in names:
        get_entry(name)
    return list(dict.fromkeys(names))


def random_model(name: str):
    """A LoadedModel with the registry's default architecture and random (seeded) weights, on the CPU."""
    import torch

    from cvtool.device import CPU
    from cvtool.models.loading import LoadedModel
    from cvtool.models.registry import get_entry

    entry = get_entry(name)
    torch.manual_seed(0)
    module = entry.build().eval()
    classes = entry.classes() or []
    return LoadedModel(name=entry.name, task=entry.task, module=module, preprocess=entry.preprocess(),
                       classes=list(classes), weights_path="(random)", weights_sha256="random",
                       device=CPU, entry=entry)


class PeakMemory:
    """Peak memory over a measurement: the process's RSS high-water mark (reset through /proc/self/clear_refs
    where the kernel allows it) on the CPU, torch's allocator peak on CUDA."""

    def __init__(self, device):  # a cvtool.device.Placement
        self.device = device
        self.cuda = device.type == "cuda"
        self.resettable = False
        if not self.cuda:
            try:
                _CLEAR_REFS.write_text("5")
                self.resettable = True
            except OSError:
                pass

    @property
    def kind(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated (PyTorch only; onnxruntime's CUDA memory is not seen)"
        if self.resettable:
            return "peak RSS of the process during the measurement (both backends' models resident)"
        return "peak RSS of the process since it started (this kernel cannot reset the high-water mark)"

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device.torch)
        elif self.resettable:
            _CLEAR_REFS.write_text("5")

    def peak_mb(self, backend: str) -> float | None:
        if self.cuda:
            import torch

            return round(torch.cuda.max_memory_allocated(self.device.torch) / 2**20, 1) if backend == "torch" else None
        try:
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: kilobytes


# -- timing: the one way cvtool's benchmarks (and bench/ scripts) time things -----------------------------

class Stopwatch:
    """Wall-clock seconds of one phase (perf_counter): `with timed() as t: ...` then `t.seconds`;
    `t.elapsed` reads it while it runs (timestamps of events within the phase)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stopped: float | None = None

    @property
    def elapsed(self) -> float:
        return (time.perf_counter() if self.stopped is None else self.stopped) - self.started

    seconds = elapsed

    def stop(self) -> float:
        if self.stopped is None:
            self.stopped = time.perf_counter()
        return self.seconds

    def __enter__(self) -> "Stopwatch":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def timed() -> Stopwatch:
    """A started stopwatch, for one-off phases ("training took"): `with timed() as t: train(); t.seconds`."""
    return Stopwatch()


def time_calls(calls: dict[str, Callable[[], object]], *, iters: int, warmup: int = 0,
               sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each timed call of each of `calls`, taking turns (iteration i runs every call once), so that
    load from other processes falls on all of them alike. `warmup` untimed turns first; `sync` (e.g.
    torch.cuda.synchronize) is called before and after every timed call, so the time covers queued device work."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iters):
        for name, fn in calls.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def time_interleaved(calls: dict[str, Callable[[], object]], *, iters: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """`time_calls` without warm-up (the older name)."""
    return time_calls(calls, iters=iters, sync=sync)


def time_commands(commands: dict[str, list[str]], *, repeats: int, warmup: int = 0, env: dict | None = None,
                  cwd=None) -> dict[str, list[float]]:
    """Wall seconds of whole processes (interpreter start-up included), the commands taking turns like
    `time_calls`; their output is discarded. A command that fails raises RuntimeError naming it."""
    import shlex
    import subprocess

    def runner(argv: list[str]) -> Callable[[], None]:
        def run() -> None:
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
            if done.returncode != 0:
                reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise RuntimeError(f"{shlex.join(argv)} exited with {done.returncode}: {reason[0]}")
        return run

    return time_calls({name: runner(argv) for name, argv in commands.items()}, iters=repeats, warmup=warmup)


def summarise(times: list[float], batch: int) -> dict:
    per_image = sorted(t * 1000 / batch for t in times)
    median = statistics.median(per_image)
    q1, _, q3 = statistics.quantiles(per_image, n=4, method="inclusive") if len(per_image) > 1 else (median,) * 3
    return {"ms_per_image": {"median": round(median, 4), "q1": round(q1, 4), "q3": round(q3, 4),
                             "iqr": round(q3 - q1, 4)},
            "images_per_s": round(1000 / median, 2) if median > 0 else None}


def _detector_side(module, img_size: int | None) -> int:
    """The side of the square images a detector that resizes for itself is fed: --img-size, else the size its own
    transform resizes to (torchvision's GeneralizedRCNNTransform: min_size, so its resize is a no-op), else 256."""
    if img_size:
        return img_size
    transform = getattr(module, "transform", None)  # torchvision's detectors; nothing in the contract says it
    fixed = getattr(transform, "fixed_size", None)
    if fixed:
        return int(fixed[0])
    min_size = getattr(transform, "min_size", None)
    if min_size:
        return int(min_size[0] if isinstance(min_size, (tuple, list)) else min_size)
    return ANY_SIZE_DEFAULT


class _Subject:
    """What the torch backend runs in a bench: the exported graph's module on a B x C x H x W tensor (so both
    backends run the same computation), or, for a model with no ONNX form, the registry entry's forward on its
    own input kind (torchvision's detectors: a list of [0, 1] RGB images)."""

    def __init__(self, loaded, img_size: int | None):
        from cvtool.models.onnx_export import graph_for

        self.name, self.loaded = loaded.name, loaded
        try:
            graph = graph_for(loaded, img_size)
            self.refusal = None
        except UsageError as exc:
            if loaded.contract.export is not None or loaded.contract.input_kind != "raw_images":
                raise  # an export hook refusing these settings (--img-size), or a kind we cannot feed here
            graph, self.refusal = None, str(exc)
        self.graph = graph
        if graph is not None:
            self.module, self.channels = graph.module, graph.channels
            self.h, self.w = graph.size or (img_size or ANY_SIZE_DEFAULT,) * 2
            if graph.size is None and (self.h % graph.multiple or self.w % graph.multiple):
                raise UsageError(f"--img-size must be a multiple of {graph.multiple} for {loaded.name}")
        else:
            self.module, self.channels = loaded.module, 3
            self.h = self.w = _detector_side(loaded.module, img_size)

    def shape(self, batch: int) -> list[int]:
        return [batch, self.channels, self.h, self.w]

    def torch_call(self, batch: int, device) -> Callable[[], object]:
        import torch

        generator = torch.Generator().manual_seed(batch)
        if self.graph is not None:
            x = torch.randn(*self.shape(batch), generator=generator).to(device)

            def call():
                with torch.inference_mode():
                    return self.module(x)
            return call
        images = [torch.rand(self.channels, self.h, self.w, generator=generator).to(device) for _ in range(batch)]
        forward = self.loaded.contract.forward

        def call_images():
            with torch.inference_mode():
                return forward(self.module, images)
        return call_images

    def feed(self, session, batch: int) -> dict:
        import torch

        x = torch.randn(*self.shape(batch), generator=torch.Generator().manual_seed(batch))
        return {session.get_inputs()[0].name: x.numpy()}


def bench_model(name: str, *, backends=BACKENDS, batch_sizes=(1,), img_size: int | None = None, device=None,
                iters: int = 20, warmup: int = 3, on_case: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (batch size, backend) for one model, on `device` (a cvtool.device.Placement; None: the CPU);
    a backend that cannot run it gives a row with "error" (onnxruntime for a model that does not export, e.g.
    torchvision's detectors: the reason why).

    Both backends use torch.get_num_threads() threads (set it, e.g. with `cvtool bench --threads`)."""
    import torch

    from cvtool.device import CPU, Placement
    from cvtool.models.onnx_export import export_checked
    from cvtool.models.onnx_session import make_session

    device = device or CPU
    loaded = random_model(name)
    subject = _Subject(loaded, img_size)
    threads = torch.get_num_threads()
    session, ort_error, export_info = None, subject.refusal, {}
    if "onnxruntime" in backends and subject.refusal is None:
        try:
            with timed() as clock:
                exported = export_checked(loaded, img_size=img_size, dynamic_batch=True, threads=threads)
            export_info = {"export_s": round(clock.seconds, 2),
                           "max_abs_diff_vs_torch": exported.report["max_abs_diff"],
                           "relative_diff_vs_torch": exported.report["relative"]}
            # on the device PyTorch runs on, or not at all (never auto's fallback to the CPU: the rows compare them)
            session = make_session(exported.data, device=Placement(device.kind, device.index), threads=threads,
                                   spin=False)
            del exported  # its checking session's threads would otherwise linger
        except CvtoolError as exc:
            ort_error = str(exc)
    subject.module.to(device.torch)
    memory = PeakMemory(device)
    sync = (lambda: torch.cuda.synchronize(device.torch)) if device.type == "cuda" else (lambda: None)
    rows = []
    for batch in batch_sizes:
        calls, results = {}, {}
        for backend in backends:
            row = {"model": name, "task": loaded.task, "backend": backend, "device": str(device), "batch_size": batch,
                   "input": subject.shape(batch), "iters": iters, "warmup": warmup}
            if subject.graph is None:
                row["input_kind"] = loaded.contract.input_kind  # a list of `batch` images of 3 x H x W
                row["note"] = DETECTOR_NOTE
            if backend == "torch":
                call = subject.torch_call(batch, device.torch)
            elif session is None:
                results[backend] = {**row, "error": ort_error or "onnxruntime was not asked for"}
                continue
            else:
                feed = subject.feed(session, batch)

                def call(feed=feed):
                    return session.run(None, feed)

                row.update(export_info)
            if on_case is not None:
                on_case(f"bench {name} batch {batch} {backend} on {device}")
            gc.collect()
            memory.reset()
            for _ in range(max(1, warmup)):  # the warm-up passes double as the memory measurement
                call()
            sync()
            results[backend] = {**row, "peak_memory_mb": memory.peak_mb(backend)}
            calls[backend] = call
        times = time_calls(calls, iters=iters, sync=sync)
        for backend in backends:
            row = results[backend]
            if backend in times:
                row.update(summarise(times[backend], batch))
            rows.append(row)
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """onnxruntime's speed relative to PyTorch's (torch ms / onnxruntime ms) for every model and batch size with both."""
    by_case: dict[tuple, dict] = {}
    for row in rows:
        if "error" not in row:
            by_case.setdefault((row["model"], row["batch_size"]), {})[row["backend"]] = row["ms_per_image"]["median"]
    return [{"model": model, "batch_size": batch, "onnxruntime_vs_torch": round(ms["torch"] / ms["onnxruntime"], 3)}
            for (model, batch), ms in by_case.items() if "torch" in ms and "onnxruntime" in ms and ms["onnxruntime"] > 0]


def run_bench(targets: list[str] | None = None, *, backends=BACKENDS, batch_sizes=(1,), img_size: int | None = None,
              device="cpu", iters: int = 20, warmup: int = 3, threads: int | None = None,
              on_case: Callable[[str], None] | None = None) -> dict:
    """The whole report: settings, one row per (model, batch size, backend), and the speed ratios.

    `threads`: CPU threads for both backends (default: PyTorch's own choice, one per core)."""
    import onnxruntime
    import torch

    from cvtool.device import place

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise UsageError(f"unknown backend {', '.join(unknown) or '(none)'}; use torch, onnxruntime or both")
    where = place(device)
    names = resolve_targets(targets)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rows = []
        for name in names:
            rows += bench_model(name, backends=backends, batch_sizes=batch_sizes, img_size=img_size,
                                device=where, iters=iters, warmup=warmup, on_case=on_case)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return {
        "weights": WEIGHTS_NOTE,
        "device": str(where),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "threads": {"torch": used, "onnxruntime": used},
        "load_average": [round(v, 2) for v in os.getloadavg()],  # other processes' share of the CPU at the end
        "memory": PeakMemory(where).kind,
        "iters": iters,
        "warmup": warmup,
        "results": rows,
        "speedups": speedups(rows),
    }


def print_table(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    ratio = {(s["model"], s["batch_size"]): s["onnxruntime_vs_torch"] for s in report["speedups"]}
    table = Table(caption=f"{report['weights']}; {report['device']}, {report['threads']['torch']} threads; "
                          f"median of {report['iters']} after {report['warmup']} warm-up; memory: {report['memory']}")
    for column in ("model", "input", "backend", "ms/img", "IQR", "img/s", "peak MB", "vs torch"):
        table.add_column(column, no_wrap=column in ("model", "backend"),
                         justify="right" if column not in ("model", "input", "backend") else "left")
    footnotes: list[str] = []  # errors and notes, numbered once each, under the table

    def mark(text: str) -> str:
        if text not in footnotes:
            footnotes.append(text)
        return f"[{footnotes.index(text) + 1}]"

    for row in report["results"]:
        shape = "x".join(map(str, row["input"])) + (" list" if row.get("input_kind") == "raw_images" else "")
        shape += f" {mark(row['note'])}" if row.get("note") else ""
        model = row["model"]
        if "error" in row:
            table.add_row(model, shape, row["backend"], f"error {mark(row['error'])}", "", "", "", "")
            continue
        ms = row["ms_per_image"]
        speed = ratio.get((row["model"], row["batch_size"])) if row["backend"] == "onnxruntime" else None
        table.add_row(model, shape, row["backend"], f"{ms['median']:.2f}", f"{ms['iqr']:.2f}",
                      f"{row['images_per_s']:.1f}", "—" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}",
                      f"{speed:.2f}x" if speed else "")
    console = console or Console()
    console.print(table)
    for i, text in enumerate(footnotes, 1):
        console.print(f"[{i}] {text}", markup=False, highlight=False)
