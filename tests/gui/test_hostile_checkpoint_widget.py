"""Hostile checkpoints in the dock widget (issue 12 items 4 and 5): a notification, never a traceback dialog,
and the model loaded before stays; a provenance built like a "billion laughs" loads with a bounded card."""

from __future__ import annotations

import math

import pytest
import torch


def _rewrite(path, target, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def _nan_weights(payload):
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and k.endswith("weight"))
    payload["state_dict"][key].fill_(math.nan)


def _laughs(levels: int = 9) -> list:
    node: list = ["lol"] * 10
    for _ in range(levels - 1):
        node = [node] * 10
    return node


@pytest.mark.parametrize(("change", "expected"), [
    (lambda p: p["config"].update(depth=20, comm_layers=10**6, base_channels=2000), "must be at most"),
    (lambda p: p["config"].update(depth=6, base_channels=64), "weights do not fit the stored config"),
    (_nan_weights, "holds NaN or infinite values"),
    (lambda p: p.update(normalization={"mean": [math.nan], "std": [1.0]}), "normalization mean[0] is nan"),
    (lambda p: p.update(class_colors=[[0, 0, 0], [2, 0, 0], [0, 1, 0]]), "has components outside [0, 1]"),
], ids=["huge-config", "wrong-shapes", "nan-weights", "nan-mean", "colour-range"])
def test_a_hostile_checkpoint_is_one_notification(widget, tmp_path, errors, checkpoint, change, expected):
    assert widget.load_checkpoint(checkpoint)
    bad = _rewrite(checkpoint, tmp_path / "hostile.pt", change)
    assert widget.load_checkpoint(bad) is False
    assert len(errors) == 1 and "hostile.pt" in errors[0] and expected in errors[0], errors
    assert widget.checkpoint_path == checkpoint


def test_billion_laughs_provenance_loads_with_a_bounded_card(widget, tmp_path, errors, checkpoint):
    laughs = _rewrite(checkpoint, tmp_path / "laughs.pt", lambda p: p["provenance"].update(laughs=_laughs()))
    assert widget.load_checkpoint(laughs)
    assert errors == []
    assert len(widget.card.value) < 50_000 and "cut" in widget.card.value
