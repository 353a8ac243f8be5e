"""k-shot reference selection: which k normal images of a class the model may see.

The choice is a pure function of (meta, class, k, seed), is written next to the results
(:func:`save_kshot`) and can be read back (:func:`load_kshot`) to repeat a run exactly.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from data.images import image_to_tensor, load_image
from utils.cli import InputFileNotFoundError, InputValueError


def stable_hash(text: str) -> int:
    """A 63-bit integer from ``text`` that is the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def normal_train_images(meta: dict, cls_name: str) -> list[str]:
    """Sorted relative paths of the normal images of ``cls_name`` in the train split."""
    if cls_name not in meta["train"]:
        raise InputValueError(f"class {cls_name!r} not in the train split; available: "
                              f"{sorted(meta['train'])}")
    return sorted(s["img_path"] for s in meta["train"][cls_name] if s["anomaly"] == 0)


def draw_references(pool: Sequence[str], cls_name: str, k: int, seed: int, at_most: bool = False,
                    where: str = "its train split") -> list[str]:
    """k distinct images of ``pool`` (sorted first), chosen by ``seed`` for class ``cls_name``.

    The generator is seeded by ``(seed, stable_hash(cls_name))``, so each class gets its own
    reproducible draw. Returns the chosen paths in draw order. Raises ValueError when k exceeds
    the pool (saying how many there are, ``where``); with ``at_most`` such a class gives all its
    images instead (training memory banks).
    """
    pool = sorted(pool)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if at_most:
        k = min(k, len(pool))
    if k > len(pool) or not pool:
        raise InputValueError(f"k={k} reference images requested for class {cls_name!r}, but {where} has only "
                              f"{len(pool)} normal images")
    rng = np.random.default_rng([int(seed), stable_hash(cls_name)])
    idx = rng.choice(len(pool), size=k, replace=False)
    return [pool[j] for j in idx]


def sample_kshot(meta: dict, cls_name: str, k: int, seed: int, at_most: bool = False) -> list[str]:
    """k distinct normal train images of ``cls_name`` in meta.json, chosen by ``seed`` (see
    :func:`draw_references`); relative paths as in meta.json, in draw order."""
    return draw_references(normal_train_images(meta, cls_name), cls_name, k, seed, at_most)


def save_kshot(path: str | Path, references: dict[str, Sequence[str]],
               extra: dict | None = None) -> Path:
    """Write ``{"references": {cls: [img_path]}, "info": extra}`` as JSON to ``path``.

    ``extra`` holds whatever identifies the choice (k, seed, dataset root, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"references": {c: list(references[c]) for c in sorted(references)},
           "info": dict(extra or {})}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_kshot(path: str | Path, meta: dict | None = None) -> dict[str, list[str]]:
    """Read a file written by :func:`save_kshot`; returns ``{cls: [img_path]}``.

    With ``meta``, every path must be a normal train image of its class in that meta (so a
    file from another dataset is refused, naming the path).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"k-shot file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        refs = doc["references"]
        ok = isinstance(refs, dict) and all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in refs.values())
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputValueError(f"{path} is not a k-shot file ({err!r})") from err
    if not ok:
        raise InputValueError(f"{path}: 'references' must map class names to lists of paths")
    if meta is not None:
        for cls, paths in refs.items():
            allowed = set(normal_train_images(meta, cls))
            for p in paths:
                if p not in allowed:
                    raise InputValueError(f"{path}: reference {p!r} of class {cls!r} is not a "
                                          f"normal train image of that class in meta.json")
    return {c: list(v) for c, v in refs.items()}


def choose_references(meta: dict, classes: Sequence[str], k: int, seed: int,
                      refs_file: str | Path | None = None, at_most: bool = False) -> dict[str, list[str]]:
    """The k references of every class: reused from ``refs_file`` (a :func:`save_kshot` file)
    when given, else drawn with :func:`sample_kshot` (``at_most``: all of a class that has
    fewer). A class missing from the file is an error."""
    if refs_file is None:
        return {c: sample_kshot(meta, c, k, seed, at_most) for c in classes}
    refs = load_kshot(refs_file, meta)
    missing = [c for c in classes if c not in refs]
    if missing:
        raise InputValueError(f"{refs_file} has no references for class(es) {missing}")
    return {c: refs[c] for c in classes}


def load_reference_images(root: str | Path, paths: Sequence[str], image_size: int,
                          mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Load reference images (paths relative to ``root``) with the Dataset's transform.

    Returns float32 tensor (k, 3, S, S), S = image_size.
    """
    root = Path(root)
    return torch.stack([image_to_tensor(load_image(root / p), image_size, mean, std)
                        for p in paths])
