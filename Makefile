PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-slow bench-test-time bench bench-startup bench-throughput bench-bad-inputs bench-segment bench-detect bench-video bench-onnx bench-serve bench-ddp eval-train eval-face-train eval-segment eval-unet-isbi eval-style eval-detect eval-track eval-face-port eval-face-landmarks eval-face sample-images lenet-digits clean

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

## bench-live: a 60 fps MJPEG camera on 127.0.0.1 into a 10 fps model: lag from capture to record, newest-frame (60 s) vs --buffer (15 s), RSS; --vid-stride read cost (bench/results/live_lag.json). LIVE_SECONDS=300 for five minutes
.PHONY: bench-live
bench-live:
	$(BIN)/python bench/live_lag.py --seconds $(or $(LIVE_SECONDS),60)

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

## gpu-check: every command and train task on CUDA vs the CPU, fp32 and --half, and each network's pipeline against its bare forward pass on 1,000 images, beside YOLO11n (bench/results/gpu_check.json; under 8 minutes); skips without CUDA
.PHONY: gpu-check gpu-check-smoke
gpu-check:
	$(BIN)/python bench/gpu_check.py

## gpu-check-smoke: the share.* checks with the CPU standing in for the GPU, 16 images (a trial: results to /tmp)
gpu-check-smoke:
	CVTOOL_BENCH_RESULTS=/tmp/cvtool-gpu-check-smoke OMP_NUM_THREADS=2 $(BIN)/python bench/gpu_check.py --device cpu --images 16 --only share.device_decode,share.efficientnet_b0,share.yolo640,share.yolo11n

## bench-overlap: cvtool classify|detect|segment DIR --out on the CPU, outputs written by the runner's writer pool vs in the main thread (bench/results/pipeline_overlap.json)
.PHONY: bench-overlap
bench-overlap:
	OMP_NUM_THREADS=2 $(BIN)/python bench/pipeline_overlap.py

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

## eval-localize: `train localize` (ResNet-18 from scratch, 128 px) on one-raccoon photos and on the pet photos, with Pc = 0 photos; our YOLO's top box as the reference (needs ../shared; CPU, ~30-60 min on a busy machine)
.PHONY: eval-localize
eval-localize:
	$(BIN)/python bench/eval_localize.py --sets raccoon --epochs 30 --img-size 128 --detector-epochs 60 --name eval_localize_raccoon
	$(BIN)/python bench/eval_localize.py --sets pets --epochs 30 --img-size 128 --name eval_localize_pets

## eval-track: ByteTrack vs the IoU tracker (and Ultralytics' if CVTOOL_ULTRALYTICS_PYTHON names a Python that has it) on
## MOT15 KITTI-17's public detections, HOTA/MOTA/IDF1 by TrackEval (needs ../shared/datasets/mot15_kitti17); then the
## exact line/zone counts and the tracker's overhead on a generated clip with the face detector (~3 CPU-min)
eval-track:
	$(BIN)/pip install -q motmetrics
	$(BIN)/pip install -q --no-deps trackeval==1.3.0
	$(BIN)/python bench/track_mot.py
	$(BIN)/python bench/track_count.py

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

## bench-host-ceiling: images/s of classify/detect/segment with a no-op network vs a bare cv2.imread loop, full vs reduced decoding, 1 and 2 threads; whole `cvtool classify/detect DIR` before/after (needs ../shared; ~10 CPU-min)
.PHONY: bench-host-ceiling
bench-host-ceiling:
	$(BIN)/python bench/host_ceiling.py

## bench-decode-agreement: records of reduced vs full JPEG decoding on real photos, a classifier and our YOLO trained here first (needs ../shared; ~10 CPU-min)
AGREE := /tmp/cvtool-decode-agreement
.PHONY: bench-decode-agreement
bench-decode-agreement:
	mkdir -p $(AGREE)
	{ echo path,label; for f in ../shared/datasets/pets_localization/labels/*.csv; do s=$$(basename $$f .csv); \
	  echo "$$PWD/../shared/datasets/pets_localization/images/$$s.jpg,$$(tail -1 $$f | cut -d, -f3)"; done; \
	  for f in ../shared/datasets/raccoon/images/*.jpg; do echo "$$PWD/$$f,raccoon"; done; } > $(AGREE)/animals.csv
	OMP_NUM_THREADS=1 $(BIN)/cvtool -q train classify $(AGREE)/animals.csv --arch mobilenet_v3_small --img-size 128 \
	  --hflip --epochs 50 --batch-size 32 --lr 3e-3 --seed 0 --device cpu --out $(AGREE)/cls > /dev/null
	OMP_NUM_THREADS=1 $(BIN)/cvtool -q train detect ../shared/datasets/raccoon --val-split 0.2 --epochs 40 --img-size 256 \
	  --width 16 --mosaic 0.5 --batch-size 8 --seed 0 --device cpu --out $(AGREE)/yolo > /dev/null
	$(BIN)/python bench/decode_agreement.py --classify-weights $(AGREE)/cls/best.pt --detect-weights $(AGREE)/yolo/best.pt \
	  --classify-train-command "Makefile bench-decode-agreement" --detect-train-command "Makefile bench-decode-agreement"

## bench-face-search: verify-face's coarse-to-fine face search vs the exhaustive one on ../shared/datasets/faces: same choices, verdicts, distances; detector time
.PHONY: bench-face-search
bench-face-search:
	$(BIN)/python bench/face_search.py


## eval-landmarks: `train landmarks` (ResNet-18 from scratch, 96 px, 40 epochs) on 395 HELEN faces, 100 held out, against dlib's 68-point predictor on the same detector boxes (needs ../shared; 1 thread, ~45 min on a busy machine)
.PHONY: eval-landmarks
eval-landmarks:
	OMP_NUM_THREADS=1 $(BIN)/python bench/eval_landmarks.py --epochs 40 --arch resnet18 --img-size 96 --threads 1


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
