"""Training augmentations of the paper, as pure geometry on arrays.

* mosaic (MVTec-style): four images of one class, each downscaled to half size, tiled 2×2
  together with their masks;
* the reference code's VisA crop: a small square crop of the model input (holding defect
  pixels when there are any), zoomed back to the input size.

The dataset (``data/dataset.py``) draws the randomness and does the resizing; these helpers
only decide *where*, so image and mask are always transformed by the same numbers.
"""
from __future__ import annotations

import numpy as np


def quadrant_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """(h, w) of the four tiles of a 2×2 mosaic of size (h, w), in order TL, TR, BL, BR.

    Odd sizes are split as ``h // 2`` and ``h - h // 2`` so the tiles cover exactly (h, w).
    """
    h0, w0 = h // 2, w // 2
    return [(h0, w0), (h0, w - w0), (h - h0, w0), (h - h0, w - w0)]


def tile_2x2(tiles: list[np.ndarray]) -> np.ndarray:
    """Tile four arrays (h_i, w_i, ...) sized by :func:`quadrant_sizes` as [[0, 1], [2, 3]]."""
    if len(tiles) != 4:
        raise ValueError(f"a 2×2 mosaic needs 4 tiles, got {len(tiles)}")
    top = np.concatenate([tiles[0], tiles[1]], axis=1)
    bottom = np.concatenate([tiles[2], tiles[3]], axis=1)
    return np.concatenate([top, bottom], axis=0)


# The reference crops VisA training images at its 518 px input with sides of 100 and 50 px.
CROP_SIDE, SMALL_CROP_SIDE = 100 / 518, 50 / 518


def defect_crop_box(mask: np.ndarray, rng: np.random.Generator,
                    small_rate: float = 0.6) -> tuple[int, int, int, int] | None:
    """The reference code's VisA training crop, as a box (x0, y0, x1, y1) on the model input.

    mask: (S, S) bool defect mask at the model input size. A good image (empty mask) is, half
    of the time, replaced by a random square crop of side ``CROP_SIDE * S`` (100 px at 518), and
    otherwise left whole (None is returned). A defective image gets a crop of side
    ``SMALL_CROP_SIDE * S`` (50 px) with probability ``small_rate``, else ``CROP_SIDE * S``,
    placed uniformly among the positions whose crop holds at least one defect pixel (the
    reference redraws a uniform crop until it does: the same distribution, without the loop).
    """
    H, W = mask.shape
    if not mask.any():
        if rng.random() >= 0.5:
            return None
        side = max(1, round(min(H, W) * CROP_SIDE))
        y0, x0 = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        return x0, y0, x0 + side, y0 + side
    frac = SMALL_CROP_SIDE if rng.random() < small_rate else CROP_SIDE
    side = max(1, round(min(H, W) * frac))
    # defect pixels inside every side x side window, from an integral image: [H-side+1, W-side+1]
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    inside = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side]
              + integral[:-side, :-side])
    ys, xs = np.nonzero(inside > 0)
    j = int(rng.integers(0, ys.size))
    y0, x0 = int(ys[j]), int(xs[j])
    return x0, y0, x0 + side, y0 + side
