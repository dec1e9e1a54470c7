"""Validated hyper-parameters of a DDU-Net (paper 001, sec. III-B notation D, F, C)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from napari_ddunet.core.errors import DDUNetError

ENCODERS = ("unet", "resnet18")

#: ResNet-18 trunk: stem + layer1..layer3 halve the resolution four times and end at 256 channels.
RESNET18_DEPTH = 4
RESNET18_BOTTLENECK_CHANNELS = 256

#: What a config may ask for at most. Far beyond any published DDU-Net (the paper uses D <= 5, F <= 512,
#: 3 comm layers, k <= 7) yet small enough that a checkpoint's config can never demand an absurd model:
#: the checkpoint reader compares the stored weights with the model these bounds admit before building it.
LIMITS: dict[str, int] = {
    "in_channels": 256,  # Sentinel-2 has 13 bands, hyperspectral sensors about 224
    "num_classes": 65536,  # labels are stored as uint8 up to 256 classes, uint16 beyond
    "depth": 10,  # subdomains of at least 1024 px per side
    "base_channels": 512,
    "bottleneck_channels": 4096,  # base_channels * 2**depth
    "comm_layers": 64,
    "comm_kernel": 31,
    "comm_dilation": 64,
    "class_name_length": 256,
}


class ConfigError(DDUNetError):
    """An impossible model configuration; the message says what to change."""


def _shown(value: Any) -> str:
    """A short repr for a message: a hostile config value must not make the one line huge."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return "a huge integer"
    if isinstance(value, (bool, int, float, str)) or value is None:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


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
        names = self.class_names
        if isinstance(names, str) or not all(isinstance(n, (str, int)) for n in names):
            raise ConfigError("class_names must be a list of strings")
        object.__setattr__(self, "class_names", tuple(str(n) for n in names))
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.encoder in ENCODERS, f"encoder must be one of {ENCODERS}, got {_shown(self.encoder)}")
        for name in ("in_channels", "num_classes", "depth", "base_channels", "comm_kernel", "comm_dilation"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive integer, got {_shown(value)}")
        for name in ("comm_features", "comm_layers"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                 f"{name} must be a non-negative integer, got {_shown(value)}")
        need(self.num_classes >= 2, f"num_classes must be at least 2, got {self.num_classes}")
        for name in ("in_channels", "num_classes", "depth", "base_channels", "comm_layers", "comm_kernel",
                     "comm_dilation"):
            need(getattr(self, name) <= LIMITS[name],
                 f"{name} must be at most {LIMITS[name]}, got {_shown(getattr(self, name))}")
        need(isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool),
             f"dropout must be a number, got {_shown(self.dropout)}")
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
        need(self.bottleneck_channels <= LIMITS["bottleneck_channels"],
             f"the bottleneck would have base_channels * 2**depth = {self.bottleneck_channels} channels, "
             f"at most {LIMITS['bottleneck_channels']} are allowed")
        need(self.comm_features <= self.bottleneck_channels,
             f"comm_features F={self.comm_features} exceeds the bottleneck width "
             f"{self.bottleneck_channels}; use F <= {self.bottleneck_channels} or a deeper/wider network")
        need(not self.class_names or len(self.class_names) == self.num_classes,
             f"{len(self.class_names)} class names given for num_classes={self.num_classes}")
        longest = max((len(n) for n in self.class_names), default=0)
        need(longest <= LIMITS["class_name_length"],
             f"class names may have at most {LIMITS['class_name_length']} characters, one has {longest}")

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
        unknown = sorted(k[:40] if isinstance(k, str) else _shown(k) for k in set(values) - known)
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ConfigError(f"unknown model config keys: {', '.join(unknown[:5])}{more}")
        return cls(**values)
