"""A small deterministic anomaly-detection dataset for the demo and the tests.

Usage (from the repo root, or from inside ``data/``)::

    python data/synthetic.py --out /tmp/syn_mvtec --layout mvtec --seed 0
    python data/synthetic.py --out /tmp/syn_visa --layout visa --seed 0 --classes 2

Two layouts that look different on purpose, so that training on one and testing on the
other is a real transfer (as MVTec AD → VisA is):

* ``mvtec`` (256×256 PNG, MVTec AD folders): ``weave`` (grayscale woven texture, saved as
  single-channel PNG), ``disc`` (round orange object), ``stripes`` (muted striped texture),
  ``bolt`` (grayscale metal bolt). Defects: ``hole`` (small dot, < 1 % of the image),
  ``scratch`` (thin line), ``stain`` (colour/intensity blob).
* ``visa`` (320×240 JPG + 0/255 PNG masks, VisA folders and ``split_csv/1cls.csv``):
  ``blobs`` (colourful blobby texture with smooth gradients), ``pcb`` (green board with pads
  and a chip), ``marble`` (colourful veined texture), ``tablet`` (pink pill on a blue tray).
  Defects: ``spot`` (small dot, < 1 %), ``missing`` (a pad/chip or a piece of the object or
  texture gone), ``burn`` (dark brown blob).

``--classes N`` takes the first N classes in the order above (N ≤ 4). Every class has
``n_train`` normal training images and ``n_test`` test images: a third normal, the rest
spread round-robin over the three defect kinds (small dots first). Masks are the exact set of
pixels where a defect was drawn. Normal images vary by a random shift, rotation, gain and
pixel noise. Everything is drawn from numpy Generators seeded by ``seed``, so the same seed
gives byte-identical files.
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make `import data` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.meta import write_meta  # noqa: E402
from data.mvtec import build_mvtec_meta  # noqa: E402
from data.visa import build_visa_meta  # noqa: E402
from utils.cli import InputFileExistsError, InputValueError, run_cli  # noqa: E402

LAYOUTS = ("mvtec", "visa")
DEFAULT_SIZE = {"mvtec": (256, 256), "visa": (320, 240)}  # (width, height)
JPEG_QUALITY = 95


@dataclass
class Rendered:
    """A clean (noise-free) normal image and what defects need to know about it."""
    img: np.ndarray                     # (h, w, 3) float32 in [0, 1]
    fg: np.ndarray                      # (h, w) bool: where defects may be placed
    bg: np.ndarray | None = None        # (h, w, 3) background under an object
    parts: np.ndarray | None = None     # (h, w) int32 removable-part ids, -1 = none
    under: np.ndarray | None = None     # (h, w, 3) what a removed part reveals


@dataclass(frozen=True)
class ClassSpec:
    name: str
    kind: str          # "texture" or "object"
    gray: bool         # saved single-channel (mvtec layout only)
    params: Callable   # rng -> dict of class-level parameters
    render: Callable   # (u, v, h, w, params) -> Rendered


# ---------------------------------------------------------------- geometry helpers
def _coords(h: int, w: int, dx: float, dy: float, theta: float):
    """Rotated, shifted pixel coordinates (u, v), each (h, w) float32, origin at the centre."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = x - (w - 1) / 2 - dx, y - (h - 1) / 2 - dy
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    return c * x + s * y, -s * x + c * y


