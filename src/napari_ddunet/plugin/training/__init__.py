"""The DDU-Net training panel as small parts: the magicgui form, the run controller, the curves."""

from napari_ddunet.plugin.training.dock import TrainingWidget

__all__ = ["TrainingWidget"]
