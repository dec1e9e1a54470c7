"""DDU-Net model: reference equalities (float64), subdomain coupling, parameter counts of paper 001."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_ddunet import DDUNet, ModelConfig
from napari_ddunet.core.analysis.receptive_field import positive_probe
from napari_ddunet.core.network.mosaic import from_subdomains, to_subdomains
from napari_ddunet.core.network.resnet import PretrainedWeightsError, ResNet18Encoder, load_resnet18_trunk
from napari_ddunet.core.network.unet import UNetDecoder, UNetEncoder


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _reference_unet(state: dict[str, torch.Tensor], x: torch.Tensor, depth: int) -> torch.Tensor:
    """Paper 001 Fig. 1 written with torch.nn.functional only, reading the DDU-Net's weights by name."""

    def double_conv(prefix: str, t: torch.Tensor) -> torch.Tensor:
        for i in (0, 4):
            t = F.conv2d(t, state[f"{prefix}.{i}.weight"], padding=1)
            bn = f"{prefix}.{i + 1}"
            t = F.batch_norm(t, state[f"{bn}.running_mean"], state[f"{bn}.running_var"],
                             state[f"{bn}.weight"], state[f"{bn}.bias"], False, 0.0, 1e-5)
            t = F.relu(t)
        return t

    skips = [double_conv("encoder.inc", x)]
    for i in range(depth):
        skips.append(double_conv(f"encoder.downs.{i}.1", F.max_pool2d(skips[-1], 2)))
    t = skips.pop()
    for j in range(depth):
        up = F.conv_transpose2d(t, state[f"decoder.ups.{j}.up.weight"], state[f"decoder.ups.{j}.up.bias"], stride=2)
        t = double_conv(f"decoder.ups.{j}.conv", torch.cat([skips.pop(), up], dim=1))
    return F.conv2d(t, state["decoder.outc.weight"], state["decoder.outc.bias"])


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_one_subdomain_without_comm_is_the_plain_unet(make_model, depth):
    model = make_model(depth=depth, comm_features=0, in_channels=2, num_classes=4)
    x = torch.randn(2, 2, 3 * 2**depth, 5 * 2**depth, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, grid=(1, 1))
        assert torch.allclose(out, _reference_unet(model.state_dict(), x, depth), rtol=0, atol=1e-10)
        encoder = UNetEncoder(2, 2, depth).double().eval()
        decoder = UNetDecoder(2, depth, 4).double().eval()
        encoder.load_state_dict({k[8:]: v for k, v in model.state_dict().items() if k.startswith("encoder.")})
        decoder.load_state_dict({k[8:]: v for k, v in model.state_dict().items() if k.startswith("decoder.")})
        assert torch.allclose(out, decoder(encoder(x)), rtol=0, atol=1e-10)


def test_without_exchange_each_subdomain_runs_alone(make_model):
    """C=N: the grid run equals the subnetwork (comm network included) on each subdomain, stitched."""
    model = make_model(depth=2, comm_features=4, communicate=False)
    grid = (2, 3)
    x = torch.randn(2, 1, 16, 36, dtype=torch.float64)
    with torch.no_grad():
        tiles = to_subdomains(x, grid)
        alone = torch.cat([model(tiles[i:i + 1], grid=(1, 1)) for i in range(tiles.shape[0])])
        assert torch.allclose(model(x, grid=grid), from_subdomains(alone, grid), rtol=0, atol=1e-10)
        # and it differs from the exchanging network with the same weights
        exchanging = make_model(depth=2, comm_features=4, communicate=True)
        assert not torch.allclose(exchanging(x, grid=grid), model(x, grid=grid), atol=1e-6)


GRID = (3, 5)
SUB = (8, 12)  # non-square subdomains: bottleneck tiles of 2 x 3 at depth 2


def _grid_model(make_model):
    return make_model(depth=2, comm_features=4, comm_layers=2, comm_kernel=5, num_classes=2)


