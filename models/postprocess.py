"""From a model's score maps to the map and image score a decision is made on.

The reference code's image score is the mean over blocks of each block's maximum on the patch
grid (``FASL.predict``: the ``model`` score here), and its map is used as it is. A decision on one
image at a time can do better with a little post-processing, chosen on real images (docs/predict.md,
Decisions on real parts):

* ``smooth_sigma``: a Gaussian blur of the map (sigma in map pixels), as PatchCore smooths its
  map: a single noisy patch no longer decides, a defect's blob stays;
* ``image_score``: ``model`` (the reference score), ``max`` (the maximum of the post-processed
  map) or ``top`` (the mean of its ``top_fraction`` highest pixels).

The same ``MapPost`` is applied to the references' normal views (the thresholds are fitted on
them) and to every inspected image, so thresholds and scores always agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.fasl import Prediction

IMAGE_SCORES = ("model", "max", "top")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D normalised Gaussian of radius ceil(4 sigma) (sigma > 0), float32."""
    radius = max(1, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """maps: (B, H, W) -> the same blurred with a separable Gaussian (reflected borders).

    sigma <= 0 returns the maps unchanged. Computed in float32.
    """
    if sigma <= 0:
        return maps
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    k = gaussian_kernel(sigma).to(maps.device)
    r = k.numel() // 2
    x = maps.float()[:, None]  # [B, 1, H, W]
    H, W = x.shape[-2:]
    if r >= min(H, W):  # reflect padding needs r < size: clip the kernel to the map
        r = min(H, W) - 1
        k = k[k.numel() // 2 - r:k.numel() // 2 + r + 1]
        k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0]


def top_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, H, W) -> (B,): the mean of each map's ceil(fraction * H * W) highest values."""
    flat = maps.float().flatten(1)
    n = max(1, math.ceil(fraction * flat.shape[1]))
    return flat.topk(n, dim=1).values.mean(dim=1)


@dataclass(frozen=True)
class MapPost:
    """How a Prediction becomes the map and image score a decision is made on (module docstring)."""

    smooth_sigma: float = 0.0
    image_score: str = "model"
    top_fraction: float = 0.01

    def __post_init__(self):
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got {self.image_score!r}")
        if not (math.isfinite(self.smooth_sigma) and self.smooth_sigma >= 0):
            raise ValueError(f"smooth_sigma must be a finite number >= 0, got {self.smooth_sigma}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must lie in (0, 1], got {self.top_fraction}")

    @property
    def is_identity(self) -> bool:
        return self.smooth_sigma == 0 and self.image_score == "model"

    def apply(self, pred: Prediction) -> Prediction:
        """pred: score_map (B, H, W), image_score (B,) -> the post-processed Prediction (float32)."""
        if self.is_identity:
            return pred
        maps = gaussian_blur(pred.score_map, self.smooth_sigma).float()
        if self.image_score == "model":
            score = pred.image_score.float()
        elif self.image_score == "max":
            score = maps.flatten(1).amax(dim=1)
        else:
            score = top_mean(maps, self.top_fraction)
        return Prediction(score_map=maps, image_score=score)

    def to_dict(self) -> dict:
        return {"smooth_sigma": self.smooth_sigma, "image_score": self.image_score, "top_fraction": self.top_fraction}
