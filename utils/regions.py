"""Score maps back at an image's own resolution, and the defect regions above a threshold.

Sizes are written ``(h, w)`` = (rows, cols) as in data/images.py; OpenCV calls take
``(width, height)``, converted here in one place so nothing is ever transposed. Bounding boxes
are ``[x, y, w, h]`` in pixels of the original image (x = column of the left edge).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


def resize_map(score_map: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a score map.

    score_map: (h, w) float; size_hw: (H, W) target rows and columns. Returns float32 (H, W).
    """
    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.ndim != 2:
        raise ValueError(f"score_map must be (h, w), got {score_map.shape}")
    H, W = int(size_hw[0]), int(size_hw[1])
    if score_map.shape == (H, W):
        return score_map.copy()
    return cv2.resize(score_map, (W, H), interpolation=cv2.INTER_LINEAR)  # cv2 takes (width, height)


@dataclass
class Region:
    """One connected defect region: bbox [x, y, w, h], area and centroid (x, y) in pixels."""

    bbox: list[int]
    area: int
    centroid: list[float]
    max_score: float
    mean_score: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Regions:
    """mask: (H, W) bool, exactly the pixels of ``regions`` (largest first)."""

    mask: np.ndarray
    regions: list[Region]

    @property
    def area(self) -> int:
        return int(sum(r.area for r in self.regions))


def find_regions(score_map: np.ndarray, threshold: float, min_area: int = 0, keep_peak: bool = False) -> Regions:
    """Connected components (8-connectivity) of ``score_map > threshold``.

    score_map: (H, W) float. Regions smaller than ``min_area`` pixels are dropped from both the
    list and the mask, so the two always agree, except, with ``keep_peak``, the region holding
    the map's highest score. Returns regions sorted by area, largest first.
    """
    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.ndim != 2:
        raise ValueError(f"score_map must be (H, W), got {score_map.shape}")
    binary = (score_map > threshold).astype(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    # per-label max and sum in one pass over the pixels (label 0 is the background)
    fg = binary.reshape(-1) > 0
    flat, values = labels.reshape(-1)[fg], score_map.reshape(-1)[fg].astype(np.float64)
    peak = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(peak, flat, values)
    total = np.bincount(flat, weights=values, minlength=n)
    keep = np.zeros(n, dtype=bool)
    peak_label = int(labels.reshape(-1)[int(np.argmax(score_map))]) if keep_peak else 0
    regions = []
    for label in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area and label != peak_label:
            continue
        keep[label] = True
        regions.append(Region(bbox=[x, y, w, h], area=area,
                              centroid=[float(centroids[label][0]), float(centroids[label][1])],
                              max_score=float(peak[label]), mean_score=float(total[label] / area)))
    regions.sort(key=lambda r: (-r.area, r.bbox[1], r.bbox[0]))
    return Regions(mask=keep[labels], regions=regions)
