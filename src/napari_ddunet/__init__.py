"""DDU-Net domain-decomposition segmentation for napari, the command line and Python.

The public names are imported on first use, so that ``napari-ddunet --help`` and napari's
plugin discovery do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "napari_ddunet.core.checkpoints.format",
    "load_checkpoint": "napari_ddunet.core.checkpoints.format",
    "save_checkpoint": "napari_ddunet.core.checkpoints.format",
    "ConfigError": "napari_ddunet.core.network.config",
    "ModelConfig": "napari_ddunet.core.network.config",
    "DDUNet": "napari_ddunet.core.network.model",
    "segment": "napari_ddunet.core.inference.engine",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'napari_ddunet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
