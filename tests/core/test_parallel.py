"""Several devices in one process: outputs, gradients and BatchNorm statistics equal the single-device run."""

from __future__ import annotations

import copy

import pytest
import torch

from napari_ddunet import DDUNet, ModelConfig
from napari_ddunet.core.errors import DeviceError
from napari_ddunet.core.network.parallel import DataParallelDDUNet, forward_multi_device

CPUS = ["cpu", "cpu", "cpu"]


def _run(model, x, grid, devices=None):
    """Loss, logits, input grad and parameter grads of one forward/backward (single device when devices=None)."""
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    out = model(x, grid=grid) if devices is None else forward_multi_device(model, x, grid, devices)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + out.square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


def _assert_same(a, b):
    out_a, xg_a, g_a = a
    out_b, xg_b, g_b = b
    assert torch.allclose(out_a, out_b, rtol=0, atol=1e-10)
    assert torch.allclose(xg_a, xg_b, rtol=0, atol=1e-10)
    assert set(g_a) == set(g_b) and g_a
    for name in g_a:
        # 1e-10 of the gradient's own scale: a weight gradient sums over the batch, and splitting the batch
        # across devices changes that order (ResNet's bottleneck gradient reaches 34 in float64: 2e-10 apart
        # with two threads, 5e-12 relative)
        scale = max(1.0, float(g_a[name].abs().max()))
        assert torch.allclose(g_a[name], g_b[name], rtol=0, atol=1e-10 * scale), name


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(("grid", "batch", "communicate"), [((2, 3), 2, True), ((1, 5), 1, True), ((2, 2), 1, False)])
def test_multi_device_equals_single_device(make_model, train, grid, batch, communicate):
    """12 subdomains split 4/4/4, 5 split 2/2/1, and C=N; eval and train mode."""
    model = make_model(communicate=communicate)
    model.train(train)
    twin = copy.deepcopy(model)
    shape = (batch, 1, 8 * grid[0], 12 * grid[1])
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _assert_same(_run(model, x, grid), _run(twin, x, grid, CPUS))
    for (name, a), b in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-12), name


def test_running_stats_with_cumulative_momentum(make_model):
    model = make_model()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    twin = copy.deepcopy(model)
    x = torch.randn(1, 1, 16, 24, dtype=torch.float64)
    for _ in range(2):
        model(x, grid=(2, 2))
        forward_multi_device(twin, x, (2, 2), CPUS)
    for a, b in zip(model.buffers(), twin.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-12)


def test_features_and_wrapper(make_model):
    model = make_model()
    x = torch.randn(2, 1, 16, 24, dtype=torch.float64)
    wrapped = DataParallelDDUNet(model, CPUS, comm_device="cpu")
    assert all(p is q for p, q in zip(wrapped.parameters(), model.parameters(), strict=True))
    with torch.no_grad():
        expected = model.forward_features(x, grid=(2, 2))
        got = wrapped.forward_features(x, grid=(2, 2))
        assert torch.equal(wrapped(x, grid=(2, 2)), got["logits"])
    for key in ("bottleneck", "communicated", "logits"):
        assert torch.allclose(expected[key], got[key], rtol=0, atol=1e-10), key


def test_without_comm_network(make_model):
    model = make_model(comm_features=0).train()
    twin = copy.deepcopy(model)
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    _assert_same(_run(model, x, (2, 2)), _run(twin, x, (2, 2), ["cpu", "cpu"]))


def test_inference_mode_reaches_the_workers(make_model):
    model = make_model()
    x = torch.randn(1, 1, 16, 24, dtype=torch.float64)
    with torch.inference_mode():
        out = forward_multi_device(model, x, (2, 2), CPUS)
    assert out.is_inference()


def test_bad_devices(make_model):
    model = make_model()
    x = torch.randn(1, 1, 16, 24, dtype=torch.float64)
    with pytest.raises(DeviceError, match="at least one device"):
        forward_multi_device(model, x, (2, 2), [])
    with pytest.raises(DeviceError, match="bad device"):
        forward_multi_device(model, x, (2, 2), ["warp-drive:0"])


def test_error_in_one_worker_reaches_the_caller(make_model):
    """One chunk failing inside a synchronised BatchNorm must not leave the others waiting forever."""
    model = make_model().train()
    x = torch.randn(1, 1, 16, 24, dtype=torch.float64)
    with pytest.raises((RuntimeError, NotImplementedError)):  # copying a meta tensor's data is impossible
        forward_multi_device(model, x, (2, 2), ["cpu", "meta"])


def test_resnet18_with_frozen_trunk_in_training_mode():
    """Frozen trunk BatchNorms stay in eval mode in every chunk; the rest synchronises."""
    torch.manual_seed(0)
    config = ModelConfig(in_channels=3, num_classes=2, depth=4, encoder="resnet18", comm_features=8,
                         freeze_encoder=True, dropout=0.0)
    model = DDUNet(config).double().train()
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 16, 32, dtype=torch.float64)
    single, multi = _run(model, x, (1, 2)), _run(twin, x, (1, 2), ["cpu", "cpu"])
    _assert_same(single, multi)
    assert not any(name.startswith(("encoder.conv1", "encoder.layer")) for name in multi[2])
    for (name, a), b in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-12), name
