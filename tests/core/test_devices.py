"""The one device parser, device list and process-group backend rule."""

from __future__ import annotations

import pytest
import torch

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference import devices as devices_module
from napari_ddunet.core.inference.devices import DeviceError, available_devices, resolve_devices
from napari_ddunet.core.inference.process_group import backend_for
from napari_ddunet.core.network import parallel


def test_one_device_error_class():
    assert parallel.DeviceError is DeviceError
    assert issubclass(DeviceError, DDUNetError)


def test_available_devices_are_label_value_pairs_the_parser_accepts():
    choices = available_devices()
    assert choices[0] == ("CPU", "cpu")
    assert len(choices) == 1 + torch.cuda.device_count() + devices_module._mps_available()
    for label, value in choices:
        assert isinstance(label, str) and label
        assert resolve_devices(value) == [torch.device(value)]
    for i in range(torch.cuda.device_count()):
        label = dict((v, lab) for lab, v in choices)[f"cuda:{i}"]
        assert torch.cuda.get_device_name(i) in label and "GiB" in label


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ["cpu"]),
        ("cpu", ["cpu"]),
        (" CPU ", ["cpu"]),
        (["cpu", "cpu"], ["cpu", "cpu"]),
        (torch.device("cpu"), ["cpu"]),
    ],
)
def test_resolve_devices(spec, expected):
    assert resolve_devices(spec) == [torch.device(e) for e in expected]


def test_auto_is_every_gpu_else_cpu():
    if torch.cuda.is_available():
        expected = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    elif devices_module._mps_available():
        expected = [torch.device("mps")]
    else:
        expected = [torch.device("cpu")]
    assert resolve_devices("auto") == expected


def test_cuda_without_index_is_cuda_0():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    assert resolve_devices("cuda") == [torch.device("cuda", 0)]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([], "no device given"),
        ("warp-drive", "unknown device 'warp-drive'.*available: cpu"),
        (f"cuda:{torch.cuda.device_count() + 3}", "not available"),
    ],
)
def test_bad_specs_name_what_is_available(spec, match):
    with pytest.raises(DeviceError, match=match):
        resolve_devices(spec)


def test_mps_refused_where_there_is_none():
    if devices_module._mps_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(DeviceError, match="no Apple MPS"):
        resolve_devices("mps")


@pytest.mark.parametrize(
    ("devices", "backend"),
    [
        (["cuda:0"], "nccl"),
        (["cuda:0", "cuda:1"], "nccl"),
        (["cpu"], "gloo"),
        (["cuda:0", "cpu"], "gloo"),
        (["mps"], "gloo"),
        ([], "gloo"),
    ],
)
def test_backend_nccl_only_when_every_device_is_cuda(devices, backend):
    assert backend_for([torch.device(d) for d in devices]) == backend
