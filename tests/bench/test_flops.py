"""The analytic FLOP count against a hand count and against torch's own FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_ddunet import DDUNet, ModelConfig
from napari_ddunet.bench.flops import count_flops
from napari_ddunet.bench.runners import REFERENCE_CONFIG


def _counted_by_torch(model: DDUNet, subdomain: tuple[int, int], grid: tuple[int, int]) -> int:
    x = torch.randn(1, model.config.in_channels, grid[0] * subdomain[0], grid[1] * subdomain[1])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, grid=grid)
    return counter.get_total_flops()


def test_hand_count_of_a_depth_one_unet() -> None:
    # full res: conv 1->2 (36) + 2->2 (72); half res (/4): 2->4 (144) + 4->4 (288);
    # convT 4->2 2x2 per input pixel (64 / 4 = 16); conv 4->2 (144) + 2->2 (72); 1x1 out 2->2 (8)
    model = DDUNet(ModelConfig(in_channels=1, num_classes=2, depth=1, base_channels=2, comm_features=0)).eval()
    count = count_flops(model, (8, 8))
    assert count.conv_flops_per_pixel == 108 + 432 / 4 + 16 + 216 + 8


@pytest.mark.parametrize(
    ("config", "subdomain", "grid"),
    [
        (REFERENCE_CONFIG, (32, 32), (2, 2)),
        ({"in_channels": 1, "num_classes": 3, "depth": 2, "base_channels": 4, "comm_features": 8}, (16, 24), (3, 2)),
        ({"in_channels": 2, "num_classes": 2, "depth": 3, "base_channels": 2, "comm_features": 0}, (24, 16), (1, 1)),
        ({"in_channels": 3, "num_classes": 2, "depth": 4, "comm_features": 16, "encoder": "resnet18"},
         (32, 32), (2, 1)),
    ],
)
def test_analytic_count_equals_flop_counter_mode(config, subdomain, grid) -> None:
    torch.manual_seed(0)
    model = DDUNet(ModelConfig(**config)).eval()
    assert count_flops(model, subdomain, grid).conv_flops == _counted_by_torch(model, subdomain, grid)


def test_count_per_pixel_does_not_depend_on_the_grid_and_leaves_the_model_alone() -> None:
    model = DDUNet(ModelConfig(**REFERENCE_CONFIG)).eval()
    small = count_flops(model, (64, 64), (2, 2))
    large = count_flops(model, (512, 512), (4, 4))
    assert small.conv_flops_per_pixel == large.conv_flops_per_pixel
    assert large.pixels == 2048 * 2048
    assert small.elementwise_per_pixel > 0
    assert next(model.parameters()).device.type == "cpu"
