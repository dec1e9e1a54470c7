"""Plugin settings: the napari Preferences page of napari-ddunet.

Settings: napari 0.9 builds a Preferences page from the ``configurations`` section of our
``napari.yaml`` and saves it to ``<napari config dir>/napari-ddunet.yaml``; we read it with
:func:`napari.settings.get_plugin_settings`. Older napari versions have no such page; then the
defaults below apply.

The dock widget's remembered values are magicgui's (``persist=True``, see ``plugin/widget/form.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

PLUGIN_NAME = "napari-ddunet"


@dataclass(frozen=True)
class PluginDefaults:
    """What a new run uses unless the widget says otherwise."""

    devices: tuple[str, ...] = ("cpu",)
    memory_budget_mb: int = 0  # 0: let the engine decide
    features: bool = True


def _split_devices(text: str) -> tuple[str, ...]:
    return tuple(d.strip() for d in text.replace(";", ",").split(",") if d.strip()) or ("cpu",)


def plugin_defaults() -> PluginDefaults:
    """Values from napari's Preferences > napari-ddunet page, or the built-in defaults."""
    try:
        from napari.settings import get_plugin_settings

        settings = get_plugin_settings(PLUGIN_NAME).inference
    except (ImportError, KeyError, AttributeError):
        return PluginDefaults()
    return PluginDefaults(
        devices=_split_devices(str(settings.default_devices)),
        memory_budget_mb=int(settings.memory_budget_mb),
        features=bool(settings.features),
    )
