"""Pictures of anomaly maps: JET heat-map overlays, ground-truth outlines, triptychs with a colour
bar, PNGs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import cv2
import numpy as np
from PIL import Image

Color = Tuple[int, int, int]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    return image


def _check_map(score_map: np.ndarray, image: np.ndarray, what: str) -> np.ndarray:
    score_map = np.asarray(score_map)
    if score_map.shape != image.shape[:2]:
        raise ValueError(f"{what} {score_map.shape} must match the image size {image.shape[:2]}")
    return score_map


def normalize_map(score_map: Any, lo: Optional[float] = None,
                  hi: Optional[float] = None) -> Any:
    """Map ``[lo, hi]`` linearly onto ``[0, 1]`` and clip; works on arrays and tensors.

    Args:
        score_map: (H, W) (or any shape) float array or tensor.
        lo, hi: range ends; default to the map's own min and max. A degenerate range
            (``hi <= lo``) gives an all-zero map.

    Returns:
        same type and shape as the input, values in [0, 1] (float).
    """
    lo = float(score_map.min()) if lo is None else float(lo)
    hi = float(score_map.max()) if hi is None else float(hi)
    if hi <= lo:
        return score_map * 0.0
    return ((score_map - lo) / (hi - lo)).clip(0.0, 1.0)


def heatmap_overlay(image_rgb: np.ndarray, score_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET-coloured score map over an image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        score_map: (H, W) float in [0, 1] (clipped); 1 renders red, 0 blue.
        alpha: weight of the heat map, in [0, 1].

    Returns:
        (H, W, 3) uint8 RGB: ``(1 - alpha) * image + alpha * jet(score_map)``.
    """
    image = _check_image(image_rgb)
    score_map = _check_map(score_map, image, "score_map").astype(np.float32)
    if not np.isfinite(score_map).all():
        raise ValueError("score_map contains NaN or inf")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    grey = np.round(np.clip(score_map, 0.0, 1.0) * 255.0).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def mask_outline(image: np.ndarray, mask: np.ndarray, color: Color = (0, 255, 0),
                 thickness: int = 2) -> np.ndarray:
    """Draw the contour of a binary mask on a copy of the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool or 0/1 (values > 0 count as foreground).
        color: RGB colour of the outline.
        thickness: line width in pixels.

    Returns:
        (H, W, 3) uint8 RGB copy with the outline drawn (unchanged if the mask is empty).
    """
    image = _check_image(image)
    mask = _check_map(mask, image, "mask")
    binary = (mask > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(image).copy()
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness)
    return out


def class_range(maps: np.ndarray, low: float = 1.0, high: float = 99.9) -> tuple[float, float]:
    """The colour range shared by a set of maps: their ``low``-th and ``high``-th percentiles of
    score (robust to a few extreme pixels). maps: (N, H, W) float. Returns (lo, hi), hi > lo."""
    lo, hi = (float(v) for v in np.percentile(np.asarray(maps, dtype=np.float64), [low, high]))
    return lo, max(hi, lo + 1e-6)


def colour_bar(height: int, lo: float, hi: float, width: int = 56) -> np.ndarray:
    """A vertical JET colour bar labelled with the scores it stands for.

    Returns (height, W, 3) uint8 RGB, W = ``width`` or wider where a label needs it: the top of
    the bar is ``hi`` (red), the bottom ``lo`` (blue); the score values at top, middle and bottom
    are written beside it, each whole (a label such as "0.00142" widens the panel, never gets cut).
    """
    bar_w = max(4, width // 4)
    scale = max(0.25, min(0.4, height / 600))
    font, margin = cv2.FONT_HERSHEY_SIMPLEX, 2
    labels = [(frac, f"{hi - frac * (hi - lo):.3g}") for frac in (0.0, 0.5, 1.0)]
    # anti-aliased glyphs spill a pixel or two past getTextSize's box: keep a margin on the right
    text_w = max(cv2.getTextSize(text, font, scale, 1)[0][0] for _, text in labels)
    width = max(width, bar_w + margin + text_w + 2 * margin)
    ramp = np.linspace(255, 0, height).round().astype(np.uint8)[:, None].repeat(bar_w, axis=1)  # [H, bar_w]
    colours = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    out[:, :bar_w] = colours
    for frac, text in labels:
        y = int(round(frac * (height - 1)))
        baseline = min(max(y + 4, 10), height - 2)
        cv2.putText(out, text, (bar_w + margin, baseline), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def triptych(image: np.ndarray, gt_mask: Optional[np.ndarray], score_map: np.ndarray,
             value_range: Tuple[float, float] = (0.0, 1.0), alpha: float = 0.5) -> np.ndarray:
    """Side by side: image | image with the ground-truth outline | heat-map overlay | colour bar.

    Args:
        image: (H, W, 3) uint8 RGB.
        gt_mask: (H, W) 0/1 mask, or None (middle panel is then the plain image).
        score_map: (H, W) raw scores; ``value_range`` (lo, hi) maps onto blue..red (clipped), and
            the colour bar says which score each colour is.

    Returns:
        (H, 3W + bar, 3) uint8 RGB (bar: the colour bar's width, 56 or wider for long labels).
    """
    image = _check_image(image)
    outlined = image.copy() if gt_mask is None else mask_outline(image, gt_mask)
    lo, hi = value_range
    heat = heatmap_overlay(image, normalize_map(np.asarray(score_map, dtype=np.float32), lo, hi), alpha)
    return np.concatenate([image, outlined, heat, colour_bar(image.shape[0], lo, hi)], axis=1)


def save_png(path: Union[str, os.PathLike], array: np.ndarray) -> Path:
    """Save a (H, W, 3) RGB or (H, W) grey uint8 array as PNG (parent folders created)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path
