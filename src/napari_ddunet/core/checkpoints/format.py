"""One-file checkpoints: weights, config, classes, normalisation, provenance and training state.

Files are torch zip archives of tensors and plain data only, read back with
``torch.load(weights_only=True)``: a checkpoint can never run code on load. This module is the
only reader and writer of the file, so the payload keys are spelled here and nowhere else.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.io import normalization as value_ranges
from napari_ddunet.core.network.config import ConfigError, ModelConfig
from napari_ddunet.core.network.model import DDUNet

FORMAT_NAME = "napari-ddunet-checkpoint"
FORMAT_VERSION = 1

#: Provenance every checkpoint records; anything else a caller passes is kept as extra provenance.
PROVENANCE_KEYS: tuple[str, ...] = ("library_version", "torch_version", "created", "training_args", "metrics")
#: Optimizer, scheduler, epoch, history and RNG state of ``last.pt``, what ``--resume`` continues from.
TRAINING_STATE_KEY = "training_state"

#: Bounds of the archive, checked with zipfile before torch reads a byte of it: the pickle (metadata, not
#: weights) and every other small record may not exceed these, a compressed record may not claim more than
#: deflate can reach (about 1032:1), and all tensor records together at most what the stored config needs.
MAX_RECORDS = 100_000
MAX_PICKLE_BYTES = 64 << 20
MAX_SMALL_RECORD_BYTES = 1 << 20
MAX_DEFLATE_RATIO = 1100
#: Tensor bytes a checkpoint may hold per parameter of its model: float64 weights plus Adam's two moments
#: in ``last.pt`` need 24, so 32 leaves room; plus a fixed allowance for the RNG state and scalars.
TENSOR_BYTES_PER_PARAMETER = 32
TENSOR_BYTES_ALLOWANCE = 1 << 20
#: Provenance as read is cut to these bounds (nesting depth, entries per container, characters per
#: string, and nodes and characters in all), so a "billion laughs" of shared references stays small.
PROVENANCE_DEPTH = 8
PROVENANCE_ENTRIES = 1000
PROVENANCE_STRING = 4096
PROVENANCE_NODES = 20_000
PROVENANCE_CHARACTERS = 200_000
#: The largest trained subdomain side a checkpoint may record.
MAX_SUBDOMAIN_SIDE = 1 << 20

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
    """Per-channel statistics: the network sees ``(s(x) - mean) / std``, ``s`` the prescale of ``mode``.

    The optional fields record what the model was trained on (core/io/normalization.py): the mode (absent in
    checkpoints written before modes existed, which are ``global``), the images' dtype, and the training data's
    p1, p99, min and max per band after the prescale, the space ``mean`` and ``std`` are in.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str | None = None
    dtype: str | None = None
    p1: tuple[float, ...] | None = None
    p99: tuple[float, ...] | None = None
    minimum: tuple[float, ...] | None = None
    maximum: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise CheckpointError("normalization needs one mean and one std per channel")
        for name, values in (("mean", self.mean), ("std", self.std), *_range_fields(self)):
            if len(values) != len(self.mean):
                raise CheckpointError(f"normalization {name} has {len(values)} values for {len(self.mean)} channels")
            bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
            if bad is not None:
                raise CheckpointError(f"normalization {name}[{bad}] is {values[bad]}, it must be a finite number")
        if any(s <= 0 for s in self.std):
            raise CheckpointError("normalization std must be positive")
        if self.mode is not None and self.mode not in value_ranges.MODES:
            raise CheckpointError(f"normalization mode {str(self.mode)[:40]!r} is not one of "
                                  f"{', '.join(value_ranges.MODES)}")
        if self.dtype is not None:
            try:
                kind = np.dtype(self.dtype).kind
            except TypeError:
                kind = ""
            if kind not in "buif" or not kind:
                raise CheckpointError(f"normalization dtype {str(self.dtype)[:40]!r} is not a numeric dtype")

    def to_dict(self) -> dict[str, Any]:
        """The stored record; only the fields that are set, so a checkpoint without a mode writes what it read."""
        record: dict[str, Any] = {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}
        if self.mode is not None:
            record["mode"] = self.mode
        if self.dtype is not None:
            record["dtype"] = self.dtype
        for name, values in _range_fields(self):
            record[name] = [float(v) for v in values]
        return record

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Normalization:
        def floats(key: str) -> tuple[float, ...] | None:
            return None if values.get(key) is None else tuple(float(v) for v in values[key])

        mode, dtype = values.get("mode"), values.get("dtype")
        for name, value in (("mode", mode), ("dtype", dtype)):
            if value is not None and not isinstance(value, str):
                raise CheckpointError(f"normalization {name} must be a string")
        return cls(tuple(float(m) for m in values["mean"]), tuple(float(s) for s in values["std"]), mode, dtype,
                   floats("p1"), floats("p99"), floats("min"), floats("max"))


