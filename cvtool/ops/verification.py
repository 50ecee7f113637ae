"""One home for scoring a verifier: distances of labelled pairs -> the accuracy-maximising threshold and ROC AUC.

Used by `verify-face --calibrate` (cvtool.pipelines.face) and by `train face` (cvtool.train.face_embedding),
so both choose thresholds the same way and name their figures alike (`roc_auc`, `accuracy`, `threshold`).
The rule is "same person iff distance < threshold". Every cut between neighbouring distinct distances is
a candidate (scikit-learn's roc_curve with drop_intermediate=False lists each); the best accuracy wins,
ties going to the smaller threshold, which is placed midway between the two distances it separates.
"""

from __future__ import annotations

import numpy as np

EDGE = 1e-6  # how far outside the measured distances a threshold that accepts all or none is placed


def accuracy_at(distances, same, threshold: float) -> float:
    """The fraction of pairs that 'same iff distance < threshold' gets right (0.0 for no pairs)."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    return float(np.mean((distances < threshold) == same)) if len(distances) else 0.0


def fit_threshold(distances, same) -> dict:
    """{threshold, accuracy, roc_auc, same_pairs, different_pairs, fitted, warning} for labelled pairs.

    With only one class of pairs there is nothing to separate: `fitted` is False, `roc_auc` is None,
    `threshold` is None and `warning` says why (a threshold that merely accepts or rejects everything
    is no recommendation). `warning` is None otherwise.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    distances, same = np.asarray(distances, dtype=np.float64).reshape(-1), np.asarray(same, dtype=bool).reshape(-1)
    if len(distances) != len(same):
        raise ValueError(f"{len(distances)} distances but {len(same)} labels")
    n_same, n_diff = int(same.sum()), int((~same).sum())
    report = {"threshold": None, "accuracy": None, "roc_auc": None, "same_pairs": n_same, "different_pairs": n_diff,
              "fitted": False, "warning": None}
    if not np.isfinite(distances).all():
        raise ValueError("distances must be finite")
    if n_same == 0 or n_diff == 0:
        only = "same-person" if n_same else "different-person"
        other = "different-person" if n_same else "same-person"
        report["warning"] = (f"all {len(distances)} pair(s) are {only} pairs: no threshold can be fitted without "
                             f"{other} pairs too")
        return report
    fpr, tpr, cuts = roc_curve(same, -distances, drop_intermediate=False)
    correct = tpr * n_same + (1 - fpr) * n_diff  # cut k: 'same' for the pairs with -d >= cuts[k]
    best = int(np.argmax(np.round(correct)))  # counts are whole; rounding keeps float noise from breaking ties
    values = np.unique(distances)
    if best == 0:  # cuts[0] is +inf: nothing accepted
        threshold = values[0] - EDGE
    else:
        below = -cuts[best]  # the largest accepted distance
        above = values[values > below]
        threshold = (below + above[0]) / 2 if len(above) else below + EDGE
    report.update(threshold=float(threshold), accuracy=float(np.round(correct[best]) / len(distances)),
                  roc_auc=float(roc_auc_score(same, -distances)), fitted=True)
    return report
