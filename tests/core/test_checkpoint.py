"""Checkpoints: bit-exact round trip and one clear line for every bad file."""

from __future__ import annotations

import pytest
import torch

from napari_ddunet import CheckpointError, load_checkpoint, save_checkpoint
from napari_ddunet.core.checkpoints.format import (
    FORMAT_VERSION,
    PROVENANCE_KEYS,
    Normalization,
    load_training_state,
    read_checkpoint_info,
    replace_metrics,
    save_training_state,
)


class _Payload:
    """Pickles to a call that would create ``marker``: what a malicious checkpoint could carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def saved(tmp_path, make_model):
    model = make_model(depth=2, comm_features=4, num_classes=3)
    path = save_checkpoint(
        tmp_path / "m.pt", model, class_names=["bg", "cell", "edge"], class_colors=[(0, 0, 0, 0), (1, 0, 0), (0, 1, 0)],
        normalization={"mean": [0.5], "std": [0.25]}, subdomain_size=(64, 96),
        training_args={"lr": 0.008, "epochs": 40}, metrics={"val_dice": 0.9}, run_name="test",
    )
    return model, path


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert not loaded.training
    original = model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor), name
    x = torch.randn(1, 1, 16, 24, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded(x, grid=(2, 2)), model(x, grid=(2, 2)))
    info = loaded.info
    assert loaded.config == model.config.replace(class_names=("bg", "cell", "edge"))
    assert info.class_names == ("bg", "cell", "edge")
    assert info.class_colors == ((0.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 1.0), (0.0, 1.0, 0.0, 1.0))
    assert info.normalization == Normalization((0.5,), (0.25,))
    assert info.subdomain_size == (64, 96)
    assert info.format_version == FORMAT_VERSION
    prov = info.provenance
    assert prov["training_args"] == {"lr": 0.008, "epochs": 40} and prov["metrics"] == {"val_dice": 0.9}
    assert prov["run_name"] == "test" and prov["library_version"]
    assert not path.with_name("m.pt.partial").exists()


def _training_state(model) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.008)
    model.train()
    model(torch.randn(2, 1, 16, 16, dtype=torch.float64), grid=(1, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    scheduler.step(1.0)
    return {"epoch": 4, "best_loss": 0.25, "best_epoch": 3, "stopped": False, "history": [{"epoch": 1, "lr": 0.008}],
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state()}


def test_training_state_round_trip_is_bit_exact(tmp_path, make_model):
    model = make_model(depth=2, comm_features=4, num_classes=3)
    state = _training_state(model)
    path = save_training_state(tmp_path / "last.pt", model, state, subdomain_size=(16, 8), metrics={"epoch": 5})
    weights, restored = load_training_state(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    assert restored.keys() == state.keys() and restored["history"] == state["history"]
    assert torch.equal(restored["torch_rng"], state["torch_rng"])
    assert restored["scheduler"] == state["scheduler"]
    moments = state["optimizer"]["state"]
    assert restored["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for index, values in moments.items():
        for key, value in values.items():
            assert torch.equal(restored["optimizer"]["state"][index][key], value), (index, key)
    loaded = load_checkpoint(path)  # still an ordinary checkpoint
    assert loaded.info.subdomain_size == (16, 8) and loaded.info.metrics == {"epoch": 5}
    assert not path.with_name("last.pt.partial").exists()


def test_load_training_state_needs_one(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="holds no training state to resume from"):
        load_training_state(path)


def test_provenance_has_the_one_key_list_then_the_extras(saved):
    _, path = saved
    info, _ = read_checkpoint_info(path)
    assert tuple(info.provenance)[: len(PROVENANCE_KEYS)] == PROVENANCE_KEYS
    assert info.training_args == {"lr": 0.008, "epochs": 40} and info.metrics == {"val_dice": 0.9}
    assert info.extra_provenance == {"run_name": "test"}


def test_replace_metrics_keeps_everything_else(saved):
    _, path = saved
    before, weights = read_checkpoint_info(path)
    replace_metrics(path, {"val_dice": 0.9, "eval": [{"grid": [8, 8], "miou": 0.5}]})
    after, new_weights = read_checkpoint_info(path)
    assert after.metrics == {"val_dice": 0.9, "eval": [{"grid": [8, 8], "miou": 0.5}]}
    assert {k: v for k, v in after.provenance.items() if k != "metrics"} == {
        k: v for k, v in before.provenance.items() if k != "metrics"}
    assert (after.config, after.class_colors, after.normalization) == (
        before.config, before.class_colors, before.normalization)
    assert all(torch.equal(new_weights[k], weights[k]) for k in weights)


def test_defaults_when_nothing_is_given(tmp_path, make_model):
    path = save_checkpoint(tmp_path / "plain.pt", make_model(comm_features=0, num_classes=2))
    info, state = read_checkpoint_info(path)
    assert info.normalization is None and info.subdomain_size is None
    assert info.class_names == ("background", "class 1")
    assert info.class_colors[0][3] == 0.0 and len(info.class_colors) == 2
    assert "decoder.outc.weight" in state


def test_save_rejects_inconsistent_metadata(tmp_path, make_model):
    model = make_model(num_classes=3)
    with pytest.raises(CheckpointError, match="2 class names for a model with 3 classes"):
        save_checkpoint(tmp_path / "a.pt", model, class_names=["a", "b"])
    with pytest.raises(CheckpointError, match="one RGB or RGBA colour per class"):
        save_checkpoint(tmp_path / "a.pt", model, class_colors=[(1, 0, 0)])
    with pytest.raises(CheckpointError, match="normalization has 2 channels, the model takes 1"):
        save_checkpoint(tmp_path / "a.pt", model, normalization={"mean": [0, 0], "std": [1, 1]})
    with pytest.raises(CheckpointError, match="std must be positive"):
        save_checkpoint(tmp_path / "a.pt", model, normalization={"mean": [0], "std": [0]})
    assert not list(tmp_path.iterdir())


def _rewrite(path, target, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def _one_line(path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "checkpoint not found" in _one_line(tmp_path / "nope.pt")
    assert "not a file" in _one_line(tmp_path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    assert "is not a napari-ddunet checkpoint (not a torch zip archive)" in _one_line(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert "a torch file without our header" in _one_line(foreign)
    bare = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), bare)
    assert "without our header" in _one_line(bare)


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _one_line(cut)


def test_newer_format_version(saved, tmp_path):
    _, path = saved
    newer = _rewrite(path, tmp_path / "newer.pt", lambda p: p.update(format_version=FORMAT_VERSION + 1))
    message = _one_line(newer)
    assert f"format version {FORMAT_VERSION + 1}" in message and "please upgrade" in message


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    _, path = saved

    def widen(payload):
        payload["config"]["base_channels"] = 4
        payload["config"]["comm_features"] = 4

    message = _one_line(_rewrite(path, tmp_path / "wide.pt", widen))
    assert "weights do not fit the stored config DDU-Net(2,4,Y)" in message and "wrong shape" in message
    message = _one_line(_rewrite(path, tmp_path / "nocomm.pt", lambda p: p["config"].update(comm_features=0)))
    assert "unexpected (e.g. comm." in message


def test_damaged_metadata(saved, tmp_path):
    _, path = saved
    assert "damaged checkpoint" in _one_line(_rewrite(path, tmp_path / "a.pt", lambda p: p.pop("class_colors")))
    bad_config = _rewrite(path, tmp_path / "b.pt", lambda p: p["config"].update(comm_kernel=4))
    assert "comm_kernel must be odd" in _one_line(bad_config)


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "napari-ddunet-checkpoint", "format_version": 1, "config": _Payload(str(marker))}, evil)
    message = _one_line(evil)
    assert "refused" in message and "pickled code" in message
    assert not marker.exists()
