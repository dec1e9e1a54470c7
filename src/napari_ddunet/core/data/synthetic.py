"""The paper's synthetic two-circles task (paper 001 sec. III-D1; thesis 5.3.1-5.3.2, Table 5.1).

An image is a grid of subdomains (32 x 32 px in the paper). Each pair of white circles
(radius 4) sits in two *different* subdomains, at most one subdomain apart, each circle
fully inside its subdomain. The mask adds a 2 px line between the two centres that can
only be predicted by looking across subdomains; circles are drawn over the line.

Classes: 0 background, 1 line, 2 circle. Everything is pure numpy and reproducible from a
seed; :func:`synthetic_window` renders any window of an unbounded procedural plane so a
huge image can be generated lazily, chunk by chunk, with identical pixels every time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_ddunet.core.errors import DDUNetError

BACKGROUND, LINE, CIRCLE = 0, 1, 2
CLASS_NAMES = ("background", "line", "circle")
#: RGBA colours for the three classes (background transparent).
CLASS_COLORS = ((0.0, 0.0, 0.0, 0.0), (1.0, 0.2, 0.2, 1.0), (0.3, 0.6, 1.0, 1.0))

SeedLike = int | Sequence[int] | np.random.Generator


class SyntheticError(DDUNetError):
    """Synthetic-task parameters that cannot produce a valid image."""


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        value = (int(value), int(value))
    h, w = (int(v) for v in value)
    if h < 1 or w < 1:
        raise SyntheticError(f"{name} must be positive, got {value}")
    return h, w


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check(rows: int, cols: int, subdomain: tuple[int, int], radius: int, pairs: int) -> None:
    if rows < 1 or cols < 1:
        raise SyntheticError(f"the grid must have at least one row and column, got {rows}x{cols}")
    if pairs < 0:
        raise SyntheticError(f"pairs must be non-negative, got {pairs}")
    if 2 * pairs > rows * cols:
        raise SyntheticError(
            f"{pairs} circle pairs need {2 * pairs} distinct subdomains, the {rows}x{cols} grid has {rows * cols}"
        )
    if pairs and rows * cols < 2:
        raise SyntheticError("a circle pair needs at least two subdomains")
    if min(subdomain) < 2 * radius + 1:
        raise SyntheticError(f"a radius-{radius} circle does not fit in a {subdomain[0]}x{subdomain[1]} subdomain")


def place_circles(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    subdomain: tuple[int, int] = (32, 32),
    pairs: int = 1,
    radius: int = 4,
    max_gap: int = 1,
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Circle centres (y, x) in image pixels, one tuple per pair.

    The first circle goes to a random free subdomain; the partner is ``gap`` in {0..max_gap}
    subdomains away (Chebyshev distance gap + 1, chosen uniformly), never in a used subdomain.
    Centres are pixel *corners* (integer coordinates in a frame where pixel i spans [i, i+1]),
    at least ``radius`` from the subdomain border, so the disc (pixels whose centre lies within
    ``radius``, 2*radius pixels across) never crosses it.
    """
    h, w = subdomain
    used: set[tuple[int, int]] = set()
    result = []
    for _ in range(pairs):
        for _attempt in range(1000):
            free = [(r, c) for r in range(rows) for c in range(cols) if (r, c) not in used]
            first = free[rng.integers(len(free))]
            gaps = rng.permutation(max_gap + 1)
            partner = None
            for gap in gaps:
                d = int(gap) + 1
                ring = [
                    (r, c) for (r, c) in free
                    if max(abs(r - first[0]), abs(c - first[1])) == d
                ]
                if ring:
                    partner = ring[rng.integers(len(ring))]
                    break
            if partner is not None:
                break
        else:
            raise SyntheticError(f"could not place {pairs} circle pairs on a {rows}x{cols} grid")
        used.update((first, partner))
        centres = []
        for r, c in (first, partner):
            y = r * h + int(rng.integers(radius, h - radius + 1))
            x = c * w + int(rng.integers(radius, w - radius + 1))
            centres.append((y, x))
        result.append((centres[0], centres[1]))
    return result


