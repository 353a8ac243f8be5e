"""Reading images and masks, and the resize/normalise transform shared by all loaders.

Conventions (DESIGN.md): images are converted to RGB (MVTec's grid/screw/zipper are
grayscale), masks are binarised at > 0, non-square images are resized to the square model input
(never transposed). Sizes are written ``(h, w)`` = (rows, cols).

Files are read as cameras write them (:func:`read_pixels`):

* 8-bit files (grey, palette, RGB, RGBA, bilevel) are converted to RGB as PIL does; CMYK by
  PIL's profile-free rule R = 255 (1 - C)(1 - K) (likewise G with M, B with Y; an embedded ICC
  profile is not applied).
* Deeper files keep their real values: 16-bit grey (PNG, TIFF; 12- or 10-bit data stored in 16
  bits too), 32-bit integer and 32-bit float grey, and 16-bit colour (PNG / TIFF, which PIL would cut
  to their high byte: read with OpenCV). An image goes to 8 bits by :func:`scale_to_8bit`: the range
  from 0 (or from the minimum, where values go below 0) to the image's maximum is stretched to
  0..255, all channels alike. So the black level stays black, 12-bit data fills the 8 bits, and
  the scale of an image depends on its brightest pixel alone (a defect darker than the part leaves
  it unchanged); references and inspected images follow the same rule. A constant image (maximum
  = lower end) gives 0 everywhere, no division by zero.
* The EXIF orientation (tag 274, JPEGs of cameras and phones, TIFFs) is applied, so an image is
  seen upright as a viewer shows it, and its mask is turned the same way.
* Refused with :class:`ImageReadError`, one line naming the file: float values that are NaN or
  infinite (no faithful 8-bit scale), files of several frames or pages (which one is meant is
  ambiguous; a JPEG's MPO extra pictures, a camera's previews, are not frames of that kind: its
  first, primary picture is read), and modes PIL cannot convert to RGB.

A mask is binarised at > 0 of its real values: a 16-bit mask holding labels 1, 2, ... or 256 is
not first cut to 8 bits. 8-bit masks are read as grayscale, as before.
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

from utils.cli import InputError, InputFileNotFoundError
from utils.misc import normalize_tensor  # noqa: F401  (data.images.normalize_tensor stays importable)

# CLIP's own normalisation (open_clip OPENAI_DATASET_MEAN / STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Box = tuple  # (x0, y0, x1, y1) integer pixel box, x1/y1 exclusive

# PIL modes of one channel deeper than 8 bits: read as numbers, not converted
DEEP_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 = upright, 2..8 = mirrored and / or turned


class ImageReadError(InputError, RuntimeError):
    """An image or mask file is missing, corrupt or unreadable; the message names the file."""


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn ``pixels`` (H, W) or (H, W, C) upright by an EXIF orientation (1..8).

    2 mirrors left-right, 3 turns 180 degrees, 4 mirrors top-bottom, 5 transposes (mirror + turn
    90 degrees counter-clockwise), 6 turns 90 degrees clockwise, 7 transverses, 8 turns 90 degrees
    counter-clockwise; 1 and any other value leave the pixels as stored. Returns a view.
    """
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.swapaxes(0, 1)
    if orientation == 6:
        return pixels.swapaxes(0, 1)[:, ::-1]  # row r of the result is column r read bottom-up
    if orientation == 7:
        return pixels.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return pixels.swapaxes(0, 1)[::-1]
    return pixels