def test_mosaic_tiles_are_each_subdomains_own_bottleneck(make_model):
    model = _grid_model(make_model)
    x = torch.randn(1, 1, GRID[0] * SUB[0], GRID[1] * SUB[1], dtype=torch.float64)
    with torch.no_grad():
        feats = model.forward_features(x, grid=GRID)
        assert feats["bottleneck"].shape == (1, 4, GRID[0] * 2, GRID[1] * 3)
        assert torch.equal(feats["logits"], model(x, grid=GRID))
        for r in range(GRID[0]):
            for c in range(GRID[1]):
                sub = x[:, :, r * SUB[0]:(r + 1) * SUB[0], c * SUB[1]:(c + 1) * SUB[1]]
                own = model.encode(sub)[-1][:, -4:]
                tile = feats["bottleneck"][:, :, r * 2:(r + 1) * 2, c * 3:(c + 1) * 3]
                assert torch.allclose(tile, own, rtol=0, atol=1e-12), (r, c)
        assert not torch.allclose(feats["bottleneck"], feats["communicated"])


def _reached(source: tuple[int, int], halo: int, tile: tuple[int, int]) -> set[tuple[int, int]]:
    """Subdomains whose bottleneck tile lies within ``halo`` bottleneck pixels of the source tile."""
    reached = set()
    for r in range(GRID[0]):
        for c in range(GRID[1]):
            dr = max(0, (abs(r - source[0]) - 1) * tile[0] + 1) if r != source[0] else 0
            dc = max(0, (abs(c - source[1]) - 1) * tile[1] + 1) if c != source[1] else 0
            if dr <= halo and dc <= halo:
                reached.add((r, c))
    return reached


@pytest.mark.parametrize("source", [(0, 0), (1, 2), (2, 4)])
def test_a_change_reaches_exactly_the_subdomains_of_the_comm_halo(make_model, source):
    """Positive weights and inputs keep every ReLU open, so each structural dependency shows as a change."""
    model = positive_probe(_grid_model(make_model))
    halo = model.config.comm_halo
    assert halo == 4
    x = torch.rand(1, 1, GRID[0] * SUB[0], GRID[1] * SUB[1], dtype=torch.float64)
    y = x.clone()
    r0, c0 = source
    y[:, :, r0 * SUB[0]:(r0 + 1) * SUB[0], c0 * SUB[1]:(c0 + 1) * SUB[1]] += 0.5
    with torch.no_grad():
        diff = (model(x, grid=GRID) - model(y, grid=GRID)).abs()
    changed = set()
    for r in range(GRID[0]):
        for c in range(GRID[1]):
            if diff[:, :, r * SUB[0]:(r + 1) * SUB[0], c * SUB[1]:(c + 1) * SUB[1]].max() > 0:
                changed.add((r, c))
    expected = _reached(source, halo, (2, 3))
    assert changed == expected
    if source != (1, 2):  # from a corner or edge, some subdomains lie beyond the halo
        assert len(expected) < GRID[0] * GRID[1]


def test_random_weights_change_reaches_no_further_than_the_halo(make_model):
    model = _grid_model(make_model)
    x = torch.randn(1, 1, GRID[0] * SUB[0], GRID[1] * SUB[1], dtype=torch.float64)
    y = x.clone()
    y[:, :, :SUB[0], :SUB[1]] += torch.randn(1, 1, *SUB, dtype=torch.float64)
    with torch.no_grad():
        diff = (model(x, grid=GRID) - model(y, grid=GRID)).abs()
    assert diff[:, :, :, 3 * SUB[1]:].max() == 0  # subdomain columns 3 and 4 lie beyond 4 bottleneck pixels
    assert diff[:, :, :SUB[0], :SUB[1]].max() > 0


def test_bad_input_shapes(make_model):
    model = make_model(depth=2)
    with pytest.raises(ValueError, match=r"expected a \(B, 1, H, W\) tensor"):
        model(torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.zeros(1, 1, 24, 36, dtype=torch.float64), grid=(2, 2))


@pytest.mark.parametrize(("depth", "count"), [(2, 7_487), (3, 30_479), (4, 122_031)])
def test_subnetwork_parameters_paper_table_viii(depth, count):
    """Depth 3 is 30 479, Table VIII prints 30 470: a typo (depths 2 and 4 match; docs/receptive_field.md)."""
    model = DDUNet(ModelConfig(in_channels=1, num_classes=3, depth=depth, base_channels=4, comm_features=0))
    assert _count(model.encoder) + _count(model.decoder) == count == _count(model)


@pytest.mark.parametrize(("features", "count"), [(1, 84), (2, 318), (4, 1_236), (8, 4_872), (16, 19_344),
                                                  (32, 77_088), (64, 307_776)])
