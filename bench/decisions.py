"""Decisions as an inspection line meets them: how often the verdicts, masks and regions are right
on lots of real parts, with a leave-one-class-out choice among variants (each class reported under
the setting chosen on the others).

For every class of an MVTec-layout folder (``<class>/train/good``, ``<class>/test/<kind>``,
``<class>/ground_truth/<kind>/NNN_mask.png``), every k in --k_shot and reference seed in --seeds:
k good references are drawn from ``train/good`` (the draw test_few_shot.py makes) and a **lot** is
inspected, made of

* ``full``: every test image plus every ``train/good`` image that is not a reference (a good part),
  so false alarms are counted over every good image the class has;
* ``low``: every good image of the lot and defects drawn to be about 10 % of it (the rate a line
  meets);
* ``repeat``: every good image and every image of the class's most frequent defect type (defects
  that repeat through a lot and may vouch for one another);
* ``test``: the test split alone (what earlier rounds measured; not in the default --lots).

Each lot is scored and decided by the decision layer predict.py uses (models/lot.py,
models/decision.py: lot-aware scoring and lot thresholds where the lot is large enough, the
references alone otherwise) and measured as an engineer meets it: defects caught (a defect sent to
review counts as caught), false alarms over all goods (a good part sent to review counts: a person
looks at it), balanced accuracy, the share sent to review, the same three without the review band,
image and pixel AUROC, AUPRO, mask IoU of caught defects, the share of ground-truth regions a
region touches and how many regions a touched one is split into, seconds per image, and whether
the lot was warned about as mostly defective and whether it was then decided from the references
alone (``fell_back``: models/decision.py ``falls_back``, as predict.py does).

Variants (``--variant 'NAME: flags'``, predict.py's decision and scoring flags) are compared on the
same encodings. ``--loco`` chooses a variant **leave-one-class-out**: for each class, the variant
that does best on the *other* classes (mean balanced accuracy over their full and low lots and
every k, less a penalty
where false alarms pass 0.05 or the review share 0.10), reported on the held-out class: the
headline figures of docs/predict.md.

Writes decisions.json (every run, every image's score and verdict), decisions.md (the tables) and
decisions_<variant>.png (each class's lot scores over the review band) to --out.

    python bench/decisions.py --data_root /data/real --model lite0
    python bench/decisions.py --data_root /data/real --model lite0 --variant "lot:" --variant "single: --lot off"
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tabulate import tabulate
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.images import image_to_unit_tensor, load_image, load_mask, resize_mask  # noqa: E402
from data.kshot import sample_kshot  # noqa: E402
from data.meta import load_meta  # noqa: E402
from data.mvtec import build_mvtec_meta  # noqa: E402
from models import build_fasl_from_args  # noqa: E402
from models.backbone import BackboneOutput  # noqa: E402
from models.decision import (DecisionSettings, decide, fallback_warning, falls_back, fit_lot,  # noqa: E402
                             fit_references, lot_floor, reference_verdicts, with_known_defects)
from models.fasl import Encoded, InferenceConfig  # noqa: E402
from models.flags import (PREDICT_BACKBONE, add_backbone_args, add_decision_args, add_inference_args,  # noqa: E402
                          add_post_args, decision_settings_from_args, fill_model_defaults, map_post_from_args)
from models.lot import LotScorer, content_key, pool_members  # noqa: E402
from models.postprocess import MapPost  # noqa: E402
from models.thresholds import reference_images  # noqa: E402
from utils.cli import InputFileNotFoundError, InputValueError  # noqa: E402
from utils.metrics import image_metrics, label_regions, pixel_metrics  # noqa: E402
from utils.misc import normalize_tensor, resolve_device, seed_everything, write_json  # noqa: E402

DECISIONS_FORMAT = "fasl-decisions-v2"
LOTS = ("full", "low", "repeat", "test")
LOW_SHARE = 0.1  # defects in a low-defect lot
SUMMARY = ("caught", "false_alarms", "balanced_accuracy", "review", "caught_no_band", "false_alarms_no_band",
           "balanced_accuracy_no_band", "image_auroc", "pixel_auroc", "aupro", "iou_caught", "regions_hit",
           "regions_per_hit", "s_per_image", "warned_mostly_defective", "fell_back")
FPR_TARGET, REVIEW_TARGET = 0.05, 0.10


# ----------------------------------------------------------------------------- arithmetic

def mask_quality(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Written mask vs ground truth of one defective image (both (H, W) bool).

    iou = |P & G| / |P | G|; f1 = 2 |P & G| / (|P| + |G|); regions: the ground truth's 8-connected
    regions, ``regions_hit`` how many hold a written pixel, ``pieces`` how many written regions
    touch a ground-truth region (summed over those hit). An empty ground truth gives NaN.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: written {pred.shape}, ground truth {gt.shape}")
    inter = int(np.logical_and(pred, gt).sum())
    union = int(np.logical_or(pred, gt).sum())
    total = int(pred.sum()) + int(gt.sum())
    labels, n = label_regions(gt[None])
    hit = len(set(np.unique(labels[0][pred]).tolist()) - {0}) if n else 0
    pieces = 0
    if hit:
        plabels, _ = label_regions(pred[None])
        for g in set(np.unique(labels[0][pred]).tolist()) - {0}:
            pieces += len(set(np.unique(plabels[0][labels[0] == g]).tolist()) - {0})
    return {"iou": inter / union if gt.any() else math.nan, "f1": 2 * inter / total if gt.any() else math.nan,
            "regions": int(n), "regions_hit": int(hit), "pieces": int(pieces)}


def decision_metrics(labels, scores, verdicts, no_band, masks: list[dict | None]) -> dict:
    """One lot's figures. labels: (N,) 1 = defective; scores: (N,); verdicts: (N,) 'ok' / 'review'
    / 'defect'; no_band: (N,) the verdicts of a single threshold ('ok' / 'defect'); masks: per
    image ``mask_quality`` of its written mask (None for good images).

    A defect sent to review counts as caught, a good part sent to review as a false alarm.
    Rates with nothing to count are NaN.
    """
    labels = np.asarray(labels, dtype=int)
    pos, neg = labels == 1, labels == 0
    flagged = np.asarray([v != "ok" for v in verdicts])
    flagged_nb = np.asarray([v != "ok" for v in no_band])
    rate = lambda hit, of: float(hit[of].mean()) if of.any() else math.nan  # noqa: E731
    tpr, fpr = rate(flagged, pos), rate(flagged, neg)
    tpr_nb, fpr_nb = rate(flagged_nb, pos), rate(flagged_nb, neg)
    both = pos.any() and neg.any()
    caught = [m for m, f, p in zip(masks, flagged, pos) if p and f and m is not None and not math.isnan(m["iou"])]
    defective = [(m, f) for m, f, p in zip(masks, flagged, pos) if p and m is not None and not math.isnan(m["iou"])]
    regions = sum(m["regions"] for m, _ in defective)
    hits = sum(m["regions_hit"] if f else 0 for m, f in defective)
    return {
        "n_good": int(neg.sum()), "n_defective": int(pos.sum()),
        "caught": tpr, "false_alarms": fpr, "balanced_accuracy": (tpr + 1 - fpr) / 2 if both else math.nan,
        "review": float(np.mean([v == "review" for v in verdicts])) if len(verdicts) else math.nan,
        "caught_no_band": tpr_nb, "false_alarms_no_band": fpr_nb,
        "balanced_accuracy_no_band": (tpr_nb + 1 - fpr_nb) / 2 if both else math.nan,
        "image_auroc": float(image_metrics(labels, scores)["auroc"]) if both else math.nan,
        "iou_caught": float(np.mean([m["iou"] for m in caught])) if caught else math.nan,
        "f1_caught": float(np.mean([m["f1"] for m in caught])) if caught else math.nan,
        "regions_hit": hits / regions if regions else math.nan,
        "regions_per_hit": sum(m["pieces"] for m in caught) / hits if hits else math.nan,
    }


def json_safe(obj):
    """NaN (a rate with nothing to count) as null, tuples as lists: strict JSON."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the finite values; NaN when
    there are none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


