"""The training panel: layers pair, classes come from the Labels layer, bad input is one notification
before any file, and a run trained from the panel (Cancel, Resume) lands in the segmentation widget and
reproduces the painted strokes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from napari_ddunet.plugin.trained_models import trained_models

#: The share of painted stroke pixels the panel's model must give back (measured 0.9995 with 6 epochs of 32 crops).
STROKE_ACCURACY = 0.9
#: Intensity of the three vertical bands of the synthetic image (classes 1, 2, 3).
BANDS = (0.15, 0.5, 0.85)


@pytest.fixture(autouse=True)
def _fresh_session_models():
    trained_models.clear()
    yield
    trained_models.clear()


def band_image(shape=(128, 192), seed=0) -> np.ndarray:
    """Three vertical bands of different brightness with noise: the class is the band."""
    rng = np.random.default_rng(seed)
    image = np.empty(shape, np.float32)
    width = shape[1] // 3
    for k, level in enumerate(BANDS):
        image[:, k * width:(k + 1) * width] = level
    return np.clip(image + rng.normal(0, 0.05, shape).astype(np.float32), 0, 1)


def band_strokes(shape=(128, 192)) -> np.ndarray:
    """A few 3-pixel strokes per band, labelled 1, 2, 3; everything else unpainted (0)."""
    strokes = np.zeros(shape, np.uint8)
    width = shape[1] // 3
    for k in range(3):
        x0 = k * width
        for y in (10, 50, 100):
            strokes[y:y + 3, x0 + 8:x0 + width - 8] = k + 1
        strokes[20:110, x0 + width // 2:x0 + width // 2 + 3] = k + 1
    return strokes


@pytest.fixture
def panel(make_napari_viewer):
    from napari_ddunet.plugin.training import TrainingWidget

    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DDU-Net training")
    yield widget
    widget.cancel()
    widget.wait()


def tiny_settings(panel, output) -> None:
    form = panel.form
    form.depth.value, form.base_channels.value, form.comm_features.value = 2, 4, 8
    form.grid.value, form.subdomain_size.value = (2, 2), (32, 32)
    form.batch_size.value, form.samples_per_epoch.value = 4, 32
    form.learning_rate.value = 0.01
    form.output.value = output


def test_layers_pair_and_name_their_classes(panel):
    viewer = panel.viewer
    viewer.add_image(band_image(), name="img")
    assert [layer.name for layer in panel.form.images.value] == ["img"]
    viewer.add_labels(np.zeros((40, 40), np.uint8), name="other size")
    viewer.add_labels(np.zeros((128, 192), np.uint8), name="img ground truth")
    features = pd.DataFrame({"index": [0, 1, 2, 3], "name": ["unlabelled", "dark", "grey", "bright"]})
    viewer.add_labels(band_strokes(), name="img strokes", features=features)
    # the newest Labels layer of the image's size is paired (the strokes, not a ground truth added before)
    assert [layer.name for layer in panel.form.label_layers.value] == ["img strokes"]
    assert panel.form.pairs.value == "img <- img strokes"
    names, colors = panel.classes(viewer.layers["img strokes"], 4)
    assert names == ("unlabelled", "dark", "grey", "bright")
    expected = np.asarray(viewer.layers["img strokes"].colormap.map(np.arange(4)), float)
    np.testing.assert_array_equal(np.asarray(colors), expected)
    panel.form.class_names.value = "none, a, b, c"
    assert panel.classes(viewer.layers["img strokes"], 4)[0] == ("none", "a", "b", "c")


def test_bad_input_is_one_notification_before_any_file(panel, errors, tmp_path):
    viewer = panel.viewer
    viewer.add_image(band_image(), name="img")
    viewer.add_labels(band_strokes(), name="strokes")
    assert panel.run() is None  # no output folder chosen
    assert errors == ["Choose an output folder for the checkpoints and curves."]
    tiny_settings(panel, tmp_path / "run")
    panel.form.class_names.value = "only, two"
    assert panel.run() is None
    assert errors[-1] == "Type 4 class names (label values 0..3), not 2."
    panel.form.class_names.value = ""
    panel.form.label_layers.value = []
    assert panel.run() is None
    assert errors[-1] == "Choose one Labels layer per image: 1 image(s), 0 Labels."
    assert len(errors) == 3 and not (tmp_path / "run").exists() and not panel.controller.running


def test_curve_series_skip_missing_values():
    from napari_ddunet.plugin.training.curves import curve_series

    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": math.nan, "val_miou": ""},
               {"epoch": 2, "train_loss": "0.5", "val_loss": 0.6, "val_miou": 0.7}]
    series = curve_series(history)
    assert series == {"train_loss": ([1, 2], [0.9, 0.5]), "val_loss": ([2], [0.6]), "val_miou": ([2], [0.7])}


def test_a_trained_model_shows_in_the_segmentation_widget_with_its_card(widget, checkpoint):
    name = trained_models.add(checkpoint)
    assert name in widget.form.model.choices
    assert widget.form.model.value == name
    assert widget.checkpoint_path == checkpoint.resolve()
    assert "DDU-Net(2,8,Y)" in widget.card.value


def test_train_cancel_resume_then_segment_reproduces_the_strokes(panel, tmp_path, qtbot):
    from napari_ddunet import load_checkpoint
    from napari_ddunet.plugin.widget import DDUNetWidget

    viewer = panel.viewer
    segmenter = DDUNetWidget(viewer)
    viewer.window.add_dock_widget(segmenter, name="DDU-Net")
    image, strokes = band_image(), band_strokes()
    viewer.add_image(image, name="img")
    viewer.add_labels(strokes, name="img strokes")
    output = tmp_path / "run"
    tiny_settings(panel, output)
    panel.form.epochs.value = 6

    def cancel_after_first_epoch(_request, event):
        if event.phase.value == "epoch" and event.best_checkpoint is not None:
            panel.cancel()

    panel.controller.progressed.connect(cancel_after_first_epoch)
    assert panel.run_blocking(timeout_s=120) is None  # cancelled
    panel.controller.progressed.disconnect(cancel_after_first_epoch)
    best = output / "best.pt"
    model = load_checkpoint(best)
    assert model.info.class_names[1:] == ("class 1", "class 2", "class 3")
    assert best.resolve() in trained_models.models().values()
    assert segmenter.checkpoint_path == best.resolve()
    cancelled_epochs = panel.controller.last_event.epoch
    assert 1 <= cancelled_epochs < 6

    phases = []
    panel.controller.progressed.connect(lambda _request, event: phases.append(event.phase.value))
    draws = panel.curves.draws
    result = panel.run_blocking(resume=True, timeout_s=120)
    assert result is not None and result.epochs_run > cancelled_epochs
    # the curves redraw once per epoch (and once at the start), never per batch
    redraws = phases.count("epoch") + phases.count("finished") + 1
    assert phases.count("batch") > redraws and panel.curves.draws - draws == redraws
    name = next(name for name, path in trained_models.models().items() if path == result.best_checkpoint.resolve())
    assert name in segmenter.form.model.choices and segmenter.checkpoint_path == result.best_checkpoint.resolve()
    segmenter.form.image.value = viewer.layers["img"]
    segmenter.form.devices.value = ["cpu"]
    segmenter.run_blocking(timeout_s=60)
    labels = np.asarray(viewer.layers["img DDU-Net labels"].data)
    painted = strokes > 0
    accuracy = float((labels[painted] == strokes[painted]).mean())
    assert accuracy >= STROKE_ACCURACY, f"stroke accuracy {accuracy:.3f}"


def test_the_panel_opens_from_the_plugin_menu(make_napari_viewer):
    from napari_ddunet.plugin.training import TrainingWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-ddunet", "DDU-Net training")
    assert isinstance(widget, TrainingWidget)
    assert (widget.form.epochs.value, widget.form.learning_rate.value) == (40, 0.008)  # the paper's defaults


def test_a_checkpoint_file_is_fine_tuned(panel, checkpoint, tmp_path, errors):
    viewer = panel.viewer
    viewer.add_image(band_image(), name="img")
    viewer.add_labels(np.minimum(band_strokes(), 2), name="strokes")  # the checkpoint's 3 classes
    tiny_settings(panel, tmp_path / "run")
    panel.form.fine_tune.value = checkpoint
    request = panel.request()
    assert request.fine_tune == checkpoint and request.num_classes == 3 and request.ignore_index == 0
    assert errors == [] and not (tmp_path / "run").exists()
