PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-slow bench-test-time bench bench-startup bench-throughput bench-bad-inputs bench-segment bench-detect bench-video bench-onnx bench-serve bench-ddp eval-train eval-face-train eval-segment eval-unet-isbi eval-style eval-detect eval-face-port eval-face-landmarks eval-face sample-images lenet-digits clean

## install: a virtual environment in .venv with cvtool (editable) and the dev tools
install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'

## demo: the first real job, offline: LeNet-5 (shipped with cvtool) reads real handwritten digits
demo:
	$(BIN)/cvtool classify sample_images/digits --model lenet5_digits --top-k 1

## test: the default test run, 2 workers: 7 min 42 s wall from a fresh clone (2026-12-08, AMD EPYC, load 1.4-1.9; make bench-test-time)
test:
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n 2

## test-slow: the longer tests the default run leaves out (full-size photos, longer training); each has a fast variant in `make test`
test-slow:
	$(BIN)/python -m pytest -q -m slow

## bench-test-time: time the default test run: wall, CPU and load average (bench/results/test_time.json)
bench-test-time:
	$(BIN)/python bench/test_time.py

## bench: every measured figure quoted in the README, written to bench/results/
bench: bench-startup bench-throughput bench-bad-inputs bench-segment bench-detect bench-video bench-onnx

bench-startup:
	$(BIN)/python bench/startup.py

bench-throughput:
	$(BIN)/python bench/throughput.py

bench-bad-inputs:
	$(BIN)/python bench/bad_inputs.py

bench-segment:
	$(BIN)/python bench/segment_speed.py

bench-detect:
	$(BIN)/python bench/detect_speed.py

## bench-video: a generated 1-minute 720p video through detect and segment: frames/s and RSS, start vs end (a few minutes)
bench-video:
	$(BIN)/python bench/video_run.py

## bench-video-codecs: annotated-video writers on a generated 720p clip: H.264 (PyAV) vs mp4v (OpenCV), size, ms/frame, read back by two readers
.PHONY: bench-video-codecs
bench-video-codecs:
	$(BIN)/python bench/video_codecs.py

## bench-int8: INT8 vs fp32 onnxruntime, CPU, 1 thread: speed and accuracy/agreement (resnet18, YOLO, U-Net, lenet5_digits)
.PHONY: bench-int8
bench-int8:
	OMP_NUM_THREADS=1 $(BIN)/python bench/int8.py

## bench-oneshot: whole-process cvtool verify-face (torch vs the cached-ONNX default, mmod and haar) and classify vs python -c pass
bench-oneshot:
	OMP_NUM_THREADS=1 $(BIN)/python bench/oneshot.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/oneshot.py --no-verdicts --no-dlib-cnn --b ../shared/datasets/faces/biden/biden1.jpg --tag obama1_biden1

## gpu-check: every command and train task on CUDA vs the CPU, fp32 and --half (bench/results/gpu_check.json); skips without CUDA
.PHONY: gpu-check
gpu-check:
	$(BIN)/python bench/gpu_check.py

## bench-ddp: train classify on 1 vs 2 processes (images/s), and peak RSS on 2,000 vs 20,000 images, lazy and in memory (several minutes)
bench-ddp:
	$(BIN)/python bench/ddp.py

## bench-shards: 2 concurrent classify shards, new thread defaults vs today's (wall time); Ray 1 vs 2 actors (several minutes)
.PHONY: bench-shards
bench-shards:
	$(BIN)/python bench/shards.py

## bench-train-precision: CPU training, float32 vs --cpu-bf16, U-Net / YOLO / ResNet-18 epochs in turns (a few minutes)
.PHONY: bench-train-precision
bench-train-precision:
	OMP_NUM_THREADS=1 $(BIN)/python bench/train_precision.py --threads 1 --repeats 3

## bench-onnx: onnxruntime vs PyTorch eager on the CPU, batch 1 and 8 (a few minutes)
bench-onnx:
	$(BIN)/python bench/onnx_speed.py

## bench-serve: verify-face in a shell loop with and without `cvtool serve`; /detect with 8 clients vs 1; RSS (a few minutes)
bench-serve:
	$(BIN)/python bench/serve_loop.py