# ----------------------------------------------------------------------------- data

@dataclass
class ClassImages:
    """Every image of a class (its ``train/good`` images first, then its test images), read once.

    raw: (N, 3, S, S) in [0, 1]; keys: each file's content digest (the lot's pool choice); sizes:
    (H, W) of each original; masks: (H, W) bool ground truth (all False for good images);
    labels: (N,) 1 = defective; kinds: the defect type ('good' for good images); train: (N,) bool.
    """

    paths: list[Path]
    keys: list[str]
    raw: torch.Tensor
    sizes: list[tuple[int, int]]
    masks: list[np.ndarray]
    labels: np.ndarray
    kinds: list[str]
    train: np.ndarray
    encoded: Encoded | None = None
    encode_seconds: float = 0.0

    def rel(self, root: Path) -> dict[str, int]:
        return {p.relative_to(root).as_posix(): i for i, p in enumerate(self.paths)}


def read_meta(root: Path) -> dict:
    """meta.json when the folder has one, else the MVTec layout indexed in memory (the folder may be
    read-only)."""
    return load_meta(root) if (root / "meta.json").is_file() else build_mvtec_meta(root)


def load_class(root: Path, meta: dict, cls: str, image_size: int) -> ClassImages:
    """Read every image of ``cls`` (and its masks), checking each before any work."""
    samples = [dict(s, train=True) for s in meta["train"][cls] if s["anomaly"] == 0] + \
              [dict(s, train=False) for s in meta["test"][cls]]
    paths, keys, raw, sizes, masks, labels, kinds, train = [], [], [], [], [], [], [], []
    for s in samples:
        path = root / s["img_path"]
        img = load_image(path)
        mask = load_mask(root / s["mask_path"] if s["mask_path"] else "", (img.height, img.width), path)
        if s["anomaly"] and not mask.any():
            raise InputValueError(f"{path} is labelled defective but its mask {s['mask_path'] or '(none)'} is empty")
        paths.append(path)
        keys.append(content_key(path.read_bytes()))
        raw.append(image_to_unit_tensor(img, image_size))
        sizes.append((img.height, img.width))
        masks.append(mask)
        labels.append(int(s["anomaly"]))
        kinds.append(s["specie_name"] if s["anomaly"] else "good")
        train.append(s["train"])
    labels = np.asarray(labels)
    if not (labels == 1).any():
        raise InputValueError(f"class {cls!r} has no defective test image")
    return ClassImages(paths, keys, torch.stack(raw), sizes, masks, labels, kinds, np.asarray(train))


