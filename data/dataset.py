"""The torch Dataset over a meta.json split.

Each item is a :class:`Sample` (a NamedTuple, so ``default_collate`` batches it into
``image (B, 3, S, S)``, ``mask (B, 1, M, M)``, ``cls_name: list[str]``, ``anomaly (B,)`` and
``img_path: list[str]``).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.augment import defect_crop_box, quadrant_sizes, tile_2x2
from data.images import load_image, load_mask, mask_to_tensor, normalize, resize_image, resize_mask
from data.meta import SPLITS, load_meta
from utils.cli import InputValueError


class Sample(NamedTuple):
    image: torch.Tensor   # (3, S, S) float32, normalised with the backbone's mean/std
    mask: torch.Tensor    # (1, M, M) float32 of 0/1; all zero for a normal image
    cls_name: str
    anomaly: int          # 0 normal, 1 anomalous
    img_path: str         # relative to the dataset root, as in meta.json


def select_classes(meta: dict, split: str, classes: str | Sequence[str] | None) -> list[str]:
    """Validate a class filter against ``meta[split]``; None means all classes (sorted)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    available = sorted(meta[split])
    if classes is None:
        return available
    wanted = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in wanted if c not in meta[split]]
    if unknown:
        raise InputValueError(f"class(es) {unknown} not in the {split} split; available: {available}")
    return wanted


class AnomalyDataset(Dataset):
    """Images and masks of one split of a meta.json, transformed for the model.

    Args:
        root: dataset root holding ``meta.json`` (paths in it are relative to root).
        split: ``"train"`` or ``"test"``.
        classes: a class name, a list of them, or None for all.
        image_size: S, the square model input size (bicubic resize, no transpose).
        mask_size: M, the square mask size; None = S.
        mean, std: per-channel normalisation of the backbone (``Backbone.mean`` / ``.std``),
            required: a default would silently be wrong for any backbone but CLIP.
        aug_rate: probability of a 2×2 mosaic of four images of the same class, each drawn as the
            reference code draws them: a defect kind of the class (``specie_name``) uniformly,
            then an image of that kind uniformly.
        crop_rate: probability of the reference's VisA crop (for non-mosaic items), see
            :func:`data.augment.defect_crop_box`; done on the image before normalisation.
        crop_small_rate: that crop's probability of the small side on a defective image.
        seed: augmentation seed; item ``i`` in epoch ``e`` draws from
            ``np.random.default_rng([seed, e, i])``, so results do not depend on worker
            count or iteration order. Call :meth:`set_epoch` every epoch.
        meta: an already loaded meta dict (skips reading ``root/meta.json``).
    """

    def __init__(self, root: str | Path, split: str = "test",
                 classes: str | Sequence[str] | None = None, image_size: int = 518,
                 mask_size: int | None = None, *, mean: Sequence[float],
                 std: Sequence[float], aug_rate: float = 0.0,
                 crop_rate: float = 0.0, seed: int = 0, meta: dict | None = None,
                 crop_small_rate: float = 0.6):
        self.root = Path(root)
        self.meta = load_meta(root) if meta is None else meta
        self.split = split
        self.classes = select_classes(self.meta, split, classes)
        self.samples = [s for c in self.classes for s in self.meta[split][c]]
        # each class's samples by defect kind, the pools a mosaic draws its tiles from
        self._by_kind: dict[str, dict[str, list[int]]] = {c: {} for c in self.classes}
        for i, s in enumerate(self.samples):
            self._by_kind[s["cls_name"]].setdefault(s["specie_name"], []).append(i)
        self.image_size = int(image_size)
        self.mask_size = int(mask_size) if mask_size is not None else self.image_size
        self.mean, self.std = tuple(mean), tuple(std)
        rates = {"aug_rate": aug_rate, "crop_rate": crop_rate, "crop_small_rate": crop_small_rate}
        bad = {k: v for k, v in rates.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"{', '.join(bad)} must be in [0, 1], got {', '.join(map(str, bad.values()))}")
        self.aug_rate, self.crop_rate = float(aug_rate), float(crop_rate)
        self.crop_small_rate = float(crop_small_rate)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call at the start of every epoch)."""
        self.epoch = int(epoch)

    @property
    def item_classes(self) -> list[str]:
        """The class of every item, in item order."""
        return [s["cls_name"] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, i: int):
        """Raw image (PIL RGB) and bool mask (H, W) of sample ``i``."""
        s = self.samples[i]
        img_path = self.root / s["img_path"]
        img = load_image(img_path)
        mask_path = self.root / s["mask_path"] if s["mask_path"] else ""
        mask = load_mask(mask_path, (img.height, img.width), image_path=img_path)
        return img, mask

    def __getitem__(self, i: int) -> Sample:
        s = self.samples[i]
        S, M = self.image_size, self.mask_size
        rng = np.random.default_rng([self.seed, self.epoch, i])
        # always draw both numbers so each choice uses the same stream position
        u_mosaic, u_crop = rng.random(2)
        if u_mosaic < self.aug_rate:
            image, mask, anomaly = self._mosaic(i, rng)
        else:
            img, mask_full = self._read(i)
            image, mask = resize_image(img, S), resize_mask(mask_full, M)
            if u_crop < self.crop_rate:
                # the crop is cut from the model input (as the reference does), then zoomed back
                mask_s = mask if M == S else resize_mask(mask_full, S)
                box = defect_crop_box(mask_s, rng, self.crop_small_rate)
                if box is not None:
                    image = resize_image(Image.fromarray(image), S, box)
                    mask = resize_mask(mask_s, M, box)
            anomaly = int(s["anomaly"])
        return Sample(normalize(image, self.mean, self.std), mask_to_tensor(mask),
                      s["cls_name"], anomaly, s["img_path"])

    def _mosaic(self, i: int, rng: np.random.Generator):
        """Four random images of item ``i``'s class, each resized to a quadrant.

        Each tile is drawn as the reference code (APRIL-GAN's MVTec dataset) draws it: a defect
        kind of the class uniformly (``good`` included), then one of its images uniformly.
        Returns uint8 image (S, S, 3), bool mask (M, M) and the mosaic's anomaly label
        (1 if any tile is anomalous).
        """
        kinds = self._by_kind[self.samples[i]["cls_name"]]
        names = sorted(kinds)
        members = []
        for _ in range(4):
            pool = kinds[names[int(rng.integers(0, len(names)))]]
            members.append(pool[int(rng.integers(0, len(pool)))])
        img_q = quadrant_sizes(self.image_size, self.image_size)
        mask_q = quadrant_sizes(self.mask_size, self.mask_size)
        img_tiles, mask_tiles = [], []
        for j, iq, mq in zip(members, img_q, mask_q):
            img, mask = self._read(j)
            img_tiles.append(resize_image(img, iq))
            mask_tiles.append(resize_mask(mask, mq))
        anomaly = max(int(self.samples[j]["anomaly"]) for j in members)
        return tile_2x2(img_tiles), tile_2x2(mask_tiles), anomaly


def class_batches(item_classes: Sequence[str], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of item indices that each hold one class only, in a random order.

    Every class's items are shuffled and cut into batches of ``batch_size`` (a class's last batch
    may be smaller); the batches of all classes are then shuffled together. Every item appears
    once. Used to give the heads' BatchNorms single-class batches in training.
    """
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(item_classes):
        by_class.setdefault(c, []).append(i)
    batches = []
    for c in sorted(by_class):
        items = by_class[c]
        order = torch.randperm(len(items), generator=generator).tolist()
        shuffled = [items[j] for j in order]
        batches += [shuffled[i:i + batch_size] for i in range(0, len(shuffled), batch_size)]
    return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]


