"""Training augmentations of the paper, as pure geometry on arrays.

* mosaic (MVTec-style): four images of one class, each downscaled to half size, tiled 2×2
  together with their masks;
* defect-keeping random crop (VisA-style): a crop that contains the whole defect, resized
  back to the model input size.

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


def crop_box_keeping_defect(mask: np.ndarray, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.5, 0.9)) -> tuple[int, int, int, int]:
    """A random crop box (x0, y0, x1, y1) of a (H, W) image that contains all of ``mask``.

    The crop keeps the image's aspect ratio with side fraction drawn from ``scale``; it is
    enlarged when needed to cover the defect's bounding box (up to the whole image). For an
    all-False mask any position is allowed.
    """
    H, W = mask.shape
    s = rng.uniform(*scale)
    ch, cw = max(1, round(H * s)), max(1, round(W * s))
    ys, xs = np.nonzero(mask)
    if ys.size:
        y_lo, y_hi, x_lo, x_hi = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        ch, cw = max(ch, y_hi - y_lo), max(cw, x_hi - x_lo)
        # the crop start must satisfy start <= lo and start + size >= hi
        y_range = (max(0, y_hi - ch), min(y_lo, H - ch))
        x_range = (max(0, x_hi - cw), min(x_lo, W - cw))
    else:
        y_range, x_range = (0, H - ch), (0, W - cw)
    y0 = int(rng.integers(y_range[0], y_range[1] + 1))
    x0 = int(rng.integers(x_range[0], x_range[1] + 1))
    return x0, y0, x0 + cw, y0 + ch