def encode_class(model, cfg: InferenceConfig, c: ClassImages, batch_size: int) -> None:
    """Encode every image of the class once (``c.encoded``), timing it."""
    bb = model.backbone
    t0 = time.perf_counter()
    parts = [model.encode(normalize_tensor(c.raw[i:i + batch_size], bb.mean, bb.std), cfg)
             for i in range(0, len(c.paths), batch_size)]
    c.encode_seconds = (time.perf_counter() - t0) / len(c.paths)
    feats = [p.features for p in parts]
    tokens = [torch.cat(t) for t in zip(*(f.tokens for f in feats))]
    emb = None if feats[0].embedding is None else torch.cat([f.embedding for f in feats])
    c.encoded = Encoded(len(c.paths), BackboneOutput(tokens, emb, feats[0].grid), None, None)


def select(enc: Encoded, index: list[int]) -> Encoded:
    idx = torch.tensor(index, dtype=torch.long, device=enc.features.tokens[0].device)
    return Encoded(len(index), enc.features.select(idx), None, None)


def lot_members(c: ClassImages, refs: list[int], lot: str, seed: int) -> list[int]:
    """The images of a ``lot`` (module docstring) for these references, in class order."""
    taken = set(refs)
    goods = [i for i in range(len(c.paths)) if c.labels[i] == 0 and i not in taken]
    defects = [i for i in range(len(c.paths)) if c.labels[i] == 1]
    if lot == "full":
        return goods + defects
    if lot == "low":
        n = max(1, round(len(goods) * LOW_SHARE / (1 - LOW_SHARE)))
        rng = np.random.default_rng([seed, 7141])
        return goods + sorted(rng.choice(defects, size=min(n, len(defects)), replace=False).tolist())
    if lot == "test":
        return [i for i in range(len(c.paths)) if not c.train[i]]
    if lot == "repeat":
        by_kind: dict[str, list[int]] = {}
        for i in defects:
            by_kind.setdefault(c.kinds[i], []).append(i)
        return goods + max(by_kind.values(), key=len)
    raise ValueError(f"unknown lot {lot!r} (one of {', '.join(LOTS)})")


def known_defects(c: ClassImages, lot: list[int], n: int, seed: int) -> list[int]:
    """``n`` defects of the lot drawn by ``seed``, given as known bad parts (at most all but one)."""
    defects = [i for i in lot if c.labels[i] == 1]
    n = min(n, len(defects) - 1)
    if n <= 0:
        return []
    rng = np.random.default_rng([seed, 5113])
    return sorted(rng.choice(defects, size=n, replace=False).tolist())


# ----------------------------------------------------------------------------- runs

@dataclass
class Variant:
    name: str
    cfg: InferenceConfig
    post: MapPost
    settings: DecisionSettings
    flags: str
    known_defects: int = 0  # defects taken out of each lot and given as --defect_refs


