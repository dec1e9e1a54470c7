"""Two torchrun processes (gloo) equal the monolithic forward to 1e-10; rank bands respect the halo."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from engine_cases import SHAPE, image, reference, tiny_model

from napari_ddunet import load_checkpoint, save_checkpoint
from napari_ddunet.core.inference.distributed import DistContext
from napari_ddunet.core.inference.sink import open_output

WORKER = textwrap.dedent(
    """
    import sys

    import dask.array as da
    import numpy as np
    import torch
    import zarr

    from napari_ddunet import load_checkpoint
    from napari_ddunet.core.inference.distributed import DistContext
    from napari_ddunet.core.inference.engine import segment

    root = sys.argv[1]
    context = DistContext.from_env()
    assert context is not None and context.world == 2
    model = load_checkpoint(root + "/m.pt")
    img = np.load(root + "/img.npy")
    inputs = {"numpy": img, "dask": da.from_array(img, chunks=(20, 50)), "zarr": zarr.open_array(root + "/in.zarr")}
    for name, schedule in (("numpy", "wavefront"), ("dask", "recompute"), ("zarr", "wavefront")):
        result = segment(inputs[name], model, subdomain_size=(16, 24), output=f"{root}/{name}.zarr",
                         dtype=torch.float64, logits=True, features=True, schedule=schedule,
                         devices=["cpu"], distributed=context, return_result=True)
        assert result.schedule == schedule, result.schedule
    # a (Z, Y, X) stack: every rank runs every plane, each plane's halo swap collective
    segment(np.stack([img, -img]), model, axes="ZYX", subdomain_size=(16, 24), output=f"{root}/stack.zarr",
            dtype=torch.float64, logits=True, schedule="wavefront", devices=["cpu"], distributed=context)
    torch.distributed.destroy_process_group()
    """
)


def test_two_process_torchrun_equals_monolithic(tmp_path):
    save_checkpoint(tmp_path / "m.pt", tiny_model(), subdomain_size=(16, 24))
    img = image()
    np.save(tmp_path / "img.npy", img)
    import zarr

    zarr.create_array(str(tmp_path / "in.zarr"), shape=SHAPE, chunks=(32, 32), dtype="f8")[...] = img
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_checkpoint(tmp_path / "m.pt").double()
    ref = reference(model, img)
    for name in ("numpy", "dask", "zarr"):
        stored = open_output(tmp_path / f"{name}.zarr")
        assert stored["attrs"]["complete"] is True
        np.testing.assert_allclose(stored["logits"][...], ref["logits"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(stored["communicated"][...], ref["communicated"], rtol=0, atol=1e-10)
        np.testing.assert_array_equal(stored["labels"][...], ref["logits"].argmax(0))
    stack = open_output(tmp_path / "stack.zarr")
    assert stack["attrs"]["complete"] is True
    np.testing.assert_allclose(stack["logits"][0], ref["logits"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(stack["logits"][1], reference(model, -img)["logits"], rtol=0, atol=1e-10)


@pytest.mark.parametrize(("rows", "world", "k"), [(5, 2, 2), (5, 3, 2), (7, 4, 1), (3, 4, 2), (10, 3, 0)])
def test_rank_bands_cover_rows_with_at_least_k_each(rows, world, k):
    bands = [DistContext(rank, world, torch.device("cpu")).own_rows(0, rows, k) for rank in range(world)]
    covered = [r for a, b in bands for r in range(a, b)]
    assert covered == list(range(rows))
    assert all(b - a >= max(k, 1) for a, b in bands if b > a)
