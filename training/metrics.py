"""Segmentation metrics of paper 001 Eq. (2)-(3) from a dataset-level confusion matrix.

IoU_j = sum_i TP_ij / (sum_i TP_ij + sum_i FP_ij + sum_i FN_ij): the counts are summed over
all images before the ratio, which is exactly what accumulating one confusion matrix does.
Pixels whose true label is ``ignore_index`` (``--ignore-index``, sparse masks) are not counted.
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates a (K, K) matrix: rows are true classes, columns predicted classes."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        pred = torch.as_tensor(prediction).reshape(-1).long().cpu()
        true = torch.as_tensor(target).reshape(-1).long().cpu()
        if self.ignore_index is not None:
            keep = true != self.ignore_index
            pred, true = pred[keep], true[keep]
        k = self.num_classes
        counts = torch.bincount(true * k + pred, minlength=k * k)
        self.matrix += counts.reshape(k, k).numpy()

    def add(self, matrix: np.ndarray) -> None:
        self.matrix += np.asarray(matrix, np.int64)

    def compute(self, class_names: tuple[str, ...] | list[str] | None = None) -> dict[str, float]:
        return metrics_from_confusion(self.matrix, class_names, self.ignore_index)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where a class never occurs (so it is left out of means)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_confusion(matrix: np.ndarray, class_names: tuple[str, ...] | list[str] | None = None,
                           ignore_index: int | None = None) -> dict:
    """Per-class IoU (Eq. 2), precision, recall, one-vs-rest accuracy; mIoU (Eq. 3), pixel accuracy.

    Keys: ``miou``, ``pixel_accuracy``, and ``iou/<name>``, ``precision/<name>``,
    ``recall/<name>``, ``accuracy/<name>`` per class. A class absent from both truth and
    prediction has NaN IoU and is left out of the mean. An ignored class that is a model class
    (``--ignore-index 0``) is never true, so its metrics are NaN and it is left out of the mean too;
    predicting it still counts against the true class.
    """
    m = np.asarray(matrix, np.float64)
    k = m.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    tp = np.diag(m)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    total = m.sum()
    tn = total - tp - fp - fn
    iou = _ratio(tp, tp + fp + fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    accuracy = _ratio(tp + tn, np.full(k, total))
    if ignore_index is not None and 0 <= ignore_index < k:
        for values in (iou, precision, recall, accuracy):
            values[ignore_index] = np.nan
    result: dict[str, float] = {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
    }
    for j, name in enumerate(names):
        result[f"iou/{name}"] = float(iou[j])
        result[f"precision/{name}"] = float(precision[j])
        result[f"recall/{name}"] = float(recall[j])
        result[f"accuracy/{name}"] = float(accuracy[j])
    return result
