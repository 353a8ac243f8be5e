"""Reading images and masks, and the resize/normalise transform shared by all loaders.

Conventions (DESIGN.md): images are converted to RGB (MVTec's grid/screw/zipper are
grayscale), masks are read as grayscale and binarised at > 0, non-square images are resized
to the square model input (never transposed). Sizes are written ``(h, w)`` = (rows, cols).
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from utils.cli import InputError

# CLIP's own normalisation (open_clip OPENAI_DATASET_MEAN / STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Box = tuple  # (x0, y0, x1, y1) integer pixel box, x1/y1 exclusive


class ImageReadError(InputError, RuntimeError):
    """An image or mask file is missing, corrupt or unreadable; the message names the file."""


def _open(path: str | Path, mode: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncated/corrupt data fails here, naming the file
            return im.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as an RGB ``PIL.Image`` (grayscale/palette/RGBA are converted).

    Raises :class:`ImageReadError` naming the file if it is missing, corrupt or unreadable.
    """
    return _open(path, "RGB")


def load_mask(path: str | Path, size_hw: tuple[int, int],
              image_path: str | Path | None = None) -> np.ndarray:
    """Read a mask as grayscale and binarise it at > 0.

    ``path`` "" (a normal image) gives an all-False mask. ``size_hw`` is the (h, w) of the
    image the mask belongs to; a mask of another size is an error naming both files (it is
    never silently resized). Returns a bool array of shape ``size_hw``.
    """
    if not str(path):
        return np.zeros(size_hw, dtype=bool)
    mask = np.asarray(_open(path, "L")) > 0
    if mask.shape != tuple(size_hw):
        of = f"its image {image_path}" if image_path is not None else "the image"
        raise ImageReadError(f"mask {path} has size (h, w) = {mask.shape} but {of} has "
                             f"{tuple(size_hw)}")
    return mask


def _as_hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(img: Image.Image, size, box: Box | None = None) -> np.ndarray:
    """Crop ``img`` to ``box`` (whole image if None) and resize it bicubically.

    ``size``: int S (square) or (h, w). Returns uint8 array (h, w, 3).
    """
    h, w = _as_hw(size)
    box = (0, 0, img.width, img.height) if box is None else tuple(box)
    out = img.resize((w, h), Image.BICUBIC, box=box)  # PIL takes (width, height)
    return np.asarray(out, dtype=np.uint8)


def resize_mask(mask: np.ndarray, size, box: Box | None = None) -> np.ndarray:
    """Crop a bool mask (H, W) to ``box`` and resize it to ``size`` (int or (h, w)).

    The mask is resized as float (area averaging when shrinking, bilinear otherwise, both
    pixel-centre aligned like the image resize) and re-binarised at 0.5, so a region lands
    where the same region of the image lands. Returns bool (h, w).
    """
    h, w = _as_hw(size)
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        mask = mask[y0:y1, x0:x1]
    if not mask.any():
        return np.zeros((h, w), dtype=bool)
    if mask.shape == (h, w):
        return mask.copy()
    shrink = h <= mask.shape[0] and w <= mask.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = cv2.resize(mask.astype(np.float32), (w, h), interpolation=interp)
    return out >= 0.5


def normalize(arr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, 3) → float32 tensor (3, H, W) = (arr / 255 - mean) / std per channel."""
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch wants writable memory
        arr = arr.copy()
    return normalize_tensor(torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0), mean, std)


def normalize_tensor(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(..., 3, H, W) float in [0, 1] → (x - mean) / std per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - mean_t) / std_t


def image_to_tensor(img: Image.Image, image_size: int, mean: Sequence[float],
                    std: Sequence[float]) -> torch.Tensor:
    """The model input transform: RGB PIL image → bicubic resize to S×S → normalised
    float32 tensor (3, S, S)."""
    return normalize_tensor(image_to_unit_tensor(img, image_size), mean, std)


def image_to_unit_tensor(img: Image.Image, image_size: int) -> torch.Tensor:
    """RGB PIL image → bicubic resize to S×S → float32 tensor (3, S, S) in [0, 1] (not normalised)."""
    return torch.from_numpy(np.array(resize_image(img, image_size))).permute(2, 0, 1).float().div_(255.0)


def list_images(specs: str | Sequence[str], flag: str = "--images") -> list[Path]:
    """Expand image arguments into files, in a stable order, duplicates dropped.

    Each spec is a folder (every image below it, recursively, sorted), a glob pattern (sorted
    matches that are images; ``**`` recurses), a ``.txt`` list (one path per line, relative to the
    list's folder; ``#`` comments), or any other file, taken as it is (reading it may still fail
    later, and is reported then). Images are files with an extension of
    ``data.meta.IMAGE_EXTENSIONS``, any case, not hidden. Paths are returned as given (not
    resolved). Raises FileNotFoundError naming ``flag`` and the spec that selects no image, or
    the lines of a list that name no file.
    """
    from data.meta import IMAGE_EXTENSIONS, is_image_file

    specs = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    found: list[Path] = []
    for spec in map(str, specs):
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if is_image_file(p))
            what = f"folder {spec}"
        elif glob.has_magic(spec):
            files = sorted(p for p in map(Path, glob.glob(str(path), recursive=True)) if is_image_file(p))
            what = f"pattern {spec!r}"
        elif path.is_file() and path.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            files = [path.parent / ln for ln in lines if ln and not ln.startswith("#")]
            missing = [str(p) for p in files if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{flag}: {spec} lists {len(missing)} missing file(s), e.g. {missing[0]}")
            what = f"list {spec}"
        elif path.is_file():
            files, what = [path], None
        else:
            raise FileNotFoundError(f"{flag}: {spec} is no file, folder or pattern")
        if not files:
            raise FileNotFoundError(f"{flag}: {what} selects no image (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        found += files
    unique, seen = [], set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """bool (M, M) → float32 tensor (1, M, M) of 0/1."""
    return torch.from_numpy(np.array(mask, dtype=np.float32)).unsqueeze(0)
