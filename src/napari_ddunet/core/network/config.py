"""Validated hyper-parameters of a DDU-Net (paper 001, sec. III-B notation D, F, C)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from napari_ddunet.core.errors import DDUNetError

ENCODERS = ("unet", "resnet18")

#: ResNet-18 trunk: stem + layer1..layer3 halve the resolution four times and end at 256 channels.
RESNET18_DEPTH = 4
RESNET18_BOTTLENECK_CHANNELS = 256


class ConfigError(DDUNetError):
    """An impossible model configuration; the message says what to change."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DDU-Net; stored verbatim in every checkpoint.

    ``comm_features`` is F (0 disables the communication network), ``communicate`` is C
    (False runs the communication network on each subdomain alone).
    """

    in_channels: int = 1
    num_classes: int = 3
    depth: int = 3
    base_channels: int = 4
    comm_features: int = 16
    communicate: bool = True
    comm_layers: int = 3
    comm_kernel: int = 5
    comm_dilation: int = 1
    dropout: float = 0.1
    encoder: str = "unet"
    freeze_encoder: bool = False
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.encoder in ENCODERS, f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        for name in ("in_channels", "num_classes", "depth", "base_channels", "comm_kernel", "comm_dilation"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive integer, got {value!r}")
        for name in ("comm_features", "comm_layers"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                 f"{name} must be a non-negative integer, got {value!r}")
        need(self.num_classes >= 2, f"num_classes must be at least 2, got {self.num_classes}")
        need(self.comm_kernel % 2 == 1,
             f"comm_kernel must be odd so 'same' padding keeps subdomains aligned, got {self.comm_kernel}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.comm_features == 0 or self.comm_layers >= 1,
             "comm_layers must be at least 1 when comm_features > 0")
        if self.encoder == "resnet18":
            need(self.depth == RESNET18_DEPTH,
                 f"the resnet18 encoder has depth {RESNET18_DEPTH} (bottleneck at 1/16), got depth={self.depth}")
            need(self.in_channels == 3 or not self.freeze_encoder,
                 "a frozen resnet18 trunk needs in_channels=3 (ImageNet weights are RGB)")
        elif self.freeze_encoder:
            raise ConfigError("freeze_encoder only applies to the resnet18 encoder")
        need(self.comm_features <= self.bottleneck_channels,
             f"comm_features F={self.comm_features} exceeds the bottleneck width "
             f"{self.bottleneck_channels}; use F <= {self.bottleneck_channels} or a deeper/wider network")
        need(not self.class_names or len(self.class_names) == self.num_classes,
             f"{len(self.class_names)} class names given for num_classes={self.num_classes}")

    @property
    def bottleneck_channels(self) -> int:
        if self.encoder == "resnet18":
            return RESNET18_BOTTLENECK_CHANNELS
        return self.base_channels * 2**self.depth

    @property
    def downsampling(self) -> int:
        """Factor between image and bottleneck resolution; subdomain sides must be multiples of it."""
        return 2**self.depth

    @property
    def comm_halo(self) -> int:
        """Bottleneck pixels a communicated value sees on each side (0 without exchange)."""
        if self.comm_features == 0 or not self.communicate:
            return 0
        return self.comm_layers * (self.comm_kernel // 2) * self.comm_dilation

    @property
    def notation(self) -> str:
        """The paper's name for this network: U-Net(D) or DDU-Net(D, F, Y|N)."""
        prefix = "ResNet18-" if self.encoder == "resnet18" else ""
        if self.comm_features == 0:
            return f"{prefix}U-Net({self.depth})"
        flag = "Y" if self.communicate else "N"
        return f"{prefix}DDU-Net({self.depth},{self.comm_features},{flag})"

    def replace(self, **changes: Any) -> ModelConfig:
        values = self.to_dict()
        values.update(changes)
        return ModelConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["class_names"] = list(self.class_names)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**values)