def scale_to_8bit(values: np.ndarray, path: str | Path = "image") -> np.ndarray:
    """Real pixel values (any shape, integer or float) -> uint8 of the same shape.

    lo = min(0, minimum), hi = maximum over all values; out = round(255 (v - lo) / (hi - lo)).
    hi == lo (a constant image of 0, or of one negative value) gives zeros. Raises
    :class:`ImageReadError` naming ``path`` when a value is NaN or infinite.
    """
    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        raise ImageReadError(f"image {path} holds {int(bad.sum())} NaN or infinite value(s): it has no faithful "
                             f"8-bit scale")
    if v.size == 0:
        return np.zeros(v.shape, dtype=np.uint8)
    lo, hi = min(0.0, float(v.min())), float(v.max())
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.uint8)
    return np.rint((v - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def _is_deep_colour(im: Image.Image) -> bool:
    """Whether PIL shows a 16-bit-per-channel colour file as 8-bit RGB(A) (it keeps the high byte)."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return False
    args = im.tile[0][3]
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    return isinstance(rawmode, str) and ";16" in rawmode


def read_pixels(path: str | Path, grey: bool = False) -> np.ndarray:
    """A file's pixels as written, upright (EXIF orientation applied).

    Returns (H, W) for ``grey`` (8-bit files converted to grayscale), else (H, W, 3) RGB for an
    8-bit or colour file and (H, W) for a deep grey one. dtype: uint8 for 8-bit files; uint16,
    int32 or float32 (the real values) for deeper ones. Raises :class:`ImageReadError`, naming the
    file, when it is missing, corrupt, of several frames, or of a mode that cannot become RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"file not found: {path}")
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":
                raise ImageReadError(f"image {path} holds {frames} frames (pages): which one is meant is ambiguous; "
                                     f"save the one to use as a file of its own")
            deep_colour = _is_deep_colour(im)  # before getexif, which may decode a PNG (and drop its tile)
            orientation = im.getexif().get(ORIENTATION_TAG, 1)
            im.load()  # decode now, so truncated/corrupt data fails here, naming the file
            if deep_colour:
                pixels = None
            elif im.mode in DEEP_GREY_MODES:
                pixels = np.array(im)
                pixels = pixels.astype(pixels.dtype.newbyteorder("="))  # I;16B reads big-endian
            else:
                pixels = np.array(im.convert("L" if grey else "RGB"))
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    if pixels is None:
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # 16-bit BGR(A), orientation not applied
        if pixels is None or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
            raise ImageReadError(f"cannot read the 16-bit colour image {path}")
        pixels = np.ascontiguousarray(pixels[..., 2::-1])  # BGR(A) -> RGB, alpha dropped
        if grey:  # a 16-bit colour mask: a pixel is its brightest channel
            pixels = pixels.max(axis=2)
    return np.ascontiguousarray(orient(pixels, int(orientation)))


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as an 8-bit RGB ``PIL.Image``, as :func:`read_pixels` reads it and
    :func:`scale_to_8bit` scales a deeper one (grey images are repeated over R, G and B).

    Raises :class:`ImageReadError` naming the file if it is missing, corrupt or unreadable.
    """
    pixels = read_pixels(path)
    if pixels.dtype != np.uint8:
        pixels = scale_to_8bit(pixels, path)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)  # [H, W] -> [H, W, 3]
    return Image.fromarray(pixels)  # uint8 [H, W, 3] -> RGB


def load_mask(path: str | Path, size_hw: tuple[int, int],
              image_path: str | Path | None = None) -> np.ndarray:
    """Read a mask and binarise it at > 0 of its real values (8-bit masks as grayscale).

    ``path`` "" (a normal image) gives an all-False mask. ``size_hw`` is the (h, w) of the
    image the mask belongs to; a mask of another size is an error naming both files (it is
    never silently resized). Returns a bool array of shape ``size_hw``.
    """
    if not str(path):
        return np.zeros(size_hw, dtype=bool)
    pixels = read_pixels(path, grey=True)
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise ImageReadError(f"mask {path} holds NaN or infinite values")
    mask = pixels > 0
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
                raise InputFileNotFoundError(f"{flag}: {spec} lists {len(missing)} missing file(s), e.g. {missing[0]}")
            what = f"list {spec}"
        elif path.is_file():
            files, what = [path], None
        else:
            raise InputFileNotFoundError(f"{flag}: {spec} is no file, folder or pattern")
        if not files:
            raise InputFileNotFoundError(f"{flag}: {what} selects no image (extensions: {', '.join(IMAGE_EXTENSIONS)})")
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