def _range_fields(norm: Normalization) -> list[tuple[str, tuple[float, ...]]]:
    """The recorded value-range fields that are set, by their stored names."""
    pairs = (("p1", norm.p1), ("p99", norm.p99), ("min", norm.minimum), ("max", norm.maximum))
    return [(name, values) for name, values in pairs if values is not None]


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


def _class_colors(colors: Any, num_classes: int) -> tuple[tuple[float, float, float, float], ...]:
    """One RGBA colour with components in [0, 1] per class (RGB gets alpha 1); anything else is refused."""
    if not isinstance(colors, (list, tuple)) or len(colors) != num_classes:
        count = len(colors) if isinstance(colors, (list, tuple)) else "no list of"
        raise CheckpointError(
            f"class_colors needs one RGB or RGBA colour per class: {count} colours for {num_classes} classes"
        )
    result = []
    for i, colour in enumerate(colors):
        if not isinstance(colour, (list, tuple)) or len(colour) not in (3, 4):
            raise CheckpointError(f"class_colors needs one RGB or RGBA colour per class; colour {i} is not one")
        values = tuple(float(v) for v in colour)
        if not all(0.0 <= v <= 1.0 for v in values):
            raise CheckpointError(f"class_colors[{i}] = {list(values)} has components outside [0, 1]")
        result.append(values if len(values) == 4 else (*values, 1.0))
    return tuple(result)


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
    _, state_dict, state = read_training_checkpoint(path)
    return state_dict, state


def read_training_checkpoint(path: str | Path) -> tuple[CheckpointInfo, dict[str, torch.Tensor], dict[str, Any]]:
    """Metadata, state dict and training state of ``last.pt``, read once (``--resume`` compares the config)."""
    path = Path(path)
    payload = _read_payload(path)
    info, state_dict = _checkpoint_info(path, payload)
    state = payload.get(TRAINING_STATE_KEY)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no training state to resume from")
    return info, state_dict, state


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
    colors = _class_colors(class_colors or _default_colors(config.num_classes), config.num_classes)
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


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _record_kind(name: str) -> str:
    """What torch's reader does with a record: unpickles it ('pickle'), maps it to a storage ('tensor'), or
    reads a few bytes ('small': version, byte order, serialization id)."""
    inner = name.split("/", 1)[-1]
    if inner == "data.pkl":
        return "pickle"
    return "tensor" if inner.startswith("data/") else "small"


