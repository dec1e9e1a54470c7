"""``--ignore-index``: pixels of a sparse mask with that label count in neither the loss nor the metrics."""

import csv
import json
import math

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from training.metrics import ConfusionMatrix

from napari_ddunet.core.checkpoints.format import load_checkpoint
from training import datasets, losses, train

TINY = ["--depth", "2", "--base-channels", "2", "--comm-features", "4", "--comm-layers", "1",
        "--batch-size", "4", "--threads", "1", "--quiet", "--dataset", "folder", "--grid", "2", "2",
        "--subdomain-size", "8", "8", "--samples-per-epoch", "4", "--epochs", "1", "--dtype", "float64",
        "--ce-weight", "0.5"]


def _batch(ignore: int, num_classes: int = 3):
    """float64 logits (2, K, 6, 5) and labels whose left two columns, and only those, hold ``ignore``."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, num_classes, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1 if ignore == 0 else 0, num_classes, (2, 6, 5), generator=gen)
    target[..., :2] = ignore
    return logits, target


def _valid_only(logits: torch.Tensor, target: torch.Tensor, ignore: int):
    """The not-ignored pixels alone, as one (1, K, P, 1) image."""
    keep = target != ignore
    return logits.permute(0, 2, 3, 1)[keep].T.reshape(1, logits.shape[1], -1, 1), target[keep].reshape(1, -1, 1)


@pytest.mark.parametrize("ignore", [255, 0])
def test_losses_leave_out_exactly_the_ignored_pixels(ignore):
    logits, target = _batch(ignore)
    sums = losses.dice_sums(logits, target, ignore)
    ce = losses.cross_entropy_sum(logits, target, ignore)
    valid_logits, valid_target = _valid_only(logits, target, ignore)
    assert torch.allclose(sums, losses.dice_sums(valid_logits, valid_target), rtol=0, atol=1e-12)
    assert math.isclose(ce.item(), losses.cross_entropy_sum(valid_logits, valid_target).item(), abs_tol=1e-12)
    assert losses.pixel_count(target, ignore) == valid_target.numel() == 2 * 6 * 3
    assert losses.pixel_count(target) == target.numel()
    # the ignored pixels get no gradient, and what the network says there changes nothing, bit for bit
    loss = losses.dice_from_sums(sums) + ce / losses.pixel_count(target, ignore)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.equal(grad[..., :2], torch.zeros_like(grad[..., :2]))
    other = logits.detach().clone()
    other[..., :2] = 1e3 * torch.randn(other[..., :2].shape, dtype=torch.float64)
    other.requires_grad_(True)
    other_loss = (losses.dice_from_sums(losses.dice_sums(other, target, ignore))
                  + losses.cross_entropy_sum(other, target, ignore) / losses.pixel_count(target, ignore))
    (other_grad,) = torch.autograd.grad(other_loss, other)
    assert torch.equal(other_loss, loss) and torch.equal(other_grad, grad)


def test_confusion_counts_skip_the_ignored_pixels():
    _, target = _batch(255)
    prediction = torch.randint(0, 3, target.shape, generator=torch.Generator().manual_seed(1))
    sparse = ConfusionMatrix(3, 255)
    sparse.update(prediction, target)
    dense = ConfusionMatrix(3)
    keep = target != 255
    dense.update(prediction[keep], target[keep])
    assert np.array_equal(sparse.matrix, dense.matrix) and sparse.matrix.sum() == keep.sum()
    assert sparse.compute() == pytest.approx(dense.compute(), nan_ok=True)


def test_an_ignored_model_class_has_no_metrics_and_stays_out_of_the_mean():
    # napari's 0 = unlabelled: truth 1 and 2 only; predicting 0 on a labelled pixel still costs that pixel's class
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    prediction = torch.tensor([2, 1, 1, 0, 2, 2])
    cm = ConfusionMatrix(3, 0)
    cm.update(prediction, target)
    result = cm.compute(("unlabelled", "a", "b"))
    for name in ("iou", "precision", "recall", "accuracy"):
        assert math.isnan(result[f"{name}/unlabelled"])
    # b predicted on an unlabelled pixel is no false positive: IoU[b] = 1
    assert result["iou/a"] == 0.5 and result["iou/b"] == 1.0 and result["recall/a"] == 0.5
    assert result["miou"] == 0.75 and result["pixel_accuracy"] == 0.75


def test_the_mask_range_skips_the_ignore_value_in_arrays_and_zarr(tmp_path):
    import zarr

    mask = np.array([[255, 2], [1, 255]], np.uint8)
    zarr.save_array(str(tmp_path / "m.zarr"), mask)
    store = zarr.open_array(str(tmp_path / "m.zarr"), mode="r")
    for source in (mask, store):
        assert datasets._mask_range(source) == (1, 255)
        assert datasets._mask_range(source, 255) == (1, 2)
        assert datasets._mask_range(source, 1) == (2, 255)
    assert datasets._mask_range(np.full((2, 2), 255, np.uint8), 255) == (0, -1)


def _sparse_pairs(root, write_image_pairs, value: int) -> None:
    """write_image_pairs's folder, the left half of every mask set to ``value`` (unlabelled)."""
    write_image_pairs(root, "folder")
    for path in sorted((root / "masks").iterdir()):
        if path.suffix == ".tif":
            mask = tifffile.imread(path)
            mask[:, :24] = value
            tifffile.imwrite(path, mask)
        else:
            mask = np.asarray(Image.open(path)).copy()
            mask[:, :24] = value
            Image.fromarray(mask).save(path)


