"""Devices, precision and the GPU-shaped code paths, checked on the CPU (the GPU itself: bench/gpu_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cvtool
from cvtool.device import CPU, Placement, half_dtype, place
from cvtool.errors import UsageError
from cvtool.models.checkpoint import save_checkpoint
from cvtool.models.onnx_session import make_session
from cvtool.models.yolo import YOLO_PREPROCESS, YoloDetector, decode, detections_in_original_pixels, letterbox_batch
from cvtool.ops.preprocess import Preprocess
from cvtool.train.engine import TrainConfig, amp_dtype, default_workers

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "sample_images" / "photos").glob("*.jpg"))
DIGITS = sorted((ROOT / "sample_images" / "digits").glob("*.png"))
NO_CUDA = not torch.cuda.is_available()


# -- devices -------------------------------------------------------------------------------------

@pytest.mark.skipif(not NO_CUDA, reason="checks the CPU-only fallbacks")
def test_auto_is_the_cpu_here_and_explicit_cuda_is_one_line():
    assert place("auto").type == ("mps" if torch.backends.mps.is_available() else "cpu")
    with pytest.raises(UsageError) as err:
        place("cuda")
    assert str(err.value) == "device 'cuda' asked for, but CUDA is not available on this machine"
    with pytest.raises(UsageError) as err:
        place("gpu")
    assert str(err.value) == "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"


def test_a_placement_is_one_value_read_as_torch_onnxruntime_or_text(monkeypatch):
    import cvtool.device as device

    assert place(" CPU ") is CPU and str(CPU) == "cpu" and CPU.torch == torch.device("cpu")
    gpu = Placement("cuda", 1)
    assert (gpu.type, str(gpu), gpu.torch) == ("cuda", "cuda:1", torch.device("cuda", 1))
    assert str(Placement("cuda")) == "cuda" and Placement("cuda").torch == torch.device("cuda")  # auto's: no index
    assert Placement("cuda", auto=True) == Placement("cuda")  # how it was chosen is not where it is
    assert Placement.of(None) is CPU and Placement.of(gpu) is gpu and Placement.of(torch.device("cuda", 1)) == gpu
    # without torch (onnxruntime alone): auto follows the NVIDIA GPUs this machine shows, a named device is kept
    for visible in (True, False):
        monkeypatch.setattr(device, "cuda_visible", lambda visible=visible: visible)
        chosen = place("auto", torch_free=True)
        assert chosen.type == ("cuda" if visible else "cpu") and chosen.auto
    assert place("cuda:1", torch_free=True) == gpu and not place("cuda:1", torch_free=True).auto
    with pytest.raises(UsageError, match="unknown device 'cuda1'"):
        place("cuda1", torch_free=True)


def test_onnxruntime_providers_follow_what_is_installed():
    cpu_only = ["CPUExecutionProvider"]
    auto_gpu = Placement("cuda", auto=True)
    assert auto_gpu.providers_among(cpu_only) == cpu_only  # auto on a GPU machine, CPU onnxruntime: no failure
    assert CPU.providers_among(cpu_only) == cpu_only
    assert CPU.providers_among(["CUDAExecutionProvider", *cpu_only]) == cpu_only
    assert Placement("mps").providers_among(["CUDAExecutionProvider", *cpu_only]) == cpu_only
    assert Placement("cuda", 1).providers_among(["CUDAExecutionProvider", *cpu_only]) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert auto_gpu.providers_among(["CUDAExecutionProvider", *cpu_only])[0] == ("CUDAExecutionProvider", {"device_id": 0})
    with pytest.raises(UsageError) as err:
        Placement("cuda").providers_among(["AzureExecutionProvider", *cpu_only])
    assert str(err.value) == ("--device cuda with --backend onnxruntime needs the onnxruntime-gpu package (this "
                              "onnxruntime has AzureExecutionProvider, CPUExecutionProvider); use --device auto or cpu")


def test_a_real_session_on_auto_runs_on_what_this_onnxruntime_has(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    where = place("auto")
    session = make_session(data, device=where)
    expected = ("CUDAExecutionProvider" if where.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
                else "CPUExecutionProvider")
    assert session.get_providers()[0] == expected
    assert session.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]


def test_half_precision_per_device(monkeypatch):
    import cvtool.device as device

    assert half_dtype(Placement("cuda")) is torch.float16
    assert half_dtype(Placement("mps")) is torch.float16
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert half_dtype(CPU) is torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    with pytest.raises(UsageError) as err:
        half_dtype(CPU)
    assert str(err.value) == ("--half needs a CUDA or MPS device, or a CPU with bfloat16 instructions (AVX512-BF16 "
                              "or AMX); this CPU has none: drop --half")


def test_the_bf16_probe_reads_its_override_so_every_cpu_can_run_the_other_cpus_paths(monkeypatch):
    import cvtool.device as device

    monkeypatch.setenv("CVTOOL_CPU_BF16", "0")  # an AVX-512 machine running what an AVX2 one runs
    assert device.cpu_has_bf16() is False
    with pytest.raises(UsageError, match="--half needs a CUDA or MPS device"):
        half_dtype(CPU)
    monkeypatch.setenv("CVTOOL_CPU_BF16", "1")
    assert device.cpu_has_bf16() is True and half_dtype(CPU) is torch.bfloat16
    monkeypatch.setenv("CVTOOL_CPU_BF16", "yes")
    with pytest.raises(UsageError) as err:
        device.cpu_has_bf16()
    assert str(err.value) == ("CVTOOL_CPU_BF16='yes': use 0 (no bf16 instructions), 1 (bf16) or leave it unset "
                              "(ask the CPU)")
    monkeypatch.delenv("CVTOOL_CPU_BF16")
    cpu = device.cpu_description()
    assert cpu["model"] and set(cpu["isa"]) <= {"AVX2", "AVX-512", "AVX512-VNNI", "AVX512-BF16", "AMX"}
    if "AVX512-BF16" in cpu["isa"] or "AMX" in cpu["isa"]:
        assert device.cpu_has_bf16()  # /proc/cpuinfo and PyTorch's own probe agree


def test_half_is_refused_for_onnxruntime(tmp_path):
    for options in (dict(backend="onnxruntime"), dict(weights=tmp_path / "model.onnx", backend="auto"),
                    dict(weights=tmp_path / "model.onnx", backend="torch")):  # an .onnx file always runs on onnxruntime
        with pytest.raises(UsageError) as err:
            cvtool.Classifier(None if "weights" in options else "lenet5_digits", device="cpu", half=True, **options)
        assert str(err.value) == "--half is for --backend torch; for onnxruntime export a half model: cvtool export --half"


@pytest.mark.skipif(not __import__("cvtool.device", fromlist=["x"]).cpu_has_bf16(), reason="no bf16 on this CPU")
def test_half_on_a_bf16_cpu_keeps_the_digits_top1():
    full = cvtool.Classifier("lenet5_digits", device="cpu")(DIGITS)
    half = cvtool.Classifier("lenet5_digits", device="cpu", half=True)(DIGITS)
    assert half and [r.label for r in half] == [r.label for r in full]
    assert max(abs(a.prob - b.prob) for a, b in zip(half, full)) < 0.05


# -- the CUDA pipelines' data paths, run on the CPU ---------------------------------------------------

def test_classify_normalising_on_the_device_equals_the_workers_normalising():
    from cvtool.pipelines.classify import ClassifyPipeline

    task = cvtool.Classifier("lenet5_digits", device="cpu")
    workers = ClassifyPipeline(task.loaded, top_k=3)
    on_device = ClassifyPipeline(task.loaded, top_k=3, normalise_on_device=True)
    rgbs = [cvtool.load_image(p) for p in DIGITS]
    samples = [on_device.prepare_array(rgb) for rgb in rgbs]
    assert samples[0].dtype == np.uint8
    a = workers.predict([workers.prepare_array(rgb) for rgb in rgbs])
    b = on_device.predict(samples)
    for x, y in zip(a, b):
        assert [e["index"] for e in x["top_k"]] == [e["index"] for e in y["top_k"]]
        assert max(abs(e["prob"] - f["prob"]) for e, f in zip(x["top_k"], y["top_k"])) < 1e-5


@pytest.mark.parametrize("shape", [(480, 640), (120, 90), (333, 100)])  # shrink, enlarge, thin
def test_yolo_letterbox_on_the_device_gives_the_cpu_boxes_within_a_pixel(shape):
    torch.manual_seed(0)
    model = YoloDetector(num_classes=2, width=4, img_size=160).eval()
    import cv2

    from cvtool.ops.tensors import image_to_tensor

    photo = cvtool.load_image(PHOTOS[0])
    image = image_to_tensor(cv2.resize(photo, shape[::-1], interpolation=cv2.INTER_AREA))
    cpu_batch, cpu_boxes = letterbox_batch([image], 160)
    dev_batch, dev_boxes = letterbox_batch([image], 160, on_device=True)
    assert cpu_boxes == dev_boxes  # same scales and padding
    assert (cpu_batch - dev_batch).abs().max() < 1.5 / 255  # only OpenCV's rounding to uint8 differs
    with torch.no_grad():
        a = detections_in_original_pixels(*decode(model(cpu_batch), model.anchors), cpu_boxes)[0]
        b = detections_in_original_pixels(*decode(model(dev_batch), model.anchors), dev_boxes)[0]
    assert a["boxes"].shape == b["boxes"].shape and len(a["boxes"]) > 100
    assert (a["boxes"] - b["boxes"]).abs().max() < 1.0


@pytest.fixture
def unet_checkpoint(tmp_path):
    from cvtool.models.unet import UNet

    torch.manual_seed(0)
    path = tmp_path / "unet.pt"
    save_checkpoint(path, arch="unet", task="segment", state_dict=UNet(num_classes=3, width=4, depth=2).state_dict(),
                    classes=["a", "b", "c"], preprocess=Preprocess(crop_size=None, resize_size=None, mean=(0.5,),
                    std=(0.5,), grayscale=True, resize_mode="none").to_dict(), extra={"arch_kwargs": {"width": 4, "depth": 2}})
    return path


def test_segment_batches_images_of_one_size_with_the_same_masks(unet_checkpoint):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(40, 52, 3), (33, 20, 3), (40, 52, 3), (40, 52, 3)]]
    seg = cvtool.Segmenter(weights=str(unet_checkpoint), device="cpu")
    calls = []
    forward = seg.loaded.module.forward
    seg.loaded.module.forward = lambda x: calls.append(x.shape[0]) or forward(x)
    batched = seg(images, batch_size=4)
    assert sorted(calls) == [1, 3]  # the three 40 x 52 images in one pass
    one_by_one = [seg(image) for image in images]
    for a, b in zip(batched, one_by_one):
        assert np.array_equal(a.mask, b.mask)


def test_letterboxing_detectors_and_classifiers_turn_on_cudnn_autotuning_on_cuda(monkeypatch, yolo_checkpoint):
    # cuDNN's benchmark pays where every batch has one size: our YOLO's letterbox, a classifier's crop.
    # Built on the CPU, then told it is on CUDA (the pipelines only read the device's type here)
    from cvtool.pipelines.classify import ClassifyPipeline
    from cvtool.pipelines.detect import DetectPipeline

    yolo = cvtool.Detector(weights=str(yolo_checkpoint), device="cpu").loaded
    lenet = cvtool.Classifier("lenet5_digits", device="cpu").loaded
    for loaded, pipeline in ((yolo, DetectPipeline), (lenet, ClassifyPipeline)):
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        pipeline(loaded)
        assert torch.backends.cudnn.benchmark is False  # on the CPU: left alone
        monkeypatch.setattr(loaded, "device", Placement("cuda"))
        pipeline(loaded)
        assert torch.backends.cudnn.benchmark is True


def test_decoding_threads_per_device(monkeypatch):
    from cvtool import device

    assert device.decode_workers(None, CPU) == 2  # the network's threads have the cores
    assert device.decode_workers(3, Placement("cuda")) == 3  # asked for: kept
    monkeypatch.setattr(device, "cpu_count", lambda: 16)
    assert device.decode_workers(None, Placement("cuda", 0)) == 8  # the host only feeds the GPU
    assert device.decode_workers(None, Placement("cuda", 1)) == 8 and device.decode_workers(None, Placement("mps")) == 8
    assert device.decode_workers(None, Placement("cuda"), shard=(1, 4)) == 4  # its share, as compute threads
    assert device.decode_workers(None, CPU, shard=(1, 4)) == 2
    monkeypatch.setattr(device, "cpu_count", lambda: 1)
    assert device.decode_workers(None, Placement("cuda")) == 1
    assert device.decode_workers(0, Placement("cuda")) == 1  # the API's 0 as before: the calling thread


def test_ray_actors_decode_with_their_cpus_on_a_gpu():
    from cvtool.scale.ray_data import actor_run_options

    common = {"batch_size": 16, "vid_stride": 1, "out": None}
    assert actor_run_options(**common, num_cpus=4, num_gpus=1)["workers"] == 4  # feeding the GPU
    assert actor_run_options(**common, num_cpus=4, num_gpus=0)["workers"] == 1  # its CPUs run the network
    assert actor_run_options(**common, num_cpus=0.5, num_gpus=0.5)["workers"] == 1
    assert actor_run_options(**{**common, "out": Path("o")}, num_cpus=1, num_gpus=0) == {
        "batch_size": 16, "vid_stride": 1, "workers": 1, "out": "o"}


def test_workers_default_is_resolved_for_the_loaded_device(monkeypatch):
    from typer.testing import CliRunner

    import cvtool.api
    from cvtool import device
    from cvtool.cli import app

    help_text = " ".join(CliRunner().invoke(app, ["classify", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "2 on the CPU; one per core, up to 8, on a GPU" in help_text
    asked = []
    real = cvtool.api._prefetch
    monkeypatch.setattr(cvtool.api, "_prefetch", lambda fn, items, workers, lookahead: asked.append(workers)
                        or real(fn, items, workers=workers, lookahead=lookahead))
    task = cvtool.Classifier("lenet5_digits", device="cpu")
    paths = [str(p) for p in DIGITS]
    labels = [r.label for r in task(paths)]
    assert asked == [2] and labels == [p.split("/")[-1][6] for p in paths]  # digit_N.png
    monkeypatch.setattr(device, "cpu_count", lambda: 16)
    monkeypatch.setattr(task.loaded, "device", Placement("cuda"))  # only its type is read
    assert cvtool.api._workers(None, task.loaded) == 8 and cvtool.api._workers(3, task.loaded) == 3


# -- training -----------------------------------------------------------------------------------

def test_training_precision_and_workers_per_device():
    assert amp_dtype(torch.device("cpu"), TrainConfig()) is None  # CPU results unchanged by default
    assert amp_dtype(torch.device("cpu"), TrainConfig(cpu_bf16=True)) is torch.bfloat16
    assert amp_dtype(torch.device("cuda"), TrainConfig(amp=False)) is None
    assert default_workers(torch.device("cpu"), None) == 0
    assert default_workers(torch.device("cuda"), 0) == 0  # asked for: kept
    assert 0 <= default_workers(torch.device("cuda"), None) <= 4


def test_bf16_on_the_cpu_with_clipping_trains_and_resumes(tmp_path):
    from cvtool.train.classification import ClassificationTask  # noqa: F401 - the task family exists
    from cvtool.train.engine import Trainer

    class Task:
        name = "toy"

        def build_model(self):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))

        def loss(self, outputs, targets):
            return torch.nn.functional.cross_entropy(outputs.float(), targets)

        def start_metrics(self):
            return []

        def update_metrics(self, state, outputs, targets):
            state.append(float((outputs.argmax(1) == targets).float().mean()))

        def finish_metrics(self, state):
            return {"accuracy": sum(state) / len(state)}

        def checkpoint_fields(self):
            return {"arch": "toy", "task": "classify", "classes": ["a", "b"]}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 4, generator=g)
    data = list(zip(x, (x.sum((1, 2)) > 0).long()))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, cpu_bf16=True, grad_clip=0.5)
    trainer = Trainer(Task(), data, data, cfg, tmp_path / "run", torch.device("cpu"))
    assert trainer.amp_dtype is torch.bfloat16 and not trainer.scaler.is_enabled()  # no scaling for bf16
    assert trainer.channels_last  # oneDNN's bf16 convolutions are fastest on channels-last tensors
    state = trainer.fit()
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert "cuda_rng" in last and (last["cuda_rng"] is None) == NO_CUDA


# -- the GPU check script ------------------------------------------------------------------------------

@pytest.mark.skipif(not NO_CUDA, reason="on a GPU machine the script does its full run")
def test_gpu_check_skips_cleanly_without_cuda():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0
    assert (done.stdout + done.stderr).strip() == "no CUDA device: nothing to check"