def variant_parser() -> argparse.ArgumentParser:
    """predict.py's scoring and decision flags, for --variant strings."""
    p = argparse.ArgumentParser(prog="--variant", add_help=False, allow_abbrev=False)
    add_inference_args(p, mode_default="fd")
    add_post_args(p, MapPost(smooth_sigma=4.0, image_score="top", top_fraction=0.01))
    add_decision_args(p)
    p.add_argument("--known_defects", type=int, default=0,
                   help="benchmark only: take this many defects out of each lot (drawn by the seed) and give them "
                        "as --defect_refs, known bad parts")
    return p


def parse_variant(spec: str, common: str, map_size: int) -> Variant:
    name, _, flags = spec.partition(":")
    name = name.strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise InputValueError(f"--variant {spec!r}: give 'NAME: flags' with a plain NAME (letters, digits, - _)")
    argv = shlex.split(common) + shlex.split(flags)
    try:
        args = variant_parser().parse_args(argv)
    except SystemExit as err:  # argparse has printed why
        raise InputValueError(f"--variant {name}: the flags {shlex.join(argv)} are refused") from err
    if args.mode != "fd":
        raise InputValueError(f"--variant {name}: the benchmark scores --mode fd (no trained heads)")
    try:
        if args.known_defects < 0:
            raise ValueError(f"--known_defects must be >= 0, got {args.known_defects}")
        return Variant(name, InferenceConfig.from_args(args, out_size=map_size), map_post_from_args(args),
                       decision_settings_from_args(args), flags.strip(), args.known_defects)
    except ValueError as err:
        raise InputValueError(f"--variant {name}: {err}") from None


def scoring_key(v: Variant, refs: list[int], lot: list[int]) -> tuple:
    """What a lot's scores depend on: variants that differ only in how scores become verdicts (the lot
    rule, the bands, the masks) share them."""
    s = v.settings
    return (tuple(refs), tuple(lot), repr(v.cfg), repr(v.post), repr(s.scoring), s.lot_aware(len(lot)), s.fpr,
            s.margin, s.normal_sample, s.augment_refs)


