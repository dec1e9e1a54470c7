"""One-file checkpoints: weights, config, classes, normalisation, provenance and training state.

Files are torch zip archives of tensors and plain data only, read back with
``torch.load(weights_only=True)``: a checkpoint can never run code on load. This module is the
only reader and writer of the file, so the payload keys are spelled here and nowhere else.
"""

from __future__ import annotations

import datetime as _dt
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.network.config import ConfigError, ModelConfig
from napari_ddunet.core.network.model import DDUNet

FORMAT_NAME = "napari-ddunet-checkpoint"
FORMAT_VERSION = 1

#: Provenance every checkpoint records; anything else a caller passes is kept as extra provenance.
PROVENANCE_KEYS: tuple[str, ...] = ("library_version", "torch_version", "created", "training_args", "metrics")
#: Optimizer, scheduler, epoch, history and RNG state of ``last.pt``, what ``--resume`` continues from.
TRAINING_STATE_KEY = "training_state"

#: Colours for classes when a checkpoint names none: background transparent, then distinct hues.
DEFAULT_COLORS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0),
    (0.894, 0.102, 0.110, 1.0),
    (0.216, 0.494, 0.722, 1.0),
    (0.302, 0.686, 0.290, 1.0),
    (0.596, 0.306, 0.639, 1.0),
    (1.000, 0.498, 0.000, 1.0),
    (1.000, 1.000, 0.200, 1.0),
    (0.651, 0.337, 0.157, 1.0),
    (0.969, 0.506, 0.749, 1.0),
    (0.600, 0.600, 0.600, 1.0),
)


