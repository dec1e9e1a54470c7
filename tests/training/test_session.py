"""training.session: training from in-memory arrays (napari layers' data, sparse painted labels) without Qt."""

import csv
import json
from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
import torch
from training.session import (
    TrainingError,
    TrainingPhase,
    TrainingRequest,
    check_request,
    train_arrays,
    train_iter,
)

from napari_ddunet import load_checkpoint, segment
from napari_ddunet.core.checkpoints.format import read_checkpoint_info
from training import arrays, datasets, train

COLORS = ((0.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 1.0), (0.0, 1.0, 0.0, 1.0), (0.0, 0.0, 1.0, 1.0))
#: The share of painted pixels the trained model must give back (it reaches 1.0 on this seed).
STROKE_ACCURACY = 0.95


def _painted():
    """A noisy 64 x 96 image of three classes (two vertical bands and a disc of class 1 on the middle one),
    and napari-style sparse labels: three painted rows across it, 0 (unlabelled) everywhere else."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :96]
    truth = 1 + (xx >= 32).astype(int) + (xx >= 64).astype(int)
    truth[(yy - 32) ** 2 + (xx - 48) ** 2 < 100] = 1
    image = (np.array([0.0, 0.0, 1.0, 2.0])[truth] + rng.normal(0, 0.25, truth.shape)).astype(np.float32)
    labels = np.zeros(truth.shape, np.uint8)
    for row in (8, 30, 52):
        labels[row:row + 3] = truth[row:row + 3]
    return image, labels


def _request(output, image=None, labels=None, **changes) -> TrainingRequest:
    if image is None:
        image, labels = _painted()
    values = dict(grid=(2, 2), subdomain_size=(16, 16), depth=2, base_channels=4, comm_features=8, epochs=10,
                  batch_size=4, samples_per_epoch=32, threads=1)
    values.update(changes)
    return TrainingRequest((image,), (labels,), output, **values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("session") / "run"
    events = []
    result = train_arrays(_request(out, class_colors=COLORS), events.append)
    return out, result, events


def test_painted_strokes_train_and_the_best_model_reproduces_them(trained):
    out, result, _ = trained
    image, labels = _painted()
    predicted = segment(image, result.best_checkpoint, subdomain_size=(16, 16))
    painted = labels != 0
    accuracy = float((predicted[painted] == labels[painted]).mean())
    assert accuracy >= STROKE_ACCURACY, accuracy
    assert set(np.unique(predicted)) <= {1, 2, 3}   # label values keep their meaning; 0 is never trained
    info, _ = read_checkpoint_info(result.best_checkpoint)
    assert info.class_names == ("unlabelled", "class 1", "class 2", "class 3")
    assert info.class_colors == COLORS
    assert info.training_args["ignore_index"] == 0 and info.training_args["validation"] == "training pixels"
    assert info.normalization is not None and "test_miou" in info.metrics
    assert result.epochs_run == 10 and result.last_checkpoint == out / "last.pt"
    assert json.loads((out / "summary.json").read_text())["best_epoch"] == result.metrics["best_epoch"]


def test_events_count_batches_and_epochs(trained):
    _, result, events = trained
    phases = [e.phase for e in events]
    assert phases[0] is TrainingPhase.PREPARING and phases[-1] is TrainingPhase.FINISHED
    epochs = [e for e in events if e.phase is TrainingPhase.EPOCH]
    assert [e.epoch for e in epochs] == list(range(1, 11))
    assert [len(e.history) for e in epochs] == list(range(1, 11))
    batches = [e for e in events if e.phase is TrainingPhase.BATCH]
    # 32 crops in batches of 4, then the 6 painted validation tiles in 2 batches (the bar stays full)
    assert len(batches) == 10 * (8 + 2) and {e.batches for e in batches} == {8}
    assert [e.batch for e in batches[:10]] == [*range(1, 9), 8, 8] and {e.epoch for e in batches[:10]} == {0}
    assert batches[9].train_loss == epochs[0].train_loss
    assert all(e.val_miou is not None and e.train_loss is not None for e in epochs)
    best = epochs[-1]
    assert best.best_epoch == result.metrics["best_epoch"] and best.best_checkpoint == result.best_checkpoint


def test_closing_the_generator_keeps_a_loadable_best_and_resume_continues(tmp_path):
    image, labels = _painted()
    out = tmp_path / "run"
    request = _request(out, da.from_array(image, chunks=32), labels, epochs=3, samples_per_epoch=8)
    run = train_iter(request)
    for event in run:
        if event.phase is TrainingPhase.BATCH and event.epoch == 1 and event.batch == 1:
            break
    run.close()   # what napari's worker.quit() does
    assert load_checkpoint(out / "best.pt").config.num_classes == 4
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 1
    assert not (out / "summary.json").exists()
    with pytest.raises(TrainingError, match="already holds"):
        check_request(request)
    with pytest.raises(TrainingError, match=r"holds DDU-Net\(2,8,Y\) with depth=2.* give depth=3"):
        check_request(replace(request, resume=True, depth=3))
    events = []
    result = train_arrays(replace(request, resume=True), events.append)
    assert [e.epoch for e in events if e.phase is TrainingPhase.EPOCH] == [2, 3]
    assert next(e for e in events if e.phase is TrainingPhase.BATCH).epoch == 1
    assert result.epochs_run == 3 and len(list(csv.DictReader((out / "metrics.csv").open()))) == 3


def test_fine_tune_starts_from_the_checkpoint(trained, tmp_path):
    _, result, _ = trained
    start = load_checkpoint(result.best_checkpoint).state_dict()
    tuned = train_arrays(_request(tmp_path / "tuned", fine_tune=result.best_checkpoint, depth=3, base_channels=8,
                                  epochs=1, samples_per_epoch=4, learning_rate=1e-12))
    after = load_checkpoint(tuned.last_checkpoint)
    assert after.config.depth == 2 and after.config.base_channels == 4   # the checkpoint's network, not the request's
    weights = [k for k, v in start.items() if v.dtype.is_floating_point and "running" not in k]
    assert weights and all(torch.allclose(after.state_dict()[k], start[k], atol=1e-6) for k in weights)
    with pytest.raises(TrainingError, match=r"fine-tune: .* takes 1 band"):
        check_request(_request(tmp_path / "rgb", np.zeros((64, 96, 3), np.uint8), _painted()[1],
                               fine_tune=result.best_checkpoint))


def test_training_crops_hold_painted_pixels_and_validation_covers_every_stroke():
    _, labels = _painted()
    sparse = np.zeros((200, 300), np.uint8)
    sparse[150:153, 250:256] = labels[8:11, :6]   # one short stroke in a corner of a large image
    big = np.zeros((200, 300), np.float32)
    pair = arrays.read_pair(0, big, sparse, 0, 0)
    task = arrays.arrays_task([pair], (32, 32), 0, 4, ("u", "a", "b", "c"), None, 0, 64)
    for epoch in range(2):
        datasets.set_epoch(task.train, epoch)
        assert all((mask != 0).any() for _, mask in task.train)
    tiles = [mask for _, mask in task.val]
    assert sum(int((m != 0).sum()) for m in tiles) >= int((sparse != 0).sum()) and all((m != 0).any() for m in tiles)
    assert len(task.train) == 64 and task.val is task.test


def test_an_rgb_layer_trains_with_three_bands(tmp_path):
    image, labels = _painted()
    rgb = np.clip(np.stack([image, 2 - image, image / 2], axis=-1) * 100, 0, 255).astype(np.uint8)
    result = train_arrays(_request(tmp_path / "rgb", rgb, labels, epochs=1, samples_per_epoch=4))
    assert load_checkpoint(result.best_checkpoint).config.in_channels == 3


def _bad(tmp_path, case: str) -> TrainingRequest:
    image, labels = _painted()
    out = tmp_path / "out"
    if case == "shapes":
        return _request(out, image, labels[:, :90])
    if case == "unpainted":
        return _request(out, image, np.zeros_like(labels))
    if case == "small":
        return _request(out, image[:20], labels[:20])
    if case == "float labels":
        return _request(out, image, labels.astype(np.float32))
    if case == "names":
        return _request(out, image, labels, class_names=("a", "b"))
    if case == "colours":
        return _request(out, image, labels, class_colors=np.array([(0, 0, 0, 0), (1, 0, 0, 1), (0, 1, 0, 1),
                                                                    (0, 0, 2, 1)]))
    if case == "too few classes":
        return _request(out, image, labels, num_classes=3)
    if case == "damaged fine-tune file":
        (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
        return _request(out, image, labels, fine_tune=tmp_path / "model.pt")
    if case == "resume without a run":
        return _request(out, image, labels, resume=True)
    return _request(out, image, labels, devices="cuda:7")


BAD = {"shapes": "but its labels are", "unpainted": "no pixel is painted", "small": "smaller than a 32x32",
       "float labels": "integer class labels", "names": "2 class names for 4 classes",
       "colours": "outside",
       "too few classes": "label 3 is painted but there are 3 classes", "resume without a run": "does not exist",
       "damaged fine-tune file": "model.pt",
       "devices": "cuda"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_are_one_line_before_any_file(tmp_path, case):
    request = _bad(tmp_path, case)
    for attempt in (lambda: check_request(request), lambda: next(train_iter(request))):
        with pytest.raises(TrainingError, match=BAD[case]) as caught:
            attempt()
        assert "\n" not in str(caught.value)
    assert not request.output.exists()


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("mine")
    with pytest.raises(TrainingError, match=r"already holds metrics\.csv"):
        next(train_iter(_request(out)))
    assert (out / "metrics.csv").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["metrics.csv"]


def test_the_cli_runs_the_same_loop(tmp_path):
    """``train(args)`` drains ``train_iter``: the CLI's files, and the events a front end would see."""
    args = train.build_parser().parse_args([
        "--output", str(tmp_path / "cli"), "--depth", "2", "--base-channels", "2", "--comm-features", "4",
        "--train-size", "4", "--val-size", "2", "--test-size", "2", "--batch-size", "2", "--epochs", "2",
        "--threads", "1", "--quiet"])
    events = list(train.train_iter(args))
    assert [e.phase for e in events].count(TrainingPhase.BATCH) == 2 * (2 + 1)   # 2 training, 1 validation batch
    assert [e.epoch for e in events if e.phase is TrainingPhase.EPOCH] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == sorted(train.OUTPUT_FILES)
