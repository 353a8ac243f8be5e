"""Decision thresholds from good images alone.

Without labelled defects, the only evidence of what "normal" scores look like is the k
reference images themselves. Each is scored as if it were a query:

* k >= 2, leave-one-out: reference i against a memory of the other k - 1 references.
* k = 1, augmented self-copies: the reference against its own memory, but seen through 8
  deterministic augmentations (flips, half-patch shifts, brightness +-10 %); scored unaltered it
  would match itself exactly and score ~0, which says nothing about a new good part.

Both give normal scores that are, if anything, a little high (a query at prediction time is
matched against all k references, not k - 1, and a real part is rarely flipped), so thresholds
set from them err towards fewer false alarms.

The image threshold at false-alarm rate ``fpr`` is the larger of a normal fit,
``mean + z * std`` with ``z = Phi^-1(1 - fpr)``, and the empirical ``1 - fpr`` quantile taken
as an observed score ("higher" method), which is the largest normal score whenever
``fpr < 1 / n``. With a handful of samples the fit extrapolates beyond the largest score and
the empirical term guarantees no normal reference is ever above the threshold. The pixel
threshold is the empirical ``1 - fpr`` quantile of the pooled normal pixel scores (there are
many). Everything here scores each image on its own, never normalised over a set.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import torch

from models.fasl import FASL, InferenceConfig
from models.memory import MemoryBank
from models.postprocess import MapPost
from utils.metrics import label_regions
from utils.misc import normalize_tensor

N_AUGMENTATIONS = 8
BRIGHTNESS = 0.1


def augmented_views(image: torch.Tensor, shift: int) -> torch.Tensor:
    """Deterministic augmentations of one good image.

    image: (3, S, S) float in [0, 1] (before normalisation); shift: pixels, >= 1.
    Returns (8, 3, S, S) in [0, 1]: hflip, vflip, shifts by ``shift`` px right / left / down /
    up (reflect padding fills the uncovered border), brightness x1.1 and x0.9 (clipped).
    """
    if image.dim() != 3:
        raise ValueError(f"image must be (3, S, S), got {tuple(image.shape)}")
    _, H, W = image.shape
    if not 1 <= shift < min(H, W):
        raise ValueError(f"shift must be in [1, {min(H, W) - 1}], got {shift}")
    s = shift
    padded = torch.nn.functional.pad(image[None], (s, s, s, s), mode="reflect")[0]  # [3, H+2s, W+2s]
    views = [
        image.flip(-1),
        image.flip(-2),
        padded[:, s:s + H, 0:W],  # content moves right by s
        padded[:, s:s + H, 2 * s:2 * s + W],  # left
        padded[:, 0:H, s:s + W],  # down
        padded[:, 2 * s:2 * s + H, s:s + W],  # up
        (image * (1 + BRIGHTNESS)).clamp(0, 1),
        (image * (1 - BRIGHTNESS)).clamp(0, 1),
    ]
    return torch.stack(views)  # [8, 3, H, W]


BANK_AUGMENTS = ("none", "flips", "rot90", "all")
NORMAL_SAMPLES = ("loo", "loo+views")


def bank_copies(image: torch.Tensor, kind: str) -> torch.Tensor:
    """The copies of one reference a memory bank holds under ``--augment_refs kind``.

    image: (3, S, S). Returns (A, 3, S, S), the image itself first: ``none`` (A = 1), ``flips``
    (+ horizontal and vertical flip, A = 3), ``rot90`` (+ 90, 180, 270 degree rotations, A = 4),
    ``all`` (the 8 flips and rotations of the square, A = 8). A part that comes rotated or flipped
    then finds its patches in the bank in its own orientation.
    """
    if kind not in BANK_AUGMENTS:
        raise ValueError(f"augment_refs must be one of {BANK_AUGMENTS}, got {kind!r}")
    rot = [torch.rot90(image, r, dims=(-2, -1)) for r in range(4)]
    copies = {"none": rot[:1], "flips": [image, image.flip(-1), image.flip(-2)], "rot90": rot,
              "all": rot + [r.flip(-1) for r in rot]}[kind]
    return torch.stack(copies)


def view_kinds(kind: str) -> list[int]:
    """Which of ``augmented_views``' 8 views still differ from every bank copy under ``kind``:
    the flips are dropped where the bank holds flipped copies (they would match themselves)."""
    return list(range(2, N_AUGMENTATIONS)) if kind in ("flips", "all") else list(range(N_AUGMENTATIONS))


def subset_bank(bank: MemoryBank, keep: list[int]) -> MemoryBank:
    """The memory of references ``keep`` only, sliced from a bank of all k (no re-encoding).

    Global entries are one per reference; window entries are image-major, nw per reference.
    """
    sub = MemoryBank(k=len(keep), windows=bank.windows)
    g = bank.global_memory
    idx = torch.as_tensor(keep, dtype=torch.long, device=g.embedding.device)
    sub.global_memory.fill([t[idx] for t in g.tokens], g.embedding[idx])  # L x [k', N, W_l]
    if bank.windows is not None and bank.window_memory.is_filled:
        nw = bank.windows.num_windows
        widx = (idx[:, None] * nw + torch.arange(nw, device=idx.device)[None]).reshape(-1)  # [k'*nw]
        w = bank.window_memory
        sub.window_memory.fill([t[widx] for t in w.tokens], w.embedding[widx])
    return sub


@dataclass
class NormalScores:
    """Scores of good images seen as queries.

    image_score: (n,); score_map: (n, H, W) at cfg.out_size; method: how they were obtained.
    """

    image_score: torch.Tensor
    score_map: torch.Tensor
    method: str


@torch.no_grad()
def score_references(
    model: FASL, references: torch.Tensor, bank: MemoryBank, cfg: InferenceConfig, views: torch.Tensor | None = None,
    post: MapPost | None = None, copies: int = 1,
) -> NormalScores:
    """Normal scores of the k references.

    references: (k, 3, S, S) normalised; bank: their memory (as built by build_memory), ``copies``
    entries per reference, reference-major (``bank_copies``; 1 = the references themselves).
    views: augmented copies of the references, normalised: (V, 3, S, S) of the single reference
    (needed when k = 1), or (k, V, 3, S, S) of each. With k >= 2 and views given, reference i
    *and its views* are scored against the other references (``leave-one-out+views``): V + 1
    normal samples per reference instead of one, whose spread a new good part shows better.
    post: the map post-processing the inspected images get (models/postprocess.py).
    """
    post = post or MapPost()
    k = references.shape[0]
    if bank.k != k * copies:
        raise ValueError(f"the bank holds {bank.k} entries, not {k} references x {copies} copies")
    if views is not None and views.dim() == 4:
        views = views[None]  # [1, V, 3, S, S]
    if views is not None and views.shape[0] != k:
        raise ValueError(f"views of {views.shape[0]} reference(s) given for {k}")
    if k >= 2:
        scores, maps = [], []
        for i in range(k):
            others = subset_bank(bank, [j * copies + a for j in range(k) if j != i for a in range(copies)])
            queries = references[i:i + 1] if views is None else torch.cat([references[i:i + 1], views[i]])
            pred = post.apply(model.predict(queries, others, cfg))
            scores.append(pred.image_score.float().cpu())
            maps.append(pred.score_map.float().cpu())
        return NormalScores(torch.cat(scores), torch.cat(maps), "leave-one-out" if views is None else
                            "leave-one-out+views")
    if views is None:
        raise ValueError("one reference: its augmented views are needed to estimate normal scores")
    pred = post.apply(model.predict(views[0], bank, cfg))
    return NormalScores(pred.image_score.float().cpu(), pred.score_map.float().cpu(), "augmented-self")


@dataclass
class ThresholdFit:
    """The statistics the thresholds at false-alarm rate ``fpr`` came from."""

    fpr: float
    image_threshold: float
    pixel_threshold: float
    image_scores: list[float]
    image_mean: float
    image_std: float
    image_gaussian: float  # mean + z * std
    image_empirical: float  # empirical (1 - fpr) quantile, an observed score
    pixel_median: float
    n_pixels: int
    largest_normal_region: float  # the largest region above the pixel threshold on a normal map, / map area
    margin: float = 0.0  # the image threshold is max(gaussian, empirical) x (1 + margin)


class ImageThreshold(NamedTuple):
    threshold: float  # max(gaussian, empirical)
    mean: float
    std: float
    gaussian: float  # mean + z * std
    empirical: float  # the empirical (1 - fpr) quantile, an observed score


def _check_fpr(fpr: float) -> float:
    fpr = float(fpr)
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must lie strictly between 0 and 1, got {fpr}")
    return fpr


def image_threshold(scores: np.ndarray, fpr: float, margin: float = 0.0) -> ImageThreshold:
    """scores: (n,) normal image scores -> the image threshold and the statistics behind it:
    max(mean + z * std, empirical quantile) at ``fpr``, raised by ``margin`` (a share of itself:
    x (1 + margin)), because a new good part differs more from the references than they do from
    each other (docs/predict.md, Decisions on real parts)."""
    fpr = _check_fpr(fpr)
    if not margin > -1.0:
        raise ValueError(f"margin must be > -1, got {margin}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("no normal image scores to fit a threshold on")
    mean = float(scores.mean())
    std = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
    gaussian = mean + NormalDist().inv_cdf(1.0 - fpr) * std
    empirical = float(np.quantile(scores, 1.0 - fpr, method="higher"))
    return ImageThreshold(max(gaussian, empirical) * (1.0 + margin), mean, std, gaussian, empirical)


def pixel_threshold(pixels: np.ndarray, fpr: float) -> float:
    """pixels: (P,) pooled normal pixel scores -> the empirical (1 - fpr) quantile."""
    fpr = _check_fpr(fpr)
    pixels = np.asarray(pixels).reshape(-1)
    if pixels.size == 0:
        raise ValueError("no normal pixel scores to fit a threshold on")
    return float(np.quantile(pixels, 1.0 - fpr, method="higher"))


def largest_region_fraction(maps: np.ndarray, threshold: float) -> float:
    """maps: (n, H, W). The largest 8-connected region of ``maps > threshold`` in any one map, as
    a fraction of the map's area (0 when nothing is above the threshold)."""
    maps = np.asarray(maps)
    labels, n = label_regions(maps > threshold)
    if n == 0:
        return 0.0
    return float(np.bincount(labels.ravel())[1:].max() / (maps.shape[-2] * maps.shape[-1]))


