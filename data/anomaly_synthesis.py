"""Synthetic defects on good images, for training the ASL heads without any defect mask.

Two kinds, each returning the new image and the *exact* mask of the pixels it changed:

* ``cutpaste`` (after CutPaste, Li et al. 2021): a rectangle cut from elsewhere in the same
  image, rotated, rescaled, optionally colour-jittered and pasted somewhere else;
* ``noise`` (after DRAEM, Zavrtanik et al. 2021): a blob shaped by thresholded Perlin noise,
  filled with a photometrically distorted crop of another image (the texture source),
  blended over the original.

Each defect is ``small`` or ``large`` (its area as a fraction of the image is drawn from
:attr:`SynthesisConfig.small_area` or ``large_area``). Which images stay clean is decided per
epoch by :func:`clean_indices`, so the clean fraction of a training set holds exactly.

Every function is pure: ``(image uint8 (H, W, 3), numpy Generator, ...) -> Synthesis``. It
never touches global random state, so the same generator state gives the same bytes. The mask
invariant ``mask == (out != image).any(-1)`` always holds: a masked pixel whose new value
happens to equal the old one is nudged by one grey level (see :func:`_commit`).

Everything is whole-array numpy / OpenCV; no Python loop runs over pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import cv2
import numpy as np

KINDS = ("cutpaste", "noise")
CLEAN = "clean"


class Synthesis(NamedTuple):
    image: np.ndarray   # (H, W, 3) uint8, the input with the defect drawn in
    mask: np.ndarray    # (H, W) bool, exactly the pixels that differ from the input
    kind: str           # "clean", "cutpaste" or "noise"


@dataclass(frozen=True)
class SynthesisConfig:
    """What defects to draw.

    kinds: the defect kinds to choose from (uniformly), a subset of :data:`KINDS`.
    small_rate: probability that a defect is small rather than large.
    small_area, large_area: (lo, hi) of the defect area as a fraction of the image; the
        fraction is drawn log-uniformly, so each range is covered evenly across scales.
    """

    kinds: tuple = KINDS
    small_rate: float = 0.5
    small_area: tuple = (0.001, 0.01)
    large_area: tuple = (0.02, 0.15)

    def __post_init__(self):
        kinds = tuple(self.kinds)
        bad = [k for k in kinds if k not in KINDS]
        if not kinds or bad:
            raise ValueError(f"synthesis kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
        object.__setattr__(self, "kinds", kinds)
        if not 0.0 <= self.small_rate <= 1.0:
            raise ValueError(f"small_rate must be in [0, 1], got {self.small_rate}")
        for name in ("small_area", "large_area"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi < 1.0:
                raise ValueError(f"{name} must satisfy 0 < lo <= hi < 1, got {(lo, hi)}")


def parse_kinds(text: str | Sequence[str]) -> tuple:
    """``"cutpaste,noise"`` (or a list of names) -> a validated tuple of kinds."""
    names = text.split(",") if isinstance(text, str) else list(text)
    kinds = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    return SynthesisConfig(kinds=kinds).kinds


# ---------------------------------------------------------------- clean fraction
def clean_indices(n: int, clean_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Which of ``n`` images stay clean: bool (n,) with exactly ``round(clean_rate * n)`` True."""
    if not 0.0 <= clean_rate <= 1.0:
        raise ValueError(f"clean_rate must be in [0, 1], got {clean_rate}")
    out = np.zeros(n, dtype=bool)
    out[rng.permutation(n)[: int(round(clean_rate * n))]] = True
    return out