def balanced_batches(item_classes: Sequence[str], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch's batches of item indices in which every class is drawn equally often on average.

    ``len(item_classes)`` items are drawn with replacement, each with probability
    1 / (number of classes * its class's size) (torch's ``WeightedRandomSampler``), and cut into
    batches of ``batch_size`` in the order drawn: a class of 20 items is seen as often as one of
    60, and the epoch keeps its length.
    """
    from collections import Counter

    from torch.utils.data import WeightedRandomSampler

    counts = Counter(item_classes)
    weights = torch.tensor([1.0 / counts[c] for c in item_classes], dtype=torch.double)
    order = list(WeightedRandomSampler(weights, len(item_classes), replacement=True, generator=generator))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class TestImages(NamedTuple):
    """A class's test images, transformed once and reused by every run that scores them."""

    images: torch.Tensor  # (N, 3, S, S) float32, normalised
    masks: np.ndarray     # (N, M, M) uint8 of 0/1
    labels: np.ndarray    # (N,) 0 normal, 1 anomalous
    paths: list[str]      # relative to the dataset root


def load_test_images(root: str | Path, meta: dict, cls: str, image_size: int, mask_size: int,
                     mean: Sequence[float], std: Sequence[float],
                     indices: Sequence[int] | None = None) -> TestImages:
    """The test split of ``cls`` (or its samples ``indices``, in meta.json order) as tensors."""
    dataset = AnomalyDataset(root, split="test", classes=cls, image_size=image_size, mask_size=mask_size,
                             mean=mean, std=std, meta=meta)
    order = range(len(dataset)) if indices is None else indices
    items = [dataset[i] for i in order]
    if not items:
        return TestImages(torch.empty(0, 3, image_size, image_size), np.empty((0, mask_size, mask_size), np.uint8),
                          np.empty(0, np.int64), [])
    return TestImages(torch.stack([s.image for s in items]),
                      np.stack([s.mask[0].numpy() for s in items]).astype(np.uint8),
                      np.array([s.anomaly for s in items], dtype=np.int64), [s.img_path for s in items])
