"""ModelConfig: validation messages, notation, derived sizes, serialisation."""

from __future__ import annotations

import dataclasses

import pytest

from napari_ddunet import ConfigError, ModelConfig
from napari_ddunet.core.errors import DDUNetError


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"comm_features": 33, "depth": 3, "base_channels": 4}, r"comm_features F=33 exceeds the bottleneck width 32"),
        ({"comm_features": 257, "encoder": "resnet18", "in_channels": 3, "depth": 4}, "bottleneck width 256"),
        ({"depth": 0}, "depth must be a positive integer, got 0"),
        ({"depth": 2.0}, "depth must be a positive integer"),
        ({"base_channels": True}, "base_channels must be a positive integer"),
        ({"comm_kernel": 4}, "comm_kernel must be odd"),
        ({"comm_dilation": 0}, "comm_dilation must be a positive integer"),
        ({"comm_features": -1}, "comm_features must be a non-negative integer"),
        ({"comm_layers": 0}, "comm_layers must be at least 1 when comm_features > 0"),
        ({"num_classes": 1}, "num_classes must be at least 2"),
        ({"in_channels": 0}, "in_channels must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"encoder": "vgg"}, "encoder must be one of"),
        ({"encoder": "resnet18", "in_channels": 3, "depth": 3}, "resnet18 encoder has depth 4"),
        ({"encoder": "resnet18", "in_channels": 1, "depth": 4, "freeze_encoder": True}, "needs in_channels=3"),
        ({"freeze_encoder": True}, "freeze_encoder only applies to the resnet18 encoder"),
        ({"class_names": ("a", "b")}, "2 class names given for num_classes=3"),
    ],
)
def test_impossible_configs_have_one_clear_line(changes, message):
    with pytest.raises(ConfigError, match=message) as caught:
        ModelConfig(**changes)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, DDUNetError) and isinstance(caught.value, ValueError)


def test_comm_layers_may_be_zero_without_comm_network():
    assert ModelConfig(comm_features=0, comm_layers=0).comm_halo == 0


@pytest.mark.parametrize(
    ("changes", "notation"),
    [
        ({"comm_features": 0, "depth": 4}, "U-Net(4)"),
        ({"comm_features": 16, "depth": 3}, "DDU-Net(3,16,Y)"),
        ({"comm_features": 8, "depth": 2, "communicate": False}, "DDU-Net(2,8,N)"),
        ({"encoder": "resnet18", "in_channels": 3, "depth": 4, "comm_features": 64}, "ResNet18-DDU-Net(4,64,Y)"),
    ],
)
def test_notation(changes, notation):
    assert ModelConfig(**changes).notation == notation


def test_derived_sizes():
    config = ModelConfig(depth=3, base_channels=4, comm_features=16, comm_layers=3, comm_kernel=5, comm_dilation=2)
    assert config.downsampling == 8
    assert config.bottleneck_channels == 32
    assert config.comm_halo == 12
    assert config.replace(communicate=False).comm_halo == 0
    assert ModelConfig(encoder="resnet18", in_channels=3, depth=4).bottleneck_channels == 256


def test_round_trip_and_immutability():
    config = ModelConfig(num_classes=2, class_names=["bg", "cell"], comm_features=8)
    assert config.class_names == ("bg", "cell")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["class_names"] == ["bg", "cell"]
    assert config.replace(depth=2).depth == 2 and config.depth == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 4  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown model config keys: colour, size"):
        ModelConfig.from_dict({**config.to_dict(), "size": 1, "colour": 2})
    with pytest.raises(ConfigError, match="exceeds the bottleneck width"):
        config.replace(comm_features=64)
