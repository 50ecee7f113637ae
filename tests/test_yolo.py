"""The YOLO-style detector's pieces, checked by hand: anchors, letterboxing, target assignment and
decoding (an exact round trip), the loss, and the network's output shape."""

import numpy as np
import pytest
import torch

from cvtool.models.yolo import YoloDetector, assign_targets, decode, yolo_loss
from cvtool.ops.anchors import best_possible_recall, kmeans_anchors, shape_iou
from cvtool.ops.letterbox import letterbox


def test_shape_iou_by_hand():
    assert shape_iou(np.array([[10.0, 20.0]]), np.array([[20.0, 10.0], [10.0, 20.0]])).tolist() == [
        [pytest.approx(100 / 300), 1.0]]  # overlap 10x10 = 100, union 200 + 200 - 100


def test_kmeans_recovers_three_clusters_of_box_shapes():
    rng = np.random.default_rng(0)
    centres = np.array([[20.0, 20.0], [60.0, 120.0], [200.0, 80.0]])
    wh = np.vstack([c * rng.uniform(0.9, 1.1, size=(50, 2)) for c in centres])
    anchors = kmeans_anchors(wh, 3, seed=1)
    assert np.allclose(anchors, centres, rtol=0.08)
    assert best_possible_recall(wh, anchors) == 1.0
    with pytest.raises(ValueError, match="need at least 3 boxes"):
        kmeans_anchors(wh[:2], 3)


@pytest.mark.parametrize("h, w", [(480, 640), (333, 500), (640, 427), (100, 100)])
def test_letterbox_maps_boxes_back_exactly(h, w):
    image = np.zeros((h, w, 3), np.uint8)
    boxed, box = letterbox(image, 320)
    assert boxed.shape == (320, 320, 3)
    original = np.array([[0.0, 0.0, w, h], [w * 0.25, h * 0.5, w * 0.75, h * 0.9]])
    np.testing.assert_allclose(box.to_original(box.to_letterboxed(original)), original, atol=1e-9)
    # the whole image lands exactly on the unpadded area, and that area has the image's content
    x1, y1, x2, y2 = box.to_letterboxed(original)[0]
    assert (x1, y1) == (box.pad_x, box.pad_y)
    assert x2 == pytest.approx(box.pad_x + round(w * box.scale_x)) and y2 == pytest.approx(box.pad_y + round(h * box.scale_y))
    assert (boxed[: box.pad_y] == 114).all() and (boxed[int(y1) : int(y2), int(x1) : int(x2)] == 0).all()


def _raw_for(targets, mask, num_values):
    """Raw head outputs that decode exactly to the assigned targets (objectness certain, elsewhere silent)."""
    raw = torch.full((*mask.shape, num_values), -20.0)
    logit = lambda p: torch.log(p / (1 - p))  # noqa: E731
    raw[mask] = torch.cat([logit((targets[mask][:, :2] + 0.5) / 2), targets[mask][:, 2:4],
                           torch.full((int(mask.sum()), 1), 20.0), targets[mask][:, 5:] * 40 - 20], dim=1)
    return raw


def test_single_assignment_then_decoding_returns_the_boxes_exactly():
    anchors = torch.tensor([[30.0, 30.0], [80.0, 50.0]])
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 44.0], [100.0, 70.0, 190.0, 120.0]])]
    targets, mask = assign_targets(boxes, [torch.tensor([0, 1])], anchors, grid=(4, 8), num_classes=2, stride=32,
                                   anchor_ratio=1.0, neighbours=False)  # only the best anchor in the centre's cell
    assert mask.sum() == 2
    # the first box (centre 30, 28; 40 x 32) belongs to cell (0, 0) and the 30x30 anchor
    assert mask[0, 0, 0, 0] and mask[0, 1, 2, 4]  # second: centre (145, 95) -> cell x 4, y 2; 90 x 50 -> 80x50 anchor
    decoded, objectness, classes = decode(_raw_for(targets, mask, 7), anchors, stride=32)
    keep = objectness[0] > 0.5
    torch.testing.assert_close(decoded[0][keep], boxes[0], atol=1e-3, rtol=0)
    assert classes[0][keep].argmax(1).tolist() == [0, 1]


def test_multi_positive_assignment_uses_neighbour_cells_and_compatible_anchors():
    anchors = torch.tensor([[30.0, 30.0], [80.0, 50.0], [300.0, 300.0]])
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 44.0], [100.0, 70.0, 190.0, 120.0]])]
    targets, mask = assign_targets(boxes, [torch.tensor([0, 1])], anchors, grid=(4, 8), num_classes=2, stride=32)
    # box 1: centre (0.94, 0.88) cells -> its cell (0, 0), right (1, 0) and lower (0, 1) neighbours;
    # box 2: centre (4.53, 2.97) -> (4, 2), (5, 2), (4, 3). Anchors within 4x in width and height: the
    # first two for both (40x32 vs 80x50 is 2x; 90x50 vs 30x30 is 3x); 300x300 is 7.5x and 3.3x... too far.
    expected = {(j, y, x) for j in (0, 1) for y, x in [(0, 0), (0, 1), (1, 0), (2, 4), (2, 5), (3, 4)]}
    assert {tuple(i) for i in mask[0].nonzero().tolist()} == expected
    decoded, objectness, classes = decode(_raw_for(targets, mask, 7), anchors, stride=32)
    keep = objectness[0] > 0.5
    assert int(keep.sum()) == 12
    for box, label in zip(boxes[0], (0, 1)):  # every positive slot decodes to its own box exactly
        hits = (decoded[0][keep] - box).abs().max(1).values < 1e-3
        assert int(hits.sum()) == 6 and (classes[0][keep][hits].argmax(1) == label).all()