def run_one(model, v: Variant, c: ClassImages, refs: list[int], lot: list[int], batch_size: int,
            map_size: int, mask_levels: tuple[float, ...] = (), scored: dict | None = None,
            known: list[int] = ()) -> tuple[dict, list[dict], dict]:
    """Score and decide one lot -> (metrics, per-image records, the fit's record). ``scored``: a cache
    of scores by ``scoring_key`` kept by the caller for one class; ``known``: images given as known
    defects (not in the lot)."""
    bb = model.backbone
    t0 = time.perf_counter()
    key = scoring_key(v, refs, lot)
    lot_aware = v.settings.lot_aware(len(lot))
    if scored is not None and key in scored:
        maps_t, scores_np, alone, ref_scores, thresholds, seconds_scoring, scorer, members = scored[key]
    else:
        ref = reference_images(c.raw[refs], bb.mean, bb.std, bb.patch_size, v.settings.augment_refs,
                               v.settings.normal_sample)
        bank = model.build_memory(ref.bank, model.windows_for(v.cfg), window_batch=v.cfg.window_batch)
        thresholds = fit_references(model, v.cfg, v.post, ref, bank, v.settings)
        scorer = LotScorer(model, v.cfg, v.post, v.settings.scoring if lot_aware else None)
        members: list[int | None] = [None] * len(lot)
        pool_tokens = None
        if lot_aware:
            pool, position = pool_members(lot, [c.keys[i] for i in lot], v.settings.scoring.pool_size)
            members = [position.get(img) for img in lot]
            pool_tokens = select(c.encoded, pool).features.tokens
        scorer.fit(bank=bank, copies=ref.copies, pool_tokens=pool_tokens)
        maps, scores, singles = [], [], []
        for s in range(0, len(lot), batch_size):
            pred = scorer.score_encoded(select(c.encoded, lot[s:s + batch_size]), members[s:s + batch_size])
            maps.append(pred.score_map.float().cpu())
            scores.append(pred.image_score.float().cpu())
            if pred.single_score is not None:
                singles.append(pred.single_score.float().cpu())
        maps_t, scores_np = torch.cat(maps), torch.cat(scores).numpy()
        alone = torch.cat(singles).numpy() if singles else None
        ref_scores = scorer.score_references().image_score.tolist() if lot_aware else []
        seconds_scoring = time.perf_counter() - t0
        if scored is not None:
            scored[key] = (maps_t, scores_np, alone, ref_scores, thresholds, seconds_scoring, scorer, members)
    t1 = time.perf_counter()
    if lot_aware:
        verdicts = fit_lot(scores_np, lambda keep: (maps_t[j].numpy() for j in keep), v.settings.rule,
                           v.settings.fpr, ref_scores, thresholds.image, alone)
        if falls_back(verdicts, len(refs), v.settings):  # decided as predict.py does: again, from the references
            why = fallback_warning(verdicts, len(refs))
            lot_aware_seconds = seconds_scoring + time.perf_counter() - t1  # scoring and fitting as a lot
            metrics, records, fit = run_one(model, replace(v, settings=replace(v.settings, lot="off")), c, refs, lot,
                                            batch_size, map_size, mask_levels, scored, known)
            fit["verdicts"]["warnings"].insert(0, why)
            metrics.update(n_warnings=metrics["n_warnings"] + 1, fell_back=1.0,
                           share_above_references=verdicts.stats["share_above_reference_threshold"],
                           warned_mostly_defective=1.0,
                           s_per_image=metrics["s_per_image"] + lot_aware_seconds / len(lot))
            return metrics, records, fit
        floor = lot_floor(scores_np, v.settings.rule)
    else:
        verdicts = reference_verdicts(thresholds, v.settings)
        floor = thresholds.fit.image_empirical
    matches = [None] * len(lot)
    if known:
        known_enc = select(c.encoded, list(known))
        known_scores = scorer.score_encoded(known_enc).image_score.tolist()
        verdicts = with_known_defects(verdicts, known_scores, floor)
        scorer.set_known(known_enc)  # then each lot image's closeness to the known defects, as predict.py
        try:
            matches = torch.cat([scorer.match_known(select(c.encoded, lot[s:s + batch_size]),
                                                    members[s:s + batch_size])
                                 for s in range(0, len(lot), batch_size)]).tolist()
        finally:  # the scorer is cached for other variants
            scorer.set_known(None)
    records, qualities, verdict_list, no_band = [], [], [], []
    other: dict[float, list] = {level: [] for level in mask_levels}
    for j, img in enumerate(lot):
        out = decide(verdicts, maps_t[j].numpy(), float(scores_np[j]), c.sizes[img], v.settings,
                     known_match=matches[j])
        q = mask_quality(out.found.mask, c.masks[img]) if c.labels[img] else None
        for level in mask_levels:
            alt = decide(verdicts, maps_t[j].numpy(), float(scores_np[j]), c.sizes[img], v.settings, mask_level=level,
                         known_match=matches[j])
            other[level].append(mask_quality(alt.found.mask, c.masks[img]) if c.labels[img] else None)
        qualities.append(q)
        verdict_list.append(out.verdict)
        no_band.append(out.verdict_without_band)
        records.append({"path": str(c.paths[img]), "label": int(c.labels[img]), "kind": c.kinds[img],
                        "score": float(scores_np[j]), "verdict": out.verdict, "n_regions": len(out.found.regions),
                        "known_match": matches[j], "like_known_defect": out.like_known,
                        **({k: q[k] for k in ("iou", "regions", "regions_hit", "pieces")} if q else {})})
    seconds = seconds_scoring + time.perf_counter() - t1
    labels = c.labels[lot]
    metrics = decision_metrics(labels, scores_np, verdict_list, no_band, qualities)
    for level, q in other.items():
        m = decision_metrics(labels, scores_np, verdict_list, no_band, q)
        metrics.update({f"iou_caught@{level:g}": m["iou_caught"], f"regions_per_hit@{level:g}": m["regions_per_hit"]})
    masks = np.stack([resize_mask(c.masks[i], map_size) for i in lot])
    pix = pixel_metrics(masks, maps_t.numpy())
    metrics.update(pixel_auroc=pix["auroc"], aupro=pix["aupro"],
                   s_per_image=c.encode_seconds + seconds / len(lot), lot_aware=lot_aware,
                   n_warnings=len(verdicts.warnings),
                   share_above_references=verdicts.stats.get("share_above_reference_threshold"),
                   warned_mostly_defective=float(any("looks mostly defective" in w for w in verdicts.warnings))
                   if lot_aware else math.nan,  # only a lot-aware fit judges it
                   fell_back=0.0 if lot_aware else math.nan)
    fit = {"verdicts": verdicts.to_dict()}
    return metrics, records, fit


# ----------------------------------------------------------------------------- summaries

def cell_mean(runs: list[dict], metric: str, **match) -> tuple[float, float]:
    """Mean over classes of each class's mean over seeds, and the sample std over seeds of the
    class mean (the spread a reader sees from a reference draw)."""
    mine = [r for r in runs if all(r[k] == v for k, v in match.items())]
    classes = sorted({r["class"] for r in mine})
    seeds = sorted({r["seed"] for r in mine})
    per_class = [mean_std(r["metrics"].get(metric) for r in mine if r["class"] == c)[0] for c in classes]
    per_seed = [mean_std(mean_std(r["metrics"].get(metric) for r in mine if r["class"] == c and r["seed"] == s)[0]
                         for c in classes)[0] for s in seeds]
    return mean_std(per_class)[0], mean_std(per_seed)[1]


