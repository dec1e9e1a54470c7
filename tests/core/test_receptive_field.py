"""Receptive fields: exact analytic support == autograd-measured support; paper 001 Table IV; 004 Eq. 2."""

from __future__ import annotations

import pytest

from napari_ddunet import ModelConfig
from napari_ddunet.core.analysis.receptive_field import (
    analytic_receptive_field,
    comm_halo_bottleneck,
    comm_halo_pixels,
    eq1_radius,
    exact_tiling_halo,
    measured_receptive_field,
)


@pytest.mark.parametrize(("depth", "with_comm"), [(1, False), (1, True), (2, False), (2, True), (3, True)])
def test_measured_equals_analytic_for_every_alignment(make_model, depth, with_comm):
    model = make_model(depth=depth, comm_features=2, comm_layers=2, comm_kernel=3)
    field = analytic_receptive_field(model, with_comm=with_comm)
    assert field.period == 2**depth
    measured = [measured_receptive_field(model, residue, with_comm=with_comm) for residue in range(2**depth)]
    assert measured == list(field.extents)


def test_measured_equals_analytic_with_dilated_comm(make_model):
    model = make_model(depth=2, comm_features=2, comm_layers=2, comm_kernel=3, comm_dilation=2)
    field = analytic_receptive_field(model)
    assert [measured_receptive_field(model, r) for r in range(4)] == list(field.extents)


@pytest.mark.parametrize(("depth", "unet", "ddunet"), [(2, 44, 92), (3, 92, 188), (4, 188, 380)])
def test_paper_001_table_iv_is_the_smallest_support(depth, unet, ddunet):
    """Table IV lists, for every depth, the smallest support over output positions (see docs)."""
    config = ModelConfig(depth=depth, base_channels=4, comm_features=16)
    assert analytic_receptive_field(config, with_comm=False).size_min == unet
    assert analytic_receptive_field(config, with_comm=True).size_min == ddunet


def test_largest_support_exceeds_table_iv_from_depth_3():
    sizes = [analytic_receptive_field(ModelConfig(depth=d, comm_features=0), with_comm=False).size_max
             for d in (2, 3, 4)]
    assert sizes == [44, 100, 204]


def test_comm_network_widens_by_its_halo_times_downsampling():
    for depth in (2, 3, 4):
        config = ModelConfig(depth=depth, comm_features=8, comm_layers=3, comm_kernel=5)
        plain = analytic_receptive_field(config, with_comm=False)
        full = analytic_receptive_field(config, with_comm=True)
        assert comm_halo_bottleneck(config) == 6
        assert comm_halo_pixels(config) == 6 * 2**depth
        assert full.size_min - plain.size_min == 2 * comm_halo_pixels(config)


def test_comm_halo_is_zero_without_exchange():
    assert comm_halo_pixels(ModelConfig(comm_features=8, communicate=False)) == 0
    assert comm_halo_pixels(ModelConfig(comm_features=0)) == 0
    assert comm_halo_bottleneck(ModelConfig(comm_features=8, comm_layers=2, comm_kernel=7, comm_dilation=3)) == 18


@pytest.mark.parametrize(("depth", "exact"), [(1, 8), (2, 24), (3, 48), (4, 96), (5, 192)])
def test_eq1_matches_eq2_and_the_exact_halo(depth, exact):
    """004 Eq. 2 for k=3, n=2: floor(k/2) * n * (3 * 2**M - 2); rounded up it is the exact halo except at D=2."""
    config = ModelConfig(depth=depth, comm_features=0)
    assert eq1_radius(config) == 2 * (3 * 2**depth - 2)
    step = 2**depth
    rounded = -(-eq1_radius(config) // step) * step
    assert exact_tiling_halo(config) == exact
    assert (rounded == exact) == (depth != 2)
    # the halo covers the support of every pixel of a zone that starts on the 2**depth grid
    field = analytic_receptive_field(config, with_comm=False)
    for r, (before, after) in enumerate(field.extents):
        assert before <= r + exact and after <= step - 1 - r + exact


def test_layer_report_walks_the_longest_path():
    field = analytic_receptive_field(ModelConfig(depth=2, comm_features=4, comm_layers=3), with_comm=True)
    names = [layer.name for layer in field.layers]
    kinds = [layer.kind for layer in field.layers]
    assert kinds.count("pool") == 2 and kinds.count("convT") == 2
    assert names.index("comm.0") < names.index("decoder.ups.0.up")
    sizes = [layer.size_max for layer in field.layers]
    assert sizes == sorted(sizes)  # the field only grows along the path
    assert field.layers[-1].size_max == field.size_max
    assert [layer.jump for layer in field.layers if layer.kind == "pool"] == [2, 4]


def test_resnet18_receptive_field_is_exact_at_the_output_resolution():
    config = ModelConfig(encoder="resnet18", in_channels=3, depth=4, comm_features=0)
    field = analytic_receptive_field(config, with_comm=False)
    assert field.period == 16
    assert field.layers[0].name == "encoder.conv1" and field.layers[0].size_max == 7
    assert exact_tiling_halo(config) % 16 == 0
    assert exact_tiling_halo(config) >= max(field.before, field.after) - 15
