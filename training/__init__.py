"""Training tools for napari-ddunet, installed with the plugin.

``python -m training.train``, ``python -m training.evaluate`` and ``python -m training.reproduce``
run from the repository root (the checkout's folder comes first on ``sys.path``) and from any other
directory of an environment where napari-ddunet is installed.
"""
