"""The DDU-Net dock widget as small parts: the magicgui form, the run controller, the result layers."""

from napari_ddunet.plugin.widget.dock import REFRESH_MS, DDUNetWidget

__all__ = ["REFRESH_MS", "DDUNetWidget"]