def _cell(ms: tuple[float, float]) -> str:
    m, s = ms
    return "–" if not math.isfinite(m) else f"{m:.3f} ± {s:.3f}"


def tables(runs: list[dict], variants: list[str], lots: list[str], ks: list[int], classes: list[str]) -> str:
    """The markdown report: per variant and lot, one line per k of means over classes, then per
    class."""
    text = ["All figures: mean over classes of each class's mean over reference seeds; ± is the sample "
            "standard deviation over seeds of the class mean. A reviewed defect counts as caught, a "
            "reviewed good part as a false alarm.", ""]
    head = ["variant", "lot", "k", *SUMMARY]
    rows = [[v, lot, k, *(_cell(cell_mean(runs, m, variant=v, lot=lot, k=k)) for m in SUMMARY)]
            for v in variants for lot in lots for k in ks]
    text += ["## Mean over classes", "", tabulate(rows, headers=head, tablefmt="github"), ""]
    for v in variants:
        rows = [[c, lot, k, *(_cell(cell_mean(runs, m, variant=v, lot=lot, k=k, **{"class": c})) for m in SUMMARY)]
                for c in classes for lot in lots for k in ks]
        text += [f"## {v}: per class", "", tabulate(rows, headers=["class", "lot", "k", *SUMMARY],
                                                    tablefmt="github"), ""]
        for lot in lots:
            caught = [cell_mean(runs, "caught", variant=v, lot=lot, k=k)[0] for k in ks]
            ok = all(b >= a - 1e-12 for a, b in zip(caught, caught[1:]))
            text.append(f"- {v}, {lot} lot: defects caught over k = {', '.join(map(str, ks))}: "
                        f"{' → '.join(f'{t:.3f}' for t in caught)} "
                        f"({'never fewer' if ok else 'FEWER with more references'})")
        text.append("")
    return "\n".join(text) + "\n"


def mask_table(runs: list[dict], variants: list[str], lots: list[str], ks: list[int], levels: list[float]) -> str:
    """The mask figures at every --mask_levels value (the same verdicts), mean over classes."""
    if not levels:
        return ""
    rows = [[v, lot, f"{level:g}", *(_cell(cell_mean(runs, f"{m}@{level:g}", variant=v, lot=lot, k=k))
                                     for k in ks for m in ("iou_caught", "regions_per_hit"))]
            for v in variants for lot in lots for level in levels]
    head = ["variant", "lot", "mask_level", *(f"{m} k={k}" for k in ks for m in ("iou_caught", "regions_per_hit"))]
    return "## Masks at other --mask_level values\n\n" + tabulate(rows, headers=head, tablefmt="github") + "\n"


def loco_score(runs: list[dict], variant: str, classes: list[str]) -> float:
    """How a variant does on ``classes``: mean balanced accuracy over their lots and k, less twice
    the mean false-alarm rate above FPR_TARGET and the mean review share above REVIEW_TARGET."""
    mine = [r for r in runs if r["variant"] == variant and r["class"] in classes and r["lot"] in ("full", "low")]
    ba = mean_std(r["metrics"]["balanced_accuracy"] for r in mine)[0]
    fa = mean_std(r["metrics"]["false_alarms"] for r in mine)[0]
    review = mean_std(r["metrics"]["review"] for r in mine)[0]
    return ba - 2 * max(0.0, fa - FPR_TARGET) - 2 * max(0.0, review - REVIEW_TARGET)


def loco(runs: list[dict], variants: list[str], classes: list[str], lots: list[str], ks: list[int]) -> tuple[str, dict]:
    """Leave-one-class-out: per held-out class the variant ``loco_score`` prefers on the others,
    and its figures on the held-out class -> (markdown, JSON)."""
    chosen = {c: max(variants, key=lambda v: loco_score(runs, v, [o for o in classes if o != c])) for c in classes}
    held = [dict(r, variant="held-out") for c in classes for r in runs if r["class"] == c and r["variant"] == chosen[c]]
    rows = [[lot, k, *(_cell(cell_mean(held, m, lot=lot, k=k)) for m in SUMMARY)] for lot in lots for k in ks]
    text = ["## Leave one class out: each class decided by the variant chosen on the other classes", "",
            "chosen: " + ", ".join(f"{c} → {chosen[c]}" for c in classes), "",
            tabulate(rows, headers=["lot", "k", *SUMMARY], tablefmt="github"), ""]
    per = [[c, chosen[c], lot, k, *(_cell(cell_mean(held, m, lot=lot, k=k, **{"class": c})) for m in SUMMARY)]
           for c in classes for lot in lots for k in ks]
    text += ["### Held-out figures per class", "", tabulate(per, headers=["class", "chosen", "lot", "k", *SUMMARY],
                                                            tablefmt="github"), ""]
    doc = {"chosen": chosen, "mean": {f"{lot}|{k}": {m: cell_mean(held, m, lot=lot, k=k) for m in SUMMARY}
                                      for lot in lots for k in ks}}
    return "\n".join(text) + "\n", doc


