"""The DDU-Net dock widget as small parts: the magicgui form, the run controller, the result layers."""

from napari_ddunet.plugin.widget.dock import DDUNetWidget

__all__ = ["DDUNetWidget"]