def _rgb(*c) -> np.ndarray:
    return np.asarray(c, dtype=np.float32)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours a, b (3,) by t (h, w) → (h, w, 3)."""
    return a + (b - a) * t[..., None]


# ---------------------------------------------------------------- mvtec-like classes
def _weave_params(rng):
    return {"period": float(rng.uniform(14, 18)), "base": float(rng.uniform(0.22, 0.3))}


def _weave(u, v, h, w, p):
    per = p["period"]
    cu, cv_ = np.floor(u / per), np.floor(v / per)
    fu, fv = u / per - cu, v / per - cv_
    over = (cu + cv_) % 2 == 0  # which thread is on top alternates like a checkerboard
    along_u = np.sin(np.pi * fv) ** 0.6 * (0.9 + 0.1 * np.cos(2 * np.pi * fu))
    along_v = np.sin(np.pi * fu) ** 0.6 * (0.9 + 0.1 * np.cos(2 * np.pi * fv))
    g = p["base"] + 0.45 * np.where(over, along_u, along_v)
    g = g + 0.03 * np.sin(2 * np.pi * (3 * u + 0.4 * v) / per)  # fibres
    img = np.repeat(g[..., None], 3, axis=2).astype(np.float32)
    return Rendered(img, np.ones((h, w), bool))


def _stripes_params(rng):
    return {"period": float(rng.uniform(18, 24)), "angle": float(rng.uniform(0.6, 0.9)),
            "c1": _rgb(0.62, 0.58, 0.50), "c2": _rgb(0.40, 0.41, 0.44)}


def _stripes(u, v, h, w, p):
    a, per = p["angle"], p["period"]
    along, across = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * along / per)
    img = _mix(p["c1"], p["c2"], np.clip(1.4 * t - 0.2, 0, 1))
    img *= (0.95 + 0.05 * np.sin(2 * np.pi * across / (per / 5)))[..., None]  # fine weave
    return Rendered(img.astype(np.float32), np.ones((h, w), bool))


def _disc_params(rng):
    return {"colour": _rgb(0.88, 0.46, 0.12) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)}


def _disc(u, v, h, w, p):
    R = 0.36 * min(h, w)
    r = np.hypot(u, v)
    bg = _mix(_rgb(0.16, 0.16, 0.17), _rgb(0.22, 0.22, 0.23), (v / h + 0.5).clip(0, 1))
    shade = 1.0 - 0.35 * (r / R) ** 2 + 0.12 * (-u - v) / R
    body = p["colour"] * shade[..., None]
    ring = np.abs(r - 0.62 * R) < 0.05 * R
    body[ring] *= 0.6
    logo = (np.abs(u) < 0.28 * R) & (np.abs(v + 0.3 * R) < 0.06 * R)  # rotates with the disc
    body[logo] = _rgb(0.95, 0.92, 0.85)
    fg = r < R
    img = np.where(fg[..., None], body, bg).clip(0, 1).astype(np.float32)
    return Rendered(img, fg, bg=bg.astype(np.float32))


def _bolt_params(rng):
    return {"angle": float(rng.uniform(-0.3, 0.3))}


def _bolt(u, v, h, w, p):
    c, s = np.cos(p["angle"]), np.sin(p["angle"])
    a, b = c * u + s * v, -s * u + c * v  # along / across the bolt
    L, W = 0.72 * w, 0.17 * h
    seg = np.maximum(np.abs(a) - (L - W) / 2, 0)
    shaft = np.hypot(seg, b) < W / 2
    head = (np.abs(a + L / 2 - 0.09 * w) < 0.09 * w) & (np.abs(b) < 0.75 * W)
    fg = shaft | head
    across = np.clip(np.abs(b) / (0.75 * W), 0, 1)
    g = 0.32 + 0.3 * (1 - across ** 2)  # cylindrical shading
    thread = (a > 0) & shaft
    g = np.where(thread, g * (0.78 + 0.22 * (np.sin(2 * np.pi * a / 7) > 0)), g)
    bg = 0.78 - 0.06 * (v / h)
    out = np.where(fg, g, bg)
    img = np.repeat(out[..., None], 3, axis=2).astype(np.float32)
    return Rendered(img, fg, bg=np.repeat(bg[..., None], 3, axis=2).astype(np.float32))


# ---------------------------------------------------------------- visa-like classes
def _hsv(hue, sat, val) -> np.ndarray:
    px = np.array([[[hue * 179, sat * 255, val * 255]]], dtype=np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255


def _blobs_params(rng):
    k = 14
    return {"xy": rng.uniform(-0.75, 0.75, (k, 2)).astype(np.float32),
            "sigma": rng.uniform(0.07, 0.16, k).astype(np.float32),
            "colours": np.stack([_hsv(rng.uniform(), rng.uniform(0.7, 1), rng.uniform(0.75, 1))
                                 for _ in range(k)]),
            "base": (_hsv(rng.uniform(), 0.6, 0.8), _hsv(rng.uniform(), 0.6, 0.6))}


def _blobs(u, v, h, w, p):
    scale = max(h, w)
    d2 = ((u[None] / scale - p["xy"][:, 0, None, None]) ** 2
          + (v[None] / scale - p["xy"][:, 1, None, None]) ** 2)  # (k, h, w)
    g = np.exp(-d2 / (2 * p["sigma"][:, None, None] ** 2))
    base = _mix(p["base"][0], p["base"][1], ((u + v) / (h + w) + 0.5).clip(0, 1))
    num = base + np.einsum("khw,kc->hwc", g, p["colours"]) * 1.5
    img = num / (1 + 1.5 * g.sum(0))[..., None]  # colour of the nearest blobs, smoothly mixed
    return Rendered(img.astype(np.float32), np.ones((h, w), bool))


def _marble_params(rng):
    return {"freq": rng.uniform(0.004, 0.012, (3, 2)).astype(np.float32),
            "phase": rng.uniform(0, 2 * np.pi, 3).astype(np.float32),
            "c1": _rgb(0.10, 0.58, 0.62), "c2": _rgb(0.86, 0.32, 0.58), "c3": _rgb(0.98, 0.85, 0.4)}


def _marble(u, v, h, w, p):
    turb = sum(np.sin(f[0] * u + f[1] * v + ph) for f, ph in zip(p["freq"], p["phase"]))
    veins = 0.5 + 0.5 * np.sin(0.045 * u + 0.02 * v + 2.2 * turb)
    img = _mix(p["c1"], p["c2"], veins ** 2)
    img = img + (p["c3"] - img) * (0.35 * np.clip(turb / 3 + 0.3, 0, 1) ** 2)[..., None]
    return Rendered(img.astype(np.float32), np.ones((h, w), bool))


def _pcb_params(rng):
    return {"n_pads": int(rng.integers(7, 10)), "board": _rgb(0.05, 0.42, 0.18)}


def _pcb(u, v, h, w, p):
    bw, bh = 0.78 * w, 0.66 * h
    n = p["n_pads"]
    spacing = bw / (n + 1)
    pw, ph, pv = 0.35 * spacing, 0.1 * bh, bh / 2 - 0.12 * bh
    cw, ch = 0.26 * w, 0.3 * h
    bg = _mix(_rgb(0.07, 0.08, 0.12), _rgb(0.12, 0.13, 0.18), (u / w + 0.5).clip(0, 1))
    board = (np.abs(u) < bw / 2) & (np.abs(v) < bh / 2)
    idx = np.clip(np.round((u + bw / 2) / spacing - 1), 0, n - 1)  # nearest pad column
    du = u - (-bw / 2 + spacing * (idx + 1))
    pads = board & (np.abs(du) < pw / 2) & (np.abs(np.abs(v) - pv) < ph / 2)
    traces = board & (np.abs(du) < 1.2) & (np.abs(v) > ch / 2) & (np.abs(v) < pv)
    chip = (np.abs(u) < cw / 2) & (np.abs(v) < ch / 2)
    mark = (np.abs(u + bw / 2 - 0.07 * w) < 0.03 * w) & (np.abs(v + bh / 2 - 0.08 * h) < 0.02 * h)
    under = np.broadcast_to(p["board"], (h, w, 3)).copy()
    under[traces] = _rgb(0.55, 0.48, 0.2)
    img = np.where(board[..., None], under, bg)
    img[mark] = _rgb(0.92, 0.92, 0.9)
    img[pads] = _rgb(0.86, 0.7, 0.28)
    img[chip] = _rgb(0.06, 0.06, 0.07) + 0.05 * (v[chip] / ch + 0.5)[:, None]
    parts = np.full((h, w), -1, np.int32)
    parts[pads] = (idx[pads] + n * (v[pads] > 0)).astype(np.int32)  # pad id: column + row
    parts[chip] = 2 * n
    return Rendered(img.astype(np.float32), board, bg=bg.astype(np.float32), parts=parts,
                    under=under.astype(np.float32))


def _tablet_params(rng):
    return {"colour": _rgb(0.96, 0.62, 0.72) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)}


def _tablet(u, v, h, w, p):
    a, b = 0.32 * w, 0.3 * h
    rr = (u / a) ** 2 + (v / b) ** 2
    fg = rr < 1
    bg = _mix(_rgb(0.12, 0.3, 0.72), _rgb(0.22, 0.45, 0.85), ((u + v) / (w + h) + 0.5).clip(0, 1))
    body = p["colour"] * (1.05 - 0.3 * rr + 0.08 * (-v / b))[..., None]
    body[np.abs(v) < 1.5] *= 0.75  # score line
    img = np.where(fg[..., None], body, bg).clip(0, 1)
    return Rendered(img.astype(np.float32), fg, bg=bg.astype(np.float32))


CLASSES = {
    "mvtec": [ClassSpec("weave", "texture", True, _weave_params, _weave),
              ClassSpec("disc", "object", False, _disc_params, _disc),
              ClassSpec("stripes", "texture", False, _stripes_params, _stripes),
              ClassSpec("bolt", "object", True, _bolt_params, _bolt)],
    "visa": [ClassSpec("blobs", "texture", False, _blobs_params, _blobs),
             ClassSpec("pcb", "object", False, _pcb_params, _pcb),
             ClassSpec("marble", "texture", False, _marble_params, _marble),
             ClassSpec("tablet", "object", False, _tablet_params, _tablet)],
}
DEFECTS = {"mvtec": ("hole", "scratch", "stain"), "visa": ("spot", "missing", "burn")}


# ---------------------------------------------------------------- defects
def _pick_point(fg: np.ndarray, rng, margin: int = 6) -> tuple[int, int]:
    """A random (x, y) inside ``fg`` at least ``margin`` px from its border."""
    inner = cv2.erode(fg.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
    ys, xs = np.nonzero(inner if inner.any() else fg)
    j = rng.integers(len(ys))
    return int(xs[j]), int(ys[j])


def _blob(shape, centre, rng, radius: tuple[float, float]) -> np.ndarray:
    """Union of a few filled ellipses near ``centre`` (no antialiasing: exact pixels)."""
    canvas = np.zeros(shape, np.uint8)
    x, y = centre
    for _ in range(int(rng.integers(3, 6))):
        cx = int(x + rng.integers(-radius[1] // 1.5, radius[1] // 1.5 + 1))
        cy = int(y + rng.integers(-radius[1] // 1.5, radius[1] // 1.5 + 1))
        axes = (int(rng.uniform(*radius)), int(rng.uniform(*radius)))
        cv2.ellipse(canvas, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                    lineType=cv2.LINE_8)
    return canvas > 0


def _contrast(img: np.ndarray, mask: np.ndarray, dark, bright) -> np.ndarray:
    """``dark`` on bright surroundings, ``bright`` on dark ones."""
    return dark if img[mask].mean() > 0.45 else bright


def _draw_defect(kind: str, r: Rendered, rng, gray: bool):
    """Draw one defect of ``kind`` onto a copy of ``r.img``; returns (img, exact bool mask)."""
    img, fg = r.img.copy(), r.fg
    h, w = fg.shape
    x, y = _pick_point(fg, rng)
    canvas = np.zeros((h, w), np.uint8)
    if kind in ("hole", "spot"):
        cv2.circle(canvas, (x, y), int(rng.integers(3, 6)), 255, -1, lineType=cv2.LINE_8)
        mask = (canvas > 0) & fg
        if kind == "hole":
            img[mask] = _contrast(img, mask, _rgb(0.03, 0.03, 0.03), _rgb(0.95, 0.95, 0.95))
        else:
            img[mask] = _contrast(img, mask, _rgb(0.1, 0.05, 0.2), _rgb(1.0, 0.97, 0.6))
    elif kind == "scratch":
        pts, ang = [(x, y)], rng.uniform(0, 2 * np.pi)
        for _ in range(3):
            ang += rng.uniform(-0.4, 0.4)
            step = rng.uniform(15, 30)
            pts.append((int(pts[-1][0] + step * np.cos(ang)), int(pts[-1][1] + step * np.sin(ang))))
        cv2.polylines(canvas, [np.array(pts, np.int32)], False, 255, 2, lineType=cv2.LINE_8)
        mask = (canvas > 0) & fg
        img[mask] = _contrast(img, mask, _rgb(0.08, 0.08, 0.08), _rgb(0.92, 0.92, 0.92))
    elif kind in ("stain", "burn"):
        mask = _blob((h, w), (x, y), rng, (5, 13)) & fg
        if kind == "burn":
            tint, alpha = _rgb(0.25, 0.12, 0.04), 0.75
        elif gray:
            tint, alpha = _contrast(img, mask, _rgb(0.1, 0.1, 0.1), _rgb(0.9, 0.9, 0.9)), 0.6
        else:
            tint, alpha = [_rgb(0.55, 0.45, 0.1), _rgb(0.2, 0.3, 0.75)][rng.integers(2)], 0.6
        img[mask] = (1 - alpha) * img[mask] + alpha * tint
    elif kind == "missing":
        if r.parts is not None:  # a component (pad, chip) is gone, showing what was under it
            ids = np.unique(r.parts[r.parts >= 0])
            mask = r.parts == ids[rng.integers(len(ids))]
            img[mask] = r.under[mask]
        elif r.bg is not None:  # a piece broken off the object's rim
            edge = fg & ~(cv2.erode(fg.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
            ys, xs = np.nonzero(edge)
            j = rng.integers(len(ys))
            cv2.circle(canvas, (int(xs[j]), int(ys[j])), int(rng.integers(10, 18)), 255, -1,
                       lineType=cv2.LINE_8)
            mask = (canvas > 0) & fg
            img[mask] = r.bg[mask]
        else:  # a patch of the texture is gone: flat underlying colour
            pts = np.array([(x + rng.integers(-18, 19), y + rng.integers(-18, 19))
                            for _ in range(5)], np.int32)
            cv2.fillPoly(canvas, [cv2.convexHull(pts)], 255, lineType=cv2.LINE_8)
            mask = canvas > 0
            img[mask] = _rgb(0.5, 0.5, 0.5)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return img, mask


# ---------------------------------------------------------------- images
def _normal(spec: ClassSpec, params: dict, h: int, w: int, rng) -> Rendered:
    """One clean normal image with a random shift and rotation."""
    if spec.kind == "texture":
        dx, dy, theta = rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-0.05, 0.05)
    else:
        dx, dy, theta = rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(-0.12, 0.12)
    u, v = _coords(h, w, dx, dy, theta)
    return spec.render(u, v, h, w, params)


def _finish(img: np.ndarray, rng, gray: bool) -> np.ndarray:
    """Gain + pixel noise, quantised: uint8 (h, w) for gray classes, (h, w, 3) RGB otherwise."""
    h, w = img.shape[:2]
    noise = rng.normal(0, 0.015, (h, w, 1 if gray else 3)).astype(np.float32)
    out = img * np.float32(rng.uniform(0.96, 1.04)) + noise
    out = np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)
    return out[..., 0] if gray else out


def _write(path: Path, arr: np.ndarray) -> None:
    """PNG or JPG by suffix; arr uint8 (h, w) or RGB (h, w, 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = arr if arr.ndim == 2 else arr[..., ::-1]
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix.lower() == ".jpg" else []
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(bgr), params)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _class_images(spec, layout, seed, ci, h, w, n_train, n_test):
    """Yield (split, kind, uint8 image, bool mask or None) for one class."""
    lid = LAYOUTS.index(layout)
    params = spec.params(np.random.default_rng([seed, lid, ci]))
    gray = spec.gray and layout == "mvtec"
    n_good = max(1, n_test // 3)
    kinds = DEFECTS[layout]
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            rng = np.random.default_rng([seed, lid, ci, 0 if split == "train" else 1, i])
            r = _normal(spec, params, h, w, rng)
            if split == "train" or i < n_good:
                yield split, "good", _finish(r.img, rng, gray), None
                continue
            kind = kinds[(i - n_good) % len(kinds)]
            for _ in range(20):  # clipping to the object can leave nothing: draw again
                img, mask = _draw_defect(kind, r, rng, gray)
                if mask.sum() >= 4:
                    break
            else:
                raise RuntimeError(f"could not place a {kind} defect on {spec.name}")
            yield split, kind, _finish(img, rng, gray), mask


def _write_mvtec(out: Path, name: str, items) -> None:
    counters: dict = {}
    for split, kind, img, mask in items:
        key = (split, kind)
        j = counters[key] = counters.get(key, -1) + 1
        _write(out / name / split / kind / f"{j:03d}.png", img)
        if mask is not None:
            _write(out / name / "ground_truth" / kind / f"{j:03d}_mask.png",
                   mask.astype(np.uint8) * 255)


def _write_visa(out: Path, name: str, items, rows: list) -> None:
    n_normal = n_anomaly = 0
    for split, kind, img, mask in items:
        if mask is None:
            rel_img = f"{name}/Data/Images/Normal/{n_normal:04d}.JPG"
            rows.append([name, split, "normal", rel_img, ""])
            n_normal += 1
        else:
            rel_img = f"{name}/Data/Images/Anomaly/{n_anomaly:03d}.JPG"
            rel_mask = f"{name}/Data/Masks/Anomaly/{n_anomaly:03d}.png"
            rows.append([name, split, "anomaly", rel_img, rel_mask])
            _write(out / rel_mask, mask.astype(np.uint8) * 255)
            n_anomaly += 1
        _write(out / rel_img, img)


def generate(out: str | Path, layout: str = "mvtec", seed: int = 0, classes: int = 2,
             n_train: int = 8, n_test: int = 12, size: int | tuple[int, int] | None = None,
             overwrite: bool = True, progress: bool = False) -> Path:
    """Write a synthetic dataset and its meta.json under ``out``; returns ``out`` as a Path.

    Args:
        layout: ``"mvtec"`` or ``"visa"`` (folder structure, file formats, look).
        seed: all randomness; the same arguments give byte-identical files.
        classes: how many classes (1..4), taken in the order listed in the module docstring.
        n_train: normal training images per class.
        n_test: test images per class (≥ 3): ``max(1, n_test // 3)`` normal, the rest
            defects spread over the layout's three kinds.
        size: int (square) or (width, height); default 256×256 (mvtec) / 320×240 (visa).
        overwrite: replace what an earlier run wrote under ``out`` (only the class folders,
            ``split_csv/`` and ``meta.json``); if False an existing meta.json is an error.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    specs = CLASSES[layout]
    if not 1 <= classes <= len(specs):
        raise InputValueError(f"classes must be in 1..{len(specs)} for layout {layout!r}, got {classes}")
    if n_train < 1 or n_test < 3:
        raise InputValueError(f"need n_train >= 1 and n_test >= 3 (one normal + two defect kinds), "
                              f"got n_train={n_train}, n_test={n_test}")
    w, h = (size, size) if isinstance(size, int) else (size or DEFAULT_SIZE[layout])
    if min(w, h) < 64:
        raise InputValueError(f"size must be at least 64×64, got {w}×{h}")
    out = Path(out)
    if (out / "meta.json").exists() and not overwrite:
        raise InputFileExistsError(f"{out / 'meta.json'} exists; pass overwrite=True to replace it")
    for stale in [s.name for s in specs] + ["split_csv", "meta.json"]:
        p = out / stale
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)

    rows: list = []
    for ci, spec in enumerate(tqdm(specs[:classes], desc=f"synthetic {layout}",
                                   disable=not progress)):
        items = _class_images(spec, layout, seed, ci, h, w, n_train, n_test)
        if layout == "mvtec":
            _write_mvtec(out, spec.name, items)
        else:
            _write_visa(out, spec.name, items, rows)

    if layout == "mvtec":
        meta = build_mvtec_meta(out)
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
        (out / "split_csv").mkdir(parents=True, exist_ok=True)
        (out / "split_csv" / "1cls.csv").write_text(buf.getvalue(), encoding="utf-8")
        meta = build_visa_meta(out)
    write_meta(out, meta)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Generate a small deterministic anomaly-detection dataset (MVTec AD or "
                    "VisA layout) and its meta.json, for the demo and the tests.")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--layout", choices=LAYOUTS, default="mvtec",
                        help="mvtec: 256×256 PNG, woven/striped textures, disc, bolt; "
                             "visa: 320×240 JPG, blobby/marble textures, pcb, tablet")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed → same bytes)")
    parser.add_argument("--classes", type=int, default=2, help="number of classes, 1..4")
    parser.add_argument("--size", type=int, nargs="+", default=None, metavar="PX",
                        help="image size: S (square) or W H; default 256 (mvtec) / 320 240 (visa)")
    parser.add_argument("--n_train", type=int, default=8, help="normal train images per class")
    parser.add_argument("--n_test", type=int, default=12,
                        help="test images per class (a third normal, the rest defective)")
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) not in (1, 2):
        parser.error("--size takes one value (square) or two (width height)")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    size = None if args.size is None else (args.size[0] if len(args.size) == 1
                                           else tuple(args.size))
    out = generate(args.out, args.layout, args.seed, args.classes, args.n_train, args.n_test,
                   size, progress=True)
    print(f"wrote {args.layout}-layout dataset to {out} (meta.json included)")
    return out


if __name__ == "__main__":
    run_cli(main, "synthetic.py")