def _inspect_archive(path: Path) -> list[zipfile.ZipInfo]:
    """The records of the archive, after checking the zip directory against the file with zipfile alone.

    Refuses what would make torch inflate more than the file holds or than any checkpoint needs, before
    torch reads a byte: sizes a stored record does not hold, compression ratios deflate cannot reach,
    a pickle or small record larger than metadata ever is, and a compressed metadata record that inflates
    beyond its declared size. Tensor records are checked against the config in :func:`_check_tensors`.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive, path.open("rb") as handle:
            infos = archive.infolist()
            if len(infos) > MAX_RECORDS:
                raise CheckpointError(f"{path} holds {len(infos)} records, more than a checkpoint has ({MAX_RECORDS})")
            for info in infos:
                _check_record(path, info, size)
                if _record_kind(info.filename) != "tensor" and info.compress_type == zipfile.ZIP_DEFLATED:
                    _check_inflation(path, handle, info)
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {str(error).splitlines()[0]}") from None
    return infos


def _check_record(path: Path, info: zipfile.ZipInfo, file_size: int) -> None:
    name = repr(info.filename[:80])
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{path}: record {name} is encrypted, which torch.save never writes")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{path}: record {name} uses zip compression method {info.compress_type}, "
                              "which torch.save never writes")
    if info.header_offset + info.compress_size > file_size:
        raise CheckpointError(f"{path} is truncated or corrupt (record {name} lies beyond the end of the file)")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise CheckpointError(f"{path}: record {name} declares {info.file_size} bytes but stores "
                              f"{info.compress_size}; refused")
    if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise CheckpointError(f"{path}: record {name} claims to inflate {_mb(info.compress_size)} to "
                              f"{_mb(info.file_size)}, more than deflate can (a zip bomb); refused")
    limit = {"pickle": MAX_PICKLE_BYTES, "small": MAX_SMALL_RECORD_BYTES}.get(_record_kind(info.filename))
    if limit is not None and info.file_size > limit:
        raise CheckpointError(f"{path}: record {name} is {_mb(info.file_size)}, more than checkpoint metadata "
                              f"ever needs ({_mb(limit)}); refused")


def _check_inflation(path: Path, handle, info: zipfile.ZipInfo, chunk: int = 1 << 20) -> None:
    """Inflate one record a chunk at a time (memory: one chunk) and refuse it the moment it exceeds its size."""
    name = repr(info.filename[:80])
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path} is truncated or corrupt (no local header for record {name})")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    handle.seek(info.header_offset + 30 + name_length + extra_length)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    left, pending, produced = info.compress_size, b"", 0
    try:
        while True:
            if not pending and left > 0:
                pending = handle.read(min(left, chunk))
                left = left - len(pending) if pending else 0
            out = inflater.decompress(pending, chunk)
            pending = inflater.unconsumed_tail
            produced += len(out)
            if produced > info.file_size:
                raise CheckpointError(f"{path}: record {name} inflates beyond its declared {info.file_size} bytes "
                                      "(a zip bomb); refused")
            if inflater.eof or (not out and not pending and left <= 0):
                break
    except zlib.error as error:
        raise CheckpointError(f"{path} is truncated or corrupt (record {name}: {error})") from None
    if produced != info.file_size:
        raise CheckpointError(f"{path} is truncated or corrupt (record {name} inflates to {produced} bytes, "
                              f"not the {info.file_size} it declares)")


def _torch_load(path: Path, location: str) -> Any:
    """``torch.load(weights_only=True)``; on the meta device it reads shapes and dtypes but no tensor data."""
    try:
        return torch.load(path, map_location=location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error).lower():
            raise CheckpointError(
                f"{path} contains pickled code and was refused; checkpoints may hold only tensors and plain data"
            ) from None
        raise CheckpointError(f"{path} is corrupt: {str(error).splitlines()[0][:200]}") from None
    except Exception as error:
        first = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"{path} is truncated or corrupt: {first}") from None


def _check_header(path: Path, payload: Any) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a napari-ddunet checkpoint (a torch file without our header)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        shown = version if isinstance(version, int) else type(version).__name__
        raise CheckpointError(
            f"{path} has checkpoint format version {shown}; this napari-ddunet ({_library_version()}) "
            f"reads up to version {FORMAT_VERSION}, please upgrade"
        )


def _stored_config(path: Path, payload: dict[str, Any]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    try:
        config = ModelConfig.from_dict(payload["config"])
        state = payload["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise TypeError("state_dict is not a mapping of names to tensors")
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} is a damaged checkpoint (bad field: {str(error)[:200]})") from None
    return config, state


def expected_state(config: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict ``DDUNet(config)`` has, as meta tensors: its shapes and dtypes without any memory."""
    with torch.device("meta"):
        return DDUNet(config).state_dict()


def _check_fit(path: Path, config: ModelConfig, state: dict[str, Any], expected: dict[str, torch.Tensor]) -> None:
    """The stored weights are exactly the tensors the config's model has (names, shapes, kinds of dtype)."""
    not_tensor = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensor:
        raise CheckpointError(f"{path} is a damaged checkpoint (weight {not_tensor[0][:80]} is not a tensor)")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = set(expected) & set(state)
    wrong = sorted(k for k in common if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0][:80]})")
        if wrong:
            k = wrong[0]
            shapes = f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
            details.append(f"{len(wrong)} of wrong shape (e.g. {k}: {shapes})")
        raise CheckpointError(f"{path}: weights do not fit the stored config {config.notation}: " + ", ".join(details))
    kinds = sorted(k for k in common if expected[k].is_floating_point() != state[k].is_floating_point()
                   or state[k].is_complex())
    if kinds:
        k = kinds[0]
        raise CheckpointError(f"{path}: weight {k} has dtype {state[k].dtype}, the model needs {expected[k].dtype}")


def _check_tensors(path: Path, payload: dict[str, Any], infos: list[zipfile.ZipInfo]) -> None:
    """Before any tensor byte is read: bounded config, weights that fit it, and tensor records within its size."""
    config, state = _stored_config(path, payload)
    expected = expected_state(config)
    _check_fit(path, config, state, expected)
    needed = sum(t.numel() for t in expected.values()) * TENSOR_BYTES_PER_PARAMETER + TENSOR_BYTES_ALLOWANCE
    records = [info for info in infos if _record_kind(info.filename) == "tensor"]
    declared = sum(info.file_size for info in records)
    if declared > needed:
        raise CheckpointError(f"{path} declares {_mb(declared)} of tensor data, far more than its {config.notation} "
                              f"config needs (at most {_mb(needed)}); refused before reading it")
    with path.open("rb") as handle:
        for info in records:
            if info.compress_type == zipfile.ZIP_DEFLATED:
                _check_inflation(path, handle, info)