# ---------------------------------------------------------------- noise
def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)  # Perlin's quintic: C2-continuous at cell edges


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` (H, W) with ``res`` (ry, rx) cells.

    One random unit gradient per lattice point; each pixel blends the four corner dot
    products with the quintic fade. Returns float32 (H, W), roughly in [-1, 1], 0 on lattice
    points.
    """
    H, W = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [ry+1, rx+1, 2] (gx, gy)
    ys, xs = np.arange(H) * (ry / H), np.arange(W) * (rx / W)
    yi, xi = ys.astype(np.int64), xs.astype(np.int64)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]  # [H, 1], [1, W]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[yi[:, None] + dy, xi[None, :] + dx]  # [H, W, 2]
        return g[..., 0] * (xf - dx) + g[..., 1] * (yf - dy)

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return (np.sqrt(2.0) * (top + v * (bottom - top))).astype(np.float32)


def fractal_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator,
                  octaves: int = 3, persistence: float = 0.5) -> np.ndarray:
    """Sum of :func:`perlin_noise` octaves (resolution x2, amplitude x``persistence`` each).

    Returns float32 (H, W), normalised by the total amplitude (roughly in [-1, 1]).
    """
    total, amp, norm = np.zeros(shape, np.float32), 1.0, 0.0
    for o in range(octaves):
        total += amp * perlin_noise(shape, (res[0] * 2 ** o, res[1] * 2 ** o), rng)
        norm += amp
        amp *= persistence
    return total / np.float32(norm)


def blob_mask(shape: tuple[int, int], area: float, rng: np.random.Generator) -> np.ndarray:
    """A single blob of about ``area`` (fraction of the image) at a random place: bool (H, W).

    The blob is a rotated ellipse whose level set is perturbed by fractal Perlin noise and
    thresholded, so its outline is irregular (DRAEM-like) but it stays one compact region.
    Never empty.
    """
    H, W = shape
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    theta = rng.uniform(0, np.pi)
    # the thresholded ellipse r^2 < 0.5 of unit half-axes covers about pi / 2 of (2a * 2b) / 4
    half = np.sqrt(area * H * W / (np.pi * 0.5))
    a, b = half * np.sqrt(aspect), half / np.sqrt(aspect)
    ext_x = np.sqrt((a * np.cos(theta)) ** 2 + (b * np.sin(theta)) ** 2)
    ext_y = np.sqrt((a * np.sin(theta)) ** 2 + (b * np.cos(theta)) ** 2)
    bw, bh = int(min(W, 2 * np.ceil(ext_x) + 1)), int(min(H, 2 * np.ceil(ext_y) + 1))
    y0, x0 = int(rng.integers(0, H - bh + 1)), int(rng.integers(0, W - bw + 1))
    noise = fractal_noise((bh, bw), (int(rng.integers(1, 4)), int(rng.integers(1, 4))), rng, octaves=3)
    y, x = np.mgrid[0:bh, 0:bw].astype(np.float32)
    y, x = y - (bh - 1) / 2, x - (bw - 1) / 2
    c, s = np.cos(theta), np.sin(theta)
    r2 = ((c * x + s * y) / a) ** 2 + ((-s * x + c * y) / b) ** 2  # [bh, bw]
    local = (1.0 - r2 + 0.5 * noise) > 0.5
    if not local.any():  # a tiny blob can vanish under the noise: keep its centre pixel
        local[bh // 2, bw // 2] = True
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y0 + bh, x0:x0 + bw] = local
    return mask


# ---------------------------------------------------------------- photometric distortions
def _distort(tex: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random DRAEM-style photometric change of a uint8 (H, W, 3) texture."""
    op = int(rng.integers(0, 6))
    x = tex.astype(np.float32)
    if op == 0:  # invert
        x = 255.0 - x
    elif op == 1:  # gamma / contrast
        x = 255.0 * (x / 255.0) ** rng.uniform(0.3, 3.0)
    elif op == 2:  # solarize
        x = np.where(x > rng.uniform(32, 224), 255.0 - x, x)
    elif op == 3:  # posterize to 1..3 bits
        step = 256 // 2 ** int(rng.integers(1, 4))
        x = np.floor(x / step) * step
    elif op == 4:  # channel shuffle + brightness shift
        x = x[..., rng.permutation(3)] + rng.uniform(-80, 80)
    else:  # a flat random colour shaded by the texture's luminance
        lum = x.mean(axis=-1, keepdims=True) / 255.0
        x = rng.uniform(0, 255, 3).astype(np.float32) * (0.5 + lum)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _texture_from(source: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``source`` (h, w, 3), flipped/rotated by 90s, resized to ``shape``
    and distorted: uint8 (H, W, 3)."""
    h, w = source.shape[:2]
    frac = rng.uniform(0.25, 1.0)
    ch, cw = max(2, int(h * frac)), max(2, int(w * frac))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = np.rot90(source[y0:y0 + ch, x0:x0 + cw], k=int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    tex = cv2.resize(np.ascontiguousarray(crop), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return _distort(tex, rng)


# ---------------------------------------------------------------- defects
def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image must be at least 8x8, got {image.shape[:2]}")


def _commit(image: np.ndarray, region: np.ndarray, values: np.ndarray, kind: str) -> Synthesis:
    """Write ``values`` (n, 3) into the ``region`` (H, W) bool pixels of a copy of ``image``.

    A region pixel whose new value equals the old one on every channel is nudged by one grey
    level on every channel (+1, or -1 at 255), so that the returned mask is exactly the set
    of changed pixels and the defect keeps its whole shape.
    """
    old = image[region]  # [n, 3]
    same = (values == old).all(axis=-1)
    values = values.copy()
    values[same] = np.where(old[same] < 255, old[same] + 1, old[same] - 1)
    out = image.copy()
    out[region] = values
    return Synthesis(out, region.copy(), kind)


def cutpaste(image: np.ndarray, rng: np.random.Generator, area: float) -> Synthesis:
    """Cut a rectangle of about ``area`` (fraction of the image) and paste it elsewhere in
    the same image, rotated by up to ±90°, rescaled by 0.75–1.33 and, half of the time,
    colour-jittered. image: uint8 (H, W, 3) -> Synthesis.
    """
    _check_image(image)
    H, W = image.shape[:2]
    aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.3))))  # width / height
    ph = float(np.clip(np.sqrt(area * H * W / aspect), 2, H / 2))
    pw = float(np.clip(ph * aspect, 2, W / 2))
    sy, sx = rng.uniform(ph / 2, H - ph / 2), rng.uniform(pw / 2, W - pw / 2)  # source centre
    theta = rng.uniform(-np.pi / 2, np.pi / 2)
    scale = float(np.exp(rng.uniform(np.log(0.75), np.log(4 / 3))))
    c, s = np.cos(theta), np.sin(theta)
    # half extent of the rotated, scaled rectangle; the pasted patch must fit in the image
    ex = min(W / 2, scale * (pw * abs(c) + ph * abs(s)) / 2)
    ey = min(H / 2, scale * (pw * abs(s) + ph * abs(c)) / 2)
    dy, dx = rng.uniform(ey, H - ey), rng.uniform(ex, W - ex)  # destination centre
    jitter = rng.random() < 0.5
    gain, bias = rng.uniform(0.8, 1.2, 3), rng.uniform(-25, 25, 3)

    x0, x1 = max(0, int(np.floor(dx - ex))), min(W, int(np.ceil(dx + ex)) + 1)
    y0, y1 = max(0, int(np.floor(dy - ey))), min(H, int(np.ceil(dy + ey)) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    # destination pixel -> patch frame (inverse rotation and scale) -> source pixel
    u = (c * (xx - dx) + s * (yy - dy)) / scale   # [h, w] along the patch width
    v = (-s * (xx - dx) + c * (yy - dy)) / scale  # [h, w] along the patch height
    inside = (np.abs(u) <= pw / 2) & (np.abs(v) <= ph / 2)
    if not inside.any():  # a degenerate draw: keep at least the centre pixel
        inside[int(dy) - y0, int(dx) - x0] = True
        u[int(dy) - y0, int(dx) - x0] = v[int(dy) - y0, int(dx) - x0] = 0.0
    map_x, map_y = (sx + u).astype(np.float32), (sy + v).astype(np.float32)
    patch = cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REFLECT_101)  # [h, w, 3]
    values = patch[inside]  # [n, 3]
    if jitter:
        values = np.clip(values.astype(np.float32) * gain + bias + 0.5, 0, 255).astype(np.uint8)
    region = np.zeros((H, W), dtype=bool)
    region[y0:y1, x0:x1] = inside
    return _commit(image, region, values, "cutpaste")


def noise_blob(image: np.ndarray, rng: np.random.Generator, area: float,
               source: np.ndarray | None = None) -> Synthesis:
    """A Perlin-shaped blob of about ``area`` filled with texture from ``source``.

    The texture is a random crop of ``source`` (another image, any size, uint8 (h, w, 3);
    ``image`` itself when None), resized and photometrically distorted, then blended over the
    image with weight 0.4–1. image: uint8 (H, W, 3) -> Synthesis.
    """
    _check_image(image)
    H, W = image.shape[:2]
    region = blob_mask((H, W), area, rng)
    src = image if source is None else source
    _check_image(src)
    tex = _texture_from(src, (H, W), rng)
    beta = np.float32(rng.uniform(0.4, 1.0))
    mixed = (1 - beta) * image[region].astype(np.float32) + beta * tex[region].astype(np.float32)
    values = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return _commit(image, region, values, "noise")


def draw_area(rng: np.random.Generator, cfg: SynthesisConfig) -> float:
    """A defect area (fraction of the image): small with probability ``cfg.small_rate``."""
    lo, hi = cfg.small_area if rng.random() < cfg.small_rate else cfg.large_area
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def synthesize(image: np.ndarray, rng: np.random.Generator, cfg: SynthesisConfig = SynthesisConfig(),
               source: np.ndarray | Callable[[], np.ndarray] | None = None) -> Synthesis:
    """One defect of a kind drawn from ``cfg.kinds`` and a size drawn by :func:`draw_area`.

    image: uint8 (H, W, 3); source: texture image for ``noise`` (None = ``image``), or a
    function returning it, called only when a noise blob is drawn (saves reading a file).
    Returns :class:`Synthesis` with ``mask == (out.image != image).any(-1)``.
    """
    kind = cfg.kinds[int(rng.integers(0, len(cfg.kinds)))]
    area = draw_area(rng, cfg)
    if kind == "cutpaste":
        return cutpaste(image, rng, area)
    return noise_blob(image, rng, area, source() if callable(source) else source)


def keep_clean(image: np.ndarray) -> Synthesis:
    """The unchanged image (a copy) with an empty mask."""
    _check_image(image)
    return Synthesis(image.copy(), np.zeros(image.shape[:2], dtype=bool), CLEAN)
