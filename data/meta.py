"""meta.json: the dataset index shared by every part of FASL.

The file follows the APRIL-GAN / AnomalyCLIP schema so that existing files keep working::

    {"train": {cls_name: [sample, ...]}, "test": {cls_name: [sample, ...]}}

    sample = {"img_path": str,      # relative to the dataset root, '/'-separated
              "mask_path": str,     # relative to the root; "" for a normal image
              "cls_name": str,      # equals the key it is listed under
              "specie_name": str,   # defect kind ("good" for normal images)
              "anomaly": 0 | 1}

The builders (``data/mvtec.py``, ``data/visa.py``) produce it with :func:`write_meta`;
everything that reads it goes through :func:`load_meta`, which validates the schema.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.cli import InputFileNotFoundError, InputValueError

META_NAME = "meta.json"
SPLITS = ("train", "test")
SAMPLE_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

BUILD_HINT = ("build it with `python data/mvtec.py --data_root {root}` (MVTec AD layout) or "
              "`python data/visa.py --data_root {root}` (VisA layout)")


class MetaError(InputValueError):
    """meta.json exists but does not follow the schema; the message names the bad key/sample."""


def make_sample(img_path: str, mask_path: str, cls_name: str, specie_name: str,
                anomaly: int) -> dict:
    """One meta.json sample with its keys in the schema's order."""
    return {"img_path": img_path, "mask_path": mask_path, "cls_name": cls_name,
            "specie_name": specie_name, "anomaly": int(anomaly)}


def is_image_file(path: Path) -> bool:
    """True for a visible file with a known image extension (any case)."""
    return (path.is_file() and not path.name.startswith(".")
            and path.suffix.lower() in IMAGE_EXTENSIONS)


def meta_to_json(meta: dict) -> str:
    """Serialise ``meta`` deterministically: splits in schema order, classes sorted.

    Samples keep the order the builder gave them (builders sort them), so two builds of
    the same tree give byte-identical text.
    """
    ordered = {split: {cls: [make_sample(**s) for s in meta[split][cls]]
                       for cls in sorted(meta[split])}
               for split in SPLITS}
    return json.dumps(ordered, indent=4, ensure_ascii=False) + "\n"


def write_meta(root: str | Path, meta: dict) -> Path:
    """Validate ``meta`` and write it to ``root/meta.json``; returns that path."""
    validate_meta(meta, source="meta")
    path = Path(root) / META_NAME
    path.write_bytes(meta_to_json(meta).encode("utf-8"))
    return path


def load_meta(root: str | Path) -> dict:
    """Read and validate ``root/meta.json``.

    Returns the dict ``{"train": {cls: [sample]}, "test": {cls: [sample]}}``.
    Raises FileNotFoundError (saying which command builds the file) when it is missing and
    :class:`MetaError` naming the bad key or sample when the schema is violated.
    """
    root = Path(root)
    path = root / META_NAME
    if not path.is_file():
        raise InputFileNotFoundError(f"{path} not found; " + BUILD_HINT.format(root=root))
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetaError(f"{path} is not valid JSON: {err}") from err
    validate_meta(meta, source=str(path))
    return meta


def validate_meta(meta, source: str = "meta.json") -> None:
    """Check the schema of a meta dict; raise :class:`MetaError` naming the first problem."""
    if not isinstance(meta, dict):
        raise MetaError(f"{source}: top level must be an object with keys 'train' and 'test', "
                        f"got {type(meta).__name__}")
    for split in SPLITS:
        if split not in meta:
            raise MetaError(f"{source}: missing top-level key '{split}'")
        if not isinstance(meta[split], dict):
            raise MetaError(f"{source}: '{split}' must map class names to lists of samples")
        for cls, samples in meta[split].items():
            if not isinstance(samples, list):
                raise MetaError(f"{source}: {split}/{cls} must be a list of samples")
            for i, sample in enumerate(samples):
                _validate_sample(sample, f"{source}: {split}/{cls}[{i}]", cls)
    extra = sorted(set(meta) - set(SPLITS))
    if extra:
        raise MetaError(f"{source}: unexpected top-level key(s) {extra}; expected 'train', 'test'")


def _validate_sample(sample, where: str, cls: str) -> None:
    if not isinstance(sample, dict):
        raise MetaError(f"{where}: sample must be an object, got {type(sample).__name__}")
    where = f"{where} ({sample.get('img_path', '?')!r})"
    for key in SAMPLE_KEYS:
        if key not in sample:
            raise MetaError(f"{where}: missing key '{key}'")
    for key in ("img_path", "mask_path", "cls_name", "specie_name"):
        if not isinstance(sample[key], str):
            raise MetaError(f"{where}: '{key}' must be a string")
    if not sample["img_path"]:
        raise MetaError(f"{where}: 'img_path' is empty")
    if sample["cls_name"] != cls:
        raise MetaError(f"{where}: 'cls_name' is {sample['cls_name']!r} but the sample is "
                        f"listed under class {cls!r}")
    anomaly = sample["anomaly"]
    if isinstance(anomaly, bool) or anomaly not in (0, 1):
        raise MetaError(f"{where}: 'anomaly' must be 0 or 1, got {anomaly!r}")
    if anomaly == 1 and not sample["mask_path"]:
        raise MetaError(f"{where}: anomalous sample has an empty 'mask_path'")
    if anomaly == 0 and sample["mask_path"]:
        raise MetaError(f"{where}: normal sample must have mask_path \"\", "
                        f"got {sample['mask_path']!r}")


def missing_files(root: str | Path, paths) -> list[str]:
    """The paths (relative to ``root``, as meta.json lists them) that are not files, in order."""
    root = Path(root)
    return [p for p in dict.fromkeys(paths) if not (root / p).is_file()]


def check_files(root: str | Path, paths, what: str = "meta.json", show: int = 5) -> None:
    """Raise FileNotFoundError naming the first ``show`` missing files and their count, so a
    run finds every missing image and mask before it starts instead of class by class.

    paths: relative to ``root``; what: where they are listed, for the message.
    """
    missing = missing_files(root, paths)
    if missing:
        more = f" and {len(missing) - show} more" if len(missing) > show else ""
        raise InputFileNotFoundError(f"{len(missing)} file(s) listed in {what} are missing under {root}: "
                                     f"{', '.join(missing[:show])}{more}")


def split_files(meta: dict, split: str, classes, with_masks: bool = True) -> list[str]:
    """Every image (and, ``with_masks``, mask) file of ``classes`` in ``split``, relative to the root."""
    out = []
    for cls in classes:
        for s in meta[split][cls]:
            out.append(s["img_path"])
            if with_masks and s["mask_path"]:
                out.append(s["mask_path"])
    return out


def write_meta_and_report(root: str | Path, meta: dict) -> Path:
    """Write ``root/meta.json`` and print one line per class (train / test / anomalous counts)."""
    path = write_meta(root, meta)
    for cls in sorted(meta["test"]):
        n_bad = sum(s["anomaly"] for s in meta["test"][cls])
        print(f"{cls:>16}: train {len(meta['train'].get(cls, [])):4d}  test {len(meta['test'][cls]):4d} "
              f"({n_bad} anomalous)")
    print(f"wrote {path}")
    return path