def render(
    shape: tuple[int, int],
    pairs: Sequence[tuple[tuple[int, int], tuple[int, int]]],
    radius: int = 4,
    line_width: float = 2.0,
    origin: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw circle pairs into a ``shape`` window whose top-left pixel is ``origin``.

    Returns (image float32 in {0, 1}, mask uint8). Centres are pixel corners; a pixel is on the
    line when its centre (i + 0.5, j + 0.5) lies within ``line_width / 2`` of the segment between
    the two circle centres, which makes an axis-parallel line exactly ``line_width`` pixels wide.
    Distances are computed in plane coordinates, not window coordinates, so a pixel gets the same
    class bit for bit whichever window renders it.
    """
    height, width = shape
    oy, ox = (int(o) for o in origin)
    image = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    half = line_width / 2.0
    for (y0, x0), (y1, x1) in pairs:
        top = max(min(y0, y1) - radius - oy, 0)
        bottom = min(max(y0, y1) + radius - oy, height)
        left = max(min(x0, x1) - radius - ox, 0)
        right = min(max(x0, x1) + radius - ox, width)
        if top >= bottom or left >= right:
            continue
        yy, xx = np.mgrid[top + oy:bottom + oy, left + ox:right + ox] + 0.5
        dy, dx = y1 - y0, x1 - x0
        length2 = float(dy * dy + dx * dx)
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / length2, 0.0, 1.0) if length2 else np.zeros(yy.shape)
        dist2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
        box = mask[top:bottom, left:right]
        box[(dist2 <= half * half) & (box != CIRCLE)] = LINE  # a later line never covers an earlier circle
        for cy, cx in ((y0, x0), (y1, x1)):
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius
            box[disc] = CIRCLE
            image[top:bottom, left:right][disc] = 1.0
    return image, mask


def synthetic_grid(
    rows: int,
    cols: int,
    subdomain: int | Sequence[int] = (32, 32),
    seed: SeedLike = 0,
    pairs: int = 1,
    radius: int = 4,
    line_width: float = 2.0,
    max_gap: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """One image of the task on a ``rows`` x ``cols`` grid of subdomains.

    Returns (image float32 (rows*h, cols*w), mask uint8 of the same shape). The same seed
    always gives the same image.
    """
    sub = _pair(subdomain, "subdomain")
    _check(rows, cols, sub, radius, pairs)
    centres = place_circles(_rng(seed), rows, cols, sub, pairs, radius, max_gap)
    return render((rows * sub[0], cols * sub[1]), centres, radius, line_width)


def synthetic_strip(
    k: int,
    seed: SeedLike = 0,
    subdomain: int | Sequence[int] = 32,
    radius: int = 4,
    line_width: float = 2.0,
    max_gap: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's 32k x 32 (width x height) strip of ``k`` subdomains with one circle pair."""
    return synthetic_grid(1, k, subdomain, seed, 1, radius, line_width, max_gap)


def synthetic_window(
    rows: int,
    cols: int,
    offset: tuple[int, int] = (0, 0),
    subdomain: int | Sequence[int] = (32, 32),
    seed: int = 0,
    block: tuple[int, int] = (2, 2),
    pairs_per_block: int = 1,
    radius: int = 4,
    line_width: float = 2.0,
    max_gap: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` x ``cols`` subdomains of an unbounded plane, starting at subdomain ``offset``.

    The plane is tiled by blocks of ``block`` subdomains; block (i, j) holds its own
    :func:`synthetic_grid` drawn from the seed sequence (seed, i, j). Any window therefore
    renders identically however the plane is cut into windows (e.g. the chunks of a huge
    lazily generated image).
    """
    sub = _pair(subdomain, "subdomain")
    brows, bcols = _pair(block, "block")
    _check(brows, bcols, sub, radius, pairs_per_block)
    if rows < 1 or cols < 1:
        raise SyntheticError(f"the window must have at least one row and column, got {rows}x{cols}")
    r0, c0 = (int(o) for o in offset)
    if r0 < 0 or c0 < 0:
        raise SyntheticError(f"offset must be non-negative, got {offset}")
    centres = []
    for bi in range(r0 // brows, (r0 + rows - 1) // brows + 1):
        for bj in range(c0 // bcols, (c0 + cols - 1) // bcols + 1):
            rng = np.random.default_rng([seed, bi, bj])
            for (y0, x0), (y1, x1) in place_circles(rng, brows, bcols, sub, pairs_per_block, radius, max_gap):
                dy, dx = bi * brows * sub[0], bj * bcols * sub[1]
                centres.append(((y0 + dy, x0 + dx), (y1 + dy, x1 + dx)))
    return render((rows * sub[0], cols * sub[1]), centres, radius, line_width, origin=(r0 * sub[0], c0 * sub[1]))
