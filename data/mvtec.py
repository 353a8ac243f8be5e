"""Build ``meta.json`` for a dataset in MVTec AD layout.

Usage (from the repo root, or from inside ``data/``)::

    python data/mvtec.py --data_root /path/to/mvtec_anomaly_detection

Layout expected under ROOT (any folder with ``train/good`` and ``test/`` is a class, so a
user's own dataset in this layout works too)::

    <cls>/train/good/<name>.<ext>
    <cls>/test/good/<name>.<ext>
    <cls>/test/<defect>/<name>.<ext>
    <cls>/ground_truth/<defect>/<name>_mask.<ext>

Masks are paired with images by file name (``test/crack/000.png`` ↔
``ground_truth/crack/000_mask.png``), never by position in a listing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `import data` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.meta import IMAGE_EXTENSIONS, is_image_file, make_sample, write_meta_and_report  # noqa: E402
from utils.cli import InputFileNotFoundError, InputValueError, add_retired_flag, run_cli  # noqa: E402

NORMAL = "good"


def discover_classes(root: str | Path) -> list[str]:
    """Sorted names of the folders under ``root`` that hold ``train/good`` and ``test/``."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f"dataset root not found or not a directory: {root}")
    classes = sorted(d.name for d in root.iterdir()
                     if (d / "train" / NORMAL).is_dir() and (d / "test").is_dir())
    if not classes:
        raise InputFileNotFoundError(f"no class folders under {root}: a class is a folder holding "
                                     f"'train/{NORMAL}/' and 'test/' (MVTec AD layout)")
    return classes


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def find_mask(root: Path, cls: str, defect: str, image: Path) -> Path:
    """Mask of ``<cls>/test/<defect>/<image>``: ``ground_truth/<defect>/<stem>_mask.<ext>``.

    ``<stem>.<ext>`` in the same folder is accepted too (some user datasets name masks like
    their images). Raises FileNotFoundError naming the image and the expected mask.
    """
    gt = root / cls / "ground_truth" / defect
    for name in (f"{image.stem}_mask", image.stem):
        for ext in IMAGE_EXTENSIONS:
            for cand in (gt / f"{name}{ext}", gt / f"{name}{ext.upper()}"):
                if cand.is_file():
                    return cand
    raise InputFileNotFoundError(f"no mask for defect image {image}: expected "
                                 f"{gt / (image.stem + '_mask.png')}")


def build_mvtec_meta(root: str | Path) -> dict:
    """Index an MVTec-layout tree.

    Returns ``{"train": {cls: [sample]}, "test": {cls: [sample]}}`` with classes and samples
    sorted (by defect folder, then file name) and paths relative to ``root``. Raises
    FileNotFoundError for a missing root / mask and ValueError for a class without images.
    """
    root = Path(root)
    meta = {"train": {}, "test": {}}
    for cls in discover_classes(root):
        rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
        train_dir = root / cls / "train" / NORMAL
        train = [make_sample(rel(p), "", cls, NORMAL, 0) for p in _images(train_dir)]
        if not train:
            raise InputValueError(f"class {cls!r} has no training images in {train_dir}")
        test = []
        test_dir = root / cls / "test"
        for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
            defect = defect_dir.name
            for img in _images(defect_dir):
                if defect == NORMAL:
                    test.append(make_sample(rel(img), "", cls, NORMAL, 0))
                else:
                    mask = find_mask(root, cls, defect, img)
                    test.append(make_sample(rel(img), rel(mask), cls, defect, 1))
        if not test:
            raise InputValueError(f"class {cls!r} has no test images in {test_dir}")
        meta["train"][cls] = train
        meta["test"][cls] = test
    return meta


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Write ROOT/meta.json (APRIL-GAN schema) for a dataset in MVTec AD layout: "
                    "every folder with train/good and test/ is a class; masks are "
                    "ground_truth/<defect>/<name>_mask.png.")
    parser.add_argument("--data_root", required=True,
                        help="dataset root holding one folder per class")
    add_retired_flag(parser, "--root", "is now --data_root")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    return write_meta_and_report(args.data_root, build_mvtec_meta(args.data_root))


if __name__ == "__main__":
    run_cli(main, "mvtec.py")
