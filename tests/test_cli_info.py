"""``napari-ddunet info``: the model card, and exit 2 with one line for every bad file."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
import torch

from napari_ddunet import save_checkpoint
from napari_ddunet.cli import main
from napari_ddunet.core.checkpoints.card import read_model_card, render_html, render_text, rgba_hex
from napari_ddunet.core.checkpoints.format import PROVENANCE_KEYS


@pytest.fixture
def checkpoint(tmp_path, make_model):
    model = make_model(depth=3, base_channels=2, comm_features=8, comm_layers=3, comm_kernel=5, num_classes=3)
    return save_checkpoint(
        tmp_path / "model.pt", model, class_names=["background", "cell", "membrane"],
        class_colors=[(0, 0, 0, 0), (1, 0, 0, 1), (0, 0, 1, 1)], normalization={"mean": [0.4], "std": [0.2]},
        subdomain_size=(128, 96), training_args={"epochs": 40, "lr": 0.008}, metrics={"val_dice": 0.87},
    )


def test_model_card(checkpoint, capsys):
    assert main(["info", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    for text in ("DDU-Net(3,8,Y)", "communicate C      Y", "3 x conv 5x5", "#ff0000ff  cell", "#00000000  background",
                 "128 x 96 px", "mean [0.4], std [0.2]", "epochs=40, lr=0.008", "val_dice=0.87",
                 "with comm network  188-196", "comm halo          6 bottleneck px = 48 image px",
                 "subnetwork         92-100", "library version"):
        assert text in out, text
    card = _card(checkpoint, capsys)
    params = card["parameters"]
    assert params["communication"] == 3 * (25 * 64 + 8) + 3 * 16
    assert params["encoder"] + params["decoder"] + params["communication"] == params["total"] == params["trainable"]


def _facts(card) -> list[str]:
    """Every field of the card as a string a reader must find, taken from the data, not from a renderer."""
    c, p, rf = card.config, card.parameters, card.receptive_field
    facts = [card.notation, card.file, f"{c['depth']} (subdomain sides", f"communicated F {c['comm_features']}",
             f"input channels {c['in_channels']}", f"dropout {c['dropout']}", f"{c['comm_layers']} x conv",
             f"{card.subdomain_size[0]} x {card.subdomain_size[1]} px",
             f"mean {list(card.normalization.mean)}, std {list(card.normalization.std)}",
             *(f"{p[k]:,}" for k in ("encoder", "decoder", "communication", "total", "trainable")),
             f"{rf['unet']['min']}-{rf['unet']['max']}", f"{rf['with_comm']['min']}-{rf['with_comm']['max']}",
             f"{rf['comm_halo_bottleneck_px']} bottleneck px = {rf['comm_halo_image_px']} image px",
             f"checkpoint format {card.format_version}"]
    facts += [f"{rgba_hex(k.rgba)} {k.name}" for k in card.classes]
    for key, value in card.provenance.items():
        facts.append(key.replace("_", " ") if key in PROVENANCE_KEYS else key)
        values = value.items() if isinstance(value, dict) else [(None, value)]
        facts += [str(v) if k is None else f"{k}={v}" for k, v in values]
    return facts


def _plain(text: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def test_card_text_and_html_state_the_same_facts(tmp_path, make_model):
    model = make_model(depth=3, base_channels=2, comm_features=8, comm_layers=3, comm_kernel=5, num_classes=3)
    path = save_checkpoint(
        tmp_path / "m<1>.pt", model, class_names=["background", "cell & co", "membrane"],
        class_colors=[(0, 0, 0, 0), (1, 0, 0, 1), (0, 0, 1, 1)], normalization={"mean": [0.4], "std": [0.2]},
        subdomain_size=(128, 96), training_args={"epochs": 40}, metrics={"val_dice": 0.87}, run_name="night run",
    )
    card = read_model_card(path)
    text, rich = " ".join(render_text(card).split()), render_html(card)
    assert "<1>" not in rich and "cell &amp; co" in rich  # names and paths are escaped
    assert "background-color:#ff0000" in rich  # the class swatch
    for fact in _facts(card):
        assert fact in text, f"text lacks {fact!r}"
        assert fact in _plain(rich), f"HTML lacks {fact!r}"


def _card(path, capsys):
    assert main(["info", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_plain_unet_card_shows_the_tiling_halo(tmp_path, make_model, capsys):
    path = save_checkpoint(tmp_path / "unet.pt", make_model(depth=2, comm_features=0, num_classes=2))
    card = _card(path, capsys)
    assert card["notation"] == "U-Net(2)" and card["normalization"] is None and card["subdomain_size"] is None
    assert card["receptive_field"]["exact_tiling_halo_px"] == 24 and "with_comm" not in card["receptive_field"]
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "none (the network sees raw values)" in out and "exact tiling halo  24 px" in out


def _bad_files(tmp_path, checkpoint):
    text = tmp_path / "text.pt"
    text.write_text("hello")
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": torch.zeros(1)}, foreign)
    cut = tmp_path / "cut.pt"
    data = checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return {"missing": tmp_path / "missing.pt", "text": text, "foreign": foreign, "truncated": cut}


def test_bad_files_exit_2_with_one_line(tmp_path, checkpoint, capsys):
    expected = {"missing": "checkpoint not found", "text": "not a torch zip archive",
                "foreign": "without our header", "truncated": "truncated or corrupt"}
    for kind, path in _bad_files(tmp_path, checkpoint).items():
        assert main(["info", str(path)]) == 2, kind
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("napari-ddunet info: error: "), captured.err
        assert expected[kind] in lines[0]


def test_installed_console_script(tmp_path, checkpoint):
    script = shutil.which("napari-ddunet")
    assert script, "the napari-ddunet console script is not installed (pip install -e .)"
    command = [script]
    ok = subprocess.run([*command, "info", str(checkpoint)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "DDU-Net(3,8,Y)" in ok.stdout
    bad = subprocess.run([*command, "info", str(tmp_path / "missing.pt")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