def test_communication_network_parameters_paper_table_viii(features, count):
    model = DDUNet(ModelConfig(depth=4, base_channels=4, comm_features=features, comm_layers=3, comm_kernel=5))
    assert _count(model.comm) == count


def test_resnet18_variant_parameters_paper_table_ix():
    model = DDUNet(ModelConfig(in_channels=3, num_classes=7, depth=4, encoder="resnet18", comm_features=256))
    encoder = model.encoder
    assert _count(encoder.conv1) + _count(encoder.bn1) == 9_536
    assert _count(encoder.layer1) == 147_968
    assert _count(encoder.layer2) == 525_568
    assert _count(encoder.layer3) == 2_099_712
    assert _count(encoder.bottleneck) == 1_180_672
    assert _count(model.decoder) == 845_415
    assert _count(model.comm) == 4_917_504


def _torchvision_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A resnet18 state dict in torchvision's layout (layer4 and fc included), random values."""
    state: dict[str, torch.Tensor] = {}

    def bn(prefix: str, n: int) -> None:
        state[f"{prefix}.weight"] = torch.rand(n, generator=generator) + 0.5
        state[f"{prefix}.bias"] = torch.randn(n, generator=generator)
        state[f"{prefix}.running_mean"] = torch.randn(n, generator=generator)
        state[f"{prefix}.running_var"] = torch.rand(n, generator=generator) + 0.5
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)

    state["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=generator)
    bn("bn1", 64)
    c_in = 64
    for layer, c_out in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            stride2 = block == 0 and layer > 1
            state[f"{p}.conv1.weight"] = torch.randn(c_out, c_in if block == 0 else c_out, 3, 3, generator=generator)
            bn(f"{p}.bn1", c_out)
            state[f"{p}.conv2.weight"] = torch.randn(c_out, c_out, 3, 3, generator=generator)
            bn(f"{p}.bn2", c_out)
            if stride2:
                state[f"{p}.downsample.0.weight"] = torch.randn(c_out, c_in, 1, 1, generator=generator)
                bn(f"{p}.downsample.1", c_out)
        c_in = c_out
    state["fc.weight"] = torch.randn(1000, 512, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    return state


def test_pretrained_trunk_round_trip_and_frozen_trunk(tmp_path):
    state = _torchvision_state(torch.Generator().manual_seed(0))
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = DDUNet(ModelConfig(in_channels=3, num_classes=2, depth=4, encoder="resnet18", comm_features=8,
                               freeze_encoder=True))
    loaded = load_resnet18_trunk(model.encoder, path)
    assert "layer3.1.bn2.running_var" in loaded and not any(k.startswith(("layer4", "fc")) for k in loaded)
    own = model.encoder.state_dict()
    for name in loaded:
        assert torch.equal(own[name], state[name]), name
    trunk = set(map(id, model.encoder.trunk_parameters()))
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in trunk)
    model.train()
    assert all(not m.training for m in model.encoder.trunk_modules() for m in m.modules())
    assert model.encoder.bottleneck.training and model.decoder.training
    before = model.encoder.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32), grid=(1, 2)).sum().backward()
    assert torch.equal(model.encoder.bn1.running_mean, before)
    assert model.encoder.conv1.weight.grad is None and model.encoder.bottleneck[0].weight.grad is not None


def test_pretrained_trunk_errors(tmp_path):
    encoder = ResNet18Encoder()
    with pytest.raises(PretrainedWeightsError, match="not found"):
        load_resnet18_trunk(encoder, tmp_path / "missing.pth")
    state = _torchvision_state(torch.Generator().manual_seed(1))
    del state["layer2.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(PretrainedWeightsError, match=r"1 trunk tensors missing, e\.g\. layer2\.0\.conv1\.weight"):
        load_resnet18_trunk(encoder, tmp_path / "partial.pth")
    state = _torchvision_state(torch.Generator().manual_seed(1))
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, tmp_path / "gray.pth")
    with pytest.raises(PretrainedWeightsError, match=r"conv1.weight has shape \(64, 1, 7, 7\)"):
        load_resnet18_trunk(encoder, tmp_path / "gray.pth")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(PretrainedWeightsError, match="cannot read pretrained weights"):
        load_resnet18_trunk(encoder, tmp_path / "text.pth")
