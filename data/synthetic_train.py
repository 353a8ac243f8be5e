"""Training set of good images with defects synthesised on the fly (no masks needed).

The images come from a meta.json ``train`` split (:meth:`SynthesizedAnomalyDataset.from_meta`)
or from a plain list of files (:func:`data.images.list_images` + :meth:`from_files`). Every epoch a
fixed fraction of them stays clean (:func:`data.anomaly_synthesis.clean_indices`); each other
image gets one ``cutpaste`` or ``noise`` defect, drawn at the model input size, with its exact
mask. Items are :class:`data.dataset.Sample`, so the training loop is the same as with real
masks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from data.anomaly_synthesis import (CLEAN, Synthesis, SynthesisConfig, clean_indices, keep_clean,
                                    synthesize)
from data.dataset import Sample
from data.images import load_image, mask_to_tensor, normalize, resize_image, resize_mask
from data.kshot import normal_train_images
from utils.cli import InputValueError

CLEAN_RATE = 0.3  # share of the images left without a defect every epoch (train.py --clean_rate)
_CLEAN_STREAM = 0x636C65616E  # "clean": the per-epoch clean draw never shares an item's stream


def relative_to_common_root(files: Sequence[Path]) -> tuple[Path, list[str]]:
    """The deepest folder holding every file, and each file's '/'-separated path below it."""
    files = [Path(f).resolve() for f in files]
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return root, [f.relative_to(root).as_posix() for f in files]


def split_references(pool: Sequence[str], references: Sequence[str], min_train: int = 2) -> list[str]:
    """The training images of a class: ``pool`` without its ``references`` when at least
    ``min_train`` images remain, else the whole pool (a defect drawn on a reference still
    deviates from the reference's clean copy, only clean references score exactly 0)."""
    refs = set(references)
    rest = [p for p in pool if p not in refs]
    return rest if len(rest) >= min_train else list(pool)


class SynthesizedAnomalyDataset(Dataset):
    """Good images with synthetic defects, as :class:`data.dataset.Sample` items.

    Args:
        root: folder the image paths are relative to.
        items: ``(img_path, cls_name)`` pairs.
        image_size: S, the square model input size; defects are drawn at this size.
        mask_size: M (None = S); the mask is resized like real masks when M != S.
        mean, std: the backbone's normalisation.
        clean_rate: fraction of the images left clean each epoch (exactly
            ``round(clean_rate * len)``, a new random subset every epoch).
        synthesis: which defect kinds and sizes (:class:`SynthesisConfig`).
        seed: item ``i`` in epoch ``e`` draws from ``np.random.default_rng([seed, e, i])``, the
            clean subset from its own stream of ``(seed, e)``; call :meth:`set_epoch`.
    """

    def __init__(self, root: str | Path, items: Sequence[tuple[str, str]], image_size: int = 518,
                 mask_size: int | None = None, *, mean: Sequence[float],
                 std: Sequence[float], clean_rate: float = CLEAN_RATE,
                 synthesis: SynthesisConfig | None = None, seed: int = 0):
        if not items:
            raise InputValueError("no training images")
        if not 0.0 <= clean_rate <= 1.0:
            raise ValueError(f"clean_rate must be in [0, 1], got {clean_rate}")
        self.root = Path(root)
        self.samples = [(str(p), str(c)) for p, c in items]
        self.classes = sorted({c for _, c in self.samples})
        self.image_size = int(image_size)
        self.mask_size = int(mask_size) if mask_size is not None else self.image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.clean_rate = float(clean_rate)
        self.synthesis = synthesis or SynthesisConfig()
        self.seed = int(seed)
        self.set_epoch(0)

    @classmethod
    def from_meta(cls, root: str | Path, meta: dict, classes: Sequence[str],
                  exclude: dict[str, Sequence[str]] | None = None, **kwargs) -> "SynthesizedAnomalyDataset":
        """The normal ``train`` images of ``classes``; ``exclude[c]`` (the references) are left
        out by :func:`split_references`."""
        exclude = exclude or {}
        items = [(p, c) for c in classes
                 for p in split_references(normal_train_images(meta, c), exclude.get(c, ()))]
        return cls(root, items, **kwargs)

    @classmethod
    def from_files(cls, root: str | Path, paths: Sequence[str], cls_name: str = "custom",
                   exclude: Sequence[str] = (), **kwargs) -> "SynthesizedAnomalyDataset":
        """Files (relative to ``root``) as one class ``cls_name``; ``exclude`` as above."""
        return cls(root, [(p, cls_name) for p in split_references(list(paths), exclude)], **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s defects and clean subset (call at the start of every epoch)."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch, _CLEAN_STREAM])
        self.clean = clean_indices(len(self.samples), self.clean_rate, rng)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def item_classes(self) -> list[str]:
        """The class of every item, in item order."""
        return [c for _, c in self.samples]

    def _load(self, i: int) -> np.ndarray:
        return resize_image(load_image(self.root / self.samples[i][0]), self.image_size)

    def synthesized(self, i: int) -> tuple[np.ndarray, Synthesis]:
        """The resized good image ``i`` (uint8 (S, S, 3)) and its :class:`Synthesis` this epoch."""
        image = self._load(i)
        if self.clean[i]:
            return image, keep_clean(image)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        n = len(self.samples)
        # texture source of a noise blob: another image of the set (any class), as DRAEM
        # takes textures from outside the object's own appearance
        j = int(rng.integers(0, n - 1)) if n > 1 else i
        j = j + 1 if n > 1 and j >= i else j
        source = image if j == i else (lambda: self._load(j))
        return image, synthesize(image, rng, self.synthesis, source)

    def __getitem__(self, i: int) -> Sample:
        _, syn = self.synthesized(i)
        mask = syn.mask if self.mask_size == self.image_size else resize_mask(syn.mask, self.mask_size)
        path, cls_name = self.samples[i]
        return Sample(normalize(syn.image, self.mean, self.std), mask_to_tensor(mask), cls_name,
                      int(syn.kind != CLEAN), path)
