"""Region-level measures of a two-class (membrane / cell) segmentation, and the U-Net paper's border weights.

The cells are the connected regions (4-connectivity) of class 1; the membranes (class 0) separate them. A gap
in a predicted membrane merges two cells: pixel accuracy barely sees it, these measures do.

The scores follow ISBI 2012's final ones (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image
segmentation algorithms for connectomics", "foreground-restricted ... after border thinning"): the predicted
membranes are thinned away, each of their pixels going to the nearest predicted cell (so a membrane drawn
thicker than the annotator's is not one huge extra region spanning the image), and the pixels that are membrane
in the truth are left out. One difference: the prediction is the network's own decision (the argmax, or the
threshold `train segment` chose on validation: `thresholded_labels`), where the challenge's script reports the
best over a sweep of thresholds of the probability map.
"""

from __future__ import annotations

import numpy as np


def cell_regions(mask: np.ndarray, foreground: int = 1) -> np.ndarray:
    from skimage.measure import label

    return label(mask == foreground, connectivity=1)


def thinned_cell_regions(mask: np.ndarray, foreground: int = 1) -> np.ndarray:
    """The predicted cells with the membranes between them thinned away: every class-0 pixel joins the nearest
    cell (scikit-image's expand_labels, Euclidean). All membrane (no cell at all) stays one region, 0."""
    from skimage.segmentation import expand_labels

    return expand_labels(cell_regions(mask, foreground), distance=float(sum(mask.shape)))


def thresholded_labels(foreground_probability: np.ndarray, threshold: float,
                       cells: np.ndarray | None = None) -> np.ndarray:
    """Two-class labels (uint8) at a threshold on class 1's probability, without changing which cells there are.

    At or above 0.5: class 1 where the probability exceeds `threshold` (membranes only grow). Below it, the cells
    of the plain decision (the 4-connected regions where the probability exceeds 0.5; `cells`: those regions
    already labelled) grow into the pixels above `threshold` by a watershed of the probability (scikit-image),
    most probable pixels first, and where two meet a one-pixel line of class 0 stays between them; pixels above
    the threshold that no cell reaches stay class 0. So a network trained to weigh thin membranes, which draws
    them thicker than annotators do, gets thinner membranes without a gap between two cells it kept apart and
    without new cells."""
    if threshold >= 0.5:
        return (foreground_probability > threshold).astype(np.uint8)
    from skimage.segmentation import watershed

    if cells is None:
        cells = cell_regions(foreground_probability > 0.5, foreground=True)
    grown = watershed(-foreground_probability, markers=cells, mask=foreground_probability > threshold,
                      connectivity=1, watershed_line=True) > 0
    pieces = cell_regions(grown, foreground=True)  # the line can cut a sliver off a grown cell: it stays class 0
    kept = np.zeros(pieces.max() + 1, bool)
    kept[np.unique(pieces[cells > 0])] = True
    kept[0] = False
    return kept[pieces].astype(np.uint8)


def foreground_rand_error(truth: np.ndarray, predicted: np.ndarray) -> float:
    """ISBI 2012's foreground-restricted Rand error after border thinning, of one image: 1 - the Rand F-score
    between the truth's cells and the predicted cells (membranes thinned away); pixels that are class 0
    (membrane) in the truth are ignored. scikit-image's adapted_rand_error."""
    from skimage.metrics import adapted_rand_error

    error, _, _ = adapted_rand_error(cell_regions(truth), thinned_cell_regions(predicted), ignore_labels=(0,))
    return float(error)


def foreground_variation_of_information(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(split, merge) of the variation of information between the cell regions (the predicted ones with their
    membranes thinned away), truth's membrane pixels ignored (scikit-image's `variation_of_information`):
    split = H(predicted | truth), over-segmentation; merge = H(truth | predicted), under-segmentation (e.g.
    cells joined through a gap in a membrane). In bits."""
    from skimage.metrics import variation_of_information

    split, merge = variation_of_information(cell_regions(truth), thinned_cell_regions(predicted), ignore_labels=(0,))
    return float(split), float(merge)


def image_region_scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """(adapted Rand error, VI split, VI merge) of one image's class-id masks."""
    return (foreground_rand_error(truth, predicted), *foreground_variation_of_information(truth, predicted))


def region_scores(pairs=None, *, per_image=None) -> dict[str, float]:
    """Mean adapted Rand error and VI split/merge over (truth, predicted) class-id mask pairs, or over the
    images' `image_region_scores` already computed (`per_image`)."""
    scores = list(per_image) if per_image is not None else [image_region_scores(t, p) for t, p in pairs]
    rand, split, merge = (np.array(column, dtype=np.float64) for column in zip(*scores)) if scores else ([], [], [])
    return {"adapted_rand_error": float(np.mean(rand)), "vi_split": float(np.mean(split)),
            "vi_merge": float(np.mean(merge)), "per_image_rand_error": [round(float(e), 4) for e in rand]}


def class_balance_weights(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """w_c per class: total / (classes x count), so every class present carries the same total weight."""
    valid = mask[mask != ignore_index].astype(np.int64)
    counts = np.bincount(valid, minlength=num_classes)[:num_classes].astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = valid.size / (present.sum() * counts[present])
    return weights


def border_weight_map(mask: np.ndarray, *, num_classes: int = 2, ignore_index: int = 255, w0: float = 10.0,
                      sigma: float = 5.0, background: int = 0, class_balance: bool = True) -> np.ndarray:
    """The U-Net paper's loss weights, float32 of the mask's shape:
    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)) on background (membrane) pixels, w_c(x) elsewhere;
    d1, d2: Euclidean distances to the nearest and the second-nearest object. The objects are the connected
    regions (4-connectivity) of each class other than `background`. Ignored pixels weigh 0.

    One distance transform per object, each on the object's box grown by a margin beyond which the border term
    is below 1e-4 * w0 (so the result is exact to that). `class_balance=False`: w_c = 1 for every class (the
    border term alone; class-balancing weighs the thin membranes many times the cells)."""
    from scipy import ndimage
    from skimage.measure import label

    weights = class_balance_weights(mask, num_classes, ignore_index) if class_balance else np.ones(num_classes)
    valid = mask != ignore_index
    result = np.where(valid, weights[np.where(valid, mask, 0).clip(0, num_classes - 1)], 0.0)
    h, w = mask.shape
    margin = int(np.ceil(sigma * np.sqrt(2 * np.log(1e4)))) + 1  # d1 + d2 beyond this: term < 1e-4 * w0
    d1 = np.full(mask.shape, np.inf)
    d2 = np.full(mask.shape, np.inf)
    for cls in range(num_classes):
        if cls == background:
            continue
        labels = label(mask == cls, connectivity=1)
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            y0, y1 = max(0, box[0].start - margin), min(h, box[0].stop + margin)
            x0, x1 = max(0, box[1].start - margin), min(w, box[1].stop + margin)
            distance = ndimage.distance_transform_edt(labels[y0:y1, x0:x1] != index)
            near, second = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
            second[:] = np.minimum(second, np.maximum(near, distance))
            near[:] = np.minimum(near, distance)
    term = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    result = result + np.where(valid & (mask == background), term, 0.0)
    return result.astype(np.float32)
