"""DDU-Net domain-decomposition segmentation for napari, the command line and Python."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .core.config import ConfigError, ModelConfig
from .core.model import DDUNet

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DDUNet",
    "ModelConfig",
    "__version__",
    "load_checkpoint",
    "save_checkpoint",
    "segment",
]


def segment(*args: Any, **kwargs: Any) -> Any:
    """Segment an image with a checkpoint; see :func:`napari_ddunet.core.engine.segment`."""
    from .core.engine import segment as _segment

    return _segment(*args, **kwargs)
