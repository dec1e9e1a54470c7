"""The run's output: the store metadata that resume compares, and the sink opened on every rank."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.grid import PAD_MODE
from napari_ddunet.core.inference.request import EngineError, SegmentRequest
from napari_ddunet.core.inference.schedule import SchedulePlan
from napari_ddunet.core.inference.sink import STORE_VERSION, Sink


def host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array on the host; bfloat16 (which numpy lacks) becomes float32."""
    tensor = tensor.detach().to("cpu")
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def store_metadata(request: SegmentRequest, schedule: SchedulePlan) -> dict[str, Any]:
    """The ``napari_ddunet`` attributes of the store: what a resumed run must match, and how it was made."""
    net, policy = request.model, request.output
    config, info = net.config, getattr(net, "info", None)
    norm = info.normalization if info is not None else None
    outputs = sorted(n for n, on in (("probabilities", policy.probabilities), ("logits", policy.logits),
                                     ("features", policy.features and net.comm is not None)) if on)
    return {
        "store_version": STORE_VERSION,
        "notation": config.notation,
        "config": config.to_dict(),
        "weights": weights_digest(net),
        "image_shape": list(request.plan.image_shape),
        "subdomain_size": list(request.plan.subdomain),
        "grid": list(request.plan.grid),
        "region": list(request.rect),
        "communicate": "exchange" if request.exchange else ("per-subdomain" if request.per_tile_comm else "none"),
        "dtype": str(request.dtype).replace("torch.", ""),
        "normalization": None if norm is None else norm.to_dict(),
        "pad_mode": PAD_MODE,
        "outputs": outputs,
        "schedule": schedule.name,
        "class_names": list(info.class_names) if info is not None else list(config.class_names),
        "class_colors": _colors(request),
        "complete": False,
    }


def _colors(request: SegmentRequest) -> list[list[Any]] | None:
    info = getattr(request.model, "info", None)
    return [list(c) for c in info.class_colors] if info is not None else None


def _make_sink(request: SegmentRequest, meta: dict[str, Any], reopen: bool) -> Sink:
    policy, config = request.output, request.model.config
    return Sink(request.plan, path=policy.path, num_classes=config.num_classes, comm_features=config.comm_features,
                compute_dtype=host(torch.empty((), dtype=request.dtype)).dtype,
                probabilities=policy.probabilities, features=policy.features, logits=policy.logits,
                meta=meta, colors=_colors(request), resume=reopen)


def open_sink(request: SegmentRequest, schedule: SchedulePlan) -> Sink:
    """Create (or reopen for resume) the output; under torchrun rank 0 creates it, the others attach."""
    meta = store_metadata(request, schedule)
    if request.world == 1:
        sink = _make_sink(request, meta, request.output.resume)
        sink.set_attr("schedule", schedule.name)
        return sink
    # every rank has validated the request (an existing output included) before rank 0 creates the store;
    # rank 0 creates (or reopens) it, the others open it once it exists, or all fail together
    dist = request.distributed
    dist.barrier()
    error: DDUNetError | None = None
    sink = None
    if dist.rank == 0:
        try:
            sink = _make_sink(request, meta, request.output.resume)
        except DDUNetError as failure:
            error = failure
    if dist.any(error is not None):
        raise error or EngineError("rank 0 could not prepare the output store; see its message")
    if dist.rank != 0:
        return _make_sink(request, meta, True)
    sink.set_attr("schedule", schedule.name)
    return sink