# ----------------------------------------------------------------------------- picture

def strip_chart(runs: list[dict], variant: str, lot: str, ks: list[int], classes: list[str], path: Path) -> Path:
    """Each (class, k) a row: every lot image of every seed as a dot at score / review threshold
    (good green, defective red); the lines at 1 and at the band's upper edge; log axis 0.5-2, dots
    beyond it at its ends."""
    font = ImageFont.load_default()
    left, right, row_h, top, width = 150, 30, 22, 40, 760
    rows = [(c, k) for c in classes for k in ks]
    img = Image.new("RGB", (width, top + row_h * len(rows) + 44), "white")
    d = ImageDraw.Draw(img)
    lo, hi = math.log(0.5), math.log(2.0)
    x_of = lambda r: left + (min(max(math.log(max(r, 1e-9)), lo), hi) - lo) / (hi - lo) * (width - left - right)  # noqa: E731
    d.text((8, 8), f"{variant}, {lot} lot: score / review threshold (log axis; right of the line: review or defect)",
           fill="black", font=font)
    for tick in (0.5, 0.75, 1.0, 1.5, 2.0):
        x = x_of(tick)
        d.line([(x, top - 6), (x, top + row_h * len(rows))], fill=(220, 220, 220) if tick != 1.0 else "black",
               width=1 if tick != 1.0 else 2)
        d.text((x - 8, top + row_h * len(rows) + 6), f"{tick:g}", fill="black", font=font)
    for i, (c, k) in enumerate(rows):
        y = top + row_h * i + row_h // 2
        d.text((8, y - 6), f"{c}  k={k}", fill="black", font=font)
        for r in (r for r in runs if r["variant"] == variant and r["lot"] == lot and r["class"] == c and r["k"] == k):
            v = r["fit"]["verdicts"]
            t = v["ok_at_most"]
            xb = x_of(v["defect_above"] / t if t > 0 else 1.0)
            d.line([(xb, y - 8), (xb, y + 8)], fill=(120, 120, 240), width=1)
            for j, rec in enumerate(r["images"]):
                x = x_of(rec["score"] / t if t > 0 else math.inf)
                dy = (j % 3 - 1) * 4
                colour = (200, 30, 30) if rec["label"] else (20, 150, 40)
                d.ellipse([x - 3, y + dy - 3, x + 3, y + dy + 3], outline=colour, width=1)
    y = top + row_h * len(rows) + 28
    for x, colour, label in ((width - 330, (200, 30, 30), "defective"), (width - 230, (20, 150, 40), "good"),
                             (width - 140, (120, 120, 240), "band's top")):
        d.ellipse([x - 3, y - 3, x + 3, y + 3], outline=colour, width=1)
        d.text((x + 8, y - 6), label, fill="black", font=font)
    img.save(path)
    return path


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--data_root", required=True, help="a folder in MVTec layout (meta.json optional; read only)")
    p.add_argument("--classes", nargs="+", default=None, help="classes to run (default: every class of --data_root)")
    add_backbone_args(p)
    p.set_defaults(**PREDICT_BACKBONE)  # predict.py's backbone; --pretrained / --image_size follow --model
    p.add_argument("--k_shot", type=int, nargs="+", default=[1, 2, 4], help="references (default: 1 2 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reference seeds (default: 0 1 2)")
    p.add_argument("--lots", nargs="+", choices=LOTS, default=list(LOTS[:3]),
                   help="lot compositions (default: full low repeat)")
    p.add_argument("--common", default="", help="predict.py decision / scoring flags for every variant, one string")
    p.add_argument("--variant", action="append", default=None, metavar="'NAME: FLAGS'",
                   help="a setting to compare: a name and predict.py flags added to --common; repeat for several "
                        "(default: one variant 'default' = predict.py's defaults)")
    p.add_argument("--loco", action="store_true",
                   help="also choose a variant leave-one-class-out and report its held-out figures")
    p.add_argument("--mask_levels", type=float, nargs="+", default=[],
                   help="also report the mask figures at these --mask_level values (same verdicts)")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=111,
                   help="seed of random backbone weights, as predict.py's (default: %(default)s)")
    p.add_argument("--out", default="bench_out/decisions", help="output folder (default: %(default)s)")
    args = fill_model_defaults(p.parse_args(argv))
    if any(k < 1 for k in args.k_shot):
        p.error("--k_shot values must be >= 1")
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    bad = [m for m in args.mask_levels if not 0.0 <= m < 1.0]
    if bad:
        p.error(f"--mask_levels must lie in [0, 1), got {bad}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    root = Path(args.data_root)
    if not root.is_dir():
        raise InputFileNotFoundError(f"--data_root {root} is not a folder")
    meta = read_meta(root)
    classes = args.classes or sorted(meta["test"])
    unknown = [c for c in classes if c not in meta["test"] or c not in meta["train"]]
    if unknown:
        raise InputValueError(f"classes {unknown} not in {root} (it has {sorted(meta['test'])})")
    for c in classes:  # k larger than the references there are: say so before any work
        n = sum(1 for s in meta["train"][c] if s["anomaly"] == 0)
        if max(args.k_shot) > n:
            raise InputValueError(f"class {c!r} has {n} good training images, fewer than k = {max(args.k_shot)}")
    map_size = args.image_size
    variants = [parse_variant(v, args.common, map_size) for v in (args.variant or ["default:"])]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise InputValueError(f"--variant names repeat: {names}")
    encodings = {(v.cfg.winmode, v.cfg.align != "exhaustive") for v in variants}
    if len(encodings) > 1:
        raise InputValueError("--variant settings must share --winmode and the alignment's need for embeddings "
                              "(the class is encoded once)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    model = build_fasl_from_args(args, resolve_device(args.device))
    model.eval()

    runs: list[dict] = []
    total = len(classes) * len(variants) * len(args.k_shot) * len(args.seeds) * len(args.lots)
    bar = tqdm(total=total, desc="decisions", unit="lot", dynamic_ncols=True)
    for cls in classes:
        c = load_class(root, meta, cls, model.backbone.image_size)
        encode_class(model, variants[0].cfg, c, args.batch_size)
        index = c.rel(root)
        scored: dict = {}  # the class's lot scores, shared by variants that only decide differently
        for v in variants:
            for k in args.k_shot:
                for seed in args.seeds:
                    refs = [index[p] for p in sample_kshot(meta, cls, k, seed)]
                    for lot in args.lots:
                        members = lot_members(c, refs, lot, seed)
                        known = known_defects(c, members, v.known_defects, seed)
                        members = [i for i in members if i not in known]
                        metrics, records, fit = run_one(model, v, c, refs, members, args.batch_size, map_size,
                                                        tuple(args.mask_levels), scored, known)
                        runs.append({"variant": v.name, "class": cls, "k": k, "seed": seed, "lot": lot,
                                     "metrics": metrics, "references": [str(c.paths[i]) for i in refs],
                                     "fit": fit, "images": records})
                        bar.update(1)
        write_json(out / "decisions.partial.json", json_safe({"format": DECISIONS_FORMAT, "runs": runs}))
    bar.close()
    (out / "decisions.partial.json").unlink(missing_ok=True)
    report = tables(runs, names, args.lots, args.k_shot, classes) + \
        mask_table(runs, names, args.lots, args.k_shot, args.mask_levels)
    result = {"format": DECISIONS_FORMAT, "runs": runs,
              "settings": {"data_root": str(root), "classes": classes, "k_shot": args.k_shot, "seeds": args.seeds,
                           "lots": args.lots, "model": args.model, "pretrained": args.pretrained,
                           "image_size": args.image_size, "common": args.common,
                           "variants": {v.name: {"flags": v.flags, "settings": v.settings.to_dict(),
                                                 "post": v.post.to_dict()} for v in variants}}}
    if args.loco and len(classes) > 1:
        text, doc = loco(runs, names, classes, args.lots, args.k_shot)
        report = text + "\n" + report
        result["loco"] = doc
    write_json(out / "decisions.json", json_safe(result))
    (out / "decisions.md").write_text(report, encoding="utf-8")
    for v in names:
        strip_chart(runs, v, args.lots[0], args.k_shot, classes, out / f"decisions_{v}.png")
    print(report)
    print(f"wrote {out / 'decisions.json'}, {out / 'decisions.md'} and {len(names)} picture(s)")
    return result


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main, "bench/decisions.py")
