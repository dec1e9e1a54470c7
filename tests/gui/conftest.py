"""Fixtures for the napari widget tests: an isolated state file and tiny checkpoints."""

from __future__ import annotations

import pytest
import torch

from napari_ddunet import DDUNet, ModelConfig, save_checkpoint

CLASS_COLORS = [(0.0, 0.0, 0.0, 0.0), (1.0, 0.2, 0.2, 1.0), (0.3, 0.6, 1.0, 1.0)]


@pytest.fixture(autouse=True)
def _isolated_widget_state(tmp_path, monkeypatch):
    """Never read or write the user's remembered widget values (magicgui keeps them in its cache folder)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NAPARI_DDUNET_MODELS", str(tmp_path / "no-models-here"))


def make_checkpoint(path, *, depth=2, base=4, features=8, subdomain=(32, 32), in_channels=1, seed=0):
    """A randomly initialised 3-class DDU-Net saved to ``path``."""
    torch.manual_seed(seed)
    config = ModelConfig(
        in_channels=in_channels,
        num_classes=3,
        depth=depth,
        base_channels=base,
        comm_features=features,
        class_names=("background", "line", "circle"),
    )
    return save_checkpoint(path, DDUNet(config), class_colors=CLASS_COLORS, subdomain_size=subdomain)


@pytest.fixture
def checkpoint_factory(tmp_path):
    """make_checkpoint with paths inside the test's tmp_path: factory(name, **options) -> Path."""
    return lambda name, **options: make_checkpoint(tmp_path / name, **options)


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "tiny.pt")


@pytest.fixture
def widget(make_napari_viewer):
    from napari_ddunet.plugin.widget import DDUNetWidget

    viewer = make_napari_viewer()
    w = DDUNetWidget(viewer)
    viewer.window.add_dock_widget(w, name="DDU-Net")
    yield w
    w.cancel()
    w.wait()


@pytest.fixture
def errors():
    """Messages of the error notifications shown during the test."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen: list[str] = []

    def record(notification):
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)
