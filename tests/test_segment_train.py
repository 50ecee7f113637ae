"""The U-Net paper's training recipe in `train segment`: elastic deformations that keep image and mask aligned,
the border weight map (known numbers), the weighted cross-entropy, and the cell-region scores (adapted Rand
error, variation of information) of the train summary and of `cvtool val segment`."""

import json
import math

import cv2
import numpy as np
import pytest
import torch
from conftest import invoke_cli

from cvtool.device import cpu_has_bf16
from cvtool.errors import UsageError
from cvtool.ops import elastic
from cvtool.ops.regions import border_weight_map, class_balance_weights, foreground_variation_of_information
from cvtool.train.segmentation import IGNORE_INDEX, weighted_cross_entropy


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cells(h: int = 96, w: int = 96, step: int = 16, membrane: int = 3) -> np.ndarray:
    """Class ids: a lattice of square cells (1) separated by membrane lines (0)."""
    mask = np.ones((h, w), np.uint8)
    for k in range(0, max(h, w), step):
        mask[k : k + membrane, :] = 0
        mask[:, k : k + membrane] = 0
    return mask


def test_elastic_warp_keeps_image_and_mask_aligned():
    labels = (np.arange(96)[:, None] // 12 * 8 + np.arange(96)[None, :] // 12).astype(np.uint8)  # 64 blocks
    image = np.repeat((labels * 3)[:, :, None], 3, axis=2)  # the image's grey level encodes the block's label
    field = elastic.displacement_field(labels.shape, np.random.default_rng(1), sigma=10, grid=3)
    warped_image, warped_labels = elastic.warp_image(image, field), elastic.warp_mask(labels, field, fill=255)
    kernel = np.ones((3, 3), np.uint8)
    # away from block edges (where bilinear image sampling mixes two blocks): 3x3 neighbourhoods of one label
    inside = (cv2.erode(warped_labels, kernel) == cv2.dilate(warped_labels, kernel)) & (warped_labels != 255)
    assert inside.mean() > 0.5
    agree = np.abs(warped_image[..., 0].astype(int) - warped_labels.astype(int) * 3)[inside] <= 1
    assert agree.mean() > 0.99
    assert (warped_labels != labels).mean() > 0.1  # and the warp did move things
    # a different field for the mask (what the test is there to catch) breaks the agreement
    other = elastic.warp_mask(labels, elastic.displacement_field(labels.shape, np.random.default_rng(2)), fill=255)
    inside = (cv2.erode(other, kernel) == cv2.dilate(other, kernel)) & (other != 255)
    assert (np.abs(warped_image[..., 0].astype(int) - other.astype(int) * 3)[inside] <= 1).mean() < 0.8
    assert set(np.unique(warped_labels)) <= set(np.unique(labels)) | {255}  # nearest neighbour: no new ids


def test_border_weight_map_is_high_between_touching_cells_and_w_c_far_from_them():
    mask = np.zeros((40, 120), np.uint8)
    mask[5:35, 5:30] = 1  # two cells, 2 membrane pixels (columns 30, 31) apart
    mask[5:35, 32:57] = 1
    mask[0, 0] = IGNORE_INDEX
    w_c = class_balance_weights(mask, 2, IGNORE_INDEX)
    n_valid, n_cell = 40 * 120 - 1, 2 * 30 * 25
    assert w_c == pytest.approx([n_valid / (2 * (n_valid - n_cell)), n_valid / (2 * n_cell)])
    weights = border_weight_map(mask, w0=10, sigma=5)
    # column 30: 1 px from the left cell, 2 from the right one: w_c + 10 exp(-9 / 50)
    assert weights[20, 30] == pytest.approx(w_c[0] + 10 * math.exp(-9 / 50), rel=1e-5)
    assert weights[20, 31] == pytest.approx(w_c[0] + 10 * math.exp(-9 / 50), rel=1e-5)
    assert weights[20, 30] > 9
    assert weights[20, 119] == pytest.approx(w_c[0], abs=1e-4)  # 62 px from the nearest cell
    assert weights[20, 15] == pytest.approx(w_c[1])  # inside a cell: its class weight alone
    assert weights[0, 0] == 0.0  # ignored
    # one cell alone: no second cell, so no border term anywhere
    alone = mask.copy()
    alone[5:35, 32:57] = 0
    assert border_weight_map(alone)[20, 30] == pytest.approx(class_balance_weights(alone, 2, IGNORE_INDEX)[0])


def test_weighted_cross_entropy_is_plain_cross_entropy_with_unit_weights():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    target = torch.randint(0, 3, (2, 8, 8), generator=generator)
    target[0, :2] = IGNORE_INDEX
    plain = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert weighted_cross_entropy(logits, target, torch.ones(2, 8, 8)).item() == pytest.approx(plain.item(), rel=1e-6)
    assert weighted_cross_entropy(logits, target, torch.full((2, 8, 8), 3.0)).item() == pytest.approx(
        3 * plain.item(), rel=1e-6)
    heavy = torch.ones(2, 8, 8)
    heavy[1, 4, 4] = 11.0  # one pixel counts 11 times
    per_pixel = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    expected = (per_pixel.sum() + 10 * per_pixel[1, 4, 4]) / (target != IGNORE_INDEX).sum()
    assert weighted_cross_entropy(logits, target, heavy).item() == pytest.approx(expected.item(), rel=1e-6)


def test_variation_of_information_split_and_merge_known_answers():
    truth = np.zeros((10, 21), np.int64)
    truth[:, :10], truth[:, 11:] = 1, 1  # two equal cells, a membrane column between them
    merged = np.ones_like(truth)  # the membrane missed: one bit to tell the cells apart again
    assert foreground_variation_of_information(truth, merged) == pytest.approx((0.0, 1.0))
    split = truth.copy()
    split[4:6, :] = 0  # each cell cut by a 2 px membrane, thinned away: rows 0-4 and 5-9, 50 / 50 pixels
    assert foreground_variation_of_information(truth, split) == pytest.approx((1.0, 0.0))
    uneven = truth.copy()
    uneven[1:3, :] = 0  # cut near the top: 20 / 80 pixels after thinning
    entropy = -(0.2 * math.log2(0.2) + 0.8 * math.log2(0.8))
    assert foreground_variation_of_information(truth, uneven) == pytest.approx((entropy, 0.0))
    assert foreground_variation_of_information(truth, truth) == pytest.approx((0.0, 0.0), abs=1e-9)


def _conditional_entropy(given: np.ndarray, of: np.ndarray) -> float:
    """H(of | given) in bits over paired labels, from their contingency counts (written here, not scikit-image's)."""
    pairs, counts = np.unique(np.stack([given.ravel(), of.ravel()]), axis=1, return_counts=True)
    given_counts = {g: counts[pairs[0] == g].sum() for g in np.unique(pairs[0])}
    n = counts.sum()
    return float(-sum(c / n * math.log2(c / given_counts[g]) for g, c in zip(pairs[0], counts)))


def test_the_trainers_vi_split_and_merge_are_the_hand_computed_ones():
    """A hand-made pair through the training recipe's own scoring (SegmentationTask's metrics, as `train segment`
    reports vi_split / vi_merge): two cells, the left one cut in half by the prediction, its lower half joined to
    the right cell through a gap in the membrane between them."""
    from cvtool.models.registry import get_entry
    from cvtool.train.segmentation import SegmentationTask

    truth = np.zeros((10, 21), np.int64)
    truth[:, :10], truth[:, 11:] = 1, 1  # cells: columns 0-9 and 11-20, the membrane column 10
    predicted = truth.copy()
    predicted[4:6, :10] = 0  # a 2 px membrane across the left cell: thinned away, rows 0-4 and 5-9
    predicted[5:, 10] = 1  # a gap in the membrane column: the lower left half and the right cell are one cell
    # the predicted cells after thinning, where truth is a cell (its membrane is ignored): written out by hand
    cells = truth == 1
    truth_cells = np.where(np.arange(21) < 10, 1, 2)[None].repeat(10, 0)  # 1: left, 2: right
    regions = np.full_like(truth, 2)  # 2: the joined cell
    regions[:5, :10] = 1  # 1: the upper left half
    split = _conditional_entropy(truth_cells[cells], regions[cells])
    merge = _conditional_entropy(regions[cells], truth_cells[cells])
    # known answers: the left cell (half the pixels) is split 50 / 50; the joined cell (150 px) is 1/3 left, 2/3 right
    third = -(math.log2(1 / 3) / 3 + 2 * math.log2(2 / 3) / 3)
    assert (split, merge) == pytest.approx((0.5, 0.75 * third))
    assert foreground_variation_of_information(truth, predicted) == pytest.approx((split, merge))

    task = SegmentationTask(get_entry("unet", "segment"), ["membrane", "cell"], get_entry("unet").preprocess(), {}, "ce")
    logits = torch.from_numpy(np.stack([1 - predicted, predicted]) * 40.0 - 20.0).float()[None]  # certain: 0 / 1
    state = task.start_metrics()
    task.update_metrics(state, logits, torch.from_numpy(truth)[None])
    report = task.finish_metrics(state)
    assert (report["vi_split"], report["vi_merge"]) == pytest.approx((split, merge))


def _write_cells(root, n: int, seed: int):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.roll(_cells(64, 64), tuple(rng.integers(0, 16, 2)), axis=(0, 1))
        image = np.where(mask == 1, 200, 40).astype(np.uint8) + rng.integers(0, 20, mask.shape).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{i}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask * 255)
    return root