def _read_payload(path: Path) -> dict[str, Any]:
    """The payload, read only once zipfile and a meta-device load have shown it is bounded by its config."""
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
    infos = _inspect_archive(path)
    shapes = _torch_load(path, "meta")
    _check_header(path, shapes)
    _check_tensors(path, shapes, infos)
    payload = _torch_load(path, "cpu")
    _check_header(path, payload)
    return payload


class _Budget:
    """What is left of the provenance limits while copying it."""

    def __init__(self) -> None:
        self.nodes = PROVENANCE_NODES
        self.characters = PROVENANCE_CHARACTERS


def _bounded(value: Any, depth: int, budget: _Budget) -> Any:
    """A plain, acyclic copy of ``value`` cut to the provenance limits (shared references are copied, and
    counted, each time they are met, so the copy is small whatever the stored graph expands to)."""
    budget.nodes -= 1
    if budget.nodes < 0 or budget.characters < 0:
        return "<cut: provenance too large>"
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**100 else "<huge integer>"
    if isinstance(value, str):
        budget.characters -= min(len(value), PROVENANCE_STRING)
        if len(value) <= PROVENANCE_STRING:
            return value
        return value[:PROVENANCE_STRING] + f"... ({len(value)} characters)"
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else f"<tensor {tuple(value.shape)} {value.dtype}>"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if not isinstance(value, (dict, list, tuple)):
        return f"<{type(value).__name__}>"
    if depth >= PROVENANCE_DEPTH:
        return "<cut: nested too deeply>"
    size = len(value)
    more = f"... {size - PROVENANCE_ENTRIES} more entries" if size > PROVENANCE_ENTRIES else None
    if isinstance(value, dict):
        result = {}
        for key, item in itertools.islice(value.items(), PROVENANCE_ENTRIES):
            plain = _bounded(key, PROVENANCE_DEPTH - 1, budget)
            result[plain if isinstance(plain, (str, int, float, bool)) or plain is None else str(plain)] = (
                _bounded(item, depth + 1, budget))
        if more:
            result["..."] = more
        return result
    items = [_bounded(item, depth + 1, budget) for item in itertools.islice(value, PROVENANCE_ENTRIES)]
    if more:
        items.append(more)
    return tuple(items) if isinstance(value, tuple) else items


def _provenance(value: Any) -> dict[str, Any]:
    """The stored provenance within the limits; the mappings a training run records must be mappings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError("provenance must be a mapping")
    result = _bounded(value, 0, _Budget())
    for key in PROVENANCE_KEYS[3:]:
        if result.get(key) is not None and not isinstance(result[key], dict):
            raise CheckpointError(f"provenance {key} must be a mapping")
    return result


def _subdomain_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SUBDOMAIN_SIDE for s in size)):
        raise CheckpointError(f"subdomain_size must be two sizes from 1 to {MAX_SUBDOMAIN_SIDE} px")
    return int(size[0]), int(size[1])


def _check_values(state: dict[str, torch.Tensor]) -> None:
    """Weights that would turn every pixel into NaN (and so one class) are refused, naming the first."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"weight {key} holds NaN or infinite values")
        if key.endswith("running_var") and bool((tensor < 0).any()):
            raise CheckpointError(f"BatchNorm statistic {key} is negative")


def _checkpoint_info(path: Path, payload: dict[str, Any]) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    try:
        config = ModelConfig.from_dict(payload["config"])
        normalization = payload.get("normalization")
        if normalization is not None:
            normalization = Normalization.from_dict(normalization)
            if len(normalization.mean) != config.in_channels:
                raise CheckpointError(f"normalization has {len(normalization.mean)} channels, "
                                      f"the model takes {config.in_channels}")
        info = CheckpointInfo(
            config=config,
            class_names=config.class_names or default_class_names(config.num_classes),
            class_colors=_class_colors(payload["class_colors"], config.num_classes),
            normalization=normalization,
            subdomain_size=_subdomain_size(payload.get("subdomain_size")),
            format_version=payload["format_version"],
            provenance=_provenance(payload.get("provenance")),
        )
        state = payload["state_dict"]
        _check_values(state)
    except (ConfigError, CheckpointError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} is a damaged checkpoint (bad field: {str(error)[:200]})") from None
    return info, state


def read_checkpoint_info(path: str | Path) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Metadata and state dict of a checkpoint, validated but without building the model."""
    path = Path(path)
    return _checkpoint_info(path, _read_payload(path))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> DDUNet:
    """Rebuild the model in eval mode; ``model.info`` holds the :class:`CheckpointInfo`."""
    info, state = read_checkpoint_info(path)
    model = DDUNet(info.config)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # keep saved float64 (or half) weights bit-exact instead of casting to float32
        model = model.to(dtype=dtypes.pop())
    model.load_state_dict(state)
    model.info = info
    return model.to(device).eval()