## eval-style: style-transfer speed, and a contact sheet from ../shared/datasets/style (a few minutes)
eval-style:
	$(BIN)/python bench/eval_style.py

## eval-face-landmarks: dlib landmark predictors and face chips, ported: agreement with dlib and speed (needs dlib-bin)
eval-face-landmarks:
	$(BIN)/pip install -q -e '.[compare]'
	$(BIN)/python bench/face_landmarks.py --repeats 20

## eval-detect: the YOLO-style detector on the raccoon set (needs ../shared; CPU, several minutes)
eval-detect:
	$(BIN)/python bench/eval_detect.py

## eval-val: `cvtool val detect` on the raccoon validation photos equals the mAP `train detect` reported for the same best.pt (~3-5 CPU-min)
.PHONY: eval-val
eval-val:
	$(BIN)/python bench/eval_val.py

## bench-yolo11: our detector vs Ultralytics YOLO11n from scratch on the raccoon photos, the same CPU budget each, one thread (BUDGET=600 CPU-s; OURS: our extra train options as JSON; Ultralytics in a throw-away venv)
BUDGET ?= 600
OURS ?= {"ema": 0.99, "close_mosaic": 10}
.PHONY: bench-yolo11
bench-yolo11:
	$(BIN)/python bench/yolo_vs_yolo11.py --budget $(BUDGET) --ours '$(OURS)'

## eval-segment: U-Net on the ISBI membrane set (needs ../shared; about 8 minutes)
eval-segment:
	$(BIN)/python bench/eval_segment.py

## eval-unet-isbi: the U-Net paper's recipe (elastic, border-weighted CE with w_c = 1, mirrored context; moving average of the weights; bf16 training, 380 epochs validated every 5th, best.pt by validation Rand F; on a CPU without bfloat16 instructions it says so in one line and trains float32 for 150 epochs, fewer where 2 timed epochs say they would not fit the budget) on a fixed 16/3/5 split of the ISBI membrane set, held-out adapted Rand error / VI / IoU (needs ../shared; at most 60 CPU-minutes, one thread)
eval-unet-isbi:
	OMP_NUM_THREADS=1 $(BIN)/python bench/unet_isbi.py --no-balance --ema 0.99 --cpu-bf16 --val-every 5 --epochs 380

sample-images:
	$(BIN)/python scripts/make_sample_images.py

## eval-face-port: our PyTorch port of dlib's face networks vs dlib itself: fidelity and CPU speed (needs dlib-bin; ~1 minute)
eval-face-port:
	$(BIN)/pip install -q -e '.[compare]'
	$(BIN)/python bench/face_port.py

## eval-face: verification of every pair of the shared face photos, CNN and Haar detectors (needs ../shared; ~5 min)
eval-face:
	$(BIN)/python bench/eval_face.py
	$(BIN)/python bench/eval_face.py --detector haar

## bench-decode: full vs reduced (DCT-scaled) JPEG decoding of real photos at 640x480 and 1920x1080, 1 thread (needs ../shared)
.PHONY: bench-decode
bench-decode:
	$(BIN)/python bench/decode_reduced.py

## bench-face-search: verify-face's coarse-to-fine face search vs the exhaustive one on ../shared/datasets/faces: same choices, verdicts, distances; detector time
.PHONY: bench-face-search
bench-face-search:
	$(BIN)/python bench/face_search.py


## eval-face-train: triplet training from scratch on ORL faces, 8 whole subjects held out (needs ../shared; CPU, 3-5 min)
eval-face-train:
	$(BIN)/python bench/eval_face_train.py

## eval-train: cvtool train on real data (digits; ORL faces and engine overhead need ../shared)
eval-train:
	$(BIN)/python bench/eval_train.py digits
	$(BIN)/python bench/eval_train.py orl
	$(BIN)/python bench/eval_train.py overhead

## lenet-digits: retrain the packaged lenet5_digits weights with `cvtool train` (about 20 s)
lenet-digits:
	$(BIN)/python bench/eval_train.py digits --package cvtool/models/packaged/lenet5_digits.pt

clean:
	rm -rf build dist *.egg-info .pytest_cache
