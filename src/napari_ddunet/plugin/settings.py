"""Plugin settings (napari Preferences) and the dock widget's remembered values.

Settings: napari 0.9 builds a Preferences page from the ``configurations`` section of our
``napari.yaml`` and saves it to ``<napari config dir>/napari-ddunet.yaml``; we read it with
:func:`napari.settings.get_plugin_settings`. Older napari versions have no such page; then the
defaults below apply.

Widget state (last checkpoint, subdomain size, devices, ...) is a small JSON file next to napari's
own settings, or at ``$NAPARI_DDUNET_WIDGET_STATE`` when set (tests point it at a temporary file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLUGIN_NAME = "napari-ddunet"
STATE_ENV = "NAPARI_DDUNET_WIDGET_STATE"


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


def state_path() -> Path:
    """Where the widget remembers its values between sessions."""
    override = os.environ.get(STATE_ENV)
    if override:
        return Path(override)
    try:
        from napari.settings import _napari_settings

        base = Path(_napari_settings._CFG_PATH).parent
    except (ImportError, AttributeError):
        base = Path.home() / ".config" / "napari"
    return base / "napari-ddunet-widget.json"


def load_state() -> dict[str, Any]:
    """The remembered values; an unreadable file counts as empty (it is only a convenience)."""
    try:
        data = json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(values: dict[str, Any]) -> None:
    """Write atomically; a read-only config dir silently disables remembering."""
    path = state_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(values, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass
