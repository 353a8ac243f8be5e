"""The decision layer: from scored images to verdicts (ok / review / defect), defect regions and
masks, with thresholds from the inspected lot itself where it is large enough and from the good
references otherwise. predict.py, the decision benchmark (bench/decisions.py) and the tests all
decide through this module; scoring a lot lives in models/lot.py.

Thresholds (measured leave-one-class-out, docs/predict.md):

* **From the lot** (``fit_lot``): most parts of a lot are good, so the lower part of its score
  distribution is the good parts' and carries their spread. With q_a the lot's a-quantile of
  log image scores, the image threshold is ``exp(q_a + c (q_a - q_b))``: the bulk's location
  plus c times its lower spread, in log space (scores are positive and skewed; a ratio is what
  transfers between parts of different score levels). The review band is ``c -+ band``: at or
  below its lower edge an image is ``ok``, above its upper edge a ``defect``, in between it goes
  to ``review``. Nothing here assumes a defect rate beyond "fewer than half": a lot half or more
  of which lies above the references-only threshold is warned about as mostly defective, as is
  one too small for its statistics; at ``FALLBACK_ABOVE`` (60 %) and with two or more references,
  a lot of ``--lot auto`` is decided from the references alone (``falls_back``).
* **From the references alone** (``Thresholds`` of models/thresholds.py: their normal views at a
  false-alarm rate), for a single image or a small lot; the review band lies above the threshold.

Regions and masks (``defect_regions``): a region is a connected set of pixels above the pixel
threshold that holds a pixel above the image's review threshold (so every region that a verdict
rests on is drawn, however small, and nothing weaker than a good image's evidence is); each
region's mask is cut at ``pixel + mask_level x (its own peak - pixel)``, so a strong defect is
not drawn with its whole halo and a weaker second defect keeps its own outline.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch

from models.fasl import FASL, InferenceConfig
from models.lot import LotScoring
from models.memory import MemoryBank
from models.postprocess import MapPost
from models.thresholds import ReferenceImages, Thresholds, score_references
from utils.cli import InputValueError
from utils.regions import Region, Regions, resize_map

VERDICTS = ("ok", "review", "defect")
LOT_MODES = ("auto", "on", "off")
SMALL_LOT = 20  # below it the lot's statistics are noisier (measured: docs/measurements.md); said in a warning
MAX_PIXEL_MAPS = 256  # good maps the lot's pixel threshold is fitted on, at most
# a lot with at least this share of its images above the references-only threshold, each scored
# against the references alone, is warned about as mostly defective: measured on five real classes
# (docs/measurements.md), 60-67 % of test-split lots (75-80 % defective) reach it, 0-7 % of lots with
# 10-45 % defects (where one unusual reference flags much of the lot)
MOSTLY_ABOVE = 0.5
# ... and, with at least FALLBACK_MIN_REFS references, a lot with at least FALLBACK_ABOVE of it there is
# decided from the references alone (``falls_back``): on five real classes (docs/measurements.md) it
# fired on none of the 90 lots with 10-45 % defects at k = 2 and 4, and on 47-60 % of test-split lots,
# whose defects it then catches (0.08 -> 0.53-0.64); with one reference it also fired on healthy
# lots (one unusual reference flags much of a lot), so k = 1 only warns
FALLBACK_ABOVE = 0.6
FALLBACK_MIN_REFS = 2
MOSTLY_DEFECTIVE = ("references", "warn")


@dataclass(frozen=True)
class LotRule:
    """The lot threshold's constants (module docstring): quantiles ``anchor`` (a) > ``base`` (b),
    the central threshold ``c`` lower spreads above the anchor, the review band ``band`` spreads
    either side of it."""

    anchor: float = 0.5
    base: float = 0.2
    c: float = 2.5
    band: float = 0.5
    known_floor: float = 1.0  # known defects never pull the review threshold below anchor + this many spreads

    def __post_init__(self):
        if not 0.0 < self.base < self.anchor < 1.0:
            raise ValueError(f"lot rule quantiles must satisfy 0 < base < anchor < 1, got {self.base}, {self.anchor}")
        if self.band < 0 or self.c - self.band < 0:
            raise ValueError(f"the review band must lie above the anchor: 0 <= band <= c, got c {self.c}, "
                             f"band {self.band}")


@dataclass(frozen=True)
class DecisionSettings:
    """Every knob between a lot's scores and its verdicts, with the measured defaults (the one
    place they are defined: predict.py's flags and the benchmark read them from here).

    lot: ``auto`` (lot-aware scoring and lot thresholds when the lot holds at least ``min_lot``
        images, the references alone otherwise), ``on`` (always; a smaller lot is an error) or
        ``off`` (every image on its own, thresholds from the references).
    mostly_defective: what a lot-aware lot that looks mostly defective gets (``falls_back``):
        ``references`` (decided again as with ``lot off``) or ``warn`` (a warning only).
    scoring: how a lot is scored (models/lot.py); rule: the lot threshold (``LotRule``).
    fpr: the references-only fit's false-alarm rate, and the pixel threshold's rate on good maps.
    margin: the references-only image threshold x (1 + margin); None: ``SELF_VIEWS_MARGIN`` with
        one reference (its own views look more alike than a new good part does), 0 with more.
    ref_band: the references-only review band: from the threshold up to (1 + 2 ref_band) x it.
    mask_level, min_region_area, regions_for_ok: the regions (``defect_regions``).
    known_match: with known defects (``--defect_refs``), an ``ok`` image some patch of which lies
        closer to a known defect's defect patches than to the good parts by more than this
        (``Prediction.known_match``) goes to ``review``; None (the default): never. Measured on five
        real classes, the match separates a known defect's kind from good parts on some (cookie)
        and not on others (hazelnut), and no margin chosen on four classes helped the fifth: an
        opt-in, to set per part with ``--redecide`` (every image's match is saved).
    """

    lot: str = "auto"
    min_lot: int = 10
    mostly_defective: str = "references"
    scoring: LotScoring = LotScoring()
    rule: LotRule = LotRule()
    fpr: float = 0.05
    margin: float | None = None
    ref_band: float = 0.03
    normal_sample: str = "loo+views"
    augment_refs: str = "none"
    mask_level: float = 0.4
    min_region_area: int = 0
    regions_for_ok: bool = False
    known_match: float | None = None  # off: measured not to transfer (docs/measurements.md 2026-12-07)

    def __post_init__(self):
        if self.lot not in LOT_MODES:
            raise ValueError(f"lot must be one of {LOT_MODES}, got {self.lot!r}")
        if self.known_match is not None and not math.isfinite(self.known_match):
            raise ValueError(f"known_match must be a finite number or None (never), got {self.known_match}")
        if self.mostly_defective not in MOSTLY_DEFECTIVE:
            raise ValueError(f"mostly_defective must be one of {MOSTLY_DEFECTIVE}, got {self.mostly_defective!r}")
        if self.min_lot < 3:
            raise ValueError(f"min_lot must be >= 3, got {self.min_lot}")
        if not 0.0 < self.fpr < 1.0:
            raise ValueError(f"fpr must lie strictly between 0 and 1, got {self.fpr}")
        if self.margin is not None and not self.margin > -1.0:
            raise ValueError(f"margin must be > -1, got {self.margin}")
        if not 0.0 <= self.ref_band < 1.0:
            raise ValueError(f"ref_band must lie in [0, 1), got {self.ref_band}")
        if not 0.0 <= self.mask_level < 1.0:
            raise ValueError(f"mask_level must lie in [0, 1), got {self.mask_level}")
        if self.min_region_area < 0:
            raise ValueError(f"min_region_area must be >= 0, got {self.min_region_area}")

    def lot_aware(self, n: int) -> bool:
        """Whether a lot of ``n`` images is scored and thresholded as a lot (``on`` refuses a lot
        smaller than ``min_lot``)."""
        if self.lot == "on" and n < self.min_lot:
            raise InputValueError(f"--lot on needs at least {self.min_lot} images (the smallest lot whose statistics were "
                                  f"measured to hold), got {n}; use --lot auto or off")
        return self.lot == "on" or (self.lot == "auto" and n >= self.min_lot)

    def to_dict(self) -> dict:
        return asdict(self)


SELF_VIEWS_MARGIN = 0.25  # one reference's views against itself look more alike than a new good part does


@dataclass
class Verdicts:
    """A run's decision thresholds and where they came from.

    ok_at_most: an image scoring at or below it is ``ok``; defect_above: above it a ``defect``;
    between the two, ``review`` (equal: no band). image: the threshold without the band (the
    band's middle). pixel: regions are the connected pixels above it. source: ``lot`` (fitted on
    the lot's scores), ``references`` (on the references' normal views) or ``override``.
    colour: (lo, hi) of the overlays' colour scale, the same for every image of the run.
    stats: the numbers the fit came from; warnings: what a person should know about the lot.
    """

    ok_at_most: float
    defect_above: float
    image: float
    pixel: float
    source: str
    colour: tuple[float, float]
    stats: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def verdict(self, score: float) -> str:
        if score > self.defect_above:
            return "defect"
        return "review" if score > self.ok_at_most else "ok"

    def without_band(self, score: float) -> str:
        """The verdict a single threshold (the band's middle) would give: ``ok`` or ``defect``."""
        return "defect" if score > self.image else "ok"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["colour"] = list(self.colour)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Verdicts":
        d = dict(d)
        d["colour"] = tuple(d["colour"])
        return cls(**d)


def _log_quantiles(scores: np.ndarray, rule: LotRule) -> tuple[float, float]:
    x = np.log(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))
    return float(np.quantile(x, rule.anchor)), float(np.quantile(x, rule.base))


def lot_band(scores: Sequence[float], rule: LotRule) -> tuple[float, float, float, float]:
    """(ok_at_most, image, defect_above, spread) from a lot's image scores (n,) (module docstring);
    spread: the log-space lower spread q_a - q_b."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size < 2 or not np.isfinite(scores).all():
        raise ValueError(f"a lot threshold needs at least 2 finite scores, got {scores.size}")
    qa, qb = _log_quantiles(scores, rule)
    spread = max(qa - qb, 0.0)
    at = lambda c: math.exp(qa + c * spread)  # noqa: E731
    return at(rule.c - rule.band), at(rule.c), at(rule.c + rule.band), spread


def pixel_level(maps: Sequence[np.ndarray], fpr: float) -> tuple[float, float]:
    """(the (1 - fpr) quantile, the median) of the pooled pixel scores of good images' maps."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must lie strictly between 0 and 1, got {fpr}")
    pixels = np.concatenate([np.asarray(m, dtype=np.float32).reshape(-1) for m in maps]) if len(maps) else None
    if pixels is None or pixels.size == 0:
        raise ValueError("no good image's map to set the pixel threshold on")
    return float(np.quantile(pixels, 1.0 - fpr, method="higher")), float(np.median(pixels))


def colour_range(pixel_median: float, threshold: float) -> tuple[float, float]:
    """The overlays' colour scale: blue at the good pixels' median, the review threshold at three
    quarters of the scale (orange), red only above it: a good part is never painted red by a
    scale centred on the pixel threshold."""
    lo = min(pixel_median, threshold)
    return lo, lo + max(threshold - lo, 1e-6) / 0.75


def good_sample(scores: np.ndarray, threshold: float, at_most: int = MAX_PIXEL_MAPS) -> list[int]:
    """Indices of at most ``at_most`` images scoring at or below ``threshold``, spread evenly over
    their scores (the same choice whatever order the lot came in)."""
    good = sorted((i for i in range(len(scores)) if scores[i] <= threshold), key=lambda i: (scores[i], i))
    if len(good) <= at_most:
        return good
    return [good[j] for j in np.linspace(0, len(good) - 1, at_most).round().astype(int)]


def fit_lot(scores: Sequence[float], load_maps: Callable[[list[int]], Iterable[np.ndarray]], rule: LotRule,
            pixel_fpr: float, reference_scores: Sequence[float] = (),
            reference_threshold: float | None = None, single_scores: Sequence[float] | None = None) -> Verdicts:
    """Thresholds from the lot itself.

    scores: (n,) every lot image's score; load_maps: given indices into ``scores``, their score maps
    (H, W) at the map size: the pixel threshold is fitted on those of images at or below the
    review band's lower edge (``good_sample``: a bounded number, so a large lot is never held in
    memory); reference_scores: the references scored as lot images are (reported; warned about
    when above the defect threshold); reference_threshold: the references-only image threshold,
    to warn when most of the lot lies above it (a lot mostly defective, or unlike its references),
    judged on ``single_scores``: (n,) each lot image's score against the references alone, the
    scale that threshold was fitted on (``Prediction.single_score``; None: no such warning).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ok_at_most, image, defect_above, spread = lot_band(scores, rule)
    good = good_sample(scores, ok_at_most)
    pixel, median = pixel_level(list(load_maps(good)), pixel_fpr)
    warnings = []
    if scores.size < SMALL_LOT:
        warnings.append(f"a lot of {scores.size} images is small for its own statistics: false alarms measured "
                        f"0.09 on lots of 10-15 images against 0.065 from {SMALL_LOT} up (docs/measurements.md)")
    above_refs = None
    if reference_threshold is not None and single_scores is not None:
        alone = np.asarray(single_scores, dtype=np.float64).reshape(-1)
        if alone.shape != scores.shape:
            raise ValueError(f"single_scores has {alone.size} values for a lot of {scores.size}")
        above_refs = float((alone > reference_threshold).mean())
        if above_refs >= MOSTLY_ABOVE:
            warnings.append(f"{100 * above_refs:.0f} % of the lot scores above the threshold the references alone "
                            f"give ({reference_threshold:.4g}): the lot looks mostly defective (the lot's "
                            f"thresholds assume most of it is good: decide it with --lot off), or unlike its "
                            f"references (check them)")
    refs = [float(s) for s in reference_scores]
    high_refs = [s for s in refs if s > defect_above]
    if high_refs:
        warnings.append(f"{len(high_refs)} of {len(refs)} reference(s) score above the lot's defect threshold "
                        f"({defect_above:.4g}) when scored as lot images: they differ from the lot's good parts")
    stats = {"n": int(scores.size), "rule": asdict(rule), "log_spread": spread,
             "quantiles": {str(rule.anchor): float(np.quantile(scores, rule.anchor)),
                           str(rule.base): float(np.quantile(scores, rule.base))},
             "reference_scores": refs, "share_above_reference_threshold": above_refs,
             "pixel_fpr": pixel_fpr, "n_good_maps": len(good)}
    return Verdicts(ok_at_most, defect_above, image, pixel, "lot", colour_range(median, ok_at_most), stats, warnings)


def falls_back(verdicts: Verdicts, n_refs: int, settings: DecisionSettings) -> bool:
    """Whether a lot fitted by ``fit_lot`` is to be decided again from its ``n_refs`` references
    alone: it looks mostly defective (at least ``FALLBACK_ABOVE`` of it above the references-only
    threshold, each image scored against the references alone), the lot's own thresholds, which
    assume most of it is good, cannot hold, and there are enough references (``FALLBACK_MIN_REFS``)
    for that share to be trusted; ``settings.mostly_defective == "warn"``, and ``lot`` ``on`` (the
    lot's thresholds asked for), never fall back."""
    share = verdicts.stats.get("share_above_reference_threshold")
    return (settings.mostly_defective == "references" and settings.lot == "auto" and verdicts.source == "lot"
            and share is not None
            and share >= FALLBACK_ABOVE and n_refs >= FALLBACK_MIN_REFS)


def fallback_warning(verdicts: Verdicts, n_refs: int) -> str:
    """The warning a lot decided from its references alone carries (``falls_back``)."""
    share = verdicts.stats["share_above_reference_threshold"]
    return (f"{100 * share:.0f} % of the lot scores above the threshold the {n_refs} references alone give: it "
            f"looks mostly defective, so its own thresholds (which assume most of it is good) cannot hold; it was "
            f"scored and decided from the references alone, as with --lot off (--mostly_defective warn keeps the "
            f"lot's)")


def with_known_defects(verdicts: Verdicts, defect_scores: Sequence[float], floor: float,
                       margin: float = 0.03) -> Verdicts:
    """Verdicts moved by a few images of known bad parts (``--defect_refs``), scored as the lot is.

    When a known defect scores at or below the review threshold, that kind of defect would pass
    as ok: the review threshold moves to just below the lowest known defect (``1 - margin`` of its
    score), never below ``floor`` (where the good parts' scores would start to flood the review
    pile), and the defect threshold keeps its ratio to it. Known defects scoring above the review
    threshold change nothing. The scores and the move are recorded in ``stats``."""
    scores = [float(x) for x in defect_scores]
    if not scores:
        return verdicts
    lowest = min(scores)
    stats = dict(verdicts.stats, known_defect_scores=scores, known_defect_floor=floor)
    warnings = list(verdicts.warnings)
    target = max(floor, lowest * (1.0 - margin))
    if lowest > verdicts.ok_at_most or target >= verdicts.ok_at_most:
        if lowest <= verdicts.ok_at_most:
            warnings.append(f"a known defect scores {lowest:.4g}, below the review threshold, and the threshold cannot "
                            f"go lower than {floor:.4g} without flooding the review pile with good parts: such "
                            f"defects may pass as ok")
        return replace(verdicts, stats=stats, warnings=warnings)
    ratio = verdicts.defect_above / verdicts.ok_at_most
    stats["moved_by_known_defects"] = {"ok_at_most": verdicts.ok_at_most, "to": target}
    return replace(verdicts, ok_at_most=target, image=target * math.sqrt(ratio), defect_above=target * ratio,
                   stats=stats, warnings=warnings)


def lot_floor(scores: Sequence[float], rule: LotRule) -> float:
    """The lowest review threshold known defects may move a lot's to: anchor + ``known_floor`` spreads."""
    qa, qb = _log_quantiles(np.asarray(scores, dtype=np.float64), rule)
    return math.exp(qa + rule.known_floor * max(qa - qb, 0.0))


def from_references(image: float, pixel: float, pixel_median: float, band: float, source: str = "references",
                    stats: dict | None = None, warnings: list[str] | None = None) -> Verdicts:
    """Verdicts from a references-only fit (models/thresholds.py ``Thresholds``) or thresholds given
    by hand. ``image`` stays where an image stops being ``ok`` (the fitted or given threshold: the
    operating point the measurements chose); the review band lies above it, up to
    ``image x (1 + 2 band)``, so it sorts the flagged images into ``review`` and ``defect`` and
    changes neither what is caught nor the false alarms."""
    if not 0.0 <= band < 1.0:
        raise ValueError(f"the review band must lie in [0, 1), got {band}")
    return Verdicts(image, image * (1.0 + 2.0 * band), image * (1.0 + band), pixel, source,
                    colour_range(pixel_median, image), dict(stats or {}), list(warnings or []))


@torch.no_grad()
def fit_references(model: FASL, cfg: InferenceConfig, post: MapPost, refs: ReferenceImages, bank: MemoryBank,
                   settings: DecisionSettings) -> Thresholds:
    """The references-only thresholds (models/thresholds.py): the references' normal views scored
    against the others (or, k = 1, against itself), fitted at ``settings.fpr``, with the margin."""
    normal = score_references(model, refs.originals, bank, cfg, refs.views, post=post, copies=refs.copies)
    margin = settings.margin if settings.margin is not None else \
        (SELF_VIEWS_MARGIN if normal.method == "augmented-self" else 0.0)
    return Thresholds.fitted(normal, settings.fpr, margin)


def reference_verdicts(thresholds: Thresholds, settings: DecisionSettings, warnings: Sequence[str] = ()) -> Verdicts:
    """The Verdicts of references-only (or hand-set) thresholds, with the references' review band."""
    fit = thresholds.fit
    median = fit.pixel_median if fit is not None else 0.0
    source = "references" if thresholds.image_source.startswith("fit") else thresholds.image_source
    return from_references(thresholds.image, thresholds.pixel, median, settings.ref_band, source,
                           stats={"thresholds": thresholds.to_dict()}, warnings=list(warnings))


# ----------------------------------------------------------------------------- regions

def defect_regions(score_map: np.ndarray, seed: float, floor: float, mask_level: float = 0.0,
                   min_area: int = 0) -> Regions:
    """The defect regions of one map (module docstring).

    score_map: (H, W) at the image's size; seed: a region must hold a pixel above it (the review
    threshold); floor: regions are connected pixels above it (the pixel threshold); mask_level in
    [0, 1): each region is cut at floor + mask_level x (its peak - floor); min_area: smaller
    pieces are dropped (pixels). Returns the regions, largest first, and their mask.
    """
    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.ndim != 2:
        raise ValueError(f"score_map must be (H, W), got {score_map.shape}")
    if not 0.0 <= mask_level < 1.0:
        raise ValueError(f"mask_level must lie in [0, 1), got {mask_level}")
    n, labels = cv2.connectedComponents((score_map > floor).astype(np.uint8), connectivity=8)
    if n <= 1:
        return Regions(mask=np.zeros(score_map.shape, dtype=bool), regions=[])
    peak = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(peak, labels.reshape(-1), score_map.reshape(-1))
    peak[0] = -np.inf  # the background is never a region
    seeded = peak > seed  # [n]
    level = floor + mask_level * np.maximum(peak - floor, 0.0)  # [n], each region's own cut
    mask = seeded[labels] & (score_map > level[labels])
    return _regions_of(mask, score_map, min_area)


def _regions_of(mask: np.ndarray, score_map: np.ndarray, min_area: int) -> Regions:
    """Connected pieces (8-connectivity) of ``mask`` with their statistics, pieces smaller than
    ``min_area`` dropped from both the list and the mask."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    fg = labels.reshape(-1) > 0
    flat, values = labels.reshape(-1)[fg], score_map.reshape(-1)[fg].astype(np.float64)
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, flat, values)
    total = np.bincount(flat, weights=values, minlength=n)
    keep = np.zeros(n, dtype=bool)
    regions = []
    for label in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        keep[label] = True
        regions.append(Region(bbox=[x, y, w, h], area=area, centroid=[float(c) for c in centroids[label]],
                              max_score=float(peak[label]), mean_score=float(total[label] / area)))
    regions.sort(key=lambda r: (-r.area, r.bbox[1], r.bbox[0]))
    return Regions(mask=keep[labels], regions=regions)


@dataclass
class Outcome:
    """One image's decision: its map at the image's size (H, W), verdict, the verdict without
    the band, and the regions with their mask (none for an ``ok`` image unless asked for);
    like_known: sent to review because it looks like a known defect (``DecisionSettings.known_match``)."""

    full_map: np.ndarray
    verdict: str
    verdict_without_band: str
    found: Regions
    like_known: bool = False


def decide(verdicts: Verdicts, score_map: np.ndarray, score: float, size_hw: tuple[int, int],
           settings: DecisionSettings, mask_level: float | None = None, known_match: float | None = None) -> Outcome:
    """score_map: (h, w) at the map size; size_hw: the image's (H, W) -> its Outcome, regions per
    ``settings`` (``mask_level``: another level than the settings', for comparisons); known_match:
    the image's ``Prediction.known_match`` (None: no known defects)."""
    H, W = size_hw
    full = resize_map(score_map, (H, W))
    verdict = verdicts.verdict(score)
    like_known = verdict == "ok" and known_match is not None and settings.known_match is not None \
        and known_match > settings.known_match
    if like_known:
        verdict = "review"
    mask_level = settings.mask_level if mask_level is None else mask_level
    min_area = settings.min_region_area
    if verdict != "ok" or settings.regions_for_ok:
        seed, floor = verdicts.ok_at_most, verdicts.pixel
        if verdict != "ok":  # a map resized below the map size may lose its peak: the verdict's region is kept
            top = float(np.nextafter(np.float32(full.max()), np.float32(-np.inf)))
            seed, floor = min(seed, top), min(floor, top)
        found = defect_regions(full, seed, floor, mask_level, min_area)
    else:
        found = Regions(mask=np.zeros((H, W), dtype=bool), regions=[])
    return Outcome(full, verdict, verdicts.without_band(score), found, like_known)
