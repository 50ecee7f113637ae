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


def test_assignment_then_decoding_returns_the_boxes_exactly():
    anchors = torch.tensor([[30.0, 30.0], [80.0, 50.0]])
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 44.0], [100.0, 70.0, 190.0, 120.0]])]
    targets, mask = assign_targets(boxes, [torch.tensor([0, 1])], anchors, grid=(4, 8), num_classes=2, stride=32)
    assert mask.sum() == 2
    # the first box (centre 30, 28; 40 x 32) belongs to cell (0, 0) and the 30x30 anchor
    assert mask[0, 0, 0, 0] and mask[0, 1, 2, 4]  # second: centre (145, 95) -> cell x 4, y 2; 90 x 50 -> 80x50 anchor
    raw = torch.full((1, 2, 4, 8, 7), -20.0)
    logit = lambda p: torch.log(p / (1 - p))  # noqa: E731
    raw[mask] = torch.cat([logit(targets[mask][:, :2]), targets[mask][:, 2:4], torch.full((2, 1), 20.0),
                           (targets[mask][:, 5:] * 40 - 20)], dim=1)
    decoded, objectness, classes = decode(raw, anchors, stride=32)
    keep = objectness[0] > 0.5
    torch.testing.assert_close(decoded[0][keep], boxes[0], atol=1e-3, rtol=0)
    assert classes[0][keep].argmax(1).tolist() == [0, 1]
    # the exact prediction is the loss's minimum: no gradient there, and any change costs more
    raw.requires_grad_(True)
    perfect = yolo_loss(raw, targets, mask)
    perfect.backward()
    assert raw.grad.abs().max() < 1e-4
    with torch.no_grad():
        assert yolo_loss(raw + 0.1 * torch.randn_like(raw), targets, mask) > perfect
        assert yolo_loss(torch.zeros_like(raw), targets, mask) > perfect + 1


def test_detector_output_is_a_grid_of_anchor_predictions():
    model = YoloDetector(num_classes=3, width=4).eval()
    assert model(torch.zeros(2, 3, 320, 256)).shape == (2, 3, 20, 16, 8)  # 16 px per cell, 3 anchors, 5 + 3 values