def test_loss_is_least_at_the_exact_prediction():
    anchors = torch.tensor([[30.0, 30.0], [80.0, 50.0]])
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 44.0], [100.0, 70.0, 190.0, 120.0]])]
    targets, mask = assign_targets(boxes, [torch.tensor([0, 1])], anchors, grid=(4, 8), num_classes=2, stride=32)
    raw = _raw_for(targets, mask, 7)
    loss = lambda r: yolo_loss(r, targets, mask, anchors, stride=32, gt_boxes=boxes)  # noqa: E731
    perfect = loss(raw)
    assert perfect < 1e-3
    torch.manual_seed(0)
    for _ in range(5):
        assert loss(raw + 0.1 * torch.randn_like(raw)) > perfect
    for value in range(4):  # moving any box coordinate of one positive costs
        for step in (-0.3, 0.3):
            moved = raw.clone()
            index = tuple(mask.nonzero()[0].tolist())
            moved[index + (value,)] += step
            assert loss(moved) > perfect + 1e-4
    assert loss(torch.zeros_like(raw)) > perfect + 0.5


def test_loss_takes_the_half_precision_head_output_of_mixed_precision_training():
    # autocast hands the loss bf16 (fp16 on older GPUs) predictions; the objectness target is the fp32 IoU.
    # Found on an H200: `train detect` failed at its first step ("Index put requires the source and
    # destination dtypes match")
    anchors = torch.tensor([[30.0, 30.0], [80.0, 50.0]])
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 44.0], [100.0, 70.0, 190.0, 120.0]])]
    targets, mask = assign_targets(boxes, [torch.tensor([0, 1])], anchors, grid=(4, 8), num_classes=2, stride=32)
    torch.manual_seed(0)
    raw = _raw_for(targets, mask, 7) + 0.3 * torch.randn(1, 2, 4, 8, 7)
    full = yolo_loss(raw, targets, mask, anchors, stride=32, gt_boxes=boxes)
    for dtype in (torch.bfloat16, torch.float16):
        low = raw.to(dtype).requires_grad_(True)
        loss = yolo_loss(low, targets, mask, anchors, stride=32, gt_boxes=boxes)
        loss.backward()
        assert loss.dtype == torch.float32 and low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
        assert abs(loss.item() - full.item()) < 0.02 * full.item()  # only the inputs' rounding differs


def test_half_precision_inference_decodes_boxes_in_float32():
    # --half runs the network under autocast; a box centre (cell + offset) x stride in bf16 is rounded to whole
    # pixels and more (it was 1.04 px off here, 6x that in a 4000 px photo): decoded in float32 it is not
    torch.manual_seed(0)
    detector = YoloDetector(num_classes=3, width=8, img_size=640).eval()
    image = torch.rand(3, 480, 640)
    with torch.inference_mode():
        full = detector.detect_images([image])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = detector.detect_images([image])[0]
    assert half["boxes"].dtype == half["scores"].dtype == torch.float32
    assert half["boxes"].shape == full["boxes"].shape
    assert float((half["boxes"] - full["boxes"]).abs().max()) < 0.1


def test_objectness_target_is_the_iou_and_near_misses_are_not_background():
    anchors = torch.tensor([[40.0, 40.0]])
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0]])]  # centre (20, 20): cell (0, 0) of a 32-px grid
    targets, mask = assign_targets(boxes, [torch.tensor([0])], anchors, grid=(2, 2), num_classes=1, stride=32,
                                   neighbours=False)
    raw = _raw_for(targets, mask, 6)
    raw[0, 0, 0, 0, 2] += np.log(2.0)  # the positive predicts an 80 x 40 box around the same centre: IoU 1/2
    raw[0, 0, 0, 0, 4] = 0.0  # objectness logit 0: probability 1/2, exactly the IoU
    raw.requires_grad_(True)
    yolo_loss(raw, targets, mask, anchors, stride=32, gt_boxes=boxes).backward()
    assert abs(float(raw.grad[0, 0, 0, 0, 4])) < 1e-6  # BCE towards the IoU: no push at p = IoU
    # a background cell (x 1) whose 40 x 40 box, centred at (22, 20), overlaps the ground truth by
    # 1520 / 1680 = 0.9 (> 0.6): its objectness is not punished
    raw = _raw_for(targets, mask, 6)
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    raw[0, 0, 0, 1, :4] = torch.tensor([logit((22 / 32 - 1 + 0.5) / 2), logit((20 / 32 + 0.5) / 2), 0.0, 0.0])
    raw[0, 0, 0, 1, 4] = 3.0
    raw.requires_grad_(True)
    yolo_loss(raw, targets, mask, anchors, stride=32, gt_boxes=boxes).backward()
    assert raw.grad[0, 0, 0, 1, 4] == 0
    far = _raw_for(targets, mask, 6)
    far[0, 0, 1, 1, 4] = 3.0  # a confident prediction at the far cell is background, and pays
    far.requires_grad_(True)
    yolo_loss(far, targets, mask, anchors, stride=32, gt_boxes=boxes).backward()
    assert far.grad[0, 0, 1, 1, 4] > 0.01


