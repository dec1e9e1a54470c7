"""Hostile checkpoints (issue 12 item 4): refused with one line, fast and in small memory.

Every file here is built for real: torch.save payloads with a changed field, zip archives written by hand
(records that lie about their sizes, a deflate stream of 2 GiB of zeros in 2 MB), provenance built like a
"billion laughs". The memory cases run in a child process whose peak RSS is measured.
"""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ddunet import CheckpointError, ModelConfig, load_checkpoint, save_checkpoint
from napari_ddunet.cli import main
from napari_ddunet.core.checkpoints.card import read_model_card, render_html, render_text
from napari_ddunet.core.checkpoints.format import (
    MAX_PICKLE_BYTES,
    PROVENANCE_DEPTH,
    PROVENANCE_ENTRIES,
    PROVENANCE_STRING,
    read_checkpoint_info,
)
from napari_ddunet.core.network.config import LIMITS, ConfigError

GIB = 1 << 30


@pytest.fixture
def legit(tmp_path, make_model) -> Path:
    model = make_model(depth=2, comm_features=4, num_classes=3)
    return save_checkpoint(tmp_path / "legit.pt", model, normalization={"mean": [0.5], "std": [0.25]},
                           subdomain_size=(32, 32), training_args={"lr": 0.008}, metrics={"val_dice": 0.9})


def _rewrite(path: Path, target: Path, change) -> Path:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def _refused(path: Path) -> str:
    """The one line ``load_checkpoint`` refuses ``path`` with (it names the file)."""
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and len(message) < 400, message
    return message


# -- zip archives written by hand ----------------------------------------------------------------


