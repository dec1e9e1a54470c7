"""Concurrent writers own whole chunks: a store is refused for resume when an array is not chunked by subdomain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_ddunet import segment
from napari_ddunet.core.inference.sink import OutputError


def test_resume_refuses_a_store_whose_chunks_straddle_subdomains(tmp_path, make_model):
    model = make_model()
    image = np.random.default_rng(0).random((48, 64))
    out = tmp_path / "out.zarr"
    kwargs = {"subdomain_size": (16, 16), "output": out, "dtype": torch.float64}
    first = np.asarray(segment(image, model, **kwargs))
    segment(image, model, resume=True, **kwargs)  # a store as the sink made it resumes

    root = zarr.open_group(str(out), mode="r+")
    labels = root["labels/0"][...]
    attrs = dict(root["labels/0"].attrs)
    del root["labels/0"]
    root.create_array("labels/0", shape=labels.shape, chunks=(24, 24), dtype=labels.dtype, fill_value=0)
    root["labels/0"][...] = labels
    root["labels/0"].attrs.update(attrs)
    with pytest.raises(OutputError, match="chunks of one subdomain"):
        segment(image, model, resume=True, **kwargs)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels/0"][...], first)