def test_detector_output_is_a_grid_of_anchor_predictions():
    model = YoloDetector(num_classes=3, width=4).eval()
    assert model(torch.zeros(2, 3, 320, 256)).shape == (2, 3, 20, 16, 8)  # 16 px per cell, 3 anchors, 5 + 3 values


def test_resnet18_backbone_takes_a_classifier_state_dict():
    from torchvision.models import resnet18

    from cvtool.errors import WeightsError
    from cvtool.models.yolo import load_backbone_weights

    torch.manual_seed(2)
    state = resnet18().state_dict()
    model = YoloDetector(1, width=4, img_size=64, backbone="resnet18")
    load_backbone_weights(model, state, "r18.pth")
    torch.testing.assert_close(model.backbone.to16[0].weight, state["conv1.weight"])
    torch.testing.assert_close(model.backbone.to16[6][1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(model.backbone.to32[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    with pytest.raises(WeightsError, match="r18.pth: not a resnet18 state_dict"):
        load_backbone_weights(model, {"fc.weight": state["fc.weight"]}, "r18.pth")
    with pytest.raises(WeightsError, match="csp backbone"):
        load_backbone_weights(YoloDetector(1, width=4), state, "r18.pth")


def test_boxes_mapped_back_are_clipped_to_the_image_and_padding_only_boxes_dropped():
    from cvtool.models.yolo import detections_in_original_pixels

    _, box = letterbox(np.zeros((495, 660, 3), np.uint8), 320)  # 320 x 240 inside, 40 px of padding above and below
    assert (box.width, box.height, box.pad_y) == (660, 495, 40)
    letterboxed = torch.tensor([[[1.0, -30.0, 178.0, 161.0],  # reaches above the image (into and past the padding)
                                 [300.0, 100.0, 400.0, 200.0],  # past the right edge
                                 [10.0, 2.0, 50.0, 30.0]]])  # wholly in the top padding
    out = detections_in_original_pixels(letterboxed, torch.tensor([[0.9, 0.8, 0.7]]), torch.ones(1, 3, 1), [box])[0]
    np.testing.assert_allclose(out["boxes"].numpy(), [[2.0625, 0.0, 367.125, 249.5625], [618.75, 123.75, 660.0, 330.0]])
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8]) and out["labels"].tolist() == [0, 0]
    unclipped = box.to_original(np.array([1.0, -30.0, 178.0, 161.0]))
    assert unclipped[1] < 0  # to_original clips only when asked (training maps both ways exactly)


def test_loss_split_over_ranks_averages_to_the_whole_batch_loss_even_for_uneven_shares():
    """Data-parallel: with the global batch's counts, the mean over ranks of each rank's loss (what DDP's gradient
    averaging optimises) is the one-process loss of the whole batch, also for a 2 + 1 split of 3 images."""
    anchors = torch.tensor([[30.0, 30.0], [80.0, 50.0]])
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 44.0]]), torch.tensor([[100.0, 70.0, 190.0, 120.0]]),
             torch.tensor([[40.0, 30.0, 90.0, 100.0], [150.0, 10.0, 200.0, 60.0]])]
    labels = [torch.tensor([0]), torch.tensor([1]), torch.tensor([1, 0])]
    torch.manual_seed(0)
    raw = torch.randn(3, 2, 4, 8, 7)

    def loss(part, global_counts=None):
        targets, mask = assign_targets([boxes[i] for i in part], [labels[i] for i in part], anchors, grid=(4, 8),
                                       num_classes=2, stride=32)
        return yolo_loss(raw[part], targets, mask, anchors, stride=32, gt_boxes=[boxes[i] for i in part],
                         global_counts=global_counts)

    shares = [[0, 1], [2]]
    seen = []
    for part in shares:  # each rank's own counts, as all_reduce would collect them
        loss(part, global_counts=lambda c: seen.append(c.clone()) or c)
    total = sum(seen)
    ranks = [loss(part, global_counts=lambda c: total.clone()) for part in shares]
    whole = loss([0, 1, 2])
    assert torch.allclose(sum(ranks) / len(ranks), whole, rtol=1e-6)
    naive = [loss(part) for part in shares]  # each rank normalising by its own share: not the same loss
    assert not torch.allclose(sum(naive) / len(naive), whole, rtol=1e-3)