def fit_thresholds(normal: NormalScores, fpr: float, margin: float = 0.0) -> ThresholdFit:
    """Image and pixel thresholds from the normal scores (see the module docstring)."""
    scores = normal.image_score.double().numpy()
    maps = normal.score_map.float().numpy()
    pixels = maps.reshape(-1)
    image = image_threshold(scores, fpr, margin)
    pixel = pixel_threshold(pixels, fpr)
    return ThresholdFit(
        fpr=float(fpr),
        margin=float(margin),
        image_threshold=image.threshold,
        pixel_threshold=pixel,
        image_scores=[float(s) for s in scores],
        image_mean=image.mean,
        image_std=image.std,
        image_gaussian=image.gaussian,
        image_empirical=image.empirical,
        pixel_median=float(np.median(pixels)),
        n_pixels=int(pixels.size),
        largest_normal_region=largest_region_fraction(maps, pixel),
    )


@dataclass
class Thresholds:
    """A part's decision thresholds and where each came from, as predict.py uses and writes them.

    image: an image scoring above it is a ``defect``. pixel: defect regions are the connected
    pixels above it. min_region_fraction: regions smaller than this fraction of the image are
    dropped; by default the largest region above the pixel threshold on any normal view of the
    references (so no good reference would show one). Sources: ``fit``, ``fit (from FILE)`` or
    ``override``; method: how the normal scores were obtained; fit: their statistics.
    """

    image: float
    pixel: float
    fpr: float | None
    min_region_fraction: float = 0.0
    image_source: str = "fit"
    pixel_source: str = "fit"
    method: str | None = None
    fit: ThresholdFit | None = None

    @classmethod
    def fitted(cls, normal: NormalScores, fpr: float, margin: float = 0.0) -> "Thresholds":
        fit = fit_thresholds(normal, fpr, margin)
        return cls(image=fit.image_threshold, pixel=fit.pixel_threshold, fpr=fit.fpr,
                   min_region_fraction=fit.largest_normal_region, method=normal.method, fit=fit)

    @classmethod
    def by_hand(cls, image: float, pixel: float) -> "Thresholds":
        return cls(image=float(image), pixel=float(pixel), fpr=None, image_source="override", pixel_source="override")

    def with_overrides(self, image: float | None = None, pixel: float | None = None) -> "Thresholds":
        """These thresholds with the ones given by hand replaced (and marked ``override``)."""
        out = self
        if image is not None:
            out = replace(out, image=float(image), image_source="override")
        if pixel is not None:
            out = replace(out, pixel=float(pixel), pixel_source="override")
        return out

    def from_file(self, path) -> "Thresholds":
        """The same thresholds, their fitted sources marked as read from ``path``."""
        mark = lambda source: f"fit (from {path})" if source == "fit" else source  # noqa: E731
        return replace(self, image_source=mark(self.image_source), pixel_source=mark(self.pixel_source))

    def min_region_area(self, height: int, width: int) -> int:
        """The smallest region kept on an image of this size, in pixels."""
        return int(np.ceil(self.min_region_fraction * height * width))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Thresholds":
        """From ``to_dict`` (also a references file's; files written before the region size was
        derived hold none and keep every region)."""
        fit = d.get("fit")
        if fit is not None:
            fit = ThresholdFit(**{"largest_normal_region": 0.0, **fit})
        return cls(image=float(d["image"]), pixel=float(d["pixel"]), fpr=d.get("fpr"),
                   min_region_fraction=float(d.get("min_region_fraction", 0.0)),
                   image_source=d.get("image_source", "fit"), pixel_source=d.get("pixel_source", "fit"),
                   method=d.get("method"), fit=fit)


