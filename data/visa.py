"""Build ``meta.json`` for VisA from its split file.

Usage (from the repo root, or from inside ``data/``)::

    python data/visa.py --data_root /path/to/VisA [--split /path/to/1cls.csv]

The split file (default ``ROOT/split_csv/1cls.csv``) has the columns
``object,split,label,image,mask``; ``split`` is ``train``/``test``, ``label`` is
``normal``/``anomaly`` and the paths are relative to ROOT, e.g.
``candle/Data/Images/Normal/0000.JPG`` and ``candle/Data/Masks/Anomaly/000.png``.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `import data` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.meta import make_sample, write_meta_and_report  # noqa: E402
from utils.cli import InputFileNotFoundError, InputValueError, add_retired_flag, run_cli  # noqa: E402

DEFAULT_SPLIT = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
SPLIT_HINT = ("VisA's split file comes with the dataset: the VisA release from "
              "github.com/amazon-science/spot-diff ships split_csv/1cls.csv, and it is also "
              "inside the VisA tarball (VisA_20220922.tar); pass it with --split")


def build_visa_meta(root: str | Path, split_csv: str | Path | None = None) -> dict:
    """Index a VisA tree from its split csv.

    Returns ``{"train": {cls: [sample]}, "test": {cls: [sample]}}`` sorted by class and image
    path; ``specie_name`` is ``"good"`` for normal and ``"anomaly"`` for anomalous images.
    Raises FileNotFoundError for a missing root, split file, image or mask (naming it) and
    ValueError for a malformed csv row (naming the row).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f"dataset root not found or not a directory: {root}")
    csv_path = Path(split_csv) if split_csv is not None else root / DEFAULT_SPLIT
    if not csv_path.is_file():
        raise InputFileNotFoundError(f"VisA split file not found: {csv_path}. {SPLIT_HINT}")

    meta = {"train": {}, "test": {}}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputValueError(f"{csv_path}: missing column(s) {missing}; expected {list(COLUMNS)}")
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            where = f"{csv_path}, line {line}"
            cls, split, label = row["object"].strip(), row["split"].strip(), row["label"].strip()
            image, mask = row["image"].strip(), (row["mask"] or "").strip()
            if not cls:
                raise InputValueError(f"{where}: empty 'object'")
            if split not in ("train", "test"):
                raise InputValueError(f"{where}: split must be 'train' or 'test', got {split!r}")
            if label not in ("normal", "anomaly"):
                raise InputValueError(f"{where}: label must be 'normal' or 'anomaly', got {label!r}")
            if not (root / image).is_file():
                raise InputFileNotFoundError(f"{where}: image not found: {root / image}")
            anomaly = int(label == "anomaly")
            if anomaly:
                if not mask:
                    raise InputValueError(f"{where}: anomalous image {image} has no mask")
                if not (root / mask).is_file():
                    raise InputFileNotFoundError(f"{where}: mask not found: {root / mask}")
            else:
                mask = ""  # VisA lists no mask for normal images; never trust a stray one
            sample = make_sample(Path(image).as_posix(), Path(mask).as_posix() if mask else "",
                                 cls, "anomaly" if anomaly else "good", anomaly)
            meta[split].setdefault(cls, []).append(sample)

    if not meta["train"] and not meta["test"]:
        raise InputValueError(f"{csv_path} lists no images")
    for split in meta:
        for cls in meta[split]:
            meta[split][cls].sort(key=lambda s: s["img_path"])
    for cls in sorted(set(meta["train"]) | set(meta["test"])):
        for split in meta:  # every class appears in both splits, possibly empty
            meta[split].setdefault(cls, [])
    return meta


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Write ROOT/meta.json (APRIL-GAN schema) for VisA from its split csv "
                    "(columns object,split,label,image,mask). " + SPLIT_HINT + ".")
    parser.add_argument("--data_root", required=True, help="VisA root (holds candle/, pcb1/, ...)")
    add_retired_flag(parser, "--root", "is now --data_root")
    parser.add_argument("--split", default=None,
                        help=f"split csv; default ROOT/{DEFAULT_SPLIT.as_posix()}")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    return write_meta_and_report(args.data_root, build_visa_meta(args.data_root, args.split))


if __name__ == "__main__":
    run_cli(main, "visa.py")
