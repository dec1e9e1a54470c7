"""Plugin settings contributed through napari.yaml show up in napari's plugin settings."""

from __future__ import annotations

import pytest

from napari_ddunet.plugin.settings import plugin_defaults


@pytest.fixture
def fresh_plugin_settings(tmp_path, monkeypatch):
    from napari import settings

    monkeypatch.setattr(settings, "_CFG_PATH", str(tmp_path / "settings.yaml"))
    settings._clear_plugin_settings_cache()
    yield settings
    settings._clear_plugin_settings_cache()


def test_settings_page_defaults_and_changes(fresh_plugin_settings, tmp_path):
    page = fresh_plugin_settings.get_plugin_settings("napari-ddunet").inference
    assert page.default_devices == "cpu" and page.memory_budget_mb == 0
    assert plugin_defaults().devices == ("cpu",)
    page.default_devices = "cuda:0, cuda:1"
    page.memory_budget_mb = 512
    defaults = plugin_defaults()
    assert defaults.devices == ("cuda:0", "cuda:1") and defaults.memory_budget_mb == 512
    assert "512" in (tmp_path / "napari-ddunet.yaml").read_text()