class ReferenceImages(NamedTuple):
    """The references as the bank and the threshold fit need them (all normalised):
    originals (k, 3, S, S); bank (k * A, 3, S, S), A = ``copies`` per reference (``bank_copies``);
    views: the augmented views the references-only fit scores: (V, 3, S, S) of the single
    reference when k = 1, (k, V, 3, S, S) with ``normal_sample`` ``loo+views``, else None."""

    originals: torch.Tensor
    bank: torch.Tensor
    copies: int
    views: torch.Tensor | None


def reference_images(raw: torch.Tensor, mean, std, patch_size: int, augment: str = "none",
                     normal_sample: str = "loo") -> ReferenceImages:
    """raw: (k, 3, S, S) good images in [0, 1] (not normalised) -> their ``ReferenceImages``;
    mean, std: the backbone's normalisation; views are shifted by half a patch."""
    if normal_sample not in NORMAL_SAMPLES:
        raise ValueError(f"normal_sample must be one of {NORMAL_SAMPLES}, got {normal_sample!r}")
    k = raw.shape[0]
    copies = torch.cat([bank_copies(r, augment) for r in raw])  # [k*A, 3, S, S]
    views = None
    if k == 1 or normal_sample == "loo+views":
        kinds = view_kinds(augment)
        views = torch.stack([augmented_views(r, shift=max(1, patch_size // 2))[kinds] for r in raw])  # [k, V, 3, S, S]
        views = normalize_tensor(views.flatten(0, 1), mean, std).reshape(views.shape)
        if k == 1:
            views = views[0]
    return ReferenceImages(normalize_tensor(raw, mean, std), normalize_tensor(copies, mean, std), copies.shape[0] // k, views)