def _records(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _write_zip(path: Path, records: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip of ``(name, stored bytes, declared size, method, crc)`` records, the sizes written as given."""
    body, directory = bytearray(), bytearray()
    for name, data, declared, method, crc in records:
        encoded = name.encode()
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), declared,
                            len(encoded), 0) + encoded + data
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data),
                                 declared, len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(directory), len(body), 0)
    path.write_bytes(bytes(body + directory + end))
    return path


def _stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, len(data), zipfile.ZIP_STORED, zlib.crc32(data)


def _deflated(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return name, packer.compress(data) + packer.flush(), len(data), zipfile.ZIP_DEFLATED, zlib.crc32(data)


def _zeros_deflated(size: int) -> bytes:
    """A raw deflate stream of ``size`` zero bytes, built in milliseconds: after a full flush the compressor
    forgets its history, so every further MiB of zeros compresses to the same bytes."""
    chunk = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    return first + again * (size // len(chunk) - 1) + packer.flush()


def _blob_checkpoint(legit: Path, tmp_path: Path, numel: int) -> tuple[Path, str]:
    """``legit`` plus a float32 tensor of ``numel`` values in its provenance, and the blob's record name.

    The blob is saved with 123457 values and the pickle's two mentions of that count (storage size and
    tensor shape, BININT opcodes) are patched, so the file claims ``numel`` values without holding them.
    """
    target = _rewrite(legit, tmp_path / "blob_src.pt", lambda p: p["provenance"].update(blob=torch.zeros(123457)))
    records = dict(_records(target))
    pickle_name = next(n for n in records if n.endswith("/data.pkl"))
    old, new = b"J" + struct.pack("<i", 123457), b"J" + struct.pack("<i", numel)
    assert records[pickle_name].count(old) == 2
    records[pickle_name] = records[pickle_name].replace(old, new)
    blob = max((n for n in records if "/data/" in n), key=lambda n: int(n.rsplit("/", 1)[1]))
    assert len(records[blob]) == 4 * 123457
    del records[blob]
    return _write_zip(tmp_path / "blob.pt", [_stored(n, d) for n, d in records.items()]), blob


# -- a config that asks for too much ----------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("depth", 20), ("comm_layers", 10**6), ("base_channels", 2000), ("in_channels", LIMITS["in_channels"] + 1),
    ("num_classes", LIMITS["num_classes"] + 1), ("comm_kernel", 33), ("comm_dilation", 1000),
])
def test_a_config_is_bounded(field, value):
    values = {"comm_features": 0} if field == "comm_layers" else {}
    with pytest.raises(ConfigError, match=f"{field} must be at most {LIMITS[field]}, got {value}"):
        ModelConfig(**{**values, field: value})


def test_the_bounds_leave_room_for_real_models():
    assert ModelConfig(in_channels=13).in_channels == 13  # Sentinel-2
    assert ModelConfig(in_channels=224, depth=5, base_channels=64, comm_features=512).bottleneck_channels == 2048
    with pytest.raises(ConfigError, match="bottleneck would have base_channels \\* 2\\*\\*depth = 8192 channels"):
        ModelConfig(depth=5, base_channels=256)
    with pytest.raises(ConfigError, match="class names may have at most 256 characters"):
        ModelConfig(num_classes=2, class_names=("a", "b" * 1000))
    with pytest.raises(ConfigError, match="class_names must be a list of strings"):
        ModelConfig(num_classes=2, class_names=(["nested"], "b"))
    with pytest.raises(ConfigError, match="depth must be at most 10, got a huge integer"):
        ModelConfig(depth=10**5000)


def test_a_small_file_claiming_a_huge_model_is_refused(legit, tmp_path):
    huge = {"depth": 20, "comm_layers": 10**6, "base_channels": 2000}
    message = _refused(_rewrite(legit, tmp_path / "huge.pt", lambda p: p["config"].update(huge)))
    assert "must be at most" in message
    for field, value in huge.items():
        change = {field: value}
        message = _refused(_rewrite(legit, tmp_path / f"{field}.pt", lambda p, c=change: p["config"].update(c)))
        assert f"{field} must be at most {LIMITS[field]}" in message
    # within the bounds but not what the file holds: refused from the shapes, before any model is built
    wide = _rewrite(legit, tmp_path / "wide.pt", lambda p: p["config"].update(depth=6, base_channels=64))
    assert "weights do not fit the stored config DDU-Net(6,4,Y)" in _refused(wide)


# -- archives that inflate ------------------------------------------------------------------------


def test_a_record_larger_than_the_config_implies_is_refused_before_inflating(legit, tmp_path):
    """2 MB of deflate that the pickle and the zip directory both say is 2 GiB of tensor data."""
    path, blob = _blob_checkpoint(legit, tmp_path, GIB // 2)
    records = [_stored(n, d) for n, d in _records(path)]
    # the CRC of 2 GiB of zeros is not computed: the reader refuses long before anything would check it
    bomb = _write_zip(tmp_path / "bomb.pt", [*records, (blob, _zeros_deflated(2 * GIB), 2 * GIB,
                                                         zipfile.ZIP_DEFLATED, 0)])
    assert bomb.stat().st_size < 3 << 20
    message = _refused(bomb)
    assert "declares 2048.0 MB of tensor data, far more than its DDU-Net(2,4,Y) config needs" in message


def test_a_record_that_inflates_beyond_its_declared_size_is_refused(legit, tmp_path):
    records = _records(legit)
    name, data = next((n, d) for n, d in records if n.endswith("/data/0"))
    liar = (name, _zeros_deflated(64 << 20), len(data), zipfile.ZIP_DEFLATED, zlib.crc32(data))
    path = _write_zip(tmp_path / "liar.pt", [liar if n == name else _stored(n, d) for n, d in records])
    assert f"record '{name}' inflates beyond its declared {len(data)} bytes (a zip bomb)" in _refused(path)


def test_sizes_the_archive_cannot_hold_are_refused(legit, tmp_path):
    records = _records(legit)
    name, data = next((n, d) for n, d in records if n.endswith("/data/0"))

    def variant(file: str, record) -> Path:
        return _write_zip(tmp_path / file, [record if n == name else _stored(n, d) for n, d in records])

    stored_lie = variant("stored.pt", (name, data, len(data) + 8, zipfile.ZIP_STORED, zlib.crc32(data)))
    assert f"record '{name}' declares {len(data) + 8} bytes but stores {len(data)}" in _refused(stored_lie)
    _, small, _, _, crc = _deflated(name, data)
    ratio = variant("ratio.pt", (name, small, 10**9, zipfile.ZIP_DEFLATED, crc))
    assert "more than deflate can (a zip bomb)" in _refused(ratio)
    padded = _rewrite(legit, tmp_path / "padded.pt", lambda p: p["provenance"].update(pad="x" * MAX_PICKLE_BYTES))
    pickle_name = next(n for n, _ in _records(padded) if n.endswith("/data.pkl"))
    squeezed = _write_zip(tmp_path / "squeezed.pt", [(_deflated if n == pickle_name else _stored)(n, d)
                                                      for n, d in _records(padded)])
    assert squeezed.stat().st_size < 1 << 20
    assert f"record '{pickle_name}' is 64.0 MB, more than checkpoint metadata ever needs" in _refused(squeezed)


def test_a_deflated_but_honest_checkpoint_still_loads(legit, tmp_path):
    path = _write_zip(tmp_path / "deflated.pt", [_deflated(n, d) for n, d in _records(legit)])
    loaded, original = load_checkpoint(path), load_checkpoint(legit)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _laughs(levels: int) -> list:
    """A list whose repr has 10**levels "lol"s, stored (as shared references) in a few hundred bytes."""
    node: list = ["lol"] * 10
    for _ in range(levels - 1):
        node = [node] * 10
    return node


_CHILD_SCRIPT = """
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression fails here instead of swapping
from napari_ddunet import CheckpointError, load_checkpoint
from napari_ddunet.cli import main
from napari_ddunet.core.checkpoints.card import read_model_card
legit, laughs, *hostile = sys.argv[1:]
load_checkpoint(legit); read_model_card(legit)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
messages = {}
for path in hostile:
    try:
        read_model_card(path)
        messages[path] = None
    except CheckpointError as error:
        messages[path] = str(error)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info = []
for extra in ([], ["--json"]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["info", laughs, *extra])
    info.append({"code": code, "length": len(out.getvalue()), "cuts": out.getvalue().count("provenance too large")})
print(json.dumps({"growth_mb": (peak - base) / 1024, "messages": messages, "info": info}))
"""


def test_hostile_files_are_refused_in_small_memory_and_info_stays_small(legit, tmp_path):
    """One child process (one import) loads every memory-hungry case, then runs ``info`` on a billion laughs.

    Its peak RSS barely grows past one real load. Before, the 2 GiB record was inflated and the config's
    model built (2.5 GB for depth 6, base 64) before anything was compared, and str() of the laughs never
    returned (the timeout catches a hang).
    """
    path, blob = _blob_checkpoint(legit, tmp_path, GIB // 2)
    bomb = _write_zip(tmp_path / "bomb.pt", [*(_stored(n, d) for n, d in _records(path)),
                                             (blob, _zeros_deflated(2 * GIB), 2 * GIB, zipfile.ZIP_DEFLATED, 0)])
    wide = _rewrite(legit, tmp_path / "wide.pt", lambda p: p["config"].update(depth=6, base_channels=64))
    huge = _rewrite(legit, tmp_path / "huge.pt",
                    lambda p: p["config"].update(depth=20, comm_layers=10**6, base_channels=2000))
    laughs = _rewrite(legit, tmp_path / "laughs.pt", lambda p: p["provenance"].update(laughs=_laughs(9)))
    assert laughs.stat().st_size < legit.stat().st_size + 4096
    files = [legit, laughs, bomb, wide, huge]
    result = subprocess.run([sys.executable, "-c", _CHILD_SCRIPT, *map(str, files)],
                            capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(result.stdout)
    assert all(report["messages"].values()), report
    assert report["growth_mb"] < 100, report
    text, as_json = report["info"]
    assert text["code"] == 0 and text["length"] < 20_000, report  # each card row is cut too
    assert as_json["code"] == 0 and as_json["length"] < 2_000_000 and as_json["cuts"] >= 1, report


# -- provenance ----------------------------------------------------------------------------------


def test_provenance_is_cut_to_its_bounds(legit, tmp_path):
    nested: list = ["bottom"]
    for _ in range(50):
        nested = [nested]
    extra = {"note": "x" * (5 * PROVENANCE_STRING), "wide": {f"k{i}": i for i in range(5 * PROVENANCE_ENTRIES)},
             "nested": nested, "tensor": torch.zeros(4, 4), "shallow": _laughs(2),
             "laughs": _laughs(9)}
    path = _rewrite(legit, tmp_path / "prov.pt", lambda p: p["provenance"].update(extra))
    info, _ = read_checkpoint_info(path)
    prov = info.provenance
    assert prov["note"].endswith(f"... ({5 * PROVENANCE_STRING} characters)")
    assert len(prov["wide"]) == PROVENANCE_ENTRIES + 1 and prov["wide"]["..."] == "... 4000 more entries"
    depth, node = 0, prov["nested"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert depth == PROVENANCE_DEPTH - 1 and node == "<cut: nested too deeply>"
    assert prov["tensor"] == "<tensor (4, 4) torch.float32>"
    assert "<cut: provenance too large>" in json.dumps(prov["laughs"])
    assert prov["shallow"] == [["lol"] * 10] * 10
    assert info.training_args == {"lr": 0.008} and info.metrics == {"val_dice": 0.9}
    card = read_model_card(path)
    text, page = render_text(card), render_html(card)
    assert len(text) < 20_000 and len(page) < 40_000
    assert "characters)" in text


def test_provenance_mappings_must_be_mappings(legit, tmp_path):
    path = _rewrite(legit, tmp_path / "metrics.pt", lambda p: p["provenance"].update(metrics=[1, 2]))
    assert "provenance metrics must be a mapping" in _refused(path)


# -- values that make every pixel one class ------------------------------------------------------


def _first_weight(payload) -> str:
    return next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and k.endswith("weight"))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused(legit, tmp_path, bad):
    names = {}

    def poison(payload):
        names["key"] = _first_weight(payload)
        payload["state_dict"][names["key"]].view(-1)[3] = bad

    message = _refused(_rewrite(legit, tmp_path / "nan.pt", poison))
    assert f"weight {names['key']} holds NaN or infinite values" in message


def test_a_negative_batchnorm_variance_is_refused(legit, tmp_path):
    def poison(payload):
        key = next(k for k in payload["state_dict"] if k.endswith("running_var"))
        payload["state_dict"][key][0] = -1.0

    assert "running_var is negative" in _refused(_rewrite(legit, tmp_path / "var.pt", poison))


@pytest.mark.parametrize(("normalization", "expected"), [
    ({"mean": [math.nan], "std": [1.0]}, "normalization mean[0] is nan, it must be a finite number"),
    ({"mean": [0.0], "std": [math.inf]}, "normalization std[0] is inf, it must be a finite number"),
    ({"mean": [0.0], "std": [0.0]}, "normalization std must be positive"),
    ({"mean": [0.0], "std": [-2.0]}, "normalization std must be positive"),
    ({"mean": [0.0, 0.0], "std": [1.0, 1.0]}, "normalization has 2 channels, the model takes 1"),
])
def test_bad_normalization_is_refused(legit, tmp_path, normalization, expected):
    path = _rewrite(legit, tmp_path / "norm.pt", lambda p: p.update(normalization=normalization))
    assert expected in _refused(path)


@pytest.mark.parametrize(("colors", "expected"), [
    ([[0, 0, 0, 0], [1, 0, 0, 1]], "2 colours for 3 classes"),
    ([[0, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 1, 1]], "colour 2 is not one"),
    ([[0, 0, 0, 0], [1, 0, 0, 1], [0, 255, 0]], "class_colors[2] = [0.0, 255.0, 0.0] has components outside [0, 1]"),
    ([[0, 0, 0, 0], [math.nan, 0, 0, 1], [0, 1, 0]], "class_colors[1] = [nan, 0.0, 0.0, 1.0] has components outside"),
])
def test_bad_class_colours_are_refused(legit, tmp_path, colors, expected):
    assert expected in _refused(_rewrite(legit, tmp_path / "colours.pt", lambda p: p.update(class_colors=colors)))


def test_save_refuses_colours_out_of_range(tmp_path, make_model):
    with pytest.raises(CheckpointError, match=re.escape("class_colors[1] = [0.0, 2.0, 0.0] has components")):
        save_checkpoint(tmp_path / "m.pt", make_model(num_classes=2), class_colors=[(0, 0, 0), (0, 2, 0)])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("size", [[0, 32], [32], [2**40, 32], "32x32"])
def test_bad_subdomain_size_is_refused(legit, tmp_path, size):
    path = _rewrite(legit, tmp_path / "size.pt", lambda p: p.update(subdomain_size=size))
    assert "subdomain_size must be two sizes from 1 to" in _refused(path)


def test_predict_with_a_nan_checkpoint_is_exit_2_before_any_output(legit, tmp_path, capsys):
    """Before, the NaN model labelled everything background and the run was marked complete (exit 0)."""

    def poison(payload):
        payload["state_dict"][_first_weight(payload)].fill_(math.nan)

    nan = _rewrite(legit, tmp_path / "nan.pt", poison)
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((32, 32), dtype=np.float32))
    out = tmp_path / "out.zarr"
    assert main(["predict", str(nan), str(image), str(out), "--subdomain-size", "16", "16", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds NaN or infinite values" in err and str(nan) in err
    assert not out.exists()
