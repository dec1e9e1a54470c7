"""A 2-process gloo torchrun step gives the single-process gradients (float64, BatchNorm training)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_ddunet.core.network.config import ModelConfig
from napari_ddunet.core.network.model import DDUNet
from training import losses

ROOT = Path(__file__).resolve().parents[2]


def _single(communicate: bool, ce_weight: float):
    torch.manual_seed(0)
    config = ModelConfig(in_channels=1, num_classes=3, depth=2, base_channels=2, comm_features=4,
                         communicate=communicate, comm_layers=2, comm_kernel=3, dropout=0.0)
    model = DDUNet(config).double().train()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 16, 24, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 16, 24), generator=generator)
    logits = model(x, (2, 3))
    loss = losses.dice_loss(logits, y)
    if ce_weight > 0:
        loss = loss + ce_weight * losses.cross_entropy_sum(logits, y) / y.numel()
    loss.backward()
    return loss.detach(), model


def test_two_rank_gradients_equal_single_process(tmp_path):
    """Both C=Y (gathered bottleneck, dice + cross entropy) and C=N, in one torchrun launch."""
    out = tmp_path / "grads.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "training" / "dist_worker.py"), str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers share the new session
        proc.communicate()
        raise
    assert proc.returncode == 0, output[-3000:]
    results = torch.load(out, weights_only=True)
    for communicate, ce_weight in ((True, 0.5), (False, 0.0)):
        _compare(results[f"{'Y' if communicate else 'N'}-{ce_weight}"], *_single(communicate, ce_weight))


def _compare(dist: dict, loss: torch.Tensor, model: torch.nn.Module) -> None:
    assert abs(float(dist["loss"]) - float(loss)) < 1e-12
    grads = dict(model.named_parameters())
    assert set(dist["grads"]) == set(grads)
    for name, param in grads.items():
        assert torch.allclose(dist["grads"][name], param.grad, rtol=0, atol=1e-12), name
    for name, buffer in model.named_buffers():
        if buffer.dtype.is_floating_point:
            assert torch.allclose(dist["buffers"][name], buffer, rtol=0, atol=1e-12), name


def test_training_devices_go_through_the_one_parser():
    """--devices takes what the engine takes ("auto", any case) and refuses what this machine lacks."""
    from training.train import parse_devices

    from napari_ddunet.core.inference.devices import DeviceError, resolve_devices

    assert parse_devices("auto") == resolve_devices("auto")
    assert parse_devices(" CPU, cpu ") == [torch.device("cpu")] * 2
    with pytest.raises(DeviceError, match="no device given"):
        parse_devices(" , ")
    with pytest.raises(DeviceError, match="not available"):
        parse_devices(f"cpu,cuda:{torch.cuda.device_count() + 3}")
