"""Training tools for napari-ddunet: ``python -m training.train`` and ``python -m training.reproduce``."""
