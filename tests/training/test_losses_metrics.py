"""Dice loss (paper 001 Eq. 1) and the metrics of Eq. (2)-(3) against hand-computed values."""

import math

import numpy as np
import torch
from training.losses import EPSILON, dice_from_sums, dice_loss, dice_sums
from training.metrics import ConfusionMatrix, metrics_from_confusion


def _logits_for(probs: torch.Tensor) -> torch.Tensor:
    return probs.log()  # softmax(log p) = p when p sums to one


def test_dice_loss_by_hand():
    # two pixels, two classes: probabilities (0.8, 0.2) and (0.4, 0.6), labels 0 and 1
    probs = torch.tensor([[0.8, 0.4], [0.2, 0.6]], dtype=torch.float64).view(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    logits = _logits_for(probs)
    # class 0: y*p = 0.8, y + p = 1 + 1.2;  class 1: y*p = 0.6, y + p = 1 + 0.8
    sums = dice_sums(logits, target)
    assert torch.allclose(sums, torch.tensor([[0.8, 0.6], [2.2, 1.8]], dtype=torch.float64))
    per_class = 1 - 0.5 * (2 * (0.8 + EPSILON) / (2.2 + EPSILON) + 2 * (0.6 + EPSILON) / (1.8 + EPSILON))
    eq1 = 1 - 2 * (1.4 + EPSILON) / (4.0 + EPSILON)
    assert math.isclose(float(dice_loss(logits, target)), per_class, rel_tol=0, abs_tol=1e-12)
    assert math.isclose(float(dice_loss(logits, target, form="eq1")), eq1, rel_tol=0, abs_tol=1e-12)


def test_dice_sums_split_then_reduced_equal_whole_batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 5, 6, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 3, (4, 5, 6), generator=generator)
    whole = dice_loss(logits, target)
    parts = dice_sums(logits[:1], target[:1]) + dice_sums(logits[1:], target[1:])
    assert abs(float(dice_from_sums(parts)) - float(whole)) < 1e-12
    # a batch-mean of per-part losses is a different (wrong) quantity
    mean_of_parts = (dice_loss(logits[:1], target[:1]) + dice_loss(logits[1:], target[1:])) / 2
    assert abs(float(mean_of_parts) - float(whole)) > 1e-6


def test_perfect_prediction_has_zero_loss():
    target = torch.tensor([[[0, 1, 2, 2]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double() * 50
    assert float(dice_loss(logits, target)) < 1e-12


def test_metrics_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 0, 2, 2, 0])
    cm = ConfusionMatrix(3)
    cm.update(torch.from_numpy(pred[:4]), torch.from_numpy(truth[:4]))  # two "images": sums, then ratios
    cm.update(torch.from_numpy(pred[4:]), torch.from_numpy(truth[4:]))
    m = cm.compute(("bg", "line", "circle"))
    # class 0: TP 2, FP 2 (pixels 4 and 7), FN 1  -> IoU 2/5
    # class 1: TP 1, FP 1, FN 1                    -> IoU 1/3
    # class 2: TP 2, FP 0, FN 1                    -> IoU 2/3
    assert math.isclose(m["iou/bg"], 2 / 5)
    assert math.isclose(m["iou/line"], 1 / 3)
    assert math.isclose(m["iou/circle"], 2 / 3)
    assert math.isclose(m["miou"], (2 / 5 + 1 / 3 + 2 / 3) / 3)
    assert math.isclose(m["precision/line"], 1 / 2) and math.isclose(m["recall/line"], 1 / 2)
    assert math.isclose(m["precision/circle"], 1.0) and math.isclose(m["recall/circle"], 2 / 3)
    assert math.isclose(m["accuracy/line"], 6 / 8)  # one-vs-rest: TP 1 + TN 5
    assert math.isclose(m["pixel_accuracy"], 5 / 8)


def test_absent_class_is_left_out_of_the_mean():
    m = metrics_from_confusion(np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]]))
    assert math.isnan(m["iou/2"])
    assert math.isclose(m["miou"], 1.0)
