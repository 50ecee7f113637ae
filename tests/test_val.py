"""`cvtool val`: the evaluation alone, with the training recipes' own metric code. Detection reproduces the
mAP `train detect` reported for the same checkpoint; segmentation gives a known IoU on a network whose
answer is known; classification equals `train classify --eval-only`."""

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import invoke_cli
from synthetic_boxes import write_shapes_voc

from cvtool.models.registry import ModelEntry, register, unregister
from cvtool.ops.preprocess import Preprocess


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _widen(folder, rows: int) -> None:
    """Grey rows under every image (boxes unchanged): non-square photos, so the letterbox pads and boxes
    reaching into the padding must be clipped to the image, as `cvtool detect` clips them."""
    for path in sorted((folder / "images").iterdir()):
        image = cv2.imread(str(path))
        cv2.imwrite(str(path), np.concatenate([image, np.full((rows, image.shape[1], 3), 90, np.uint8)]))


def test_val_detect_reproduces_the_map_train_detect_reported(tmp_path):
    train = write_shapes_voc(tmp_path / "train", n=48, size=96, seed=1)
    held_out = write_shapes_voc(tmp_path / "val", n=12, size=96, seed=2)
    _widen(held_out, 32)  # 96 x 128 photos, trained at 96: scaled 0.75 and padded left and right
    trained = invoke_cli("train", "detect", str(train), "--val", str(held_out), "--img-size", "96", "--width", "8",
                         "--epochs", "6", "--batch-size", "8", "--mosaic", "0", "--out", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr
    reported = json.loads((tmp_path / "run" / "summary.json").read_text())["val"]
    result = invoke_cli("val", "detect", str(held_out), "--weights", str(tmp_path / "run" / "best.pt"),
                        "--out", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 12 and (summary["conf"], summary["iou"], summary["max_det"]) == (0.001, 0.6, 100)
    assert summary["map50"] > 0.02  # it learnt something, so the comparison means something
    # the same boxes, letterbox, thresholds, clipping, rounding and evaluator: the same figures
    assert summary["map50"] == pytest.approx(reported["map50"], abs=1e-6)
    assert summary["map50_95"] == pytest.approx(reported["map50_95"], abs=1e-6)
    assert set(summary["ap50_per_class"]) == {"circle", "square"}
    assert summary["plots"] == [str(tmp_path / "plots" / "pr_curve.png")]
    assert cv2.imread(summary["plots"][0]) is not None
    # an unreadable image is skipped with a line, as training skips it, and left out of the scores
    import shutil

    without = tmp_path / "without"
    shutil.copytree(held_out, without)
    first = sorted((held_out / "images").iterdir())[0]
    (without / "images" / first.name).unlink()
    (without / "annotations" / f"{first.stem}.xml").unlink()
    first.write_bytes(b"not an image")
    runs = [invoke_cli("val", "detect", str(root), "--weights", str(tmp_path / "run" / "best.pt"))
            for root in (held_out, without)]
    assert [r.returncode for r in runs] == [0, 0]
    assert runs[0].stderr.strip().splitlines()[-1] == f"cvtool: skipping {first}: not an image (unrecognised format)"
    broken, clean = (json.loads(r.stdout) for r in runs)
    assert (broken["images"], broken["skipped_files"], clean["images"], clean["skipped_files"]) == (11, 1, 11, 0)
    scores = ("boxes", "map50", "map50_95")
    assert [broken[k] for k in scores] == [clean[k] for k in scores]


def test_val_needs_a_model():
    result = invoke_cli("val", "detect", "somewhere")
    assert result.returncode == 2
    assert result.stderr.strip() == "cvtool: give --weights FILE (a checkpoint from `cvtool train`) or --model NAME"


@pytest.fixture
def threshold_model(tmp_path):
    """A real (1x1 convolution) network with a known answer: class 1 = bright pixels, class 0 = dark."""
    conv = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)
        conv.bias.zero_()
    path = tmp_path / "threshold.pt"
    torch.save(conv.state_dict(), path)
    register(ModelEntry(
        name="test_val_threshold", task="segment", family="test",
        builder=lambda num_classes=2: torch.nn.Conv2d(1, num_classes, 1),
        preprocess=lambda: Preprocess(crop_size=None, resize_size=None, mean=(0.5,), std=(0.5,), grayscale=True,
                                      resize_mode="none"),
        classes=lambda: ["membrane", "cell"],
    ))
    yield path
    unregister("test_val_threshold")


def test_val_segment_gives_the_known_iou_dice_and_rand_score(threshold_model, tmp_path):
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    image = np.zeros((40, 60), np.uint8)
    image[10:30, 10:30] = 255  # predicted cells: two 20x20 squares
    image[10:30, 35:55] = 255
    truth = np.zeros((40, 60), np.uint8)
    truth[10:30, 10:30] = 255  # one square right; the other is truth's 20x10 half of it
    truth[10:30, 35:45] = 255
    cv2.imwrite(str(tmp_path / "set" / "images" / "a.png"), image)
    cv2.imwrite(str(tmp_path / "set" / "masks" / "a.png"), truth)
    result = invoke_cli("val", "segment", str(tmp_path / "set"), "-m", "test_val_threshold", "--weights",
                        str(threshold_model), "--out", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # cell: tp 600, fp 200, fn 0 -> IoU 0.75, Dice 1200/1400; membrane: tp 1600, fp 0, fn 200 -> IoU 0.8889
    assert summary["iou"] == {"membrane": 0.8889, "cell": 0.75}
    assert summary["dice"] == {"membrane": round(3200 / 3400, 4), "cell": round(1200 / 1400, 4)}
    assert summary["miou"] == round((1600 / 1800 + 0.75) / 2, 4) and summary["pixel_accuracy"] == round(2200 / 2400, 4)
    assert summary["confusion_matrix"] == [[1600, 200], [0, 600]]
    # Rand on cells only (truth's membrane pixels ignored): both truth regions map into one predicted region
    # each, so precision and recall are 1 -> error 0; a merge of the two predicted squares would cost
    assert summary["rand"]["adapted_rand_error"] == 0.0
    assert cv2.imread(str(tmp_path / "plots" / "examples.png")) is not None


def test_foreground_rand_error_counts_a_merge():
    from skimage.metrics import adapted_rand_error

    from cvtool.ops.regions import foreground_rand_error

    truth = np.zeros((10, 21), np.int64)
    truth[:, :10], truth[:, 11:] = 1, 1  # two cells, a membrane column between them
    merged = np.ones((10, 21), np.int64)  # the membrane missed: one cell
    error = foreground_rand_error(truth, merged)
    from skimage.measure import label

    expected = adapted_rand_error(label(truth == 1, connectivity=1), np.ones_like(truth), ignore_labels=(0,))[0]
    # pairs of pixels: precision about 1/2 (half the pairs joined by the merge are wrong), recall 1 -> F about 2/3
    assert error == pytest.approx(expected) and error == pytest.approx(1 / 3, abs=0.005)
    assert foreground_rand_error(truth, truth) == 0.0


def test_predicted_membranes_are_thinned_away_before_scoring():
    """ISBI 2012's border thinning: a membrane drawn thicker than the truth's costs nothing, a gap in it does."""
    from cvtool.ops.regions import foreground_rand_error, foreground_variation_of_information, thinned_cell_regions

    truth = np.ones((12, 24), np.int64)
    truth[:, 11] = 0  # two cells, a 1 px membrane
    thick = np.ones_like(truth)
    thick[:, 8:16] = 0  # the same membrane, 8 px wide: 7 px of the truth's cells predicted as membrane
    assert foreground_rand_error(truth, thick) == 0.0
    assert foreground_variation_of_information(truth, thick) == (0.0, 0.0)
    regions = thinned_cell_regions(thick)
    assert regions.min() == 1 and len(np.unique(regions)) == 2  # every pixel given to one of the two cells
    broken = thick.copy()
    broken[5:7, 8:16] = 1  # a gap: the cells join
    assert foreground_rand_error(truth, broken) == pytest.approx(1 / 3, abs=0.01)
    assert foreground_variation_of_information(truth, broken)[1] > 0.9  # merge: about one bit
    assert np.array_equal(thinned_cell_regions(np.zeros_like(truth)), np.zeros_like(truth))  # no cell: one region


def test_val_classify_equals_train_eval_only(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(60):
        folder = tmp_path / "digits" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), (digits.images[i] * 16).clip(0, 255).astype(np.uint8))
    checkpoint = tmp_path / "run"
    trained = invoke_cli("train", "classify", str(tmp_path / "digits"), "--arch", "lenet5", "--epochs", "1", "--val", str(tmp_path / "digits"),
                         "--out", str(checkpoint))
    assert trained.returncode == 0, trained.stderr
    weights = str(checkpoint / "best.pt")
    eval_only = json.loads(invoke_cli("train", "classify", str(tmp_path / "digits"), "--weights", weights,
                                      "--eval-only").stdout)
    result = invoke_cli("val", "classify", str(tmp_path / "digits"), "--weights", weights, "--out", str(tmp_path / "v"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["accuracy"] == eval_only["accuracy"] and summary["per_class"] == eval_only["per_class"]
    assert summary["images"] == 60 and sum(map(sum, summary["confusion_matrix"])) == 60
    assert summary["plots"] == [str(tmp_path / "v" / "confusion.png")]


def _membrane_band(path):
    """Two bright cells either side of a 5 px band of grey 102: the threshold model's class-1 probability there is
    sigmoid(2 * (2 * 102 / 255 - 1)) = 0.401, in the cells 0.881."""
    image = np.full((24, 40), 255, np.uint8)
    image[:, 18:23] = 102
    cv2.imwrite(str(path), image)
    return path


def test_segmenter_applies_the_checkpoints_threshold_and_keeps_the_separation(threshold_model, tmp_path):
    from cvtool.api import Segmenter
    from cvtool.models.checkpoint import save_checkpoint
    from cvtool.ops.regions import cell_regions

    image = _membrane_band(tmp_path / "band.png")
    plain = Segmenter("test_val_threshold", weights=threshold_model, device="cpu")
    assert plain.decision_threshold is None
    assert (plain(image).mask == 0).sum(axis=1).tolist() == [5] * 24  # the argmax: the whole band is membrane
    stored = tmp_path / "chosen.pt"
    save_checkpoint(stored, arch="test_val_threshold", task="segment", classes=["membrane", "cell"],
                    state_dict=torch.load(threshold_model, weights_only=True), extra={"decision_threshold": 0.3})
    chosen = Segmenter(weights=stored, device="cpu")
    assert chosen.decision_threshold == 0.3 and chosen.describe().endswith(", threshold 0.3 on cell")
    mask = chosen(image).mask
    assert (mask == 0).sum(axis=1).tolist() == [1] * 24  # one 1 px line, inside the band, the cells apart
    assert set(np.nonzero(mask == 0)[1]) <= set(range(18, 23)) and cell_regions(mask).max() == 2
    assert (Segmenter(weights=stored, device="cpu", threshold=0.5)(image).mask == plain(image).mask).all()
    assert (Segmenter(weights=stored, device="cpu", threshold=0.45)(image).mask == 0).sum() == 5 * 24


def test_segment_threshold_is_refused_for_models_of_other_than_two_classes(tmp_path):
    from conftest import save_random_unet

    weights = save_random_unet(tmp_path / "three.pt", ["a", "b", "c"])
    result = invoke_cli("segment", str(_membrane_band(tmp_path / "band.png")), "--weights", str(weights),
                        "--threshold", "0.3", "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--threshold is for two-class models; unet has 3 classes")