def test_one_epoch_with_the_paper_options_reports_rand_and_vi_for_best_and_last(tmp_path):
    data = _write_cells(tmp_path / "data", 4, seed=0)
    result = invoke_cli("train", "segment", str(data), "--epochs", "1", "--width", "4", "--depth", "2", "--crop", "32",
                        "--batch-size", "2", "--loss", "weighted-ce", "--elastic", "--elastic-sigma", "6",
                        "--mirror-pad", "8", "--border-w0", "5", "--no-border-balance", "--class-names", "membrane,cell",
                        "--device", "cpu", "--out", str(tmp_path / "run"), "--val-split", "0.5")
    assert result.returncode == 0, result.stderr
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for report in (on_disk["val"], on_disk["val_last_epoch"]):
        assert {"adapted_rand_error", "vi_split", "vi_merge", "iou_membrane", "pixel_accuracy"} <= set(report)
        assert 0.0 <= report["adapted_rand_error"] <= 1.0
    args = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["args"]  # the CLI's options reached the recipe
    assert (args["elastic"], args["elastic_sigma"], args["loss"], args["mirror_pad"], args["border_w0"],
            args["border_balance"]) == (True, 6.0, "weighted-ce", 8, 5.0, False)
    # `cvtool val segment` gives the same cell-region scores for that checkpoint, VI beside the Rand error
    result = invoke_cli("val", "segment", str(data), "--weights", str(tmp_path / "run" / "last.pt"))
    assert result.returncode == 0, result.stderr
    rand = json.loads(result.stdout)["rand"]
    assert {"adapted_rand_error", "vi_split", "vi_merge", "per_image_error"} <= set(rand)
    assert len(rand["per_image_error"]) == 4