def _curve(out) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "metrics.csv").open()))


def test_255_is_refused_without_the_flag_and_trains_with_it(tmp_path, write_image_pairs, capsys):
    data = tmp_path / "data"
    _sparse_pairs(data, write_image_pairs, 255)
    assert train.main([*TINY, "--data", str(data), "--output", str(tmp_path / "refused"), "--num-classes", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "masks/im" in err[0] and "label 255" in err[0], err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "run"
    assert train.main([*TINY, "--data", str(data), "--output", str(out), "--ignore-index", "255"]) == 0
    model = load_checkpoint(out / "best.pt")
    assert model.config.num_classes == 3  # 255 is not a label: the classes are 0, 1, 2
    assert model.info.provenance["training_args"]["ignore_index"] == 255
    summary = json.loads((out / "summary.json").read_text())
    assert all(math.isfinite(summary[key]) for key in ("val_loss", "test_loss", "test_miou"))
    # the labels under the ignored pixels do not matter: another unlabelled value trains bit for bit the same
    other = tmp_path / "data7"
    _sparse_pairs(other, write_image_pairs, 7)
    out7 = tmp_path / "run7"
    assert train.main([*TINY, "--data", str(other), "--output", str(out7), "--ignore-index", "7"]) == 0
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in _curve(out)] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in _curve(out7)]
    assert json.loads((out7 / "summary.json").read_text()) == summary
    for a, b in zip(model.state_dict().values(), load_checkpoint(out7 / "best.pt").state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_the_trainer_scores_only_the_labelled_pixels(tmp_path, write_image_pairs):
    data = tmp_path / "data"
    _sparse_pairs(data, write_image_pairs, 0)
    args = train.build_parser().parse_args([*TINY, "--data", str(data), "--output", str(tmp_path / "out"),
                                            "--ignore-index", "0"])
    grid, size = train.resolve_geometry(args)
    task = train.build_task(args, grid, size)
    config = train.build_config(args, task)
    assert config.num_classes == 3  # class 0 exists in the model, it is only never a label
    torch.manual_seed(0)
    trainer = train.Trainer(args, task, config, grid, size)
    trainer.train_epoch(0)
    result = trainer.evaluate(task.val)
    trainer.model.eval()
    sums, ce, pixels = 0, 0, 0
    dense = ConfusionMatrix(3)
    with torch.no_grad():
        for index in range(len(task.val)):
            image, mask = task.val[index]
            logits, target = trainer.logits_and_target(image[None], mask[None])
            valid_logits, valid_target = _valid_only(logits, target, 0)
            sums = sums + losses.dice_sums(valid_logits, valid_target)
            ce = ce + losses.cross_entropy_sum(valid_logits, valid_target)
            pixels += valid_target.numel()
            dense.update(valid_logits.argmax(1), valid_target)
    by_hand = float(losses.dice_from_sums(sums) + 0.5 * ce / pixels)
    assert math.isclose(result["loss"], by_hand, rel_tol=0, abs_tol=1e-12)
    metrics = dense.compute(config.class_names)
    assert math.isnan(result[f"iou/{config.class_names[0]}"])
    for name in config.class_names[1:]:
        assert result[f"iou/{name}"] == metrics[f"iou/{name}"]
    assert result["miou"] == float(np.nanmean([metrics[f"iou/{n}"] for n in config.class_names[1:]]))


def test_without_the_flag_nothing_is_ignored(tmp_path, write_image_pairs):
    data = tmp_path / "data"
    write_image_pairs(data, "folder")
    out = tmp_path / "run"
    assert train.main([*TINY, "--data", str(data), "--output", str(out)]) == 0
    assert load_checkpoint(out / "best.pt").info.provenance["training_args"]["ignore_index"] is None
    logits, target = _batch(1)
    assert torch.equal(losses.dice_sums(logits, target), losses.dice_sums(logits, target, None))
    assert torch.equal(losses.cross_entropy_sum(logits, target),
                       torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