class CheckpointError(DDUNetError):
    """A checkpoint that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class Normalization:
    """Global per-channel statistics: the network sees ``(x - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise CheckpointError("normalization needs one mean and one std per channel")
        if any(s <= 0 for s in self.std):
            raise CheckpointError("normalization std must be positive")

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Normalization:
        return cls(tuple(float(m) for m in values["mean"]), tuple(float(s) for s in values["std"]))


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything in a checkpoint besides the weights."""

    config: ModelConfig
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[float, float, float, float], ...]
    normalization: Normalization | None
    subdomain_size: tuple[int, int] | None
    format_version: int = FORMAT_VERSION
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def training_args(self) -> dict[str, Any]:
        return dict(self.provenance.get("training_args") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.provenance.get("metrics") or {})

    @property
    def extra_provenance(self) -> dict[str, Any]:
        """Provenance a caller added beyond :data:`PROVENANCE_KEYS` (e.g. a run name)."""
        return {k: v for k, v in self.provenance.items() if k not in PROVENANCE_KEYS}


def _library_version() -> str:
    from napari_ddunet import __version__

    return __version__


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """What unnamed classes are called: background first."""
    return ("background", *(f"class {i}" for i in range(1, num_classes)))


def _default_colors(num_classes: int) -> tuple[tuple[float, float, float, float], ...]:
    return tuple(DEFAULT_COLORS[i % len(DEFAULT_COLORS)] if i else DEFAULT_COLORS[0] for i in range(num_classes))


def save_checkpoint(
    path: str | Path,
    model: DDUNet,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    class_colors: list | tuple | None = None,
    normalization: Normalization | dict[str, Any] | None = None,
    subdomain_size: tuple[int, int] | None = None,
    training_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    **metadata: Any,
) -> Path:
    """Write ``model`` and what is needed to use it to one file (written atomically)."""
    payload = _model_payload(
        model, class_names=class_names, class_colors=class_colors, normalization=normalization,
        subdomain_size=subdomain_size, training_args=training_args, metrics=metrics, **metadata,
    )
    return _write_payload(Path(path), payload)


def save_training_state(path: str | Path, model: DDUNet, state: dict[str, Any], **checkpoint: Any) -> Path:
    """Write a usable checkpoint that also holds ``state`` (optimizer, scheduler, epoch, RNG...) for resuming.

    ``checkpoint`` takes the keywords of :func:`save_checkpoint`; the file stays weights_only-loadable.
    """
    payload = _model_payload(model, **checkpoint)
    payload[TRAINING_STATE_KEY] = state
    return _write_payload(Path(path), payload)


def load_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and training state of a checkpoint written by :func:`save_training_state`."""
    path = Path(path)
    _, state_dict = read_checkpoint_info(path)
    state = _read_payload(path).get(TRAINING_STATE_KEY)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no training state to resume from")
    return state_dict, state


def replace_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Rewrite a checkpoint with new ``metrics``; weights, metadata and other provenance stay as they are."""
    path = Path(path)
    payload = _read_payload(path)
    payload["provenance"] = {**(payload.get("provenance") or {}), "metrics": dict(metrics)}
    return _write_payload(path, payload)


def _model_payload(
    model: DDUNet,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    class_colors: list | tuple | None = None,
    normalization: Normalization | dict[str, Any] | None = None,
    subdomain_size: tuple[int, int] | None = None,
    training_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """The validated payload of a model checkpoint (everything but the training state)."""
    config = model.config
    names = tuple(class_names or config.class_names or default_class_names(config.num_classes))
    if len(names) != config.num_classes:
        raise CheckpointError(f"{len(names)} class names for a model with {config.num_classes} classes")
    colors = tuple(tuple(float(v) for v in c) for c in (class_colors or _default_colors(config.num_classes)))
    if len(colors) != config.num_classes or any(len(c) not in (3, 4) for c in colors):
        raise CheckpointError("class_colors needs one RGB or RGBA colour per class")
    colors = tuple(c if len(c) == 4 else (*c, 1.0) for c in colors)
    if isinstance(normalization, dict):
        normalization = Normalization.from_dict(normalization)
    if normalization is not None and len(normalization.mean) != config.in_channels:
        raise CheckpointError(
            f"normalization has {len(normalization.mean)} channels, the model takes {config.in_channels}"
        )
    provenance = dict(zip(PROVENANCE_KEYS, (
        _library_version(),
        str(torch.__version__),
        _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        dict(training_args or {}),
        dict(metrics or {}),
    ), strict=True))
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config.replace(class_names=names).to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_colors": [list(c) for c in colors],
        "normalization": None if normalization is None else normalization.to_dict(),
        "subdomain_size": None if subdomain_size is None else [int(s) for s in subdomain_size],
        "provenance": {**provenance, **metadata},
    }


def _write_payload(path: Path, payload: dict[str, Any]) -> Path:
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if not zipfile.is_zipfile(path):
        if magic.startswith(b"PK"):
            raise CheckpointError(f"{path} is truncated or corrupt (incomplete zip archive)")
        raise CheckpointError(f"{path} is not a napari-ddunet checkpoint (not a torch zip archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error).lower():
            raise CheckpointError(
                f"{path} contains pickled code and was refused; checkpoints may hold only tensors and plain data"
            ) from None
        raise CheckpointError(f"{path} is corrupt: {str(error).splitlines()[0]}") from None
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {str(error).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a napari-ddunet checkpoint (a torch file without our header)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this napari-ddunet ({_library_version()}) "
            f"reads up to version {FORMAT_VERSION}, please upgrade"
        )
    return payload


def read_checkpoint_info(path: str | Path) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Metadata and state dict of a checkpoint, validated but without building the model."""
    path = Path(path)
    payload = _read_payload(path)
    try:
        config = ModelConfig.from_dict(payload["config"])
        normalization = payload.get("normalization")
        size = payload.get("subdomain_size")
        info = CheckpointInfo(
            config=config,
            class_names=config.class_names or default_class_names(config.num_classes),
            class_colors=tuple(tuple(float(v) for v in c) for c in payload["class_colors"]),
            normalization=None if normalization is None else Normalization.from_dict(normalization),
            subdomain_size=None if size is None else (int(size[0]), int(size[1])),
            format_version=payload["format_version"],
            provenance=dict(payload.get("provenance") or {}),
        )
        state = payload["state_dict"]
    except (ConfigError, CheckpointError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise CheckpointError(f"{path} is a damaged checkpoint (bad field: {error})") from None
    return info, state


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> DDUNet:
    """Rebuild the model in eval mode; ``model.info`` holds the :class:`CheckpointInfo`."""
    info, state = read_checkpoint_info(path)
    model = DDUNet(info.config)
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1:  # keep saved float64 (or half) weights bit-exact instead of casting to float32
        model = model.to(dtype=dtypes.pop())
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            shapes = f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
            details.append(f"{len(wrong)} of wrong shape (e.g. {k}: {shapes})")
        notation = info.config.notation
        raise CheckpointError(f"{path}: weights do not fit the stored config {notation}: " + ", ".join(details))
    model.load_state_dict(state)
    model.info = info
    return model.to(device).eval()