def test_bad_recipe_values_stop_before_a_run_directory_is_made(tmp_path):
    import cvtool.train

    data = _write_cells(tmp_path / "data", 2, seed=0)
    for bad in (dict(mirror_pad=-1), dict(border_w0=-10.0)):
        with pytest.raises(UsageError) as caught:
            cvtool.train.segment(str(data), epochs=1, width=4, out=str(tmp_path / "run"), **bad)
        assert str(caught.value) == ("--mirror-pad, --elastic-sigma and --border-w0 must be >= 0, --elastic-grid >= 2, "
                                     "--border-sigma > 0")
    with pytest.raises(UsageError, match="unknown --loss 'weighted'; choose from ce, dice, ce\\+dice, weighted-ce"):
        cvtool.train.segment(str(data), epochs=1, width=4, loss="weighted", out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_weighted_training_items_carry_the_weight_map_warped_with_the_mask(tmp_path):
    from cvtool.ops.preprocess import Preprocess
    from cvtool.train.segmentation import SegmentationDataset, open_segmentation_data

    data = open_segmentation_data(_write_cells(tmp_path / "data", 1, seed=3))
    pre = Preprocess(crop_size=None, resize_size=None, mean=(0.5,), std=(0.5,), grayscale=True, resize_mode="none")
    dataset = SegmentationDataset(data, pre, crop=48, multiple=4, train=True, elastic={"sigma": 4.0, "grid": 3},
                                  mirror_pad=16, weights={"w0": 10.0, "sigma": 5.0})
    image, target = dataset[(0, 123)]
    mask, weight = target["mask"].numpy(), target["weight"].numpy()
    assert image.shape == (1, 48, 48) and mask.shape == weight.shape == (48, 48)
    assert (weight[mask == IGNORE_INDEX] == 0).all()  # mirrored context and warped-in borders are not scored
    scored = mask != IGNORE_INDEX
    # the map moved with the mask: membrane pixels carry the border term, cell pixels their class weight
    assert np.median(weight[scored & (mask == 0)]) > 3 * np.median(weight[scored & (mask == 1)])
    again_image, again = dataset[(0, 123)]  # the sample's seed fixes its warp
    assert torch.equal(again_image, image) and torch.equal(again["weight"], target["weight"])


def test_border_weight_map_without_class_balance_is_one_plus_the_border_term():
    mask = np.zeros((40, 120), np.uint8)
    mask[5:35, 5:30] = 1
    mask[5:35, 32:57] = 1
    weights = border_weight_map(mask, class_balance=False)
    assert weights[20, 30] == pytest.approx(1 + 10 * math.exp(-9 / 50), rel=1e-5)
    assert weights[20, 15] == 1.0 and weights[20, 119] == pytest.approx(1.0, abs=1e-4)


def test_select_rand_picks_best_by_the_rand_f_score_of_every_epoch(tmp_path):
    import csv

    data = _write_cells(tmp_path / "data", 4, seed=1)
    result = invoke_cli("train", "segment", str(data), "--epochs", "3", "--width", "4", "--depth", "2", "--crop", "32",
                        "--batch-size", "2", "--class-names", "membrane,cell", "--select", "rand", "--device", "cpu",
                        "--out", str(tmp_path / "run"), "--val-split", "0.5")
    assert result.returncode == 0, result.stderr
    assert "Rand F" in result.stderr
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    rand_f = [float(row["val_rand_f"]) for row in rows]
    assert len(rand_f) == 3 and all(0.0 <= f <= 1.0 for f in rand_f)
    for row, f in zip(rows, rand_f):  # the F-score is one minus the adapted Rand error of the same pass
        assert f == pytest.approx(1.0 - float(row["val_adapted_rand_error"]), abs=1e-9)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    best = max(range(3), key=lambda i: (rand_f[i], -float(rows[i]["val_loss"])))
    assert summary["best_epoch"] == best + 1
    assert summary["val"]["rand_f"] == pytest.approx(rand_f[best], abs=1e-6)


def test_select_rand_needs_two_classes(tmp_path):
    data = _write_cells(tmp_path / "data", 2, seed=0)
    mask = cv2.imread(str(data / "masks" / "0.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(data / "masks" / "0.png"), np.where(mask > 0, 2, 0).astype(np.uint8))  # ids 0 and 2: three classes
    cv2.imwrite(str(data / "masks" / "1.png"), np.where(mask > 0, 1, 0).astype(np.uint8))
    result = invoke_cli("train", "segment", str(data), "--epochs", "1", "--width", "4", "--depth", "2", "--crop", "32",
                        "--select", "rand", "--device", "cpu", "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cvtool: --select rand scores the cells between "
                                                            "membranes: it needs two classes")
    result = invoke_cli("train", "segment", str(data), "--select", "dice", "--out", str(tmp_path / "run2"))
    assert result.returncode == 2 and "unknown --select 'dice'; choose from miou, rand" in result.stderr


def test_masks_using_few_of_their_class_ids_train_as_given_with_one_warning_line(tmp_path):
    # a 4-class palette mask saved as grey levels: ids 0, 38, 75, 113 make 114 classes, 110 of them empty
    from cvtool.train.segmentation import open_segmentation_data

    data = _write_cells(tmp_path / "data", 2, seed=0)
    for i, levels in enumerate(((0, 38), (75, 113))):
        mask = cv2.imread(str(data / "masks" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(data / "masks" / f"{i}.png"), np.where(mask > 0, levels[1], levels[0]).astype(np.uint8))
    expected = ("the masks use 4 class ids of 0-113 (0, 38, 75, 113), so 114 classes are trained, 110 of them with "
                "no pixels; if these values are grey levels (a palette mask saved as grey?), save the masks with class "
                "ids 0-3")
    assert open_segmentation_data(data).warnings == [expected]
    result = invoke_cli("train", "segment", str(data), "--epochs", "1", "--width", "4", "--depth", "2", "--crop", "32",
                        "--device", "cpu", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "warning" in line] == [f"cvtool: warning: {expected}"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["warnings"] == [expected]
    # ids 0-2 with 1 missing, or binary masks: nothing to say
    cv2.imwrite(str(data / "masks" / "0.png"), np.where(mask > 0, 2, 0).astype(np.uint8))
    cv2.imwrite(str(data / "masks" / "1.png"), np.where(mask > 0, 2, 0).astype(np.uint8))
    assert open_segmentation_data(data).warnings == []
    with pytest.raises(UsageError, match="on_warning cannot reach the processes devices= launches"):
        import cvtool.train

        cvtool.train.segment(data, epochs=1, devices=2, on_warning=print, out=tmp_path / "ddp")


def test_ema_segmenter_saves_and_scores_the_average_and_resumes_exactly(tmp_path):
    """--ema is the engine's: best.pt / last.pt hold the moving average (what val segment scores), last.pt keeps the
    raw weights, and a run stopped by Ctrl-C in its last epoch and resumed ends where the uninterrupted run does."""
    import cvtool.train
    from cvtool.models.checkpoint import load_weights_file
    from cvtool.train.engine import Callbacks

    class StopInEpoch3(Callbacks):
        def on_batch(self, epoch, batch, loss, images_per_s):
            if epoch == 3:
                raise KeyboardInterrupt

    data = _write_cells(tmp_path / "data", 4, seed=2)
    options = dict(epochs=3, width=4, depth=2, crop=32, batch_size=2, class_names=["membrane", "cell"], ema=0.9,
                   device="cpu", val_split=0.5)
    whole = cvtool.train.segment(str(data), out=str(tmp_path / "whole"), **options)
    with pytest.raises(KeyboardInterrupt):
        cvtool.train.segment(str(data), out=str(tmp_path / "split"), callbacks=StopInEpoch3(), **options)
    assert load_weights_file(tmp_path / "split" / "last.pt").meta["ema"]["updates"] == 2  # 1 batch of 2 per epoch
    resumed = cvtool.train.segment(resume=str(tmp_path / "split"), device="cpu")
    a, b = (load_weights_file(tmp_path / run / "last.pt") for run in ("whole", "split"))
    assert a.meta["ema"]["updates"] == b.meta["ema"]["updates"] == 3
    raw_a, raw_b = a.meta["ema"]["train_state_dict"], b.meta["ema"]["train_state_dict"]
    for key in a.state_dict:  # the average (the checkpoint's weights) and the raw weights
        torch.testing.assert_close(b.state_dict[key], a.state_dict[key], rtol=0, atol=0)
        torch.testing.assert_close(raw_b[key], raw_a[key], rtol=0, atol=0)
    assert any(not torch.equal(a.state_dict[k], raw_a[k]) for k in raw_a if raw_a[k].is_floating_point())
    assert whole["ema"] == resumed["ema"] == 0.9 and whole["val_last_epoch"] == resumed["val_last_epoch"]
    assert "train_state_dict" not in load_weights_file(tmp_path / "whole" / "best.pt").meta["ema"]
    # `cvtool val segment` scores what last.pt holds, the average: the summary's last-epoch figures
    held = tmp_path / "held"
    for sub in ("images", "masks"):
        (held / sub).mkdir(parents=True)
        for name in whole["val_names"]:
            (held / sub / name).write_bytes((data / sub / name).read_bytes())
    scored = invoke_cli("val", "segment", str(held), "--weights", str(tmp_path / "whole" / "last.pt"))
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["pixel_accuracy"] == pytest.approx(whole["val_last_epoch"]["pixel_accuracy"],
                                                                       abs=1e-4)


@pytest.mark.parametrize("width", [5, 9, 24])
def test_thresholded_labels_thin_membranes_without_opening_a_gap(width):
    from cvtool.ops.regions import cell_regions, thresholded_labels

    probability = np.full((40, 60), 0.9, np.float32)
    probability[:, 20 : 20 + width] = 0.4  # a membrane the network is unsure of, across the image: all above 0.3
    assert cell_regions((probability > 0.3).astype(np.uint8)).max() == 1  # a plain 0.3 threshold merges the cells
    labels = thresholded_labels(probability, 0.3)
    assert labels.dtype == np.uint8 and cell_regions(labels).max() == 2  # the argmax's separation kept
    assert (labels == 0).sum(axis=1).tolist() == [1] * 40  # as a 1 px line, from edge to edge
    for threshold in (0.5, 0.7):  # at or above 0.5: the plain threshold (membranes only grow)
        assert (thresholded_labels(probability, threshold) == (probability > threshold)).all()


def test_thresholded_labels_keep_the_argmax_cells_and_add_none():
    from scipy import ndimage

    from cvtool.ops.regions import cell_regions, thresholded_labels

    rng = np.random.default_rng(0)
    for _ in range(20):  # smooth random probability maps: blobs of cells, membranes of every width and shape
        probability = ndimage.gaussian_filter(rng.random((48, 64)), rng.uniform(1, 4))
        probability = (probability - probability.min()) / np.ptp(probability)
        argmax = (probability > 0.5).astype(np.uint8)
        for threshold in (0.2, 0.35, 0.45):
            labels = thresholded_labels(probability, threshold)
            assert (labels[argmax == 1] == 1).all() and (labels[probability <= threshold] == 0).all()
            assert cell_regions(labels).max() == cell_regions(argmax).max()  # no cell joined, none new
    corner = np.full((30, 30), 0.9, np.float32)
    corner[np.add.outer(np.arange(30), np.arange(30)) >= 44] = 0.4  # a thick membrane cutting off a corner
    corner[np.add.outer(np.arange(30), np.arange(30)) >= 50] = 0.9
    assert cell_regions(thresholded_labels(corner, 0.3)).max() == cell_regions((corner > 0.5).astype(np.uint8)).max() == 2


def test_train_segment_stores_the_validation_threshold_that_val_segment_reproduces(tmp_path):
    train, val = _write_cells(tmp_path / "train", 2, seed=0), _write_cells(tmp_path / "val", 2, seed=1)
    result = invoke_cli("train", "segment", str(train), "--val", str(val), "--epochs", "2", "--width", "4",
                        "--depth", "2", "--crop", "32", "--batch-size", "2", "--loss", "weighted-ce",
                        "--class-names", "membrane,cell", "--device", "cpu", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    reported = json.loads((tmp_path / "run" / "summary.json").read_text())["val_last_epoch"]
    from cvtool.train.segmentation import THRESHOLDS

    assert reported["decision_threshold"] in THRESHOLDS
    stored = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert stored["decision_threshold"] == reported["decision_threshold"]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert "val_decision_threshold" in rows[0].split(",")

    def scores(*extra):
        result = invoke_cli("val", "segment", str(val), "--weights", str(tmp_path / "run" / "last.pt"), *extra)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    scored = scores()  # the checkpoint's threshold by default: the figures training reported for it
    assert scored["decision_threshold"] == (None if reported["decision_threshold"] == 0.5
                                            else reported["decision_threshold"])
    assert scored["pixel_accuracy"] == pytest.approx(reported["pixel_accuracy"], abs=1e-4)
    assert scored["rand"]["adapted_rand_error"] == pytest.approx(reported["adapted_rand_error"], abs=1e-4)
    assert scored["miou"] == pytest.approx(reported["miou"], abs=1e-4)
    for other in (0.2, 0.5, 0.7):  # it was the best of the thresholds tried, on these images, by mIoU
        assert scores("--threshold", str(other))["miou"] <= scored["miou"]


@pytest.mark.skipif(not cpu_has_bf16(),
                    reason="this CPU has no bfloat16 instructions (AVX512-BF16 or AMX); --cpu-bf16 is refused there")
def test_cpu_bf16_trains_in_mixed_precision_and_resumes_exactly(tmp_path, monkeypatch):
    """--cpu-bf16: the run is stored as a bf16 run (results close to, not equal to, float32's), and a run stopped by
    Ctrl-C in its last epoch resumes in bf16 to the uninterrupted run's weights bit for bit."""
    import cvtool.device
    import cvtool.train
    from cvtool.models.checkpoint import load_weights_file
    from cvtool.train.engine import Callbacks

    class StopInEpoch3(Callbacks):
        def on_batch(self, epoch, batch, loss, images_per_s):
            if epoch == 3:
                raise KeyboardInterrupt

    data = _write_cells(tmp_path / "data", 4, seed=3)
    options = dict(epochs=3, width=8, depth=2, crop=32, batch_size=2, class_names=["membrane", "cell"], device="cpu",
                   val_split=0.5, loss="weighted-ce")
    fp32 = cvtool.train.segment(str(data), out=str(tmp_path / "fp32"), **options)
    result = invoke_cli("train", "segment", str(data), "--epochs", "3", "--width", "8", "--depth", "2", "--crop", "32",
                        "--batch-size", "2", "--class-names", "membrane,cell", "--device", "cpu", "--val-split", "0.5",
                        "--loss", "weighted-ce", "--cpu-bf16", "--out", str(tmp_path / "whole"))
    assert result.returncode == 0, result.stderr
    with pytest.raises(KeyboardInterrupt):
        cvtool.train.segment(str(data), out=str(tmp_path / "split"), callbacks=StopInEpoch3(), cpu_bf16=True, **options)
    with monkeypatch.context() as patched:  # on a CPU without bf16 instructions the bf16 run is not carried on
        patched.setattr(cvtool.device, "cpu_has_bf16", lambda: False)
        with pytest.raises(UsageError, match=r"split trains in bf16 \(--cpu-bf16\), and this CPU has no bfloat16 "
                                             r"instructions \(AVX512-BF16 or AMX\): resume it on one that has"):
            cvtool.train.segment(resume=str(tmp_path / "split"), device="cpu")
    cvtool.train.segment(resume=str(tmp_path / "split"), device="cpu")
    whole, split, plain = (load_weights_file(tmp_path / run / "last.pt") for run in ("whole", "split", "fp32"))
    assert whole.meta["config"]["cpu_bf16"] and split.meta["config"]["cpu_bf16"] and not plain.meta["config"]["cpu_bf16"]
    for key in whole.state_dict:
        assert whole.state_dict[key].dtype == plain.state_dict[key].dtype  # float32 weights; bf16 only in autocast
        torch.testing.assert_close(split.state_dict[key], whole.state_dict[key], rtol=0, atol=0)
    assert any(not torch.equal(whole.state_dict[k], plain.state_dict[k]) for k in whole.state_dict
               if whole.state_dict[k].is_floating_point())
    assert fp32["epochs"] == 3
    for a, b in zip(whole.meta["history"], plain.meta["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)


def test_cpu_bf16_is_refused_on_a_cpu_without_bfloat16_instructions(tmp_path, monkeypatch):
    import cvtool.device

    monkeypatch.setattr(cvtool.device, "cpu_has_bf16", lambda: False)
    data = _write_cells(tmp_path / "data", 2, seed=0)
    for devices in ("1", "2"):  # with --devices 2: refused before torchrun starts two processes
        result = invoke_cli("train", "segment", str(data), "--epochs", "1", "--width", "4", "--depth", "2", "--crop",
                            "32", "--device", "cpu", "--cpu-bf16", "--devices", devices, "--out", str(tmp_path / "run"))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "cvtool: --cpu-bf16 needs a CPU with bfloat16 instructions (AVX512-BF16 or AMX); this CPU has none (it "
            "would emulate bf16, slower than float32): drop --cpu-bf16"]
        assert not (tmp_path / "run").exists()


def test_val_every_validates_every_nth_epoch_and_the_last_and_picks_best_among_them(tmp_path, monkeypatch):
    import csv

    import cvtool.train
    from cvtool.models.checkpoint import load_weights_file

    data = _write_cells(tmp_path / "data", 4, seed=4)
    options = dict(width=4, depth=2, crop=32, batch_size=2, class_names=["membrane", "cell"], device="cpu",
                   val_split=0.5)
    summary = cvtool.train.segment(str(data), epochs=5, val_every=2, out=str(tmp_path / "run"), **options)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert [row["val_miou"] != "" for row in rows] == [False, True, False, True, True]
    assert all(row["train_loss"] != "" for row in rows)
    validated = {int(row["epoch"]): float(row["val_miou"]) for row in rows if row["val_miou"]}
    assert summary["best_epoch"] in validated and load_weights_file(tmp_path / "run" / "best.pt").meta["epoch"] in validated
    assert summary["val_last_epoch"]["miou"] == pytest.approx(validated[5], abs=1e-4)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    # a resumed run keeps its schedule (only --epochs may change): carried on to 7, it validates 6 and 7
    with pytest.raises(UsageError, match=r"--val-every 3: .* validates every 2 epoch\(s\), and a resumed run keeps"):
        cvtool.train.segment(resume=str(tmp_path / "run"), epochs=7, val_every=3, device="cpu")
    # --cpu-bf16 on resuming a float32 run: on a CPU with bf16 the run's own precision is the reason; on one
    # without (AVX2), the CPU is (both checks run before any epoch; CVTOOL_CPU_BF16 is the probe's override)
    for probe, refusal in (("1", r"--cpu-bf16: .* trains in float32, and a resumed run keeps its precision"),
                           ("0", r"--cpu-bf16 needs a CPU with bfloat16 instructions \(AVX512-BF16 or AMX\)")):
        with monkeypatch.context() as patched:
            patched.setenv("CVTOOL_CPU_BF16", probe)
            with pytest.raises(UsageError, match=refusal):
                cvtool.train.segment(resume=str(tmp_path / "run"), epochs=7, cpu_bf16=True, device="cpu")
    cvtool.train.segment(resume=str(tmp_path / "run"), epochs=7, device="cpu")
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [row["val_miou"] != "" for row in rows] == [False, True, False, True, True, True, True]
    with pytest.raises(UsageError, match="--val-every 0"):
        cvtool.train.segment(str(data), epochs=1, val_every=0, out=str(tmp_path / "bad"), **options)
    assert not (tmp_path / "bad").exists()
    result = invoke_cli("train", "segment", str(data), "--val-every", "0", "--device", "cpu")
    assert result.returncode == 2 and "--val-every" in result.stderr


def test_a_run_stopped_between_validations_and_resumed_where_it_stopped_ends_validated(tmp_path):
    """val_every 4, Ctrl-C in epoch 3: last.pt holds epoch 2, never validated, and no best.pt. Resumed with
    --epochs 2 (no epoch left to train), the run validates epoch 2, writes best.pt and reports it."""
    import cvtool.train
    from cvtool.models.checkpoint import load_weights_file
    from cvtool.train.engine import Callbacks

    class StopInEpoch3(Callbacks):
        def on_batch(self, epoch, batch, loss, images_per_s):
            if epoch == 3:
                raise KeyboardInterrupt

    data = _write_cells(tmp_path / "data", 4, seed=5)
    with pytest.raises(KeyboardInterrupt):
        cvtool.train.segment(str(data), epochs=6, val_every=4, width=4, depth=2, crop=32, batch_size=2,
                             class_names=["membrane", "cell"], device="cpu", val_split=0.5, out=str(tmp_path / "run"),
                             callbacks=StopInEpoch3())
    assert not (tmp_path / "run" / "best.pt").exists()
    summary = cvtool.train.segment(resume=str(tmp_path / "run"), epochs=2, device="cpu")
    assert summary["best_epoch"] == 2 and load_weights_file(tmp_path / "run" / "best.pt").meta["epoch"] == 2
    assert 0.0 <= summary["val_last_epoch"]["miou"] <= 1.0
    assert "val_miou" in load_weights_file(tmp_path / "run" / "last.pt").meta["history"][-1]
