"""Loading checkpoints in the widget, the model card, and the subdomain grid overlay geometry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ddunet.plugin.grid_layer import GRID_LAYER_NAME, grid_labels, grid_lines


def test_good_checkpoint_fills_card_and_subdomain_size(widget, checkpoint_factory, errors):
    path = checkpoint_factory("m.pt", depth=3, subdomain=(48, 64))
    assert widget.load_checkpoint(path)
    text = widget.card.value
    assert "DDU-Net(3,8,Y)" in text
    assert "circle" in text and "48 x 64 px" in text
    assert "#4c99ff" in text  # swatch of the circle class colour (0.3, 0.6, 1.0)
    assert widget.form.subdomain_size.value == (48, 64)
    assert all(field.step == 8 for field in widget.form.subdomain_size)
    assert errors == []


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_bad_checkpoint_is_a_notification_not_an_exception(widget, tmp_path, errors, checkpoint, content):
    assert widget.load_checkpoint(checkpoint)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert widget.load_checkpoint(bad) is False
    assert len(errors) == 1 and "bad.pt" in errors[0]
    assert widget.checkpoint_path == checkpoint  # the good model stays loaded
    assert widget.load_checkpoint(tmp_path / "missing.pt") is False
    assert "not found" in errors[1]


def test_grid_lines_for_3x5_grid_on_non_square_image():
    lines = grid_lines((90, 250), (32, 50))  # ceil(90/32)=3 rows, 250/50=5 cols
    horizontal, vertical = lines[:4], lines[4:]
    assert len(horizontal) == 4 and len(vertical) == 6
    assert [h[0, 0] for h in horizontal] == [-0.5, 31.5, 63.5, 95.5]
    assert [v[0, 1] for v in vertical] == [-0.5, 49.5, 99.5, 149.5, 199.5, 249.5]
    assert all(h[0, 1] == -0.5 and h[1, 1] == 249.5 for h in horizontal)
    assert all(v[0, 0] == -0.5 and v[1, 0] == 95.5 for v in vertical)
    centres, texts = grid_labels((90, 250), (32, 50))
    assert len(texts) == 15 and texts[0] == "(0, 0)" and texts[6] == "(1, 1)"
    np.testing.assert_allclose(centres[6], [32 + 15.5, 50 + 24.5])


def test_grid_layer_follows_size_and_image(widget, checkpoint, qtbot):
    viewer = widget.viewer
    viewer.add_image(np.zeros((96, 250), np.float32), name="img", scale=(2.0, 0.5))
    widget.load_checkpoint(checkpoint)
    widget.form.subdomain_size.value = (32, 52)
    qtbot.waitUntil(lambda: GRID_LAYER_NAME in viewer.layers and len(viewer.layers[GRID_LAYER_NAME].data) == 4 + 6)
    layer = viewer.layers[GRID_LAYER_NAME]
    np.testing.assert_allclose(layer.scale, (2.0, 0.5))
    verticals = sorted({float(d[0, 1]) for d in layer.data if d[0, 1] == d[1, 1]})
    assert verticals == [-0.5, 51.5, 103.5, 155.5, 207.5, 259.5]
    assert widget.form.grid.value.startswith("3 x 5 subdomains")
    widget.form.subdomain_size.value = (32, 128)  # 3 x 2 grid
    qtbot.waitUntil(lambda: len(viewer.layers[GRID_LAYER_NAME].data) == 4 + 3)
    viewer.add_image(np.zeros((64, 64), np.float32), name="small")
    widget.form.image.value = viewer.layers["small"]
    qtbot.waitUntil(lambda: len(viewer.layers[GRID_LAYER_NAME].data) == 3 + 2)
    widget.form.show_grid.value = False
    qtbot.waitUntil(lambda: GRID_LAYER_NAME not in viewer.layers)


def test_image_picker_tracks_layers_and_guesses_channels(widget):
    viewer = widget.viewer
    image = widget.form.image
    assert image.choices == ()
    viewer.add_image(np.zeros((3, 40, 40), np.float32), name="three")
    viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="rgb", rgb=True)
    assert [layer.name for layer in image.choices] == ["three", "rgb"]
    image.value = viewer.layers["three"]
    assert widget.form.channel_axis.value == 0
    image.value = viewer.layers["rgb"]
    assert widget.form.channel_axis.value == 2
    widget.form.channel_axis.value = None
    assert widget.form.channel_axis.value is None
    viewer.layers["three"].name = "renamed"
    assert image.value.name == "rgb"  # still the chosen layer
    assert [layer.name for layer in image.choices] == ["renamed", "rgb"]
    assert [image.native.itemText(i) for i in range(image.native.count())] == ["renamed", "rgb"]
    viewer.layers.remove("rgb")
    assert len(image.choices) == 1 and image.value.name == "renamed"


def test_values_persist_between_sessions(make_napari_viewer, checkpoint):
    from napari_ddunet.plugin.widget import DDUNetWidget

    viewer = make_napari_viewer()
    first = DDUNetWidget(viewer)
    first.load_checkpoint(checkpoint)
    first.form.subdomain_size.value = (64, 96)
    first.form.current_view_only.value = True
    first.form.features.value = False
    second = DDUNetWidget(viewer)
    assert second.checkpoint_path == checkpoint
    assert second.form.subdomain_size.value == (64, 96)
    assert second.form.current_view_only.value and not second.form.features.value
    assert second.form.devices.value == ["cpu"]
    first.deleteLater()
    second.deleteLater()


def test_huge_grids_get_lines_without_index_texts(widget, checkpoint, qtbot):
    viewer = widget.viewer
    viewer.add_image(np.zeros((512, 520), np.uint8), name="many")
    widget.load_checkpoint(checkpoint)
    widget.form.subdomain_size.value = (8, 8)  # 64 x 65 = 4160 subdomains
    qtbot.waitUntil(lambda: GRID_LAYER_NAME in viewer.layers and len(viewer.layers[GRID_LAYER_NAME].data) == 65 + 66)
    assert GRID_LAYER_NAME + " indices" not in viewer.layers
    assert widget.form.grid.value.startswith("64 x 65 subdomains")


def test_sample_layers_preselect_their_bundled_model(widget, checkpoint_factory, tmp_path, monkeypatch):
    from napari_ddunet.core.data.samples import METADATA_MODEL

    models = tmp_path / "models"
    models.mkdir()
    checkpoint_factory("models/sample_model.pt", subdomain=(40, 40))
    monkeypatch.setenv("NAPARI_DDUNET_MODELS", str(models))
    viewer = widget.viewer
    viewer.add_image(np.zeros((80, 80), np.float32), name="sample", metadata={METADATA_MODEL: "sample_model"})
    assert widget.checkpoint_path is not None and widget.checkpoint_path.stem == "sample_model"
    assert widget.form.subdomain_size.value == (40, 40)
    other = checkpoint_factory("other.pt")
    widget.load_checkpoint(other)
    viewer.add_image(np.zeros((8, 8), np.float32), name="another")  # the selected image stays: so does the model
    assert widget.checkpoint_path == other


def test_loading_a_bundled_model_by_path_names_it_in_the_combo(make_napari_viewer, checkpoint_factory, tmp_path,
                                                               monkeypatch):
    """The demo loads its model by path: the Checkpoint combo then names it instead of '(choose a checkpoint)'."""
    from napari_ddunet.plugin.widget import DDUNetWidget
    from napari_ddunet.plugin.widget.form import NO_MODEL

    models = tmp_path / "models"
    models.mkdir()
    path = checkpoint_factory("models/mine.pt")
    other = checkpoint_factory("elsewhere.pt", seed=1)
    monkeypatch.setenv("NAPARI_DDUNET_MODELS", str(models))
    widget = DDUNetWidget(make_napari_viewer())
    assert widget.load_checkpoint(path) and widget.form.model.value == "mine"
    assert widget.load_checkpoint(other) and widget.form.model.value == NO_MODEL
