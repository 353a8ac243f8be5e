"""A small dataset of real photographs with synthetic defects, for the demo: the texture photographs
that scikit-image ships (``brick``, ``grass``, ``gravel``: 512 x 512 grey, public domain), each a
class in the MVTec AD layout.

    python data/textures.py --out /tmp/textures --classes brick grass --seed 0

Every image is a crop of the class's photograph at a random place, flipped and rotated by a
multiple of 90 degrees at random (the part as a camera meets it, never twice the same view);
defects are drawn on the crop by data/anomaly_synthesis.py (``cutpaste``: a patch of the same
photograph moved elsewhere; ``noise``: a blob filled with another texture), with their exact masks.
Good images: ``train/good`` and a third of ``test``; the rest of ``test`` holds one folder per
defect kind, masks in ``ground_truth/<kind>/NNN_mask.png``. The same seed gives the same bytes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make `import data` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.anomaly_synthesis import SynthesisConfig, cutpaste, noise_blob  # noqa: E402
from data.meta import write_meta  # noqa: E402
from data.mvtec import build_mvtec_meta  # noqa: E402
from utils.cli import run_cli  # noqa: E402

TEXTURES = ("brick", "grass", "gravel")
KINDS = ("cutpaste", "noise")
DEFECT_AREA = (0.005, 0.04)  # a defect's share of the image, drawn log-uniformly


def photograph(name: str) -> np.ndarray:
    """The scikit-image texture ``name`` as (512, 512, 3) uint8 RGB."""
    import skimage.data

    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r} (one of {', '.join(TEXTURES)})")
    grey = getattr(skimage.data, name)()
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def view(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``photo`` (size x size), flipped and turned by a random multiple of 90 degrees."""
    H, W = photo.shape[:2]
    if size > min(H, W):
        raise ValueError(f"crop size {size} is larger than the photograph ({H}x{W})")
    y, x = rng.integers(0, H - size + 1), rng.integers(0, W - size + 1)
    crop = photo[y:y + size, x:x + size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(np.rot90(crop, int(rng.integers(0, 4))))


def defect(image: np.ndarray, kind: str, source: np.ndarray, rng: np.random.Generator):
    """(image with a ``kind`` defect, its bool mask)."""
    lo, hi = DEFECT_AREA
    area = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    out = cutpaste(image, rng, area) if kind == "cutpaste" else noise_blob(image, rng, area, source)
    return out.image, out.mask


def generate(out: str | Path, classes=TEXTURES, seed: int = 0, n_train: int = 12, n_test: int = 12,
             size: int = 160) -> Path:
    """Write the dataset (and its meta.json) under ``out``; returns ``out``."""
    out = Path(out)
    others = {c: photograph(c) for c in TEXTURES}
    for ci, name in enumerate(classes):
        photo = others[name]
        source = others[TEXTURES[(TEXTURES.index(name) + 1) % len(TEXTURES)]]  # a foreign texture for blobs
        rng = np.random.default_rng([seed, ci, 1729])
        for i in range(n_train):
            _save(out / name / "train" / "good" / f"{i:03d}.png", view(photo, size, rng))
        n_good = n_test // 3
        counters = {k: 0 for k in KINDS}
        for i in range(n_test):
            img = view(photo, size, rng)
            if i < n_good:
                _save(out / name / "test" / "good" / f"{i:03d}.png", img)
                continue
            kind = KINDS[(i - n_good) % len(KINDS)]
            img, mask = defect(img, kind, view(source, size, rng), rng)
            j = counters[kind]
            counters[kind] += 1
            _save(out / name / "test" / kind / f"{j:03d}.png", img)
            _save(out / name / "ground_truth" / kind / f"{j:03d}_mask.png", mask.astype(np.uint8) * 255)
    write_meta(out, build_mvtec_meta(out))
    return out


def write_lot(root: Path, cls: str, out: Path) -> tuple[Path, Path]:
    """A lot for predict.py from a written class: ``out/refs/`` holds its first good training image,
    ``out/images/`` every other image of the class (the other good training images and the test
    images, named ``<folder>_<file>``). Returns (refs folder, images folder)."""
    import shutil

    refs, images = out / "refs", out / "images"
    good = sorted((root / cls / "train" / "good").glob("*.png"))
    if not good:
        raise FileNotFoundError(f"{root / cls / 'train' / 'good'} holds no image")
    refs.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    shutil.copy(good[0], refs / f"{cls}.png")
    for path in good[1:]:
        shutil.copy(path, images / f"train_{path.name}")
    for path in sorted((root / cls / "test").glob("*/*.png")):
        shutil.copy(path, images / f"{path.parent.name}_{path.name}")
    return refs, images


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--classes", nargs="+", choices=TEXTURES, default=list(TEXTURES),
                   help="the photographs to use, one class each (default: all three)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--n_train", type=int, default=12, help="good training images per class (default: %(default)s)")
    p.add_argument("--n_test", type=int, default=12,
                   help="test images per class, a third good (default: %(default)s)")
    p.add_argument("--size", type=int, default=160, help="side of each image in pixels (default: %(default)s)")
    p.add_argument("--lot", default=None, metavar="DIR",
                   help="also write a lot for predict.py from the (single) class: DIR/refs/ one good image, "
                        "DIR/images/ the class's other images")
    args = p.parse_args(argv)
    if args.lot and len(args.classes) != 1:
        p.error("--lot takes one class (--classes NAME)")
    for flag in ("n_train", "n_test", "size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    if args.size > 512:
        p.error("--size must be at most 512 (the photographs' side)")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    root = generate(args.out, args.classes, args.seed, args.n_train, args.n_test, args.size)
    print(f"wrote {root} ({', '.join(args.classes)})")
    if args.lot:
        refs, images = write_lot(root, args.classes[0], Path(args.lot))
        print(f"wrote a lot: references {refs}, images {images}")
    return root


if __name__ == "__main__":
    run_cli(main, "data/textures.py")
