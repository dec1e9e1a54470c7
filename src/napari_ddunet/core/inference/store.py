"""The run's output: the store metadata that resume compares, and the sink opened on every rank."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.fingerprint import input_fingerprint, resume_mismatch
from napari_ddunet.core.inference.grid import PAD_MODE
from napari_ddunet.core.inference.request import EngineError, SegmentRequest, planes_to_sample
from napari_ddunet.core.inference.schedule import SchedulePlan
from napari_ddunet.core.inference.sink import STORE_VERSION, Sink
from napari_ddunet.core.io import ome
from napari_ddunet.core.io.images import ImageSource


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
    outputs = sorted(n for n, on in (("probabilities", policy.probabilities), ("logits", policy.logits),
                                     ("features", policy.features and net.comm is not None)) if on)
    meta = {
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
        "normalization": None if request.normalization is None else request.normalization.record(),
        "bands": None if request.source.bands is None else list(request.source.bands),
        "pad_mode": PAD_MODE,
        "outputs": outputs,
        "schedule": schedule.name,
        "class_names": list(info.class_names) if info is not None else list(config.class_names),
        "class_colors": _colors(request),
        # where the labels lie in physical space, and the OME-Zarr label image named after the task
        "calibration": None if request.calibration is None else request.calibration.to_dict(),
        "label_image": ome.task_name(
            list(info.class_names) if info is not None else list(config.class_names),
            info.provenance.get("task") if info is not None else None),
        "complete": False,
        # every chunk is written, zeros included: resume treats a missing chunk as lost (sink.verify_progress)
        "empty_chunks": "written",
    }
    if policy.path is not None:
        meta["input"] = input_fingerprint(sampled_planes(request))
    if request.stack is not None:
        # a stack's arrays carry its leading axes (core/inference/stack.py); a 2D store has no such key
        meta["stack"] = {"axes": list(request.stack.names), "shape": list(request.stack.shape)}
    return meta


def sampled_planes(request: SegmentRequest) -> list[ImageSource]:
    """The planes the input fingerprint samples: the image, or a stack's first, middle and last plane."""
    return planes_to_sample(request.source, request.stack, request.open_plane)


def _colors(request: SegmentRequest) -> list[list[Any]] | None:
    info = getattr(request.model, "info", None)
    return [list(c) for c in info.class_colors] if info is not None else None


def _make_sink(request: SegmentRequest, meta: dict[str, Any], reopen: bool, verify: bool = True) -> Sink:
    """The sink; a reopened store is first compared with this run's fingerprint and, with ``verify``, its
    progress record checked against the chunks it holds."""
    policy, config = request.output, request.model.config
    return Sink(request.plan, path=policy.path, num_classes=config.num_classes, comm_features=config.comm_features,
                compute_dtype=host(torch.empty((), dtype=request.dtype)).dtype,
                probabilities=policy.probabilities, features=policy.features, logits=policy.logits,
                meta=meta, colors=_colors(request), resume=reopen,
                mismatch=lambda stored: resume_mismatch(stored, meta, sampled_planes(request)), verify=verify,
                leading=() if request.stack is None else tuple(zip(request.stack.names, request.stack.shape,
                                                                   strict=True)))


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
        # rank 0 has verified the progress record; the others attach to what it left
        return _make_sink(request, meta, True, verify=False)
    sink.set_attr("schedule", schedule.name)
    return sink
